use hooklens::{HookPoint, Hooked};

#[derive(hooklens::Hooked)]
enum Model {
    Small { hook_a: HookPoint },
    Large(HookPoint),
}

// The stub impl emitted with the error keeps this from failing too.
fn assert_hooked<T: Hooked>() {}

fn main() {
    assert_hooked::<Model>();
}

use hooklens::{HookPoint, Hooked};

#[derive(hooklens::Hooked)]
#[hooked(crate = "hooklens")]
#[hooked(crate = "hooklens")]
struct Model {
    #[hooked(skip, skip)]
    hook_a: HookPoint,
    #[hooked(rename = "hook_x")]
    #[hooked(rename = "hook_y")]
    hook_b: HookPoint,
}

fn assert_hooked<T: Hooked>() {}

fn main() {
    assert_hooked::<Model>();
}

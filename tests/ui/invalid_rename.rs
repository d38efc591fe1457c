use hooklens::{HookPoint, Hooked};

#[derive(hooklens::Hooked)]
struct Model {
    #[hooked(rename = "attn.hook_z")]
    hook_a: HookPoint,
    #[hooked(rename = "")]
    hook_b: HookPoint,
    #[hooked(rename = "hook z")]
    hook_c: HookPoint,
}

fn assert_hooked<T: Hooked>() {}

fn main() {
    assert_hooked::<Model>();
}

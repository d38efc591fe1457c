use hooklens::{HookPoint, Hooked};

#[derive(hooklens::Hooked)]
struct Model {
    #[hooked(skip, rename = "hook_x")]
    hook_a: HookPoint,
    #[hooked(rename = "hook_y")]
    #[hooked(skip)]
    hook_b: HookPoint,
    #[hooked(module, skip)]
    hook_c: HookPoint,
}

fn assert_hooked<T: Hooked>() {}

fn main() {
    assert_hooked::<Model>();
}

use hooklens::{HookPoint, Hooked};

#[derive(hooklens::Hooked)]
#[hooked(crate = "not a path", hint = my_hint)]
struct Model {
    #[hooked(rename = 3)]
    hook_a: HookPoint,
    #[hooked(rename)]
    hook_b: HookPoint,
    #[hooked(skip = true)]
    hook_c: HookPoint,
    #[hooked(module("yes"))]
    hook_d: HookPoint,
    #[hooked]
    hook_e: HookPoint,
}

fn assert_hooked<T: Hooked>() {}

fn main() {
    assert_hooked::<Model>();
}

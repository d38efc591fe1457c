use hooklens::{HookPoint, Hooked};

#[derive(hooklens::Hooked)]
struct Model {
    #[hooked(rename = "x")]
    hook_a: HookPoint,
    #[hooked(rename = "x")]
    hook_b: HookPoint,
    hook_c: HookPoint,
    #[hooked(rename = "hook_c")]
    hook_d: HookPoint,
}

#[derive(hooklens::Hooked)]
struct Pair(HookPoint, #[hooked(rename = "0")] HookPoint);

fn assert_hooked<T: Hooked>() {}

fn main() {
    assert_hooked::<Model>();
    assert_hooked::<Pair>();
}

use hooklens::{HookPoint, Hooked};

#[derive(hooklens::Hooked)]
struct Model {
    #[hooked(position_axis = 2)]
    hook_a: HookPoint,
    #[hooked(position_axis = "-2")]
    hook_b: HookPoint,
    #[hooked(position_axis = -200)]
    hook_c: HookPoint,
    #[hooked(position_axis)]
    hook_d: HookPoint,
    #[hooked(skip, position_axis = -2)]
    hook_e: HookPoint,
}

fn assert_hooked<T: Hooked>() {}

fn main() {
    assert_hooked::<Model>();
}

use hooklens::{HookPoint, Hooked};

#[derive(hooklens::Hooked)]
#[hooked(hnt = "my_hint")]
struct Model {
    #[hooked(renam = "x")]
    hook_a: HookPoint,
    #[hooked(frobnicate)]
    hook_b: HookPoint,
    #[hooked(hint = "my_hint")]
    hook_c: HookPoint,
}

#[derive(hooklens::Hooked)]
#[hooked(skip)]
struct Other {
    hook_a: HookPoint,
}

fn assert_hooked<T: Hooked>() {}

fn main() {
    assert_hooked::<Model>();
    assert_hooked::<Other>();
}

use hooklens::{HookPoint, Hooked};

// `crate` names a path that does not resolve: one error, at the path as written in the
// attribute, not one for every use inside the expansion.
#[derive(hooklens::Hooked)]
#[hooked(crate = "not_a_crate")]
struct Model {
    hook_a: HookPoint,
}

fn assert_hooked<T: Hooked>() {}

fn main() {
    assert_hooked::<Model>();
}

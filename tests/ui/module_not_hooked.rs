use hooklens::{HookPoint, Hooked};

// A concrete type that is not `Hooked`: `module` walks it through `Hooked` directly, so
// the error must point at the field, not somewhere inside the expansion.
struct Plain {
    weight: f32,
}

#[derive(hooklens::Hooked)]
struct Model {
    hook_a: HookPoint,
    #[hooked(module)]
    inner: Plain,
}

fn assert_hooked<T: Hooked>() {}

fn main() {
    assert_hooked::<Model>();
}

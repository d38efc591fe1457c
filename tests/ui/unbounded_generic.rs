use std::marker::PhantomData;

use hooklens::{HookPoint, Hooked};

// `inner` and `many` would be skipped silently whatever `T` is (even a hooked module):
// each must say `module` or `skip`. `U: Hooked`, `module`, `skip` and `PhantomData`
// fields are fine.
#[derive(hooklens::Hooked)]
struct Model<T, U: Hooked, V> {
    inner: T,
    many: Vec<T>,
    bounded: U,
    #[hooked(module)]
    walked: V,
    #[hooked(skip)]
    config: T,
    marker: PhantomData<T>,
    hook_out: HookPoint,
}

fn assert_hooked<T: Hooked>() {}

fn main() {
    assert_hooked::<Model<HookPoint, HookPoint, HookPoint>>();
}

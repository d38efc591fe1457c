//! A hook point the model's `Hooked` walk never reaches must not be lost without a
//! word: firing it inside a run or a scope is an error that says what is missing.

use std::sync::{Arc, Barrier};

use candle_core::{Device, Tensor};
use hooklens::{CacheOptions, Error, HookPoint, HookSet, Hooked, HookedModel};

/// Holds a point but lacks `#[derive(Hooked)]`: the walk cannot see into it.
struct Inner {
    hook_a: HookPoint,
}

#[derive(Hooked)]
struct Outer {
    inner: Inner,
    hook_b: HookPoint,
}

impl Outer {
    fn new() -> Self {
        Outer {
            inner: Inner {
                hook_a: HookPoint::new(),
            },
            hook_b: HookPoint::new(),
        }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.inner.hook_a.forward(x)?;
        self.hook_b.forward(&(h * 2.0)?)
    }
}

fn input() -> Tensor {
    Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap()
}

fn assert_unnamed(err: Error) {
    let msg = err.to_string();
    assert!(matches!(err, Error::UnnamedHookPoint), "{msg}");
    assert!(
        msg.contains("a HookPoint with no name fired: is the struct holding it missing #[derive(Hooked)]?"),
        "{msg}"
    );
}

#[test]
fn the_walk_lists_only_what_it_reaches() {
    assert_eq!(Outer::new().hook_names(), ["hook_b"]);
}

#[test]
fn run_with_cache_fails_instead_of_caching_half_the_model() {
    let model = Outer::new();
    let err = model
        .run_with_cache(CacheOptions::new(), |m| m.forward(&input()))
        .unwrap_err();
    assert_unnamed(err);
}

#[test]
fn run_with_hooks_fails_even_when_the_hooks_are_elsewhere() {
    let model = Outer::new();
    let hooks = HookSet::new().fwd("hook_b", |x, _| Ok(Some(x.zeros_like()?)));
    assert_unnamed(model.run_with_hooks(hooks, |m| m.forward(&input())).unwrap_err());
}

#[test]
fn a_scope_makes_it_an_error_until_it_ends() {
    let model = Outer::new();
    {
        let _scope = model.hooks(HookSet::new().fwd("hook_b", |_, _| Ok(None))).unwrap();
        assert_unnamed(Error::from(model.forward(&input()).unwrap_err()));
    }
    // Outside any run or scope nothing can be hooked, so nothing is lost: the identity.
    let y = model.forward(&input()).unwrap();
    assert_eq!(y.to_vec1::<f32>().unwrap(), [2.0, 4.0]);
}

#[test]
fn another_threads_scope_does_not_touch_this_thread() {
    let model = Arc::new(Outer::new());
    let opened = Arc::new(Barrier::new(2));
    let checked = Arc::new(Barrier::new(2));
    let other = {
        let (model, opened, checked) = (model.clone(), opened.clone(), checked.clone());
        std::thread::spawn(move || {
            let _scope = model.hooks(HookSet::new().fwd("hook_b", |_, _| Ok(None))).unwrap();
            opened.wait();
            checked.wait();
        })
    };
    opened.wait();
    let standalone = HookPoint::new();
    let y = standalone.forward(&input());
    checked.wait();
    other.join().unwrap();
    assert_eq!(y.unwrap().to_vec1::<f32>().unwrap(), [1.0, 2.0]);
}

/// The same model with the derive on `Inner`: both points are named, hooked and cached.
mod fixed {
    use super::*;

    #[derive(Hooked)]
    struct Inner {
        hook_a: HookPoint,
    }

    #[derive(Hooked)]
    struct Outer {
        inner: Inner,
        hook_b: HookPoint,
    }

    #[test]
    fn with_the_derive_both_points_are_cached() {
        let model = Outer {
            inner: Inner {
                hook_a: HookPoint::new(),
            },
            hook_b: HookPoint::new(),
        };
        let (_, cache) = model
            .run_with_cache(CacheOptions::new(), |m| {
                let h = m.inner.hook_a.forward(&input())?;
                m.hook_b.forward(&h)
            })
            .unwrap();
        assert_eq!(cache.keys().collect::<Vec<_>>(), ["inner.hook_a", "hook_b"]);
    }
}

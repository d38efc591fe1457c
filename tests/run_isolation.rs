//! What TransformerLens cannot do: per-run hooks private to their run and thread,
//! and no hook left behind by a panic or an error.

mod common;

use std::sync::{Arc, Barrier};

use candle_core::Tensor;
use common::{max_abs_diff, TinyModel};
use hooklens::{CacheOptions, Direction, Error, HookPoint, HookSet, HookedModel, RemoveOptions};

fn scale_embed(factor: f64) -> HookSet {
    HookSet::new().fwd("hook_embed", move |t: &Tensor, _: &HookPoint| Ok(Some((t * factor)?)))
}

#[test]
fn threads_sharing_a_model_see_only_their_own_hooks_and_activations() {
    let model = Arc::new(TinyModel::new(2, 8));
    let x = model.input(2, 4, 1.0);
    let factors = [0.0, 0.5, 2.0, -1.0];
    // What each thread's run gives when done alone.
    let alone: Vec<(Tensor, Tensor)> = factors
        .iter()
        .map(|&f| {
            let (out, cache) = model
                .run_with_cache_and_hooks(CacheOptions::new(), scale_embed(f), |m| m.forward(&x))
                .unwrap();
            (out, cache["blocks.1.hook_resid_pre"].clone())
        })
        .collect();
    let barrier = Arc::new(Barrier::new(factors.len()));
    let handles: Vec<_> = factors
        .iter()
        .enumerate()
        .map(|(i, &f)| {
            let (model, x, barrier) = (model.clone(), x.clone(), barrier.clone());
            let expected = alone[i].clone();
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..50 {
                    let (out, cache) = model
                        .run_with_cache_and_hooks(CacheOptions::new(), scale_embed(f), |m| m.forward(&x))
                        .unwrap();
                    assert_eq!(
                        max_abs_diff(&out, &expected.0),
                        0.0,
                        "thread {i} saw another run's hook"
                    );
                    assert_eq!(cache.len(), 12, "thread {i}'s cache holds exactly one run");
                    assert_eq!(max_abs_diff(&cache["blocks.1.hook_resid_pre"], &expected.1), 0.0);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(model.list_hooks().is_empty());
}

#[test]
fn permanent_hooks_from_one_thread_are_seen_by_all() {
    let model = Arc::new(TinyModel::new(1, 4));
    let x = model.input(1, 3, 2.0);
    model
        .add_perma_hook(
            "hook_embed",
            |t: &Tensor, _: &HookPoint| Ok(Some(t.zeros_like()?)),
            Direction::Fwd,
        )
        .unwrap();
    let zeroed = model.forward(&x).unwrap();
    let other = {
        let (model, x) = (model.clone(), x.clone());
        std::thread::spawn(move || model.forward(&x).unwrap()).join().unwrap()
    };
    assert_eq!(max_abs_diff(&zeroed, &other), 0.0);
    model.remove_all_hook_fns(RemoveOptions::new().including_permanent());
    assert!(max_abs_diff(&model.forward(&x).unwrap(), &zeroed) > 0.0);
}

#[test]
fn a_panicking_hook_ends_the_run_with_an_error_and_leaves_nothing() {
    let model = TinyModel::new(2, 8);
    let x = model.input(1, 3, 0.0);
    let before = model.forward(&x).unwrap();
    let err = model
        .run_with_hooks(
            HookSet::new().fwd(
                "blocks.1.mlp.hook_post",
                |_: &Tensor, _: &HookPoint| -> hooklens::Result<_> { panic!("hook bug") },
            ),
            |m| m.forward(&x),
        )
        .unwrap_err();
    match err {
        Error::HookPanicked { name, message } => {
            assert_eq!(name, "blocks.1.mlp.hook_post");
            assert_eq!(message, "hook bug");
        }
        other => panic!("expected a caught panic, got {other}"),
    }
    assert!(model.list_hooks().is_empty());
    assert_eq!(max_abs_diff(&model.forward(&x).unwrap(), &before), 0.0);
}

#[test]
fn a_panic_in_the_scope_body_still_removes_the_scope_hooks() {
    let model = TinyModel::new(1, 4);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _scope = model
            .hooks(HookSet::new().fwd("hook_embed", |_: &Tensor, _: &HookPoint| Ok(None)))
            .unwrap();
        assert_eq!(model.list_hooks().len(), 1);
        panic!("user code failed");
    }));
    assert!(result.is_err());
    assert!(model.list_hooks().is_empty());
}

#[test]
fn a_panic_in_the_run_closure_pops_the_run_hooks() {
    let model = TinyModel::new(1, 4);
    let x = model.input(1, 2, 0.0);
    let zero = HookSet::new().fwd("hook_final", |t: &Tensor, _: &HookPoint| Ok(Some(t.zeros_like()?)));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = model.run_with_hooks(zero, |m| -> candle_core::Result<()> {
            m.forward(&x)?;
            panic!("closure failed")
        });
    }));
    assert!(result.is_err());
    let out = model.forward(&x).unwrap();
    assert!(
        out.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0,
        "the zeroing hook is gone"
    );
}

#[test]
fn nested_runs_stack_their_hooks() {
    let model = TinyModel::new(1, 4);
    let x = model.input(1, 2, 0.0);
    let out = model
        .run_with_hooks(
            HookSet::new().fwd("hook_final", |t: &Tensor, _: &HookPoint| Ok(Some((t + 1.0)?))),
            |m| {
                let inner = m.run_with_hooks(
                    HookSet::new().fwd("hook_final", |t: &Tensor, _: &HookPoint| Ok(Some((t * 2.0)?))),
                    |m| m.forward(&x),
                )?;
                let outer_only = m.forward(&x)?;
                Ok::<_, Error>((inner, outer_only))
            },
        )
        .unwrap();
    let plain = model.forward(&x).unwrap();
    let expected_inner = ((&plain + 1.0).unwrap() * 2.0).unwrap();
    assert!(
        max_abs_diff(&out.0, &expected_inner) < 1e-6,
        "outer hook first, then inner"
    );
    assert!(max_abs_diff(&out.1, &(&plain + 1.0).unwrap()) < 1e-6);
}

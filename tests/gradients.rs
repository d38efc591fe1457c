//! Backward hooks and gradient caching (TransformerLens's `dir="bwd"` hooks and
//! `run_with_cache(incl_bwd=True)`), on a small derived model.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{DType, Tensor};
use common::{max_abs_diff, TinyModel};
use hooklens::{CacheOptions, Direction, HookOptions, HookPoint, HookSet, HookedModel, RemoveOptions, ResetOptions};

fn abs_sum(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn a_plain_forward_records_no_graph() {
    let model = TinyModel::new(2, 8);
    let x = model.input(1, 3, 0.0);
    assert!(!model.loss(&x).unwrap().track_op());
}

#[test]
fn backward_hook_runs_once_per_backward_and_not_during_forward() {
    let model = TinyModel::new(2, 8);
    let x = model.input(1, 3, 0.0);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let hooks = HookSet::new().bwd("blocks.0.hook_resid_post", move |g: &Tensor, _: &HookPoint| {
        c.fetch_add(1, Ordering::SeqCst);
        assert_eq!(g.dims(), &[1, 3, 8]);
        Ok(None)
    });
    let loss = model.run_with_hooks(hooks, |m| m.loss(&x)).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 0, "no backward yet");
    loss.backward().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(model.list_hooks().is_empty(), "the run's hooks were never model state");
}

#[test]
fn backward_hooks_in_a_scope_stay_until_it_ends() {
    let model = TinyModel::new(1, 4);
    let x = model.input(1, 2, 0.0);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    {
        let _scope = model
            .hooks(HookSet::new().bwd("hook_embed", move |_: &Tensor, _: &HookPoint| {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(None)
            }))
            .unwrap();
        assert!(
            hooklens::grad_mode(),
            "attached backward hooks ask for differentiable paths"
        );
        model.loss(&x).unwrap().backward().unwrap();
        model.loss(&x).unwrap().backward().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
    assert!(model.list_hooks().is_empty());
    assert!(!model.loss(&x).unwrap().track_op(), "no backward hook left, no graph");
}

#[test]
fn gradient_cache_holds_every_hook_and_its_grad() {
    let model = TinyModel::new(2, 8);
    let x = model.input(2, 3, 0.5);
    let (loss, cache) = model
        .run_with_cache_bwd(CacheOptions::new(), HookSet::new(), |m| m.loss(&x))
        .unwrap();
    assert_eq!(loss.dims(), &[] as &[usize]);
    assert_eq!(cache.len(), 24);
    for name in model.hook_names() {
        let act = &cache[name.as_str()];
        let grad = &cache[format!("{name}_grad").as_str()];
        assert_eq!(act.dims(), grad.dims(), "{name}");
    }
    // d(mean(y^2))/dy at the output is 2y/n.
    let out = &cache["hook_final"];
    let expected = (out * (2.0 / out.elem_count() as f64)).unwrap();
    assert!(max_abs_diff(&cache["hook_final_grad"], &expected) < 1e-6);
}

#[test]
fn gradients_agree_with_finite_differences() {
    let model = TinyModel::with_dtype(2, 6, DType::F64);
    let x = model.input(1, 3, 0.25);
    let (_, cache) = model
        .run_with_cache_bwd(CacheOptions::new().names("hook_embed"), HookSet::new(), |m| m.loss(&x))
        .unwrap();
    let analytic = cache["hook_embed_grad"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let eps = 1e-5;
    let n = analytic.len();
    for i in [0, 5, n / 2, n - 1] {
        let bumped = |delta: f64| -> f64 {
            let mut onehot = vec![0f64; n];
            onehot[i] = delta;
            let bump = Tensor::from_vec(onehot, (1, 3, 6), x.device()).unwrap();
            let loss = model
                .run_with_hooks(
                    HookSet::new().fwd("hook_embed", move |t: &Tensor, _: &HookPoint| Ok(Some((t + &bump)?))),
                    |m| m.loss(&x),
                )
                .unwrap();
            loss.to_scalar::<f64>().unwrap()
        };
        let numeric = (bumped(eps) - bumped(-eps)) / (2.0 * eps);
        assert!(
            (numeric - analytic[i]).abs() < 1e-7 + 1e-5 * analytic[i].abs(),
            "element {i}: {numeric} vs {}",
            analytic[i]
        );
    }
}

#[test]
fn zeroing_a_gradient_zeroes_exactly_what_is_upstream() {
    let model = TinyModel::new(2, 8);
    let x = model.input(1, 4, 0.0);
    let zero_grad = HookSet::new().bwd("blocks.1.hook_resid_pre", |g: &Tensor, _: &HookPoint| {
        Ok(Some(g.zeros_like()?))
    });
    let (_, cache) = model
        .run_with_cache_bwd(CacheOptions::new(), zero_grad, |m| m.loss(&x))
        .unwrap();
    let upstream = [
        "hook_embed",
        "blocks.0.hook_resid_pre",
        "blocks.0.mlp.hook_pre",
        "blocks.0.mlp.hook_post",
        "blocks.0.hook_mlp_out",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_pre",
    ];
    for name in model.hook_names() {
        let g = abs_sum(&cache[format!("{name}_grad").as_str()]);
        if upstream.contains(&name.as_str()) {
            assert_eq!(g, 0.0, "{name} is upstream of the zeroed gradient");
        } else {
            assert!(g > 0.0, "{name} is downstream and keeps its gradient");
        }
    }
}

#[test]
fn a_backward_hook_may_scale_the_gradient() {
    let model = TinyModel::new(1, 4);
    let x = model.input(1, 2, 0.0);
    let (_, plain) = model
        .run_with_cache_bwd(CacheOptions::new(), HookSet::new(), |m| m.loss(&x))
        .unwrap();
    let doubled = HookSet::new().bwd("hook_final", |g: &Tensor, _: &HookPoint| Ok(Some((g * 2.0)?)));
    let (_, scaled) = model
        .run_with_cache_bwd(CacheOptions::new(), doubled, |m| m.loss(&x))
        .unwrap();
    let expected = (&plain["hook_embed_grad"] * 2.0).unwrap();
    assert!(max_abs_diff(&scaled["hook_embed_grad"], &expected) < 1e-6);
    let bad = HookSet::new().bwd("hook_final", |g: &Tensor, _: &HookPoint| Ok(Some(g.sum_all()?)));
    let err = model
        .run_with_cache_bwd(CacheOptions::new(), bad, |m| m.loss(&x))
        .unwrap_err();
    assert!(matches!(err, hooklens::Error::HookShape { .. }), "{err}");
}

#[test]
fn model_state_backward_hooks_are_removed_like_forward_ones() {
    let model = TinyModel::new(1, 4);
    model
        .add_hook("hook_final", |_: &Tensor, _: &HookPoint| Ok(None), HookOptions::bwd())
        .unwrap();
    assert_eq!(model.list_hooks()[0].1[0].direction, Direction::Bwd);
    assert_eq!(
        model.remove_all_hook_fns(RemoveOptions::new().direction(Direction::Fwd)),
        0
    );
    assert_eq!(
        model.remove_all_hook_fns(RemoveOptions::new().direction(Direction::Bwd)),
        1
    );
}

#[test]
fn run_with_cache_refuses_incl_bwd_without_a_scalar() {
    let model = TinyModel::new(1, 4);
    let x = model.input(1, 2, 0.0);
    let err = model
        .run_with_cache(CacheOptions::new().incl_bwd(true), |m| m.forward(&x))
        .unwrap_err();
    assert!(err.to_string().contains("run_with_cache_bwd"), "{err}");
    let err = model
        .run_with_cache_bwd(CacheOptions::new(), HookSet::new(), |m| m.forward(&x))
        .unwrap_err();
    assert!(err.to_string().contains("scalar"), "{err}");
}

#[test]
fn grad_mode_counts_the_backward_hooks_of_the_model_whose_forward_runs() {
    let (hooked, other) = (TinyModel::new(1, 4), TinyModel::new(1, 4));
    // Building the hook dictionaries makes each model's points count together.
    let _ = (hooked.hook_dict(), other.hook_dict());
    hooked
        .add_hook("blocks.0.hook_resid_post", |_, _| Ok(None), HookOptions::bwd())
        .unwrap();
    {
        let _forward = other.hook_embed.model_forward();
        assert!(!hooklens::grad_mode(), "another model's backward hook");
        let _inner = hooked.hook_final.model_forward();
        assert!(hooklens::grad_mode(), "nested: the hooked model's forward");
    }
    {
        // Any point of the model stands for it.
        let _forward = hooked.blocks[0].mlp.hook_pre.model_forward();
        assert!(hooklens::grad_mode());
    }
    // A forward that does not say which model it is goes by every model's hooks.
    assert!(hooklens::grad_mode());
    hooked.reset_hooks(ResetOptions::new().keep_contexts());
    let _forward = hooked.hook_embed.model_forward();
    assert!(!hooklens::grad_mode(), "the hook is gone");
}

//! TransformerLens's `tests/integration/test_hooks.py` and
//! `tests/unit/test_hook_points.py`, case by case, on a small derived model.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::Tensor;
use common::{max_abs_diff, TinyModel};
use hooklens::{
    CacheOptions, Direction, Error, Hook, HookOptions, HookPoint, HookSet, HookedModel, RemoveOptions, ResetOptions,
};

const EMBED: &str = "hook_embed";

/// TransformerLens's `Counter`: a hook that counts its calls and keeps the activation.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl Counter {
    fn hook(&self) -> Hook {
        let n = self.0.clone();
        Hook::new(move |_: &Tensor, _: &HookPoint| {
            n.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        })
    }
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn n_fwd_hooks(model: &TinyModel, name: &str) -> usize {
    model.hook_point(name).unwrap().num_hooks(Direction::Fwd)
}

fn total_hooks(model: &TinyModel) -> usize {
    model.hook_points().iter().map(|p| p.num_hooks(Direction::Both)).sum()
}

fn setup() -> (TinyModel, Tensor) {
    let model = TinyModel::new(2, 8);
    let x = model.input(1, 5, 0.0);
    (model, x)
}

#[test]
fn hook_attaches_normally_and_is_gone_after_run_with_hooks() {
    let (model, x) = setup();
    let c = Counter::default();
    model
        .run_with_hooks(HookSet::new().fwd_hook(EMBED, c.hook()), |m| m.forward(&x))
        .unwrap();
    assert_eq!(total_hooks(&model), 0);
    assert_eq!(c.count(), 1);
}

#[test]
fn perma_hook_survives_run_with_hooks() {
    let (model, x) = setup();
    let c = Counter::default();
    model
        .add_shared_hook(EMBED, c.hook(), HookOptions::fwd().permanent())
        .unwrap();
    assert_eq!(n_fwd_hooks(&model, EMBED), 1);
    model.run_with_hooks(HookSet::new(), |m| m.forward(&x)).unwrap();
    assert_eq!(n_fwd_hooks(&model, EMBED), 1);
    assert_eq!(c.count(), 1);
    model.remove_all_hook_fns(RemoveOptions::new().including_permanent());
    assert_eq!(total_hooks(&model), 0);
}

#[test]
fn hook_context_manager() {
    let (model, x) = setup();
    let c = Counter::default();
    {
        let _scope = model.hooks(HookSet::new().fwd_hook(EMBED, c.hook())).unwrap();
        assert_eq!(n_fwd_hooks(&model, EMBED), 1);
        model.forward(&x).unwrap();
    }
    assert_eq!(n_fwd_hooks(&model, EMBED), 0);
    assert_eq!(c.count(), 1);
}

#[test]
fn nested_hook_context_manager() {
    let (model, x) = setup();
    let c = Counter::default();
    {
        let _outer = model.hooks(HookSet::new().fwd_hook(EMBED, c.hook())).unwrap();
        assert_eq!(n_fwd_hooks(&model, EMBED), 1);
        model.forward(&x).unwrap();
        assert_eq!(c.count(), 1);
        {
            let _inner = model.hooks(HookSet::new().fwd_hook(EMBED, c.hook())).unwrap();
            assert_eq!(n_fwd_hooks(&model, EMBED), 2);
            model.forward(&x).unwrap();
            assert_eq!(c.count(), 3, "2 from the inner scope's forward, 1 from the outer's");
        }
        assert_eq!(n_fwd_hooks(&model, EMBED), 1);
    }
    assert_eq!(n_fwd_hooks(&model, EMBED), 0);
}

#[test]
fn run_with_cache_inside_a_scope_leaves_the_scope_hook() {
    let (model, x) = setup();
    let c = Counter::default();
    {
        let _scope = model.hooks(HookSet::new().fwd_hook(EMBED, c.hook())).unwrap();
        assert_eq!(n_fwd_hooks(&model, EMBED), 1);
        let (_, cache) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&x)).unwrap();
        assert!(cache.contains(EMBED));
        assert_eq!(n_fwd_hooks(&model, EMBED), 1);
        assert_eq!(c.count(), 1);
    }
    assert_eq!(n_fwd_hooks(&model, EMBED), 0);
}

#[test]
fn permanent_hook_inside_a_scope() {
    let (model, x) = setup();
    let c = Counter::default();
    model
        .add_shared_hook(EMBED, c.hook(), HookOptions::fwd().permanent())
        .unwrap();
    assert_eq!(n_fwd_hooks(&model, EMBED), 1);
    {
        let _scope = model.hooks(HookSet::new().fwd_hook(EMBED, c.hook())).unwrap();
        assert_eq!(n_fwd_hooks(&model, EMBED), 2);
        model.forward(&x).unwrap();
        assert_eq!(c.count(), 2);
    }
    assert_eq!(n_fwd_hooks(&model, EMBED), 1);
    model.forward(&x).unwrap();
    assert_eq!(c.count(), 3);
}

#[test]
fn error_inside_a_nested_scope_removes_the_inner_hook_only() {
    let (model, x) = setup();
    let c = Counter::default();
    {
        let _outer = model.hooks(HookSet::new().fwd_hook(EMBED, c.hook())).unwrap();
        let result = (|| -> hooklens::Result<Tensor> {
            let _inner =
                model.hooks(HookSet::new().fwd(EMBED, |_: &Tensor, _: &HookPoint| Err(Error::invalid("fail"))))?;
            assert_eq!(n_fwd_hooks(&model, EMBED), 2);
            Ok(model.forward(&x)?)
        })();
        match result {
            Err(Error::HookFailed { name, source }) => {
                assert_eq!(name, EMBED);
                assert_eq!(source.to_string(), "fail");
            }
            other => panic!("expected the hook's error, got {other:?}"),
        }
        assert_eq!(n_fwd_hooks(&model, EMBED), 1);
        model.forward(&x).unwrap();
        assert_eq!(c.count(), 2, "the outer hook ran in both forwards");
    }
    assert_eq!(n_fwd_hooks(&model, EMBED), 0);
}

#[test]
fn reset_hooks_inside_a_scope() {
    let (model, _) = setup();
    let c = Counter::default();
    let _scope = model.hooks(HookSet::new().fwd_hook(EMBED, c.hook())).unwrap();
    assert_eq!(n_fwd_hooks(&model, EMBED), 1);
    model.add_shared_hook(EMBED, c.hook(), HookOptions::fwd()).unwrap();
    assert_eq!(n_fwd_hooks(&model, EMBED), 2);
    model.reset_hooks(ResetOptions::new());
    assert_eq!(n_fwd_hooks(&model, EMBED), 0);
}

#[test]
fn remove_all_hook_fns_with_and_without_permanent() {
    let (model, _) = setup();
    let c = Counter::default();
    model
        .add_shared_hook(EMBED, c.hook(), HookOptions::fwd().permanent())
        .unwrap();
    assert_eq!(n_fwd_hooks(&model, EMBED), 1);
    model.remove_all_hook_fns(RemoveOptions::new());
    assert_eq!(n_fwd_hooks(&model, EMBED), 1);
    model.remove_all_hook_fns(RemoveOptions::new().including_permanent());
    assert_eq!(n_fwd_hooks(&model, EMBED), 0);
}

/// TransformerLens's `test_prepending_hooks`: a zeroing hook and a noise hook on one
/// point; whichever runs last decides whether the activation is zero.
#[test]
fn prepend_decides_the_order() {
    let (model, x) = setup();
    let name = "blocks.0.hook_resid_post";
    let zero = || Hook::new(|t: &Tensor, _: &HookPoint| Ok(Some(t.zeros_like()?)));
    let noise = || Hook::new(|t: &Tensor, _: &HookPoint| Ok(Some(t.randn_like(0.0, 1.0)?)));
    let is_zero_after = |first: Hook, second: Hook, prepend_second: bool| -> bool {
        model.reset_hooks(ResetOptions::new().including_permanent());
        model.add_shared_hook(name, first, HookOptions::fwd()).unwrap();
        model
            .add_shared_hook(
                name,
                second,
                HookOptions {
                    prepend: prepend_second,
                    ..HookOptions::fwd()
                },
            )
            .unwrap();
        let (_, cache) = model
            .run_with_cache(CacheOptions::new().names(name), |m| m.forward(&x))
            .unwrap();
        let sum = cache[name]
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        sum == 0.0
    };
    assert!(!is_zero_after(zero(), noise(), false), "noise appended runs last");
    assert!(is_zero_after(zero(), noise(), true), "noise prepended runs first");
    assert!(is_zero_after(noise(), zero(), false), "zero appended runs last");
    assert!(!is_zero_after(noise(), zero(), true), "zero prepended runs first");
    model.reset_hooks(ResetOptions::new().including_permanent());
}

#[test]
fn hooks_see_their_point_and_its_layer() {
    let (model, x) = setup();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    model
        .run_with_hooks(
            HookSet::new().fwd("blocks.*.mlp.hook_pre", move |_: &Tensor, hp: &HookPoint| {
                log.lock().unwrap().push((hp.name().to_string(), hp.layer()?));
                Ok(None)
            }),
            |m| m.forward(&x),
        )
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            ("blocks.0.mlp.hook_pre".to_string(), 0),
            ("blocks.1.mlp.hook_pre".to_string(), 1)
        ]
    );
    assert!(matches!(
        model.hook_point(EMBED).unwrap().layer(),
        Err(Error::NoLayer { .. })
    ));
}

#[test]
fn hook_context_persists_between_runs() {
    let (model, x) = setup();
    let hook = |t: &Tensor, hp: &HookPoint| {
        let n = hp.ctx_get::<usize>("calls").unwrap_or(0);
        hp.ctx_insert("calls", n + 1);
        hp.ctx_insert("last", t.clone());
        Ok(None)
    };
    model.add_hook(EMBED, hook, HookOptions::fwd()).unwrap();
    model.forward(&x).unwrap();
    model.forward(&x).unwrap();
    let hp = model.hook_point(EMBED).unwrap();
    assert_eq!(hp.ctx_get::<usize>("calls"), Some(2));
    assert!(hp.ctx_get::<Tensor>("last").is_some());
    model.reset_hooks(ResetOptions::new());
    assert_eq!(hp.ctx_len(), 0);
}

#[test]
fn replacing_an_activation_changes_everything_downstream() {
    let (model, x) = setup();
    let clean = model.forward(&x).unwrap();
    let (patched, cache) = model
        .run_with_cache_and_hooks(
            CacheOptions::new(),
            HookSet::new().fwd("blocks.1.hook_resid_pre", |t: &Tensor, _: &HookPoint| {
                Ok(Some(t.zeros_like()?))
            }),
            |m| m.forward(&x),
        )
        .unwrap();
    assert!(max_abs_diff(&clean, &patched) > 1e-3);
    let zeros = cache["blocks.1.hook_resid_pre"].abs().unwrap().sum_all().unwrap();
    assert_eq!(
        zeros.to_scalar::<f32>().unwrap(),
        0.0,
        "the cache holds the edited activation"
    );
    // Layer 0 is upstream of the edit: unchanged.
    let (_, clean_cache) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&x)).unwrap();
    assert_eq!(
        max_abs_diff(
            &clean_cache["blocks.0.hook_resid_post"],
            &cache["blocks.0.hook_resid_post"]
        ),
        0.0
    );
}

#[test]
fn unknown_names_and_empty_filters_are_errors_that_attach_nothing() {
    let (model, x) = setup();
    let noop = |_: &Tensor, _: &HookPoint| Ok(None);
    let err = model
        .add_hook("blocks.0.hook_resid_pr", noop, HookOptions::fwd())
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::UnknownHook { .. }));
    assert!(msg.contains("did you mean `blocks.0.hook_resid_pre`"), "{msg}");
    let err = model
        .hooks(HookSet::new().fwd(EMBED, noop).fwd("blocks.*.attn.hook_pattern", noop))
        .err()
        .unwrap();
    assert!(matches!(err, Error::EmptyFilter { .. }), "{err}");
    assert_eq!(total_hooks(&model), 0, "a failed scope attaches nothing");
    let err = model
        .run_with_cache(CacheOptions::new().names(["hook_embed", "hook_nope"]), |m| {
            m.forward(&x)
        })
        .unwrap_err();
    assert!(matches!(err, Error::UnknownHook { .. }), "{err}");
    let err = model
        .add_hook(
            EMBED,
            noop,
            HookOptions {
                dir: Direction::Both,
                ..HookOptions::fwd()
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::Direction(_)), "{err}");
}

#[test]
fn wrong_shape_dtype_from_a_hook_names_the_hook() {
    let (model, x) = setup();
    let err = model
        .run_with_hooks(
            HookSet::new().fwd("blocks.0.mlp.hook_post", |t: &Tensor, _: &HookPoint| {
                Ok(Some(t.sum_keepdim(2)?))
            }),
            |m| m.forward(&x),
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::HookShape { .. }), "{msg}");
    assert!(
        msg.contains("blocks.0.mlp.hook_post") && msg.contains("[1, 5, 16]") && msg.contains("[1, 5, 1]"),
        "{msg}"
    );
    let err = model
        .run_with_hooks(
            HookSet::new().fwd(EMBED, |t: &Tensor, _: &HookPoint| {
                Ok(Some(t.to_dtype(candle_core::DType::F64)?))
            }),
            |m| m.forward(&x),
        )
        .unwrap_err();
    assert!(matches!(err, Error::HookDType { .. }), "{err}");
    assert_eq!(total_hooks(&model), 0);
}

#[test]
fn list_hooks_reports_attached_hooks() {
    let (model, _) = setup();
    let noop = |_: &Tensor, _: &HookPoint| Ok(None);
    model
        .add_perma_hook("blocks.*.hook_resid_pre", noop, Direction::Fwd)
        .unwrap();
    let scope = model.hooks(HookSet::new().bwd(EMBED, noop)).unwrap();
    let listed = model.list_hooks();
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["hook_embed", "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    );
    assert_eq!(listed[0].1[0].direction, Direction::Bwd);
    assert_eq!(listed[0].1[0].level, Some(scope.level()));
    assert!(listed[1].1[0].is_permanent);
    drop(scope);
    assert_eq!(model.list_hooks().len(), 2);
}

#[test]
fn hook_dict_is_in_registration_order() {
    let (model, _) = setup();
    assert_eq!(
        model.hook_names(),
        [
            "hook_embed",
            "blocks.0.mlp.hook_pre",
            "blocks.0.mlp.hook_post",
            "blocks.0.hook_resid_pre",
            "blocks.0.hook_mlp_out",
            "blocks.0.hook_resid_post",
            "blocks.1.mlp.hook_pre",
            "blocks.1.mlp.hook_post",
            "blocks.1.hook_resid_pre",
            "blocks.1.hook_mlp_out",
            "blocks.1.hook_resid_post",
            "hook_final",
        ]
    );
}

#[test]
fn first_non_finite_names_the_first_bad_point() {
    let (model, x) = setup();
    let (_, none) = hooklens::first_non_finite(&model, |m| m.forward(&x)).unwrap();
    assert_eq!(none, None);
    let (_, report) = model
        .run_with_hooks(
            HookSet::new().fwd("blocks.1.mlp.hook_pre", |t: &Tensor, _: &HookPoint| {
                Ok(Some((t / 0.0)?))
            }),
            |m| hooklens::first_non_finite(m, |m| m.forward(&x)),
        )
        .unwrap();
    let report = report.expect("the division by zero is found");
    assert_eq!(report.name, "blocks.1.mlp.hook_pre");
    assert_eq!(report.nan + report.inf, 5 * 16);
}

/// `is_idle` is what lets a model overwrite an activation in place: it must be false
/// wherever a hook could see or keep the activation.
#[test]
fn a_hook_point_is_idle_only_when_nothing_can_see_its_activation() {
    let (model, x) = setup();
    let embed = model.hook_point(EMBED).unwrap();
    let other = model.hook_points().into_iter().find(|p| &*p.name() != EMBED).unwrap();
    assert!(embed.is_idle() && other.is_idle());
    {
        let _scope = model
            .hooks(HookSet::new().fwd_hook(EMBED, Counter::default().hook()))
            .unwrap();
        assert!(!embed.is_idle());
    }
    assert!(embed.is_idle());
    model
        .add_shared_hook(EMBED, Counter::default().hook(), HookOptions::bwd())
        .unwrap();
    assert!(!embed.is_idle(), "a backward hook needs the activation too");
    model.reset_hooks(ResetOptions::new().including_permanent());
    assert!(embed.is_idle());
    // A run's hooks live on its thread, not on the point: during a run the points it
    // hooks are not idle on that thread, the others are, and everything still is on
    // another thread.
    let (during, elsewhere) = model
        .run_with_cache(CacheOptions::new().names(EMBED), |m| {
            let here = (embed.is_idle(), other.is_idle());
            let elsewhere = std::thread::scope(|s| s.spawn(|| (embed.is_idle(), other.is_idle())).join().unwrap());
            m.forward(&x).map(|_| (here, elsewhere))
        })
        .unwrap()
        .0;
    assert_eq!(during, (false, true));
    assert_eq!(elsewhere, (true, true));
}

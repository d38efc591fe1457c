//! Faults on GPT-2 (issue 6): a hook that panics or returns an error, wherever it is
//! attached and whatever the model is doing, ends the run with an error naming the
//! hook; afterwards no temporary hook is left and the model gives exactly the results
//! it gave before.

mod common;

use candle_core::Tensor;
use common::*;
use hooklens_core::{CacheOptions, Direction, Error, HookPoint, HookSet, HookedModel, RemoveOptions};
use hooklens_models::analysis::patching::{PatchIndex, PatchSetter, Patching};
use hooklens_models::{GenerateOptions, HookedTransformer};

const POINT: &str = "blocks.1.attn.hook_z";

/// What a healthy model gives: logits and every cached activation.
struct Baseline {
    logits: Tensor,
    cache: Vec<(String, Tensor)>,
    generated: Tensor,
}

fn baseline(model: &HookedTransformer) -> Baseline {
    let toks = tokens();
    let (logits, cache) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&toks)).unwrap();
    let generated = model
        .generate(&toks.narrow(1, 0, 4).unwrap(), &GenerateOptions::greedy(3))
        .unwrap();
    Baseline {
        logits,
        cache: cache.iter().map(|(n, t)| (n.to_string(), t.clone())).collect(),
        generated,
    }
}

/// Nothing attached, and the very same numbers as `before`, bit for bit.
fn assert_healthy(model: &HookedTransformer, before: &Baseline, after_what: &str) {
    assert!(
        model.list_hooks().is_empty(),
        "{after_what}: hooks left {:?}",
        model.list_hooks()
    );
    let now = baseline(model);
    assert_eq!(
        max_abs_diff(&now.logits, &before.logits),
        0.0,
        "{after_what}: logits changed"
    );
    assert_eq!(now.cache.len(), before.cache.len(), "{after_what}");
    for ((name, a), (_, b)) in now.cache.iter().zip(&before.cache) {
        assert_eq!(max_abs_diff(a, b), 0.0, "{after_what}: {name} changed");
    }
    assert_eq!(
        max_abs_diff(&now.generated, &before.generated),
        0.0,
        "{after_what}: generation changed"
    );
}

fn panicking(_: &Tensor, _: &HookPoint) -> hooklens_core::Result<Option<Tensor>> {
    panic!("hook bug at z")
}

fn failing(_: &Tensor, _: &HookPoint) -> hooklens_core::Result<Option<Tensor>> {
    Err(Error::invalid("hook refuses"))
}

fn assert_names_hook(err: &Error, what: &str) {
    match err {
        Error::HookPanicked { name, message } => {
            assert_eq!(name, POINT, "{what}");
            assert_eq!(message, "hook bug at z", "{what}");
        }
        Error::HookFailed { name, source } => {
            assert_eq!(name, POINT, "{what}");
            assert!(source.to_string().contains("hook refuses"), "{what}: {source}");
        }
        other => panic!("{what}: expected an error naming the hook, got {other}"),
    }
}

#[test]
fn a_failing_hook_in_any_kind_of_run_names_itself_and_leaves_the_model_as_it_was() {
    let model = processed_model();
    let before = baseline(&model);
    let toks = tokens();
    type HookFn = fn(&Tensor, &HookPoint) -> hooklens_core::Result<Option<Tensor>>;
    for (kind, hook) in [("panicking", panicking as HookFn), ("failing", failing as HookFn)] {
        // A per-run hook, alone and behind a cache.
        let err = model
            .run_with_hooks(HookSet::new().fwd(POINT, hook), |m| m.forward(&toks))
            .unwrap_err();
        assert_names_hook(&err, &format!("{kind} run_with_hooks"));
        assert_healthy(&model, &before, &format!("{kind} run_with_hooks"));
        let err = model
            .run_with_cache_and_hooks(CacheOptions::new(), HookSet::new().fwd(POINT, hook), |m| {
                m.forward(&toks)
            })
            .unwrap_err();
        assert_names_hook(&err, &format!("{kind} run_with_cache"));
        assert_healthy(&model, &before, &format!("{kind} run_with_cache"));
        // A scope's hook: the forward inside it fails; the scope still removes it.
        {
            let _scope = model.hooks(HookSet::new().fwd(POINT, hook)).unwrap();
            let err = model.forward(&toks).unwrap_err();
            assert_names_hook(&err, &format!("{kind} scope"));
        }
        assert_healthy(&model, &before, &format!("{kind} scope"));
        // A permanent hook: every run fails until it is removed, then all is as before.
        model.add_perma_hook(POINT, hook, Direction::Fwd).unwrap();
        let err = model.forward(&toks).unwrap_err();
        assert_names_hook(&err, &format!("{kind} permanent"));
        let err = model
            .generate(&toks.narrow(1, 0, 4).unwrap(), &GenerateOptions::greedy(3))
            .unwrap_err();
        assert_names_hook(&err, &format!("{kind} permanent, generating"));
        assert_eq!(model.remove_all_hook_fns(RemoveOptions::new().including_permanent()), 1);
        assert_healthy(&model, &before, &format!("{kind} permanent"));
        // Generation with a per-run hook (the KV-cached path).
        let err = model
            .run_with_hooks(HookSet::new().fwd(POINT, hook), |m| {
                m.generate(&toks.narrow(1, 0, 4).unwrap(), &GenerateOptions::greedy(3))
            })
            .unwrap_err();
        assert_names_hook(&err, &format!("{kind} generate"));
        assert_healthy(&model, &before, &format!("{kind} generate"));
    }
}

/// A hook that fails only on the third call: the runs before it stand, the run it
/// breaks is an error, and the next runs are healthy.
#[test]
fn a_hook_failing_mid_generation_ends_only_that_run() {
    let model = raw_model();
    let before = baseline(&model);
    let toks = tokens().narrow(1, 0, 4).unwrap();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    let err = model
        .run_with_hooks(
            HookSet::new().fwd(POINT, move |_: &Tensor, _: &HookPoint| {
                if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 2 {
                    panic!("hook bug at z");
                }
                Ok(None)
            }),
            |m| m.generate(&toks, &GenerateOptions::greedy(5)),
        )
        .unwrap_err();
    assert_names_hook(&err, "third call");
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "the run stopped at the failure"
    );
    assert_healthy(&model, &before, "mid-generation failure");
}

/// A patching sweep on several threads whose setter panics in one patched run: the
/// sweep ends with the error naming the hook, and the model is untouched.
#[test]
fn a_panicking_patch_setter_ends_a_threaded_sweep_cleanly() {
    let model = processed_model();
    let before = baseline(&model);
    let toks = tokens();
    let (_, cache) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&toks)).unwrap();
    let metric = |logits: &Tensor| -> hooklens_core::Result<f64> {
        Ok(logits
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?)
    };
    let setter = PatchSetter::custom(|corrupted, index, _clean| {
        if index == [1, 3] {
            panic!("hook bug at z");
        }
        Ok(corrupted.clone())
    });
    let rows: Vec<Vec<usize>> = (0..2).flat_map(|l| (0..10).map(move |p| vec![l, p])).collect();
    let err = Patching::gpt2(&model, &toks, &cache)
        .unwrap()
        .threads(4)
        .generic_activation_patch(&metric, &setter, "z", &PatchIndex::Rows(rows))
        .unwrap_err();
    assert_names_hook(&err, "threaded sweep");
    assert_healthy(&model, &before, "threaded sweep");
}

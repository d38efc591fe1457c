//! Hook names, order, optional points and edits on the hooked GPT-2.

mod common;

use candle_core::Tensor;
use common::*;
use hooklens_core::{CacheOptions, Error, HookOptions, HookPoint, HookSet, HookedModel, ResetOptions};
use hooklens_models::HookedTransformer;

fn reference_names() -> Vec<String> {
    let text = std::fs::read_to_string(format!("{FIXTURE}/hook_names.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn names_and_order_equal_transformer_lens_with_all_flags_on() {
    let mut model = raw_model();
    model.set_use_attn_result(true);
    model.set_use_split_qkv_input(true);
    model.set_use_attn_in(true);
    model.set_use_hook_mlp_in(true);
    assert_eq!(without_mlp_io(&model.hook_names()), reference_names());

    // hook_tokens is registered right after hook_pos_embed, as in TransformerLens.
    model.set_use_hook_tokens(true);
    let mut want = reference_names();
    want.insert(2, "hook_tokens".to_string());
    assert_eq!(without_mlp_io(&model.hook_names()), want);
}

#[test]
fn default_names_are_the_ones_that_fire() {
    let model = raw_model();
    let names = model.hook_names();
    // TransformerLens's 38 and circuit-tracer's mlp.hook_in / hook_out in both blocks.
    assert_eq!(without_mlp_io(&names).len(), 38);
    assert_eq!(names.len(), 38 + 2 * 2);
    let (_, cache) = model
        .run_with_cache(CacheOptions::new(), |m| m.forward(&tokens()))
        .unwrap();
    let mut fired: Vec<&str> = cache.keys().collect();
    let mut registered: Vec<&str> = names.iter().map(String::as_str).collect();
    fired.sort();
    registered.sort();
    assert_eq!(fired, registered);
}

#[test]
fn disabled_points_are_errors_naming_the_flag() {
    let model = raw_model();
    for (name, flag) in [
        ("blocks.0.attn.hook_result", "use_attn_result"),
        ("blocks.1.hook_q_input", "use_split_qkv_input"),
        ("blocks.1.hook_attn_in", "use_attn_in"),
        ("blocks.0.hook_mlp_in", "use_hook_mlp_in"),
        ("hook_tokens", "use_hook_tokens"),
    ] {
        match model.hook_point(name) {
            Err(Error::DisabledHook { name: n, flag: f }) => assert_eq!((n.as_str(), f.as_str()), (name, flag)),
            other => panic!("{name}: expected DisabledHook, got {other:?}"),
        }
        let hooks = HookSet::new().fwd(name, |_x, _hp| Ok(None));
        let err = model.run_with_hooks(hooks, |m| m.forward(&tokens())).unwrap_err();
        assert!(err.to_string().contains(flag), "{err}");
        assert!(model.add_hook(name, |_x, _hp| Ok(None), HookOptions::fwd()).is_err());
    }
    // Out-of-range layers are plain unknown names.
    assert!(matches!(
        model.hook_point("blocks.7.attn.hook_result"),
        Err(Error::UnknownHook { .. })
    ));
}

#[test]
fn optional_points_fire_with_the_right_shapes_and_change_nothing() {
    let plain = raw_model();
    let mut model = raw_model();
    model.set_all_optional_hooks(true);
    let tokens = tokens();
    let want = plain.forward(&tokens).unwrap();
    let (logits, cache) = model
        .run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))
        .unwrap();
    assert!(
        max_abs_diff(&logits, &want) < 1e-4,
        "per-head paths give the same logits"
    );
    assert_eq!(cache.len(), model.hook_names().len(), "every point fires");
    let (b, p, h, d) = (2, 10, 4, 64);
    assert_eq!(cache.get("hook_tokens").unwrap().dims(), [b, p]);
    for name in [
        "hook_attn_in",
        "hook_q_input",
        "hook_k_input",
        "hook_v_input",
        "attn.hook_result",
    ] {
        assert_eq!(
            cache.get(&format!("blocks.1.{name}")).unwrap().dims(),
            [b, p, h, d],
            "{name}"
        );
    }
    assert_eq!(cache.get("blocks.0.hook_mlp_in").unwrap().dims(), [b, p, d]);
    // The per-head results sum (with b_O) to the attention output.
    let result = cache.get("blocks.0.attn.hook_result").unwrap();
    let b_o = model.b_o().unwrap().get(0).unwrap();
    let summed = result.sum(2).unwrap().broadcast_add(&b_o).unwrap();
    assert!(max_abs_diff(&summed, cache.get("blocks.0.hook_attn_out").unwrap()) < 1e-4);
    // With split inputs, ln1 runs on per-head inputs.
    assert_eq!(cache.get("blocks.0.ln1.hook_scale").unwrap().dims(), [b, p, h, 1]);
}

#[test]
fn editing_a_per_head_input_changes_only_that_head() {
    let mut model = raw_model();
    model.set_use_split_qkv_input(true);
    let tokens = tokens();
    let hooks = HookSet::new().fwd("blocks.0.hook_v_input", |x, _hp| {
        // Zero head 2's value input.
        let mask = Tensor::new(&[1f32, 1., 0., 1.], x.device())?.reshape((1, 1, 4, 1))?;
        Ok(Some(x.broadcast_mul(&mask)?))
    });
    let (_, clean) = model
        .run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))
        .unwrap();
    let (_, edited) = model
        .run_with_cache_and_hooks(CacheOptions::new(), hooks, |m| m.forward(&tokens))
        .unwrap();
    let v_clean = clean.get("blocks.0.attn.hook_v").unwrap();
    let v_edit = edited.get("blocks.0.attn.hook_v").unwrap();
    for head in 0..4 {
        let d = max_abs_diff(
            &v_clean.narrow(2, head, 1).unwrap(),
            &v_edit.narrow(2, head, 1).unwrap(),
        );
        assert_eq!(d > 1e-3, head == 2, "head {head}: diff {d}");
    }
    let q_same = max_abs_diff(
        clean.get("blocks.0.attn.hook_q").unwrap(),
        edited.get("blocks.0.attn.hook_q").unwrap(),
    );
    assert_eq!(q_same, 0.0);
}

#[test]
fn zero_ablation_changes_downstream_only_and_never_the_weights() {
    let model = raw_model();
    let tokens = tokens();
    let w_pos = model.w_pos().unwrap().copy().unwrap();
    let (clean_logits, clean) = model
        .run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))
        .unwrap();
    let hooks = HookSet::new().fwd("hook_pos_embed", |x, _hp| Ok(Some(x.zeros_like()?)));
    let (logits, edited) = model
        .run_with_cache_and_hooks(CacheOptions::new(), hooks, |m| m.forward(&tokens))
        .unwrap();
    assert_eq!(
        max_abs_diff(
            edited.get("hook_pos_embed").unwrap(),
            &edited.get("hook_pos_embed").unwrap().zeros_like().unwrap()
        ),
        0.0
    );
    assert_eq!(
        max_abs_diff(edited.get("hook_embed").unwrap(), clean.get("hook_embed").unwrap()),
        0.0,
        "upstream unchanged"
    );
    assert!(
        max_abs_diff(
            edited.get("blocks.0.hook_resid_pre").unwrap(),
            clean.get("blocks.0.hook_resid_pre").unwrap()
        ) > 1e-3
    );
    assert!(max_abs_diff(&logits, &clean_logits) > 1e-3, "logits change");
    assert_eq!(max_abs_diff(model.w_pos().unwrap(), &w_pos), 0.0, "W_pos is untouched");
    // And the next plain run is clean again.
    assert_eq!(max_abs_diff(&model.forward(&tokens).unwrap(), &clean_logits), 0.0);

    // Ablating one head's pattern changes z of that head only.
    let hooks = HookSet::new().fwd("blocks.1.attn.hook_pattern", |x, _hp| {
        let mask = Tensor::new(&[1f32, 0., 1., 1.], x.device())?.reshape((1, 4, 1, 1))?;
        Ok(Some(x.broadcast_mul(&mask)?))
    });
    let (_, edited) = model
        .run_with_cache_and_hooks(CacheOptions::new(), hooks, |m| m.forward(&tokens))
        .unwrap();
    let z = edited.get("blocks.1.attn.hook_z").unwrap();
    assert_eq!(
        max_abs_diff(
            &z.narrow(2, 1, 1).unwrap(),
            &z.narrow(2, 1, 1).unwrap().zeros_like().unwrap()
        ),
        0.0
    );
    assert_eq!(
        max_abs_diff(
            &z.narrow(2, 0, 1).unwrap(),
            &clean.get("blocks.1.attn.hook_z").unwrap().narrow(2, 0, 1).unwrap()
        ),
        0.0
    );
}

#[test]
fn editing_hook_scale_changes_the_normalized_output() {
    let model = raw_model();
    let tokens = tokens();
    let (_, clean) = model
        .run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))
        .unwrap();
    let hooks = HookSet::new().fwd("blocks.0.ln2.hook_scale", |x, _hp| Ok(Some((x * 2.0)?)));
    let (_, edited) = model
        .run_with_cache_and_hooks(CacheOptions::new(), hooks, |m| m.forward(&tokens))
        .unwrap();
    assert!(
        max_abs_diff(
            edited.get("blocks.0.ln2.hook_normalized").unwrap(),
            clean.get("blocks.0.ln2.hook_normalized").unwrap()
        ) > 1e-3
    );
}

#[test]
fn hook_tokens_can_replace_the_input() {
    let mut model = raw_model();
    model.set_use_hook_tokens(true);
    let tokens = tokens();
    let other = tokens.ones_like().unwrap().to_dtype(candle_core::DType::U32).unwrap();
    let replacement = other.clone();
    let hooks = HookSet::new().fwd("hook_tokens", move |_x, _hp| Ok(Some(replacement.clone())));
    let logits = model.run_with_hooks(hooks, |m| m.forward(&tokens)).unwrap();
    assert_eq!(max_abs_diff(&logits, &model.forward(&other).unwrap()), 0.0);
    // An out-of-vocabulary replacement is an error, not a panic.
    let hooks = HookSet::new().fwd("hook_tokens", |x, _hp| Ok(Some((x.ones_like()? * 100_000.0)?)));
    assert!(model.run_with_hooks(hooks, |m| m.forward(&tokens)).is_err());
}

#[test]
fn run_with_cache_on_the_model_input() {
    use hooklens_core::HookedForward;
    let model: HookedTransformer = processed_model();
    let (logits, cache) = model
        .run_with_cache_on(&tokens(), CacheOptions::new().names("blocks.*.attn.hook_pattern"))
        .unwrap();
    assert_eq!(logits.dims(), [2, 10, 512]);
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.get("blocks.0.attn.hook_pattern").unwrap().dims(), [2, 4, 10, 10]);
}

#[test]
fn the_model_is_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<HookedTransformer>();
    let model = std::sync::Arc::new(raw_model());
    let want = model.forward(&tokens()).unwrap();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let m = model.clone();
            std::thread::spawn(move || m.forward(&tokens()).unwrap())
        })
        .collect();
    for h in handles {
        assert_eq!(max_abs_diff(&h.join().unwrap(), &want), 0.0);
    }
}

/// How many times `blocks.0.ln1.hook_normalized` fires in one forward of `model`: once on
/// the fast path, three times (once for each of q, k and v, as TransformerLens runs it) on
/// the differentiable path that `grad_mode` selects.
fn ln1_calls(model: &HookedTransformer) -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let count = HookSet::new().fwd("blocks.0.ln1.hook_normalized", move |_: &Tensor, _: &HookPoint| {
        seen.fetch_add(1, Ordering::SeqCst);
        Ok(None)
    });
    model.run_with_hooks(count, |m| m.forward(&tokens())).unwrap();
    calls.load(Ordering::SeqCst)
}

#[test]
fn a_backward_hook_on_one_model_leaves_another_on_its_fast_path() {
    let hooked = raw_model();
    let other = raw_model();
    assert_eq!(ln1_calls(&other), 1, "no backward hook: the fast path");
    hooked
        .add_hook("hook_embed", |_: &Tensor, _: &HookPoint| Ok(None), HookOptions::bwd())
        .unwrap();
    assert_eq!(
        ln1_calls(&hooked),
        3,
        "the model with the backward hook is differentiable"
    );
    assert_eq!(ln1_calls(&other), 1, "the other model keeps its fast path");
    hooked.reset_hooks(ResetOptions::new().keep_contexts());
    assert_eq!(ln1_calls(&hooked), 1, "back on the fast path once the hook is gone");
}

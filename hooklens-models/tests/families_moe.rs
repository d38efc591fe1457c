//! The mixture-of-experts families: Mixtral against TransformerLens 2.16.1
//! (`testdata/mixtral/`: every hook unprocessed and processed, hook names and order,
//! every gradient), Qwen3-MoE, OLMoE and gpt-oss against Hugging Face transformers
//! (`testdata/qwen3_moe/`, `testdata/olmoe/`, `testdata/gpt_oss/`: activations,
//! gradients of the residual stream, greedy generation), interventions on the routing through its hooks, and
//! synthetic checkpoints of other sizes, expert counts and top-k (sharded, bf16, KV
//! cache).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, D};
use common::{assert_close, max_abs_diff, on_test_device, parity_tol, variant, TempDir};
use hooklens_core::{CacheOptions, HookSet, HookedModel};
use hooklens_models::convert::{synthetic_checkpoint, write_checkpoint};
use hooklens_models::{ForwardOptions, GenerateOptions, HookedTransformer, KvCache, LoadOptions, ReturnType};
use serde_json::json;

/// The families checked against Hugging Face's activations (`hf_*.safetensors`).
const HF_FAMILIES: &[&str] = &["qwen3_moe", "olmoe", "gpt_oss"];

/// This checkout's `testdata/<family>` (by this crate's path, which a test binary is
/// always rebuilt with).
fn dir(family: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(family)
}

fn load_ref(family: &str, file: &str) -> HashMap<String, Tensor> {
    hooklens_testutil::load_tensors(dir(family).join(file))
}

fn tokens(family: &str) -> Tensor {
    load_ref(family, "tokens.safetensors").remove("tokens").unwrap()
}

fn model(family: &str, opts: &LoadOptions) -> HookedTransformer {
    HookedTransformer::from_dir(dir(family).join("model"), &on_test_device(opts.clone()))
        .unwrap_or_else(|e| panic!("{family}: {e}"))
}

/// Whether `name` is one of the points hooklens adds to an MoE block's MLP beyond
/// TransformerLens's (`mlp.hook_in`, `mlp.hook_router_logits`, `mlp.hook_out`).
fn is_extra(name: &str) -> bool {
    name.starts_with("blocks.")
        && (name.ends_with(".mlp.hook_in")
            || name.ends_with(".mlp.hook_router_logits")
            || name.ends_with(".mlp.hook_out"))
}

/// `names` without the extra points, after checking where they are: each block's
/// `mlp.*` points are contiguous, `hook_in` first, `hook_router_logits` second,
/// `hook_out` last.
fn without_moe_extras(names: &[String], n_layers: usize) -> Vec<String> {
    for l in 0..n_layers {
        let prefix = format!("blocks.{l}.mlp.");
        let at: Vec<usize> = (0..names.len()).filter(|&i| names[i].starts_with(&prefix)).collect();
        assert!(at.len() >= 5, "block {l}: mlp points {at:?}");
        assert!(
            at.windows(2).all(|w| w[1] == w[0] + 1),
            "block {l}: mlp points not contiguous"
        );
        assert_eq!(names[at[0]], format!("{prefix}hook_in"));
        assert_eq!(names[at[1]], format!("{prefix}hook_router_logits"));
        assert_eq!(names[*at.last().unwrap()], format!("{prefix}hook_out"));
    }
    let kept: Vec<String> = names.iter().filter(|n| !is_extra(n)).cloned().collect();
    assert_eq!(kept.len(), names.len() - 3 * n_layers, "exactly one of each per block");
    kept
}

fn assert_same_indices(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dtype(), DType::I64, "{what}: dtype");
    assert_eq!(
        got.to_vec2::<i64>().unwrap(),
        want.to_vec2::<i64>().unwrap(),
        "{what}: the same experts, in the same order"
    );
}

/// Logits, loss and loss per token of `m` against `reference`.
fn check_outputs(what: &str, m: &HookedTransformer, tokens: &Tensor, reference: &HashMap<String, Tensor>) {
    let tol = parity_tol(1e-4);
    let out = m
        .forward_with(tokens, &ForwardOptions::new().return_type(ReturnType::Both))
        .unwrap();
    assert_close(
        &format!("{what}: logits"),
        out.logits.as_ref().unwrap(),
        &reference["logits"],
        tol,
    );
    let loss = out.loss.unwrap().reshape(1).unwrap();
    assert_close(&format!("{what}: loss"), &loss, &reference["loss"], tol);
    let per_token = m
        .forward_with(
            tokens,
            &ForwardOptions::new().return_type(ReturnType::Loss).loss_per_token(true),
        )
        .unwrap();
    assert_close(
        &format!("{what}: loss_per_token"),
        per_token.loss.as_ref().unwrap(),
        &reference["loss_per_token"],
        tol,
    );
}

/// Every cached hook of `m` against TransformerLens's (`hook_expert_indices` exactly),
/// the same hooks firing, `mlp.hook_out` equal to `hook_mlp_out`, and the outputs.
fn check_tl_run(m: &HookedTransformer, file: &str) {
    let what = format!("mixtral/{file}");
    let tol = parity_tol(1e-4);
    let reference = load_ref("mixtral", file);
    let tokens = tokens("mixtral");
    let (_, cache) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
    let mut theirs: Vec<&str> = reference
        .keys()
        .map(String::as_str)
        .filter(|k| !matches!(*k, "logits" | "loss" | "loss_per_token"))
        .collect();
    theirs.sort();
    let mut ours: Vec<&str> = cache.keys().filter(|n| !is_extra(n)).collect();
    ours.sort();
    assert_eq!(ours, theirs, "{what}: the same hooks fire");
    for name in &theirs {
        if name.ends_with("hook_expert_indices") {
            assert_same_indices(&format!("{what}: {name}"), &cache[*name], &reference[*name]);
        } else {
            assert_close(&format!("{what}: {name}"), &cache[*name], &reference[*name], tol);
        }
    }
    for l in 0..m.cfg().n_layers {
        let (ours, theirs) = (format!("blocks.{l}.mlp.hook_out"), format!("blocks.{l}.hook_mlp_out"));
        assert_close(&format!("{what}: {ours}"), &cache[&ours], &reference[&theirs], tol);
    }
    check_outputs(&what, m, &tokens, &reference);
}

#[test]
fn mixtral_unprocessed_matches_transformer_lens() {
    let m = model("mixtral", &LoadOptions::no_processing());
    assert_eq!((m.cfg().num_experts, m.cfg().experts_per_token), (Some(4), Some(2)));
    check_tl_run(&m, "tl_unprocessed.safetensors");
}

/// TransformerLens folds no norm into an MoE model: the default processing keeps the
/// RMSNorm gains and only centres the unembedding (`from_pretrained(.., fold_ln=False)`).
#[test]
fn mixtral_processed_matches_transformer_lens_and_keeps_log_probs() {
    let m = model("mixtral", &LoadOptions::default());
    assert!(m.cfg().normalization_type.has_params(), "norms keep their gains");
    check_tl_run(&m, "tl_processed.safetensors");
    let raw = model("mixtral", &LoadOptions::no_processing());
    let tokens = tokens("mixtral");
    let lp = |m: &HookedTransformer| candle_nn::ops::log_softmax(&m.forward(&tokens).unwrap(), D::Minus1).unwrap();
    let (a, b) = (lp(&raw), lp(&m));
    assert!(max_abs_diff(&a, &b) < 1e-4 * max_abs_diff(&a, &a.zeros_like().unwrap()));
    assert!(
        max_abs_diff(&raw.forward(&tokens).unwrap(), &m.forward(&tokens).unwrap()) > 1e-3,
        "the unembedding was centred"
    );
}

#[test]
fn mixtral_hook_names_and_order_equal_transformer_lens() {
    let mut m = model("mixtral", &LoadOptions::no_processing());
    m.set_use_attn_result(true);
    m.set_use_split_qkv_input(true);
    m.set_use_attn_in(true);
    m.set_use_hook_mlp_in(true);
    let text = std::fs::read_to_string(dir("mixtral").join("hook_names.json")).unwrap();
    let want: Vec<String> = serde_json::from_str(&text).unwrap();
    assert_eq!(without_moe_extras(&m.hook_names(), 2), want);
    // The dense MLP's points do not exist in a sparse block.
    assert!(m.hook_point("blocks.0.mlp.hook_pre").is_err());
}

/// The state dict has TransformerLens's MoE names and `nn.Linear` layouts: the router
/// `mlp.W_gate.weight` `[n_experts, d_model]`, per expert `W_in` (w3), `W_gate` (w1),
/// `W_out` (w2), equal to the checkpoint's tensors.
#[test]
fn mixtral_state_dict_has_transformer_lens_moe_names() {
    let m = model("mixtral", &LoadOptions::no_processing());
    let w = hooklens_testutil::load_tensors(dir("mixtral").join("model/model.safetensors"));
    let sd: HashMap<String, Tensor> = m.state_dict().unwrap().into_iter().collect();
    assert!(!sd.contains_key("blocks.0.mlp.W_in"), "no dense MLP");
    let hf = |n: &str| &w[&format!("model.layers.1.block_sparse_moe.{n}")];
    for (ours, theirs) in [
        ("mlp.W_gate.weight", "gate.weight"),
        ("mlp.experts.2.W_in.weight", "experts.2.w3.weight"),
        ("mlp.experts.2.W_gate.weight", "experts.2.w1.weight"),
        ("mlp.experts.2.W_out.weight", "experts.2.w2.weight"),
    ] {
        let got = &sd[&format!("blocks.1.{ours}")];
        assert_eq!(max_abs_diff(got, hf(theirs)), 0.0, "{ours}");
    }
}

/// The gradient of the loss at every hook within 1e-3 of TransformerLens's (at the scale
/// of the layer's `hook_resid_pre` gradient where TransformerLens's own is a
/// cancellation residue, as in `families.rs`).
#[test]
fn mixtral_every_hook_gradient_matches_transformer_lens() {
    let m = model("mixtral", &LoadOptions::no_processing());
    let tokens = tokens("mixtral");
    let reference = load_ref("mixtral", "tl_grads.safetensors");
    let cache = loss_grads(&m, &tokens);
    let mut names: Vec<&String> = reference.keys().collect();
    names.sort();
    assert!(names.iter().any(|n| n.ends_with("experts.3.hook_gate_grad")));
    assert!(names.iter().any(|n| n.ends_with("hook_expert_weights_grad")));
    for name in names {
        let got = cache.get(name).unwrap_or_else(|| panic!("`{name}` was not cached"));
        let want = &reference[name];
        let tol = parity_tol(1e-3);
        let own = max_abs_diff(want, &want.zeros_like().unwrap());
        let layer = name.strip_prefix("blocks.").and_then(|r| r.split('.').next());
        let floor = layer
            .map(|l| {
                let r = &reference[&format!("blocks.{l}.hook_resid_pre_grad")];
                1e-3 * max_abs_diff(r, &r.zeros_like().unwrap())
            })
            .unwrap_or(0.0);
        if own < floor {
            let diff = max_abs_diff(got, want);
            assert!(diff <= tol * floor, "{name}: max abs diff {diff} > {tol} * {floor}");
            continue;
        }
        assert_close(name, got, want, tol);
    }
}

/// Gradients of the mean loss at every hook.
fn loss_grads(m: &HookedTransformer, tokens: &Tensor) -> hooklens_core::ActivationCache {
    let (_, cache) = m
        .run_with_cache_bwd(
            CacheOptions::new(),
            HookSet::new(),
            |m: &HookedTransformer| -> hooklens_core::Result<Tensor> {
                let out = m.forward_with(tokens, &ForwardOptions::new().return_type(ReturnType::Loss))?;
                Ok(out.loss.expect("a loss was asked for"))
            },
        )
        .unwrap();
    cache
}

#[test]
fn hf_moe_families_match_transformers() {
    for family in HF_FAMILIES {
        let m = model(family, &LoadOptions::no_processing());
        let tol = parity_tol(1e-4);
        let reference = load_ref(family, "hf_activations.safetensors");
        let tokens = tokens(family);
        let (_, cache) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
        let mut names: Vec<&str> = reference
            .keys()
            .map(String::as_str)
            .filter(|k| !matches!(*k, "logits" | "loss" | "loss_per_token"))
            .collect();
        names.sort();
        assert!(names.contains(&"blocks.1.mlp.hook_router_logits"), "{family}");
        for name in names {
            let what = format!("{family}: {name}");
            let got = cache.get(name).unwrap_or_else(|| panic!("{what}: not cached"));
            if name.ends_with("hook_expert_indices") {
                assert_same_indices(&what, got, &reference[name]);
            } else {
                assert_close(&what, got, &reference[name], tol);
            }
        }
        check_outputs(family, &m, &tokens, &reference);
        // Processing: the norms stay, the unembedding is centred, log-probs are kept.
        let processed = model(family, &LoadOptions::default());
        assert!(processed.cfg().normalization_type.has_params(), "{family}");
        let lp = |m: &HookedTransformer| candle_nn::ops::log_softmax(&m.forward(&tokens).unwrap(), D::Minus1).unwrap();
        let (a, b) = (lp(&m), lp(&processed));
        assert!(
            max_abs_diff(&a, &b) < 1e-4 * max_abs_diff(&a, &a.zeros_like().unwrap()),
            "{family}: processing keeps log-probs"
        );
    }
}

#[test]
fn hf_moe_families_residual_gradients_match_transformers() {
    for family in HF_FAMILIES {
        let m = model(family, &LoadOptions::no_processing());
        let reference = load_ref(family, "hf_grads.safetensors");
        let cache = loss_grads(&m, &tokens(family));
        assert_eq!(reference.len(), 2 * m.cfg().n_layers, "{family}");
        for (name, want) in &reference {
            let got = cache
                .get(name)
                .unwrap_or_else(|| panic!("{family}: `{name}` was not cached"));
            assert_close(&format!("{family}: {name}"), got, want, parity_tol(1e-3));
        }
    }
}

#[test]
fn hf_moe_families_greedy_generation_equals_transformers() {
    for family in HF_FAMILIES {
        let m = model(family, &LoadOptions::no_processing());
        let reference = load_ref(family, "hf_greedy.safetensors");
        let prompt = &reference["greedy_prompt"];
        let want = reference["greedy_tokens"].to_vec2::<i64>().unwrap();
        let new = want[0].len() - prompt.dim(1).unwrap();
        for kv in [true, false] {
            let mut opts = GenerateOptions::greedy(new);
            opts.stop_at_eos = false;
            opts.use_kv_cache = kv;
            let got = m.generate(prompt, &opts).unwrap().to_vec2::<i64>().unwrap();
            assert_eq!(got, want, "{family} (kv cache {kv})");
        }
    }
}

/// The Mixtral reference's expert `e` of layer `l` computed from the checkpoint:
/// `w2 · (silu(w1 · x) * (w3 · x))` for `x` `[rows, d_model]`.
fn reference_expert(w: &HashMap<String, Tensor>, l: usize, e: usize, x: &Tensor) -> Tensor {
    let get = |n: &str| w[&format!("model.layers.{l}.block_sparse_moe.experts.{e}.{n}.weight")].clone();
    let gate = x.matmul(&get("w1").t().unwrap()).unwrap();
    let up = x.matmul(&get("w3").t().unwrap()).unwrap();
    (candle_nn::ops::silu(&gate).unwrap() * up)
        .unwrap()
        .matmul(&get("w2").t().unwrap())
        .unwrap()
}

/// gpt-oss's fused, interleaved experts are split into TransformerLens's per-expert
/// names: `W_gate` the even columns of `gate_up_proj[e]`, `W_in` the odd ones (as
/// `nn.Linear` weights `[out, in]`), with their biases; the sinks are `attn.attn_sinks`.
#[test]
fn gpt_oss_state_dict_splits_the_interleaved_experts() {
    let m = model("gpt_oss", &LoadOptions::no_processing());
    let w = hooklens_testutil::load_tensors(dir("gpt_oss").join("model/model.safetensors"));
    let sd: HashMap<String, Tensor> = m.state_dict().unwrap().into_iter().collect();
    let gate_up = w["model.layers.1.mlp.experts.gate_up_proj"].get(2).unwrap(); // [d, 2 m]
    let bias = w["model.layers.1.mlp.experts.gate_up_proj_bias"].get(2).unwrap(); // [2 m]
    let (d, m2) = gate_up.dims2().unwrap();
    let pairs = gate_up.reshape((d, m2 / 2, 2)).unwrap();
    let column = |t: &Tensor, parity: usize| t.narrow(2, parity, 1).unwrap().squeeze(2).unwrap();
    let bias_pairs = bias.reshape((1, m2 / 2, 2)).unwrap();
    for (name, parity) in [("W_gate", 0), ("W_in", 1)] {
        let want = column(&pairs, parity).t().unwrap();
        assert_eq!(
            max_abs_diff(&sd[&format!("blocks.1.mlp.experts.2.{name}.weight")], &want),
            0.0,
            "{name}"
        );
        let want = column(&bias_pairs, parity).squeeze(0).unwrap();
        assert_eq!(
            max_abs_diff(&sd[&format!("blocks.1.mlp.experts.2.{name}.bias")], &want),
            0.0,
            "{name} bias"
        );
    }
    let sinks = &w["model.layers.0.self_attn.sinks"];
    assert_eq!(max_abs_diff(&sd["blocks.0.attn.attn_sinks"], sinks), 0.0);
    // The sink takes part of every softmax: pattern rows sum to less than 1.
    let tokens = tokens("gpt_oss");
    let (_, cache) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
    let sums = cache["blocks.0.attn.hook_pattern"].sum(D::Minus1).unwrap();
    let max = sums.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(max < 1.0, "{max}");
}

/// A hook that replaces `hook_expert_indices` sends the tokens where it says: all to
/// expert 0 (twice, with weights summing to 1), so each MLP output is expert 0 of the
/// MLP's input, computed here from the checkpoint.
#[test]
fn replacing_expert_indices_reroutes_tokens() {
    let m = model("mixtral", &LoadOptions::no_processing());
    let w = hooklens_testutil::load_tensors(dir("mixtral").join("model/model.safetensors"));
    let tokens = tokens("mixtral");
    let to_zero = |x: &Tensor, _: &hooklens_core::HookPoint| -> hooklens_core::Result<Option<Tensor>> {
        Ok(Some(x.zeros_like()?))
    };
    let hooks = HookSet::new().fwd("blocks.*.mlp.hook_expert_indices", to_zero);
    let (_, cache) = m
        .run_with_hooks(hooks, |m| m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)))
        .unwrap();
    for l in 0..2 {
        let x = cache[&format!("blocks.{l}.mlp.hook_in")].reshape(((), 64)).unwrap();
        let want = reference_expert(&w, l, 0, &x);
        let got = cache[&format!("blocks.{l}.hook_mlp_out")].reshape(((), 64)).unwrap();
        assert_close(&format!("layer {l}: all to expert 0"), &got, &want, 1e-4);
        // Expert 0 saw every token in both slots; the others none.
        assert_eq!(cache[&format!("blocks.{l}.mlp.experts.0.hook_gate")].dims(), [40, 128]);
        for e in 1..4 {
            assert_eq!(cache[&format!("blocks.{l}.mlp.experts.{e}.hook_post")].dims(), [0, 128]);
        }
    }
}

/// Zeroing one expert's column of `hook_expert_weights` ablates it: every token goes to
/// its best two of the other experts, mixed by their renormalised probabilities,
/// computed here from the router logits and the checkpoint.
#[test]
fn zeroing_an_expert_weight_ablates_it() {
    let m = model("mixtral", &LoadOptions::no_processing());
    let w = hooklens_testutil::load_tensors(dir("mixtral").join("model/model.safetensors"));
    let tokens = tokens("mixtral");
    let ablated = 3usize;
    let zero_column = move |x: &Tensor, _: &hooklens_core::HookPoint| -> hooklens_core::Result<Option<Tensor>> {
        let keep: Vec<f32> = (0..4).map(|e| if e == ablated { 0.0 } else { 1.0 }).collect();
        let keep = Tensor::new(keep.as_slice(), x.device())?;
        Ok(Some(x.broadcast_mul(&keep)?))
    };
    let hooks = HookSet::new().fwd("blocks.*.mlp.hook_expert_weights", zero_column);
    let (_, cache) = m
        .run_with_hooks(hooks, |m| m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)))
        .unwrap();
    let mut rerouted = 0;
    for l in 0..2 {
        let x = cache[&format!("blocks.{l}.mlp.hook_in")].reshape(((), 64)).unwrap();
        let logits = cache[&format!("blocks.{l}.mlp.hook_router_logits")]
            .to_vec2::<f32>()
            .unwrap();
        let outs: Vec<Tensor> = (0..4).map(|e| reference_expert(&w, l, e, &x)).collect();
        let mut rows = Vec::new();
        for (t, row) in logits.iter().enumerate() {
            let max = row.iter().cloned().fold(f32::MIN, f32::max);
            let p: Vec<f32> = row.iter().map(|z| (z - max).exp()).collect();
            let mut order: Vec<usize> = (0..4).filter(|&e| e != ablated).collect();
            order.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap());
            let (a, b) = (order[0], order[1]);
            let (wa, wb) = (p[a] / (p[a] + p[b]), p[b] / (p[a] + p[b]));
            let out = ((outs[a].get(t).unwrap() * wa as f64).unwrap() + (outs[b].get(t).unwrap() * wb as f64).unwrap())
                .unwrap();
            rows.push(out);
        }
        let want = Tensor::stack(&rows, 0).unwrap();
        let got = cache[&format!("blocks.{l}.hook_mlp_out")].reshape(((), 64)).unwrap();
        assert_close(&format!("layer {l}: expert {ablated} ablated"), &got, &want, 1e-4);
        let indices = cache[&format!("blocks.{l}.mlp.hook_expert_indices")]
            .to_vec2::<i64>()
            .unwrap();
        assert!(indices.iter().flatten().all(|&e| e != ablated as i64), "layer {l}");
        assert_eq!(
            cache[&format!("blocks.{l}.mlp.experts.{ablated}.hook_gate")].dims(),
            [0, 128]
        );
        rerouted += 1;
    }
    assert_eq!(rerouted, 2);
    // Expert 3 takes 18 of the 40 slots of layer 0 unablated: the ablation changed
    // the routing there.
    let (_, plain) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
    assert_eq!(plain["blocks.0.mlp.experts.3.hook_gate"].dims(), [18, 128]);
}

/// An index a hook puts out of range is an error naming the hook, not a panic.
#[test]
fn an_out_of_range_expert_index_is_an_error() {
    let m = model("mixtral", &LoadOptions::no_processing());
    let tokens = tokens("mixtral");
    let too_far = |x: &Tensor, _: &hooklens_core::HookPoint| -> hooklens_core::Result<Option<Tensor>> {
        Ok(Some((x.ones_like()? * 4.0)?))
    };
    let hooks = HookSet::new().fwd("blocks.1.mlp.hook_expert_indices", too_far);
    let err = m.run_with_hooks(hooks, |m| m.forward(&tokens)).unwrap_err().to_string();
    assert!(
        err.contains("blocks.1.mlp.hook_expert_indices") && err.contains("out of range"),
        "{err}"
    );
}

#[test]
fn configs_with_dense_layers_or_clipping_are_refused() {
    for (family, changes, field) in [
        ("qwen3_moe", json!({"mlp_only_layers": [1]}), "mlp_only_layers"),
        ("qwen3_moe", json!({"decoder_sparse_step": 2}), "decoder_sparse_step"),
        ("qwen3_moe", json!({"num_experts_per_tok": 5}), "num_experts_per_tok"),
        ("olmoe", json!({"clip_qkv": 8.0}), "clip_qkv"),
        (
            "gpt_oss",
            json!({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
            "rope_scaling",
        ),
        ("mixtral", json!({"num_experts_per_tok": 0}), "num_experts_per_tok"),
    ] {
        let config = variant(family, changes);
        let err = hooklens_models::TransformerConfig::from_hf_str(&config, "config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{family}: {field}: {err}");
    }
}

/// Synthetic MoE checkpoints of other shapes than the references.
fn variants() -> Vec<(&'static str, String)> {
    vec![
        (
            "mixtral: 8 experts top-2, 3 layers, GQA 6/2",
            variant(
                "mixtral",
                json!({"num_local_experts": 8, "num_experts_per_tok": 2, "num_hidden_layers": 3,
                       "hidden_size": 48, "num_attention_heads": 6, "num_key_value_heads": 2,
                       "intermediate_size": 40}),
            ),
        ),
        (
            "mixtral: window 3",
            variant(
                "mixtral",
                json!({"sliding_window": 3, "num_local_experts": 5, "num_experts_per_tok": 3}),
            ),
        ),
        (
            "qwen3_moe: 3 experts top-1, head_dim 24",
            variant(
                "qwen3_moe",
                json!({"num_experts": 3, "num_local_experts": null, "num_experts_per_tok": 1,
                       "hidden_size": 48, "head_dim": 24, "moe_intermediate_size": 20}),
            ),
        ),
        (
            "qwen3_moe: 6 experts top-4 unnormalised",
            variant(
                "qwen3_moe",
                json!({"num_experts": 6, "num_experts_per_tok": 4, "norm_topk_prob": false}),
            ),
        ),
        (
            "olmoe: 5 experts top-3, 4 heads over 2 kv heads, renormalised",
            variant(
                "olmoe",
                json!({"num_experts": 5, "num_experts_per_tok": 3, "num_key_value_heads": 2,
                       "norm_topk_prob": true, "num_hidden_layers": 3}),
            ),
        ),
        (
            "olmoe: 3 experts top-1",
            variant(
                "olmoe",
                json!({"num_experts": 3, "num_experts_per_tok": 1, "intermediate_size": 24}),
            ),
        ),
        (
            "gpt_oss: 5 experts top-3, 3 layers alternating by default, window 3",
            variant(
                "gpt_oss",
                json!({"num_local_experts": 5, "num_experts_per_tok": 3, "num_hidden_layers": 3,
                       "layer_types": null, "sliding_window": 3}),
            ),
        ),
        (
            "gpt_oss: YaRN in transformers-5 keys (truncated), 6 heads over 3 kv heads",
            variant(
                "gpt_oss",
                json!({"rope_scaling": null, "rope_theta": null, "num_attention_heads": 6,
                       "num_key_value_heads": 3, "head_dim": 8,
                       "rope_parameters": {"rope_type": "yarn", "factor": 8.0, "beta_fast": 16.0,
                                           "beta_slow": 1.0, "original_max_position_embeddings": 16,
                                           "rope_theta": 10000.0}}),
            ),
        ),
    ]
}

fn load(dir: &std::path::Path, opts: &LoadOptions) -> HookedTransformer {
    HookedTransformer::from_dir(dir, opts).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn prompt(m: &HookedTransformer, batch: usize, pos: usize, seed: u32) -> Tensor {
    let v = m.cfg().d_vocab as u32;
    let ids: Vec<u32> = (0..batch * pos)
        .map(|i| (i as u32 * 7919 + seed * 104729 + 13) % v)
        .collect();
    Tensor::from_vec(ids, (batch, pos), &Device::Cpu).unwrap()
}

#[test]
fn synthetic_moe_checkpoints_load_alike_and_cache_equals_recompute() {
    for (i, (name, config)) in variants().into_iter().enumerate() {
        let weights = synthetic_checkpoint(&config, 40 + i as u64).unwrap();
        let root = TempDir::new(&format!("synthetic-moe-{i}"));
        write_checkpoint(root.join("single"), &config, &weights, DType::F32, 1).unwrap();
        write_checkpoint(root.join("sharded"), &config, &weights, DType::F32, 3).unwrap();
        write_checkpoint(root.join("bf16"), &config, &weights, DType::BF16, 2).unwrap();
        let rounded = weights
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap(),
                )
            })
            .collect();
        write_checkpoint(root.join("rounded"), &config, &rounded, DType::F32, 1).unwrap();
        let opts = LoadOptions::no_processing();
        let single = load(&root.join("single"), &opts);
        let (e, k) = (
            single.cfg().num_experts.unwrap(),
            single.cfg().experts_per_token.unwrap(),
        );
        let tokens = prompt(&single, 2, 12, 1);
        let (want, cache) = single
            .run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))
            .unwrap();
        // Every registered hook fired (experts no token chose with [0, d_mlp]), each
        // token went to k distinct experts, and the experts saw 2 * 12 * k rows in all.
        let mut fired: Vec<&str> = cache.keys().collect();
        let names = single.hook_names();
        let mut registered: Vec<&str> = names.iter().map(String::as_str).collect();
        fired.sort();
        registered.sort();
        assert_eq!(fired, registered, "{name}");
        for l in 0..single.cfg().n_layers {
            let idx = cache[&format!("blocks.{l}.mlp.hook_expert_indices")]
                .to_vec2::<i64>()
                .unwrap();
            assert!(
                idx.iter()
                    .all(|r| r.len() == k && (1..k).all(|j| !r[..j].contains(&r[j]))),
                "{name}"
            );
            let rows: usize = (0..e)
                .map(|x| cache[&format!("blocks.{l}.mlp.experts.{x}.hook_post")].dim(0).unwrap())
                .sum();
            assert_eq!(rows, 24 * k, "{name}: layer {l}");
        }
        let sharded = load(&root.join("sharded"), &opts).forward(&tokens).unwrap();
        assert_eq!(max_abs_diff(&sharded, &want), 0.0, "{name}: sharded");
        let bf16 = load(&root.join("bf16"), &opts).forward(&tokens).unwrap();
        let rounded = load(&root.join("rounded"), &opts).forward(&tokens).unwrap();
        assert_eq!(
            max_abs_diff(&bf16, &rounded),
            0.0,
            "{name}: a bf16 file is its values in f32"
        );
        let in_bf16 = load(&root.join("bf16"), &opts.clone().with_dtype(DType::BF16));
        assert_eq!(in_bf16.dtype(), DType::BF16);
        in_bf16.forward(&tokens).unwrap();

        for opts in [LoadOptions::no_processing(), LoadOptions::default()] {
            let m = load(&root.join("single"), &opts);
            let full = m.forward(&tokens).unwrap();
            let mut cache = KvCache::new();
            let mut parts = Vec::new();
            for (start, len) in [(0, 5), (5, 1), (6, 3), (9, 3)] {
                let chunk = tokens.narrow(1, start, len).unwrap();
                let out = m.forward_with_kv(&chunk, &ForwardOptions::new(), &mut cache).unwrap();
                parts.push(out.logits.unwrap());
            }
            let cached = Tensor::cat(&parts, 1).unwrap();
            let scale = max_abs_diff(&full, &full.zeros_like().unwrap());
            assert!(max_abs_diff(&cached, &full) < 1e-4 * scale, "{name}: kv cache");
            let lp = |t: &Tensor| candle_nn::ops::log_softmax(t, D::Minus1).unwrap();
            assert!(
                max_abs_diff(&lp(&full), &lp(&want)) < 1e-4 * scale,
                "{name}: processing keeps log-probs"
            );
            let prompt = tokens.narrow(1, 0, 4).unwrap();
            let greedy = |kv: bool| {
                let mut o = GenerateOptions::greedy(6);
                o.use_kv_cache = kv;
                o.stop_at_eos = false;
                m.generate(&prompt, &o).unwrap().to_vec2::<u32>().unwrap()
            };
            assert_eq!(
                greedy(true),
                greedy(false),
                "{name}: generation with and without the cache"
            );
        }
    }
}

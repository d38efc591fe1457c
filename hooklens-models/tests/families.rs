//! Parity with TransformerLens 2.16.1 for every bundled family beyond GPT-2
//! (`testdata/<family>/`, made by `testdata/make_arch_reference.py`): hook names and
//! order, every cached hook, logits, loss and loss per token, unprocessed and
//! processed, and the gradient at every hook.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::Tensor;
use common::{assert_close, on_test_device, parity_tol};
use hooklens_core::{CacheOptions, HookSet, HookedModel};
use hooklens_models::{ForwardOptions, HookedTransformer, LoadOptions, ReturnType};

const FAMILIES: &[&str] = &[
    "neox", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt_neo", "opt", "phi", "gptj", "bloom",
];

/// The families whose reference folder has no `tl_generate.safetensors` (the classic
/// families' references were made without a generation run): their greedy generation
/// is checked with and without the KV cache against each other instead.
const NO_GENERATION_REFERENCE: &[&str] = &["gpt_neo", "opt", "phi", "gptj", "bloom"];

fn dir(family: &str) -> PathBuf {
    hooklens_testutil::testdata().join(family)
}

fn load_ref(family: &str, file: &str) -> HashMap<String, Tensor> {
    hooklens_testutil::reference(family, file)
}

fn tokens(family: &str) -> Tensor {
    hooklens_testutil::reference_tokens(family)
}

/// The family's reference model with `opts`, on the test device (`HOOKLENS_TEST_DEVICE`).
fn model(family: &str, opts: &LoadOptions) -> HookedTransformer {
    HookedTransformer::from_dir(dir(family).join("model"), &on_test_device(opts.clone()))
        .unwrap_or_else(|e| panic!("{family}: {e}"))
}

fn check_run(family: &str, m: &HookedTransformer, file: &str) {
    let what = format!("{family}/{file}");
    let tol = parity_tol(1e-4);
    let reference = load_ref(family, file);
    let tokens = tokens(family);
    let (logits, cache) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
    let mut theirs: Vec<&str> = reference
        .keys()
        .map(String::as_str)
        .filter(|k| !matches!(*k, "logits" | "loss" | "loss_per_token"))
        .collect();
    theirs.sort();
    let fired: Vec<String> = cache.keys().map(String::from).collect();
    let mut ours = common::without_mlp_io(&fired);
    ours.sort();
    assert_eq!(ours, theirs, "{what}: the same hooks fire (and mlp.hook_in / hook_out)");
    for name in &theirs {
        assert_close(&format!("{what}: {name}"), &cache[*name], &reference[*name], tol);
    }
    // Without a norm after the MLP, TransformerLens's `hook_mlp_out` is the MLP's output.
    if !m.cfg().use_normalization_before_and_after {
        for l in 0..m.cfg().n_layers {
            let (ours, theirs) = (format!("blocks.{l}.mlp.hook_out"), format!("blocks.{l}.hook_mlp_out"));
            assert_close(&format!("{what}: {ours}"), &cache[&ours], &reference[&theirs], tol);
        }
    }
    assert_close(&format!("{what}: logits"), &logits, &reference["logits"], tol);
    let out = m
        .forward_with(&tokens, &ForwardOptions::new().return_type(ReturnType::Both))
        .unwrap();
    let loss = out.loss.unwrap().reshape(1).unwrap();
    assert_close(&format!("{what}: loss"), &loss, &reference["loss"], tol);
    let per_token = m
        .forward_with(
            &tokens,
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

#[test]
fn unprocessed_matches_transformer_lens() {
    for family in FAMILIES {
        check_run(
            family,
            &model(family, &LoadOptions::no_processing()),
            "tl_unprocessed.safetensors",
        );
    }
}

#[test]
fn processed_matches_transformer_lens() {
    for family in FAMILIES {
        let m = model(family, &LoadOptions::default());
        assert!(!m.cfg().normalization_type.has_params(), "{family}: norms are folded");
        check_run(family, &m, "tl_processed.safetensors");
    }
}

#[test]
fn hook_names_and_order_equal_transformer_lens() {
    for family in FAMILIES {
        let mut m = model(family, &LoadOptions::no_processing());
        m.set_use_attn_result(true);
        m.set_use_split_qkv_input(true);
        m.set_use_attn_in(true);
        m.set_use_hook_mlp_in(true);
        let text = std::fs::read_to_string(dir(family).join("hook_names.json")).unwrap();
        let want: Vec<String> = serde_json::from_str(&text).unwrap();
        assert_eq!(common::without_mlp_io(&m.hook_names()), want, "{family}");
    }
}

#[test]
fn every_hook_gradient_matches_transformer_lens() {
    for family in FAMILIES {
        let m = model(family, &LoadOptions::no_processing());
        let tokens = tokens(family);
        let reference = load_ref(family, "tl_grads.safetensors");
        let (_, cache) = m
            .run_with_cache_bwd(
                CacheOptions::new(),
                HookSet::new(),
                |m: &HookedTransformer| -> hooklens_core::Result<Tensor> {
                    let out = m.forward_with(&tokens, &ForwardOptions::new().return_type(ReturnType::Loss))?;
                    Ok(out.loss.expect("a loss was asked for"))
                },
            )
            .unwrap();
        let mut theirs: Vec<&String> = reference.keys().collect();
        theirs.sort();
        for name in theirs {
            let got = cache
                .get(name)
                .unwrap_or_else(|| panic!("{family}: `{name}` was not cached"));
            let want = &reference[name];
            // A gradient that is a float-cancellation residue in TransformerLens itself
            // is compared at the scale of the gradient flowing through its layer: Qwen 3's
            // q/k norms make the query path (whose ln1 call TransformerLens's cache
            // records) independent of ln1's scale up to eps, so `ln1.hook_scale_grad` is
            // ~1e-6 there against ~0.5 at `hook_resid_pre`. Every other tensor is
            // checked against its own largest magnitude.
            let tol = parity_tol(1e-3);
            let own = common::max_abs_diff(want, &want.zeros_like().unwrap());
            let layer = name.strip_prefix("blocks.").and_then(|r| r.split('.').next());
            let floor = layer
                .map(|l| {
                    let r = &reference[&format!("blocks.{l}.hook_resid_pre_grad")];
                    1e-3 * common::max_abs_diff(r, &r.zeros_like().unwrap())
                })
                .unwrap_or(0.0);
            if own < floor {
                let diff = common::max_abs_diff(got, want);
                assert!(
                    diff <= tol * floor,
                    "{family}: {name}: max abs diff {diff} > {tol} * {floor}"
                );
                continue;
            }
            assert_close(&format!("{family}: {name}"), got, want, tol);
        }
    }
}

#[test]
fn pos_slice_finds_each_points_position_axis() {
    use hooklens_core::Slice;
    let m = model("qwen3", &LoadOptions::no_processing());
    let tokens = tokens("qwen3");
    let (_, full) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
    let (_, last) = m
        .run_with_cache(CacheOptions::new().pos_slice(Slice::Index(-1)), |m| m.forward(&tokens))
        .unwrap();
    for name in [
        "blocks.0.attn.hook_rot_q",
        "blocks.1.attn.hook_rot_k",
        "blocks.0.attn.hook_q",
    ] {
        let want = full[name].narrow(1, 9, 1).unwrap().squeeze(1).unwrap();
        assert_eq!(last[name].dims(), want.dims(), "{name}");
        assert_eq!(common::max_abs_diff(&last[name], &want), 0.0, "{name}");
    }
    assert_eq!(last["blocks.0.hook_resid_pre"].dims(), [2, 64]);
    // The q/k norms' rows are flattened over batch, positions and heads: left whole.
    for name in [
        "blocks.0.attn.q_norm.hook_scale",
        "blocks.0.attn.k_norm.hook_normalized",
    ] {
        assert_eq!(last[name].dims(), full[name].dims(), "{name}");
    }
}

#[test]
fn greedy_generation_equals_transformer_lens() {
    use hooklens_models::GenerateOptions;
    for family in FAMILIES.iter().filter(|f| !NO_GENERATION_REFERENCE.contains(f)) {
        let m = model(family, &LoadOptions::no_processing());
        let reference = load_ref(family, "tl_generate.safetensors");
        let prompt = &reference["prompt"];
        let want = reference["generated"].to_vec2::<i64>().unwrap();
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

/// The families without a generation reference: greedy generation from their reference
/// tokens (every row, so BOS or not) is the same with the KV cache as without it, and
/// the first new token is the argmax of TransformerLens's last logits.
#[test]
fn greedy_generation_with_and_without_kv_cache_agree() {
    use hooklens_models::GenerateOptions;
    for family in NO_GENERATION_REFERENCE {
        assert!(FAMILIES.contains(family), "{family} is a reference family");
        assert!(
            !dir(family).join("tl_generate.safetensors").exists(),
            "{family} has a generation reference now: check it in greedy_generation_equals_transformer_lens"
        );
        let m = model(family, &LoadOptions::no_processing());
        let reference = load_ref(family, "tl_unprocessed.safetensors");
        let prompt = tokens(family);
        let p = prompt.dim(1).unwrap();
        let mut runs = Vec::new();
        for kv in [true, false] {
            let mut opts = GenerateOptions::greedy(8);
            opts.stop_at_eos = false;
            opts.use_kv_cache = kv;
            let got = m
                .generate(&prompt, &opts)
                .unwrap()
                .to_dtype(candle_core::DType::I64)
                .unwrap()
                .to_vec2::<i64>()
                .unwrap();
            assert_eq!(got[0].len(), p + 8, "{family}");
            runs.push(got);
        }
        assert_eq!(runs[0], runs[1], "{family}: generation with and without the KV cache");
        let last = reference["logits"].narrow(1, p - 1, 1).unwrap().squeeze(1).unwrap();
        let first_new: Vec<i64> = last
            .argmax(candle_core::D::Minus1)
            .unwrap()
            .to_dtype(candle_core::DType::I64)
            .unwrap()
            .to_vec1()
            .unwrap();
        let got_first: Vec<i64> = runs[0].iter().map(|r| r[p]).collect();
        assert_eq!(
            got_first, first_new,
            "{family}: the first new tokens are TransformerLens's argmax"
        );
    }
}

/// `mlp.hook_in` / `mlp.hook_out`, the points circuit-tracer's and SAELens's transcoders
/// read and write (not TransformerLens 2.x's), computed from the checkpoint by hand:
/// ln2 with its gain, the gated MLP, and for Gemma 2 the norm after the MLP that sits
/// between `mlp.hook_out` and `hook_mlp_out`. Gradients reach both points.
#[test]
fn mlp_hook_in_and_out_are_the_mlps_input_and_output() {
    use candle_core::D;
    for family in ["llama", "gemma2"] {
        let gemma = family == "gemma2";
        let w = hooklens_testutil::load_tensors(dir(family).join("model/model.safetensors"));
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir(family).join("model/config.json")).unwrap()).unwrap();
        let eps = config["rms_norm_eps"].as_f64().unwrap();
        let weight = |name: &str| w[&name.to_string()].clone();
        // Hugging Face's RMSNorm: x / sqrt(mean(x²) + eps) * gain (Gemma's gain: 1 + weight).
        let gain = |name: &str| {
            if gemma {
                (weight(name) + 1.0).unwrap()
            } else {
                weight(name)
            }
        };
        let rms = |x: &Tensor, name: &str| -> Tensor {
            let scale = (x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + eps)
                .unwrap()
                .sqrt()
                .unwrap();
            x.broadcast_div(&scale).unwrap().broadcast_mul(&gain(name)).unwrap()
        };
        // A Hugging Face linear layer: x @ W^T.
        let linear = |x: &Tensor, name: &str| x.broadcast_matmul(&weight(name).t().unwrap()).unwrap();
        let m = HookedTransformer::from_dir(dir(family).join("model"), &LoadOptions::no_processing()).unwrap();
        let folded = HookedTransformer::from_dir(dir(family).join("model"), &LoadOptions::default()).unwrap();
        let tokens = tokens(family);
        let (_, cache) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
        let (_, folded_cache) = folded
            .run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))
            .unwrap();
        for l in 0..m.cfg().n_layers {
            let (hf, b) = (format!("model.layers.{l}"), format!("blocks.{l}"));
            let what = format!("{family}: {b}");
            let ln2 = if gemma {
                "pre_feedforward_layernorm"
            } else {
                "post_attention_layernorm"
            };
            let ln2_gain = format!("{hf}.{ln2}.weight");
            let x = rms(&cache[&format!("{b}.hook_resid_mid")], &ln2_gain);
            let hook_in = &cache[&format!("{b}.mlp.hook_in")];
            assert_close(&format!("{what}: mlp.hook_in is ln2's output"), hook_in, &x, 1e-5);
            // TransformerLens's ln2.hook_normalized is before the gain.
            let normalized = cache[&format!("{b}.ln2.hook_normalized")]
                .broadcast_mul(&gain(&ln2_gain))
                .unwrap();
            assert_close(
                &format!("{what}: mlp.hook_in = normalized * gain"),
                hook_in,
                &normalized,
                1e-6,
            );
            assert!(common::max_abs_diff(hook_in, &cache[&format!("{b}.ln2.hook_normalized")]) > 1e-2);

            let gate = linear(&x, &format!("{hf}.mlp.gate_proj.weight"));
            let act = if gemma {
                gate.gelu().unwrap()
            } else {
                gate.silu().unwrap()
            };
            let up = linear(&x, &format!("{hf}.mlp.up_proj.weight"));
            let out = linear(&(act * up).unwrap(), &format!("{hf}.mlp.down_proj.weight"));
            let hook_out = &cache[&format!("{b}.mlp.hook_out")];
            assert_close(
                &format!("{what}: mlp.hook_out is the MLP's output"),
                hook_out,
                &out,
                1e-5,
            );
            let hook_mlp_out = &cache[&format!("{b}.hook_mlp_out")];
            if gemma {
                let post = rms(hook_out, &format!("{hf}.post_feedforward_layernorm.weight"));
                assert_close(
                    &format!("{what}: hook_mlp_out = ln2_post(mlp.hook_out)"),
                    hook_mlp_out,
                    &post,
                    1e-5,
                );
                assert!(
                    common::max_abs_diff(hook_mlp_out, hook_out) > 1e-2,
                    "{what}: before ln2_post"
                );
            } else {
                assert_eq!(
                    common::max_abs_diff(hook_mlp_out, hook_out),
                    0.0,
                    "{what}: hook_mlp_out"
                );
            }
            // Gains folded into W_in: the MLP reads ln2's output before the gain and
            // writes what it wrote before.
            assert_eq!(
                common::max_abs_diff(
                    &folded_cache[&format!("{b}.mlp.hook_in")],
                    &folded_cache[&format!("{b}.ln2.hook_normalized")]
                ),
                0.0,
                "{what}: folded mlp.hook_in"
            );
            assert_close(
                &format!("{what}: folded mlp.hook_out"),
                &folded_cache[&format!("{b}.mlp.hook_out")],
                hook_out,
                1e-4,
            );
        }

        // A backward hook on mlp.hook_out sees the gradient there, which is the one at
        // hook_mlp_out without a norm between them.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let hooks = HookSet::new().bwd(
            "blocks.*.mlp.hook_out",
            move |g: &Tensor, hp: &hooklens_core::HookPoint| {
                let size = g.abs()?.sum_all()?.to_scalar::<f32>()?;
                record
                    .lock()
                    .unwrap()
                    .push((hp.name().to_string(), g.dims().to_vec(), size));
                Ok(None)
            },
        );
        let (_, grads) = m
            .run_with_cache_bwd(
                CacheOptions::new(),
                hooks,
                |m: &HookedTransformer| -> hooklens_core::Result<Tensor> {
                    let out = m.forward_with(&tokens, &ForwardOptions::new().return_type(ReturnType::Loss))?;
                    Ok(out.loss.expect("a loss was asked for"))
                },
            )
            .unwrap();
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        let shape = cache["blocks.0.mlp.hook_out"].dims().to_vec();
        assert_eq!(
            seen.len(),
            m.cfg().n_layers,
            "{family}: one gradient per block: {seen:?}"
        );
        for (l, (name, dims, size)) in seen.iter().enumerate() {
            assert_eq!(name, &format!("blocks.{l}.mlp.hook_out"), "{family}");
            assert_eq!(dims, &shape, "{family}: {name}");
            assert!(*size > 0.0, "{family}: {name} has a gradient");
            let g = &grads[&format!("{name}_grad")];
            let total = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(
                (total - size).abs() <= 1e-5 * size,
                "{family}: {name}: cached {total}, hook saw {size}"
            );
            let at_mlp_out = &grads[&format!("blocks.{l}.hook_mlp_out_grad")];
            if gemma {
                assert!(common::max_abs_diff(g, at_mlp_out) > 1e-6, "{family}: ln2_post between");
            } else {
                assert_close(&format!("{family}: {name}_grad"), g, at_mlp_out, 1e-6);
            }
            // ln2's output feeds the MLP only: d/d(normalized) = gain * d/d(mlp.hook_in).
            let ln2 = if gemma {
                "pre_feedforward_layernorm"
            } else {
                "post_attention_layernorm"
            };
            let want = grads[&format!("blocks.{l}.mlp.hook_in_grad")]
                .broadcast_mul(&gain(&format!("model.layers.{l}.{ln2}.weight")))
                .unwrap();
            assert_close(
                &format!("{family}: blocks.{l}.ln2.hook_normalized_grad"),
                &grads[&format!("blocks.{l}.ln2.hook_normalized_grad")],
                &want,
                1e-5,
            );
        }
    }
}

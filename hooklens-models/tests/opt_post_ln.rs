//! OPT in the layouts TransformerLens 2.16.1 cannot load, against Hugging Face
//! transformers 4.57.3 (`scripts/opt_post_ln.py`, which documents every saved tensor):
//! - `testdata/opt-post-ln/`: facebook/opt-350m's layout, post-LN blocks
//!   (`do_layer_norm_before: false`), no final norm, `word_embed_proj_dim` 32 with
//!   `hidden_size` 64 (`project_in` / `project_out`, folded into `W_E` / `W_U`);
//! - `testdata/opt-proj/`: pre-LN blocks with the same projection (the final norm, then
//!   `project_out`).
//!
//! Logits, the residual stream entering each block (Hugging Face's `hidden_states`),
//! each sublayer's output, weight processing, greedy generation with and without the KV
//! cache, the hook names of each layout, a bf16 load, and the analyses that a post-LN
//! model refuses or reads differently.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Tensor, D};
use common::{assert_close, max_abs_diff, on_test_device, parity_tol};
use hooklens_core::{CacheOptions, HookSet, HookedModel, NamesFilter};
use hooklens_models::{GenerateOptions, HookedTransformer, LoadOptions};

/// Both reference folders.
const VARIANTS: &[&str] = &["opt-post-ln", "opt-proj"];

/// `testdata/<variant>`, found from this crate.
fn dir(variant: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata")).join(variant)
}

fn reference(variant: &str) -> HashMap<String, Tensor> {
    hooklens_testutil::load_tensors(dir(variant).join("hf.safetensors"))
}

fn model(variant: &str, opts: &LoadOptions) -> HookedTransformer {
    HookedTransformer::from_dir(dir(variant).join("model"), &on_test_device(opts.clone()))
        .unwrap_or_else(|e| panic!("{variant}: {e}"))
}

fn is_post_ln(variant: &str) -> bool {
    variant == "opt-post-ln"
}

/// The checkpoint's `project_out` `[proj, d_model]`, which the model folded into `W_U`.
fn project_out(variant: &str) -> Tensor {
    hooklens_testutil::load_tensors(dir(variant).join("model/model.safetensors"))
        .remove("model.decoder.project_out.weight")
        .expect("the checkpoint has project_out")
}

fn log_probs(t: &Tensor) -> Tensor {
    candle_nn::ops::log_softmax(&t.to_dtype(DType::F32).unwrap(), D::Minus1).unwrap()
}

/// The unprocessed model computes what `OPTForCausalLM` computes: the logits, and on
/// the way every decoder layer's input (`hidden_states[i]` = `blocks.{i}.hook_resid_pre`),
/// attention output, `self_attn_layer_norm` output (`ln1`, which normalises
/// `resid_pre + attn_out` in a post-LN block), MLP output and layer output (a post-LN
/// block's `hook_normalized_resid_post`, `ln2` of its `hook_resid_post`). The last
/// hidden state is `project_out` of what the unembedding reads.
#[test]
fn logits_and_residual_stream_match_hugging_face() {
    for variant in VARIANTS {
        let m = model(variant, &LoadOptions::no_processing());
        let r = reference(variant);
        let tol = parity_tol(1e-4);
        let (logits, cache) = m
            .run_with_cache(CacheOptions::new(), |m| m.forward(&r["tokens"]))
            .unwrap();
        assert_close(&format!("{variant}: logits"), &logits, &r["logits"], tol);
        let n = m.cfg().n_layers;
        for l in 0..n {
            let pairs = [
                (format!("blocks.{l}.hook_resid_pre"), format!("hidden_states.{l}")),
                (format!("blocks.{l}.hook_attn_out"), format!("attn_out.{l}")),
                (format!("blocks.{l}.ln1.hook_normalized"), format!("attn_ln.{l}")),
                (format!("blocks.{l}.hook_mlp_out"), format!("mlp_out.{l}")),
                (
                    if is_post_ln(variant) {
                        format!("blocks.{l}.hook_normalized_resid_post")
                    } else {
                        format!("blocks.{l}.hook_resid_post")
                    },
                    format!("layer_out.{l}"),
                ),
            ];
            for (ours, theirs) in pairs {
                assert_close(&format!("{variant}: {ours}"), &cache[&ours], &r[&theirs], tol);
            }
        }
        // Hugging Face's last hidden state is after project_out.
        let last = if is_post_ln(variant) {
            format!("blocks.{}.hook_normalized_resid_post", n - 1)
        } else {
            "ln_final.hook_normalized".to_string()
        };
        let p_out = project_out(variant).to_device(logits.device()).unwrap();
        let projected = cache[&last].broadcast_matmul(&p_out.t().unwrap()).unwrap();
        assert_close(
            &format!("{variant}: hidden_states.{n} (project_out)"),
            &projected,
            &r[&format!("hidden_states.{n}")],
            tol,
        );
    }
}

/// Greedy generation is Hugging Face's, with the KV cache and without.
#[test]
fn greedy_generation_matches_hugging_face_with_and_without_cache() {
    for variant in VARIANTS {
        let r = reference(variant);
        let want = r["greedy_tokens"].to_vec2::<i64>().unwrap();
        let new = want[0].len() - r["greedy_prompt"].dim(1).unwrap();
        for opts in [LoadOptions::no_processing(), LoadOptions::default()] {
            let m = model(variant, &opts);
            for kv in [true, false] {
                let mut g = GenerateOptions::greedy(new);
                g.stop_at_eos = false;
                g.use_kv_cache = kv;
                let got = m.generate(&r["greedy_prompt"], &g).unwrap().to_vec2::<i64>().unwrap();
                assert_eq!(got, want, "{variant} (kv cache {kv}, {opts:?})");
            }
        }
    }
}

/// The default processing keeps the log-probabilities. A post-LN model keeps its
/// norms' parameters (`fold_ln` skipped) and its writing weights (`center_writing_weights`
/// skipped: block 0's attention reads the embedding as it is), while the unembedding is
/// centred and `b_V` moves into `b_O`; the pre-LN model with a projection is processed as
/// any LayerNorm model.
#[test]
fn default_processing_keeps_log_probs() {
    for variant in VARIANTS {
        let raw = model(variant, &LoadOptions::no_processing());
        let processed = model(variant, &LoadOptions::default());
        let tokens = reference(variant).remove("tokens").unwrap();
        let (a, raw_cache) = raw.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
        let (b, cache) = processed
            .run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))
            .unwrap();
        assert_close(
            &format!("{variant}: log-probs"),
            &log_probs(&b),
            &log_probs(&a),
            parity_tol(1e-4),
        );
        assert!(max_abs_diff(&a, &b) > 1e-3, "{variant}: the unembedding was centred");
        let value_bias = |m: &HookedTransformer| m.b_v().unwrap();
        assert!(
            max_abs_diff(&value_bias(&processed), &value_bias(&processed).zeros_like().unwrap()) == 0.0
                && max_abs_diff(&value_bias(&raw), &value_bias(&raw).zeros_like().unwrap()) > 0.0,
            "{variant}: b_V folded into b_O"
        );
        let embed_same = max_abs_diff(&cache["hook_embed"], &raw_cache["hook_embed"]) == 0.0;
        if is_post_ln(variant) {
            assert!(processed.cfg().normalization_type.has_params(), "{variant}: not folded");
            for b in &processed.blocks {
                assert!(
                    b.ln1.as_ref().unwrap().params().is_some(),
                    "{variant}: ln1 keeps gain and bias"
                );
                assert!(
                    b.ln2.as_ref().unwrap().params().is_some(),
                    "{variant}: ln2 keeps gain and bias"
                );
            }
            assert!(embed_same, "{variant}: W_E not centred");
        } else {
            assert!(!processed.cfg().normalization_type.has_params(), "{variant}: folded");
            assert!(!embed_same, "{variant}: W_E centred");
        }
    }
}

/// A post-LN model has `hook_normalized_resid_post` in every block and no `ln_final.*`;
/// its hooks fire in TransformerLens's `BertBlock` order. The pre-LN model has
/// `ln_final.*` and no `hook_normalized_resid_post`. Asking for a missing point is an
/// error naming it.
#[test]
fn hook_names_follow_the_layout() {
    let post = model("opt-post-ln", &LoadOptions::no_processing());
    let names = post.hook_names();
    assert!(names.iter().all(|n| !n.starts_with("ln_final")), "{names:?}");
    assert!(post.ln_final.is_none());
    for l in 0..post.cfg().n_layers {
        for suffix in [
            "hook_resid_pre",
            "hook_resid_mid",
            "hook_resid_post",
            "hook_normalized_resid_post",
            "ln1.hook_scale",
            "ln2.hook_normalized",
        ] {
            assert!(names.contains(&format!("blocks.{l}.{suffix}")), "{suffix}");
        }
    }
    let fired = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = fired.clone();
    let hooks = HookSet::new().fwd(NamesFilter::predicate(|_| true), move |_: &Tensor, hp| {
        log.lock().unwrap().push(hp.name().to_string());
        Ok(None)
    });
    let tokens = reference("opt-post-ln").remove("tokens").unwrap();
    post.run_with_hooks(hooks, |m| m.forward(&tokens)).unwrap();
    let order = [
        "hook_resid_pre",
        "hook_attn_out",
        "hook_resid_mid",
        "ln1.hook_scale",
        "ln1.hook_normalized",
        "mlp.hook_in",
        "hook_mlp_out",
        "hook_resid_post",
        "ln2.hook_scale",
        "ln2.hook_normalized",
        "hook_normalized_resid_post",
    ];
    let fired: Vec<String> = fired
        .lock()
        .unwrap()
        .iter()
        .filter_map(|n| n.strip_prefix("blocks.0.").map(String::from))
        .filter(|n| order.contains(&n.as_str()))
        .collect();
    assert_eq!(fired, order, "block 0 fires in BertBlock's order");
    let e = post
        .run_with_cache(CacheOptions::new().names("ln_final.hook_normalized"), |m| {
            m.forward(&tokens)
        })
        .map(|_| ())
        .unwrap_err();
    assert!(e.to_string().contains("ln_final.hook_normalized"), "{e}");

    let pre = model("opt-proj", &LoadOptions::no_processing());
    let names = pre.hook_names();
    assert!(names.contains(&"ln_final.hook_normalized".to_string()));
    assert!(names.iter().all(|n| !n.ends_with("hook_normalized_resid_post")));
}

/// A bf16 load (the projections folded in f32, then rounded) computes the same model.
#[test]
fn bf16_load_runs() {
    for variant in VARIANTS {
        let r = reference(variant);
        let m = model(variant, &LoadOptions::no_processing().with_dtype(DType::BF16));
        assert_eq!(m.dtype(), DType::BF16);
        let logits = m.forward(&r["tokens"]).unwrap();
        assert_eq!(logits.dtype(), DType::BF16);
        assert_close(&format!("{variant}: bf16 logits"), &logits, &r["logits"], 5e-2);
        let processed = model(variant, &LoadOptions::default().with_dtype(DType::BF16));
        let lp = log_probs(&processed.forward(&r["tokens"]).unwrap());
        assert_close(
            &format!("{variant}: bf16 processed"),
            &lp,
            &log_probs(&r["logits"]),
            5e-2,
        );
    }
}

/// `apply_ln_to_stack` (and what uses it) is a clear error on a post-LN model; the logit
/// attribution of the model's own last residual stream, which nothing normalises before
/// the unembedding, is its logits (`b_U` is zero unprocessed).
#[test]
fn analysis_refuses_apply_ln_and_attributes_without_a_final_norm() {
    use hooklens_models::analysis::{AccumulatedResid, Analysis, LnOptions, LogitAttrs};
    let m = model("opt-post-ln", &LoadOptions::no_processing());
    let tokens = reference("opt-post-ln").remove("tokens").unwrap();
    let (logits, cache) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
    let a = Analysis::new(&m, cache.clone());
    let stack = cache["blocks.1.hook_resid_pre"].unsqueeze(0).unwrap();
    for layer in [Some(1), None] {
        let e = a
            .apply_ln_to_stack(&stack, &LnOptions::new().layer(layer))
            .unwrap_err()
            .to_string();
        assert!(e.contains("post-LN") && e.contains("OPT-350m"), "{e}");
    }
    let e = a
        .accumulated_resid(&AccumulatedResid {
            apply_ln: true,
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("post-LN"), "{e}");
    // The last block's output is what the unembedding reads.
    let last = cache["blocks.1.hook_normalized_resid_post"].unsqueeze(0).unwrap();
    let ids = Tensor::new(&[[7u32; 10], [300; 10]], logits.device()).unwrap();
    let attrs = a
        .logit_attrs(&last, &ids, &LogitAttrs::new())
        .unwrap()
        .squeeze(0)
        .unwrap();
    let want = logits
        .gather(&ids.unsqueeze(2).unwrap().contiguous().unwrap(), 2)
        .unwrap()
        .squeeze(2)
        .unwrap();
    assert_close("logit_attrs of the final residual", &attrs, &want, 1e-5);
}

/// Attribution graphs refuse a post-LN model with an error that says why.
#[test]
fn attribution_refuses_post_ln() {
    use hooklens_models::circuits::{attribute, AttributionOptions, Transcoders};
    let m = model("opt-post-ln", &LoadOptions::no_processing());
    // Any transcoder set: the layout is refused before the sizes are compared.
    let transcoders = Transcoders::from_dir(dir("circuits").join("transcoders")).unwrap();
    let e = attribute(&m, &transcoders, &[2, 5, 7], &AttributionOptions::new())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("post-LN") && e.contains("not supported"), "{e}");
}

/// The logit lens of a post-LN model unembeds each residual stream as it is (the
/// stream between blocks is already normalised; there is no final norm): its last row
/// is the model's own prediction, row 1 the unembedding of block 1's input.
#[cfg(all(feature = "viz", feature = "tokenizers"))]
#[test]
fn logit_lens_of_post_ln_reads_streams_unnormalised() {
    use hooklens_models::viz::logit_lens;
    use hooklens_models::Tokenizer;
    let tok = Tokenizer::from_file(dir("tiny-tokenizer").join("tokenizer.json")).unwrap();
    let m = model("opt-post-ln", &LoadOptions::no_processing()).with_tokenizer(tok);
    let tokens = reference("opt-post-ln")
        .remove("tokens")
        .unwrap()
        .narrow(0, 0, 1)
        .unwrap();
    let lens = logit_lens(&m, &tokens, 1).unwrap();
    assert_eq!(lens.labels, ["0_pre", "1_pre", "final_post"]);
    let (logits, cache) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
    let argmax = |t: &Tensor| -> Vec<u32> { t.squeeze(0).unwrap().argmax(D::Minus1).unwrap().to_vec1().unwrap() };
    let top = |row: usize| -> Vec<u32> { lens.top[row].iter().map(|p| p[0].0).collect() };
    assert_eq!(top(2), argmax(&logits), "final_post is the prediction");
    let unembedded = m.unembed.forward(&cache["blocks.1.hook_resid_pre"]).unwrap();
    assert_eq!(top(1), argmax(&unembedded), "1_pre unembedded as it is");
}

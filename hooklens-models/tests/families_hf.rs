//! Parity with Hugging Face transformers 5.25 for the families TransformerLens 2.16.1
//! cannot load (`testdata/<family>/`, made by `make_hf_arch_reference.py`; see
//! `testdata/<family>/NOTES.md` for what each name is in Hugging Face terms): every
//! saved activation, logits, loss and loss per token of the unprocessed model; the
//! gradients of the loss at `hook_resid_pre` / `hook_resid_post`; greedy generation
//! with and without the KV cache; the saved names fire in the reference's order; and
//! weight processing keeps the log-probabilities.
//!
//! A family is added by putting its reference folder under `testdata/` and its name in
//! [`FAMILIES`].

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::{Tensor, D};
use common::{assert_close, on_test_device, parity_tol};
use hooklens_core::{CacheOptions, HookSet, HookedModel, NamesFilter};
use hooklens_models::{ForwardOptions, GenerateOptions, HookedTransformer, LoadOptions, ReturnType};

/// The families with a Hugging Face reference (`hf_activations.safetensors`, ...).
const FAMILIES: &[&str] = &["gemma3", "olmo2"];

/// `testdata/<family>`, found from this crate (not through `hooklens_testutil`, whose
/// compiled path is that of whichever checkout built it into a shared target folder).
fn dir(family: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata")).join(family)
}

fn load_ref(family: &str, file: &str) -> HashMap<String, Tensor> {
    hooklens_testutil::load_tensors(dir(family).join(file))
}

/// The reference tokens `[2, 10]` (i64).
fn tokens(family: &str) -> Tensor {
    load_ref(family, "tokens.safetensors")
        .remove("tokens")
        .unwrap_or_else(|| panic!("{family}/tokens.safetensors has no `tokens`"))
}

/// The names the reference saved, in firing order (`hook_names.json`).
fn reference_names(family: &str) -> Vec<String> {
    let text = std::fs::read_to_string(dir(family).join("hook_names.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The family's reference model with `opts`, on the test device (`HOOKLENS_TEST_DEVICE`).
fn model(family: &str, opts: &LoadOptions) -> HookedTransformer {
    HookedTransformer::from_dir(dir(family).join("model"), &on_test_device(opts.clone()))
        .unwrap_or_else(|e| panic!("{family}: {e}"))
}

#[test]
fn activations_logits_and_loss_match_hugging_face() {
    for family in FAMILIES {
        let m = model(family, &LoadOptions::no_processing());
        let reference = load_ref(family, "hf_activations.safetensors");
        let tokens = tokens(family);
        let tol = parity_tol(1e-4);
        let (logits, cache) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
        for name in reference_names(family) {
            let want = &reference[&name];
            let got = cache
                .get(&name)
                .unwrap_or_else(|| panic!("{family}: `{name}` was not cached"));
            assert_close(&format!("{family}: {name}"), got, want, tol);
            if name.ends_with("hook_pattern") {
                // Masked entries (causal, and outside a sliding window) are exactly 0,
                // as the eager softmax after a -inf mask gives.
                let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let masked = want.iter().filter(|w| **w == 0.0).count();
                assert!(masked > 0, "{family}: {name}: the reference masks something");
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    if *w == 0.0 {
                        assert_eq!(*g, 0.0, "{family}: {name}: masked element {i}");
                    }
                }
            }
        }
        assert_close(&format!("{family}: logits"), &logits, &reference["logits"], tol);
        let loss = m
            .forward_with(&tokens, &ForwardOptions::new().return_type(ReturnType::Loss))
            .unwrap()
            .loss
            .unwrap()
            .reshape(1)
            .unwrap();
        assert_close(&format!("{family}: loss"), &loss, &reference["loss"], tol);
        let per_token = m
            .forward_with(
                &tokens,
                &ForwardOptions::new().return_type(ReturnType::Loss).loss_per_token(true),
            )
            .unwrap()
            .loss
            .unwrap();
        assert_close(
            &format!("{family}: loss_per_token"),
            &per_token,
            &reference["loss_per_token"],
            tol,
        );
    }
}

/// The reference's names are hook points of the model, and fire in the reference's
/// order (the model's other points, its norms' for instance, may fire in between).
#[test]
fn reference_names_fire_in_reference_order() {
    for family in FAMILIES {
        let m = model(family, &LoadOptions::no_processing());
        let want = reference_names(family);
        let registered = m.hook_names();
        for name in &want {
            assert!(registered.contains(name), "{family}: `{name}` is not a hook point");
        }
        let fired = Arc::new(Mutex::new(Vec::<String>::new()));
        let log = fired.clone();
        let hooks = HookSet::new().fwd(NamesFilter::predicate(|_| true), move |_: &Tensor, hp| {
            log.lock().unwrap().push(hp.name().to_string());
            Ok(None)
        });
        m.run_with_hooks(hooks, |m| m.forward(&tokens(family))).unwrap();
        let fired = fired.lock().unwrap();
        let in_order: Vec<&String> = fired.iter().filter(|n| want.contains(n)).collect();
        // The reference takes `attn.hook_pattern` from the attention module's output
        // (`hf_sources.json`: "self_attn (output[1] ..)"), which returns after o_proj
        // has read `hook_z`; the pattern is computed before z, so it fires first here.
        let mut want: Vec<&String> = want.iter().collect();
        for i in 1..want.len() {
            if want[i].ends_with(".attn.hook_pattern") && want[i - 1].ends_with(".attn.hook_z") {
                want.swap(i - 1, i);
            }
        }
        assert_eq!(in_order, want, "{family}: firing order");
    }
}

#[test]
fn residual_gradients_match_hugging_face() {
    for family in FAMILIES {
        let m = model(family, &LoadOptions::no_processing());
        let tokens = tokens(family);
        let reference = load_ref(family, "hf_grads.safetensors");
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
        let mut names: Vec<&String> = reference.keys().collect();
        names.sort();
        assert_eq!(
            names.len(),
            2 * m.cfg().n_layers,
            "{family}: resid_pre and resid_post per layer"
        );
        for name in names {
            let got = cache
                .get(name)
                .unwrap_or_else(|| panic!("{family}: `{name}` was not cached"));
            assert_close(&format!("{family}: {name}"), got, &reference[name], parity_tol(1e-3));
        }
    }
}

#[test]
fn greedy_generation_matches_hugging_face_with_and_without_cache() {
    for family in FAMILIES {
        let m = model(family, &LoadOptions::no_processing());
        let reference = load_ref(family, "hf_greedy.safetensors");
        let prompt = &reference["greedy_prompt"];
        let want = reference["greedy_tokens"].to_vec2::<i64>().unwrap();
        let new = want[0].len() - prompt.dim(1).unwrap();
        assert_eq!(new, 12, "{family}: twelve steps");
        for kv in [true, false] {
            let mut opts = GenerateOptions::greedy(new);
            opts.stop_at_eos = false;
            opts.use_kv_cache = kv;
            let got = m.generate(prompt, &opts).unwrap().to_vec2::<i64>().unwrap();
            assert_eq!(got, want, "{family} (kv cache {kv})");
        }
    }
}

/// `LoadOptions::default()` folds the norms before attention, the MLP and the unembed
/// (RMSNorm gains into the weights that read them; OLMo 2 has only the last) and
/// centres the unembedding; the norms after attention and the MLP and the q/k norms
/// keep their gains, as TransformerLens does for Gemma 2. The log-probabilities stay.
#[test]
fn processing_keeps_log_probs() {
    for family in FAMILIES {
        let raw = model(family, &LoadOptions::no_processing());
        let processed = model(family, &LoadOptions::default());
        assert!(!processed.cfg().normalization_type.has_params(), "{family}: folded");
        for b in &processed.blocks {
            assert!(
                b.ln1.as_ref().is_none_or(|n| n.weight().is_none()),
                "{family}: ln1 folded"
            );
            assert!(
                b.ln2.as_ref().is_none_or(|n| n.weight().is_none()),
                "{family}: ln2 folded"
            );
            for n in [&b.ln1_post, &b.ln2_post, &b.attn.q_norm, &b.attn.k_norm] {
                assert!(
                    n.as_ref().unwrap().weight().is_some(),
                    "{family}: post and q/k norms keep gains"
                );
            }
        }
        let tokens = tokens(family);
        let lp = |m: &HookedTransformer| candle_nn::ops::log_softmax(&m.forward(&tokens).unwrap(), D::Minus1).unwrap();
        let (a, b) = (lp(&raw), lp(&processed));
        assert_close(&format!("{family}: log-probs"), &b, &a, parity_tol(1e-4));
        // Centring the unembedding changed the logits themselves.
        let (la, lb) = (raw.forward(&tokens).unwrap(), processed.forward(&tokens).unwrap());
        assert!(
            common::max_abs_diff(&la, &lb) > 1e-3,
            "{family}: the logits were centred"
        );
    }
}

/// The reference `config.json` of `family` as JSON.
fn config_json(family: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir(family).join("model/config.json")).unwrap()).unwrap()
}

/// Gemma 3's rotary settings as transformers 4 writes them (`rope_theta`,
/// `rope_local_base_freq`, `rope_scaling`, `sliding_window_pattern`) and as
/// transformers 5 does (`rope_parameters` per layer type, `layer_types`) read the same.
#[test]
fn gemma3_configs_of_both_transformers_versions_agree() {
    use hooklens_models::config::AttnType;
    let mut legacy = config_json("gemma3");
    legacy["num_hidden_layers"] = serde_json::json!(6);
    legacy["sliding_window_pattern"] = serde_json::json!(3);
    legacy["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 8.0});
    let mut v5 = legacy.clone();
    let obj = v5.as_object_mut().unwrap();
    for k in [
        "rope_theta",
        "rope_local_base_freq",
        "rope_scaling",
        "sliding_window_pattern",
    ] {
        obj.remove(k);
    }
    obj.insert(
        "rope_parameters".into(),
        serde_json::json!({
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}}),
    );
    let types: Vec<&str> = (0..6)
        .map(|i| {
            if (i + 1) % 3 != 0 {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    obj.insert("layer_types".into(), serde_json::json!(types));
    let read =
        |v: &serde_json::Value| hooklens_models::TransformerConfig::from_hf_str(&v.to_string(), "config.json").unwrap();
    let (a, b) = (read(&legacy), read(&v5));
    assert_eq!(a, b);
    assert_eq!(a.rotary_base, 1e6);
    assert_eq!(a.rotary_base_local, Some(1e4));
    assert_eq!(a.rotary_linear_factor, Some(8.0));
    assert_eq!((a.window_size, a.attn_scale), (Some(4), Some(32f64.sqrt())));
    let local: Vec<bool> = a.attn_types.unwrap().iter().map(|t| *t == AttnType::Local).collect();
    assert_eq!(local, [true, true, false, true, true, false]);
    assert!(a.use_qk_norm && a.use_normalization_before_and_after && a.use_normalization_before);
    assert_eq!((a.attn_scores_soft_cap, a.output_logits_soft_cap), (None, None));

    let olmo = read(&config_json("olmo2"));
    assert!(!olmo.use_normalization_before && olmo.use_normalization_before_and_after && olmo.use_qk_norm);
    assert_eq!(olmo.qk_norm_over, hooklens_models::config::QkNormOver::Projection);
}

#[test]
fn unsupported_gemma3_and_rope_settings_are_clear_errors() {
    let err = |changes: serde_json::Value| -> String {
        let mut v = config_json("gemma3");
        for (k, x) in changes.as_object().unwrap() {
            v[k] = x.clone();
        }
        hooklens_models::TransformerConfig::from_hf_str(&v.to_string(), "config.json")
            .unwrap_err()
            .to_string()
    };
    let e = err(serde_json::json!({"use_bidirectional_attention": true}));
    assert!(e.contains("use_bidirectional_attention"), "{e}");
    let e = err(serde_json::json!({"rope_scaling": {"rope_type": "linear"}}));
    assert!(e.contains("linear") && e.contains("factor"), "{e}");
    let e = err(serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}));
    assert!(e.contains("`yarn` is not supported"), "{e}");
    let e = err(serde_json::json!({"rope_parameters": {
        "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}}));
    assert!(e.contains("sliding_attention"), "{e}");
    let e = err(serde_json::json!({"rope_parameters": {"sliding_attention": {"rope_theta": 10000.0}}}));
    assert!(e.contains("full_attention"), "{e}");
}

/// A multimodal Gemma 3 checkpoint (`Gemma3ForConditionalGeneration`) made of the
/// reference's language model and a stand-in vision tower loads as that language
/// model, in both tensor layouts; tensors outside the vision tower are still reported.
#[test]
fn gemma3_multimodal_checkpoint_loads_its_language_model() {
    use candle_core::{DType, Device};
    use hooklens_models::convert::write_checkpoint;
    let mut text = config_json("gemma3");
    text["model_type"] = serde_json::json!("gemma3_text");
    let bos = text["bos_token_id"].clone();
    for k in ["architectures", "bos_token_id", "eos_token_id", "tie_word_embeddings"] {
        text.as_object_mut().unwrap().remove(k);
    }
    let config = serde_json::json!({
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
        "bos_token_id": bos, "eos_token_id": [1, 106], "image_token_index": 262144,
        "text_config": text, "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 8}})
    .to_string();
    let weights = hooklens_testutil::load_tensors(dir("gemma3").join("model/model.safetensors"));
    let want = model("gemma3", &LoadOptions::no_processing())
        .forward(&tokens("gemma3"))
        .unwrap();
    let root = hooklens_testutil::TempDir::new("gemma3-multimodal");
    let vision = Tensor::zeros((4, 3, 2, 2), DType::F32, &Device::Cpu).unwrap();
    for (layout, prefix, vision_prefix) in [
        ("published", "language_model.model.", "vision_tower.vision_model."),
        (
            "transformers-4.52",
            "model.language_model.",
            "model.vision_tower.vision_model.",
        ),
    ] {
        let mut tensors: HashMap<String, Tensor> = weights
            .iter()
            .map(|(k, t)| (format!("{prefix}{}", k.strip_prefix("model.").unwrap()), t.clone()))
            .collect();
        tensors.insert(
            format!("{vision_prefix}embeddings.patch_embedding.weight"),
            vision.clone(),
        );
        let path = root.join(layout);
        write_checkpoint(&path, &config, &tensors, DType::F32, 2).unwrap();
        let m = HookedTransformer::from_dir(&path, &LoadOptions::no_processing()).unwrap();
        assert_eq!(m.cfg().original_architecture, "Gemma3ForConditionalGeneration");
        assert_eq!(
            m.cfg().eos_token_id,
            Some(1),
            "{layout}: the top level's end of sequence"
        );
        let got = m.forward(&tokens("gemma3")).unwrap();
        assert_eq!(common::max_abs_diff(&got, &want), 0.0, "{layout}");

        tensors.insert(format!("{prefix}layers.7.extra.weight"), vision.clone());
        let path = root.join(format!("{layout}-extra"));
        write_checkpoint(&path, &config, &tensors, DType::F32, 1).unwrap();
        let e = HookedTransformer::from_dir(&path, &LoadOptions::no_processing()).unwrap_err();
        assert!(e.to_string().contains("layers.7.extra.weight"), "{layout}: {e}");
    }
}

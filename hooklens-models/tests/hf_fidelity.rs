//! Config keys that change what a Hugging Face model computes, read as Hugging Face
//! reads them (transformers 5; 4.57 where they agree): a tied config beside a distinct
//! `lm_head`, `attention_bias`, the Gemma activations, the JSON type of the rotary
//! settings and `partial_rotary_factor` in the families whose classes ignore it.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::{max_abs_diff, variant, TempDir};
use hooklens_models::config::ActFn;
use hooklens_models::convert::{config_from_hf_str, synthetic_checkpoint, write_checkpoint};
use hooklens_models::{HookedTransformer, LoadOptions, TransformerConfig};
use serde_json::{json, Value};

fn parse(config: &str) -> hooklens_core::Result<TransformerConfig> {
    config_from_hf_str(config, "config.json")
}

fn random(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Logits of the checkpoint `tensors` under `config`, or the load error.
fn logits(
    dir: &TempDir,
    name: &str,
    config: &str,
    tensors: &HashMap<String, Tensor>,
    allow_unused: bool,
) -> hooklens_core::Result<Tensor> {
    write_checkpoint(dir.join(name), config, tensors, DType::F32, 1).unwrap();
    let opts = LoadOptions {
        allow_unused_tensors: allow_unused,
        ..LoadOptions::no_processing()
    };
    let m = HookedTransformer::from_dir(dir.join(name), &opts)?;
    let v = m.cfg().d_vocab as u32;
    let ids: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % v).collect();
    m.forward(&Tensor::from_vec(ids, (2, 6), &Device::Cpu).unwrap())
}

#[test]
fn tied_config_beside_a_distinct_lm_head_uses_the_lm_head() {
    let dir = TempDir::new("hf-fidelity-tied");
    let untied = variant("llama", json!({"tie_word_embeddings": false}));
    let tied = variant("llama", json!({"tie_word_embeddings": true}));
    let weights = synthetic_checkpoint(&untied, 3).unwrap();
    let head = &weights["lm_head.weight"];
    assert!(max_abs_diff(head, &weights["model.embed_tokens.weight"]) > 0.0);
    let want = logits(&dir, "untied", &untied, &weights, false).unwrap();
    let got = logits(&dir, "tied", &tied, &weights, false).unwrap();
    assert_eq!(
        max_abs_diff(&got, &want),
        0.0,
        "the checkpoint's lm_head is the unembedding"
    );
    // An lm_head equal to the embedding (torch .bin files hold both) is the tied model.
    let mut same = weights.clone();
    same.insert("lm_head.weight".into(), weights["model.embed_tokens.weight"].clone());
    let mut without = weights.clone();
    without.remove("lm_head.weight");
    let a = logits(&dir, "same", &tied, &same, false).unwrap();
    let b = logits(&dir, "without", &tied, &without, false).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

#[test]
fn attention_bias_false_leaves_bias_tensors_unused() {
    let dir = TempDir::new("hf-fidelity-bias");
    // Llama-layout families that read `attention_bias`, and Mistral that never has biases.
    for (family, cfg) in [
        ("llama", variant("llama", json!({}))),
        ("mistral", variant("mistral", json!({"attention_bias": true}))),
        ("gemma", variant("gemma", json!({}))),
        ("qwen3", variant("qwen3", json!({}))),
    ] {
        let weights = synthetic_checkpoint(&cfg, 5).unwrap();
        let parsed = parse(&cfg).unwrap();
        let (q, kv) = (parsed.n_heads * parsed.d_head, parsed.n_kv_heads() * parsed.d_head);
        let mut biased = weights.clone();
        for (i, (n, len)) in [("q", q), ("k", kv), ("v", kv)].into_iter().enumerate() {
            for l in 0..parsed.n_layers {
                let name = format!("model.layers.{l}.self_attn.{n}_proj.bias");
                biased.insert(name, (random(&[len], i as u64 + 10 * l as u64) * 10.0).unwrap());
            }
        }
        let err = logits(&dir, &format!("{family}-b"), &cfg, &biased, false).unwrap_err();
        assert!(
            err.to_string().contains("_proj.bias"),
            "{family}: the biases are reported unused: {err}"
        );
        let want = logits(&dir, &format!("{family}-a"), &cfg, &weights, false).unwrap();
        let got = logits(&dir, &format!("{family}-c"), &cfg, &biased, true).unwrap();
        assert_eq!(max_abs_diff(&got, &want), 0.0, "{family}: biases not applied");
    }
    // NeoX: `attention_bias: false` drops query_key_value's and dense's biases.
    let with = variant("neox", json!({}));
    let without = variant("neox", json!({"attention_bias": false}));
    let weights = synthetic_checkpoint(&with, 6).unwrap();
    let mut zeroed = weights.clone();
    for (k, t) in zeroed.iter_mut() {
        if k.contains(".attention.") && k.ends_with(".bias") {
            *t = t.zeros_like().unwrap();
        }
    }
    let err = logits(&dir, "neox-b", &without, &weights, false).unwrap_err();
    assert!(err.to_string().contains("attention."), "{err}");
    let want = logits(&dir, "neox-z", &with, &zeroed, false).unwrap();
    let got = logits(&dir, "neox-n", &without, &weights, true).unwrap();
    assert_eq!(max_abs_diff(&got, &want), 0.0, "neox: biases not applied");
}

#[test]
fn attention_bias_true_reads_the_output_bias_and_qwen2_ignores_the_key() {
    let dir = TempDir::new("hf-fidelity-obias");
    let cfg = variant("llama", json!({"attention_bias": true}));
    let weights = synthetic_checkpoint(&cfg, 7).unwrap();
    assert!(weights.contains_key("model.layers.0.self_attn.o_proj.bias"));
    let mut zeroed = weights.clone();
    for (k, t) in zeroed.iter_mut() {
        if k.ends_with("o_proj.bias") {
            *t = t.zeros_like().unwrap();
        }
    }
    let a = logits(&dir, "o", &cfg, &weights, false).unwrap();
    let b = logits(&dir, "z", &cfg, &zeroed, false).unwrap();
    assert!(max_abs_diff(&a, &b) > 1e-4, "o_proj.bias is applied");
    // Qwen2Attention: q/k/v `bias=True` whatever `attention_bias` says.
    let qwen = variant("qwen2", json!({}));
    let qwen_false = variant("qwen2", json!({"attention_bias": false}));
    let weights = synthetic_checkpoint(&qwen, 8).unwrap();
    let a = logits(&dir, "q", &qwen, &weights, false).unwrap();
    let b = logits(&dir, "qf", &qwen_false, &weights, false).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

#[test]
fn gemma_activations_are_read_from_the_key_each_class_reads() {
    let act = |family: &str, changes: Value| parse(&variant(family, changes)).map(|c| c.act_fn);
    // Gemma: `hidden_act`; the legacy "gelu" means the tanh approximation.
    let g = |v: Value| act("gemma", json!({"hidden_act": v, "hidden_activation": null}));
    assert_eq!(g(json!("relu")).unwrap(), ActFn::Relu);
    assert_eq!(g(json!("gelu")).unwrap(), ActFn::GeluNew);
    assert_eq!(g(Value::Null).unwrap(), ActFn::GeluNew);
    assert_eq!(
        act("gemma", json!({"hidden_act": "silu", "hidden_activation": "relu"})).unwrap(),
        ActFn::Silu
    );
    let err = g(json!("bogus")).unwrap_err().to_string();
    assert!(err.contains("`hidden_act`"), "{err}");
    // Gemma 2: `hidden_activation`; `hidden_act` is not read.
    let g2 = |changes: Value| act("gemma2", changes);
    assert_eq!(g2(json!({"hidden_activation": "silu"})).unwrap(), ActFn::Silu);
    assert_eq!(g2(json!({"hidden_activation": "gelu"})).unwrap(), ActFn::Gelu);
    assert_eq!(
        g2(json!({"hidden_activation": null, "hidden_act": "relu"})).unwrap(),
        ActFn::GeluNew
    );
    let err = g2(json!({"hidden_activation": "bogus"})).unwrap_err().to_string();
    assert!(err.contains("`hidden_activation`"), "{err}");
    // Llama reads `hidden_act` only.
    assert_eq!(
        act("llama", json!({"hidden_act": null, "hidden_activation": "gelu"})).unwrap(),
        ActFn::Silu
    );
}

#[test]
fn rotary_settings_of_the_wrong_json_type_are_errors() {
    for (family, key, value, kind) in [
        ("llama", "rope_scaling", json!("linear"), "a string"),
        ("llama", "rope_scaling", json!([1, 2]), "a list"),
        ("llama", "rope_parameters", json!("default"), "a string"),
        ("neox", "rope_parameters", json!([0.5]), "a list"),
        ("qwen2", "rope_scaling", json!(8.0), "a number"),
    ] {
        let err = parse(&variant(family, json!({ key: value })))
            .expect_err(&format!("{family}: {key} = {value}"))
            .to_string();
        assert!(err.contains(&format!("`{key}`")) && err.contains(kind), "{err}");
    }
    let err = parse(&variant(
        "llama",
        json!({"rope_scaling": {"rope_type": 3, "factor": 2.0}}),
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("`rope_scaling.rope_type`"), "{err}");
}

#[test]
fn partial_rotary_factor_only_where_the_class_reads_it() {
    let dim = |family: &str, changes: Value| {
        let c = parse(&variant(family, changes)).unwrap();
        (c.rotary_dim.unwrap(), c.d_head)
    };
    for family in ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"] {
        let (r, h) = dim(family, json!({"partial_rotary_factor": 0.5}));
        assert_eq!(r, h, "{family}: top-level partial_rotary_factor is not read");
        let (r, h) = dim(
            family,
            json!({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}}),
        );
        assert_eq!(r, h, "{family}: rope_parameters.partial_rotary_factor is not read");
    }
    let (r, h) = dim("phi3", json!({"partial_rotary_factor": 0.5}));
    assert_eq!(r, h / 2);
    let (r, h) = dim("neox", json!({"rotary_pct": 0.5}));
    assert_eq!(r, h / 2);
    // GPTNeoXConfig's default `rotary_pct` is 0.25.
    let (r, h) = dim("neox", json!({"rotary_pct": null}));
    assert_eq!(r, h / 4);
}

#[test]
fn absent_keys_take_the_defaults_of_the_hugging_face_class() {
    let parse_without = |family: &str, keys: &[&str], extra: Value| {
        let mut changes = extra;
        for k in keys {
            changes[*k] = Value::Null;
        }
        parse(&variant(family, changes))
    };
    // Gemma 2: query_pre_attn_scalar 256, soft caps 50 / 30, window 4096, head_dim 256.
    let c = parse_without(
        "gemma2",
        &[
            "query_pre_attn_scalar",
            "attn_logit_softcapping",
            "final_logit_softcapping",
            "sliding_window",
            "head_dim",
        ],
        json!({}),
    )
    .unwrap();
    assert_eq!(c.attn_scale, Some(16.0));
    assert_eq!(c.attn_scores_soft_cap, Some(50.0));
    assert_eq!(c.output_logits_soft_cap, Some(30.0));
    assert_eq!(c.window_size, Some(4096));
    assert_eq!(c.d_head, 256);
    // A null keeps its meaning (`variant` removes null keys: set them by hand).
    let mut v: Value = serde_json::from_str(&variant("gemma2", json!({}))).unwrap();
    v["attn_logit_softcapping"] = Value::Null;
    v["sliding_window"] = Value::Null;
    let c = parse(&v.to_string()).unwrap();
    assert_eq!((c.attn_scores_soft_cap, c.window_size), (None, None));
    // Gemma: head_dim 256, 16 kv heads (of 16 query heads here).
    let c = parse_without(
        "gemma",
        &["head_dim", "num_key_value_heads"],
        json!({"num_attention_heads": 16}),
    )
    .unwrap();
    assert_eq!((c.d_head, c.n_kv_heads()), (256, 16));
    // Mistral: a window of 4096 in every layer, 8 kv heads.
    let c = parse_without(
        "mistral",
        &["sliding_window", "num_key_value_heads"],
        json!({"num_attention_heads": 8}),
    )
    .unwrap();
    assert_eq!(
        (c.window_size, c.window_of(0), c.n_kv_heads()),
        (Some(4096), Some(4096), 8)
    );
    // Qwen 2 with use_sliding_window: window 4096 from layer 28 on (none here), 32 kv heads.
    let c = parse_without(
        "qwen2",
        &["sliding_window", "max_window_layers", "num_key_value_heads"],
        json!({"use_sliding_window": true, "num_attention_heads": 32, "hidden_size": 128}),
    )
    .unwrap();
    assert_eq!((c.window_of(0), c.n_kv_heads()), (None, 32));
    // Qwen 3: head_dim 128. Phi-3: rms_norm_eps 1e-5.
    let c = parse_without("qwen3", &["head_dim"], json!({})).unwrap();
    assert_eq!(c.d_head, 128);
    let c = parse_without("phi3", &["rms_norm_eps"], json!({})).unwrap();
    assert_eq!(c.eps, 1e-5);
}

#[test]
fn mlp_bias_is_read_by_llama_only() {
    let err = parse(&variant("llama", json!({"mlp_bias": true})))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`mlp_bias`"), "{err}");
    // MistralMLP, Qwen2MLP, GemmaMLP, ...: `bias=False`, whatever the config says.
    for family in ["mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"] {
        parse(&variant(family, json!({"mlp_bias": true}))).unwrap();
    }
}

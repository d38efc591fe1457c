//! Every family at other sizes and settings than the TransformerLens references:
//! synthetic checkpoints (seeded random weights under each family's names) with
//! grouped heads of other ratios, `head_dim` apart from `d_model / n_heads`, partial
//! rotary, Llama 3.1 rotary scaling, sliding windows shorter than the input, sequential
//! NeoX blocks and attention biases; Gemma 3's local/global patterns with two rotary
//! bases and linear scaling, OLMo 2's post-norm blocks with grouped heads. Each is checked for what must hold whatever the
//! weights: sharded and bf16 files load to the same model, processing keeps
//! log-probabilities, the KV cache equals recomputing the prefix (with and without
//! left padding), greedy generation is the same with and without the cache, and the
//! hooks that fire are the ones registered.

mod common;

use candle_core::{DType, Device, Tensor, D};
use common::{max_abs_diff, variant, TempDir};
use hooklens_core::{CacheOptions, HookedModel};
use hooklens_models::convert::{synthetic_checkpoint, write_checkpoint};
use hooklens_models::{ForwardOptions, GenerateOptions, HookedTransformer, KvCache, LoadOptions};
use serde_json::json;

/// Variants that differ from the references in everything a family lets vary.
fn variants() -> Vec<(&'static str, String)> {
    vec![
        (
            "neox: half rotary, sequential blocks, 3 layers",
            variant(
                "neox",
                json!({"rotary_pct": 0.5, "use_parallel_residual": false, "num_hidden_layers": 3,
                       "hidden_size": 48, "num_attention_heads": 3, "intermediate_size": 72}),
            ),
        ),
        (
            "neox: rotary in transformers-5 keys",
            variant(
                "neox",
                json!({"rotary_pct": null, "rotary_emb_base": null,
                       "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0, "partial_rotary_factor": 0.5}}),
            ),
        ),
        (
            "llama: 6 heads over 2 kv heads, llama3 rope scaling",
            variant(
                "llama",
                json!({"hidden_size": 48, "num_attention_heads": 6, "num_key_value_heads": 2,
                       "intermediate_size": 80, "num_hidden_layers": 3, "vocab_size": 300,
                       "bos_token_id": 1, "eos_token_id": [2, 3],
                       "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8}}),
            ),
        ),
        (
            "mistral: multi-query, window 3",
            variant("mistral", json!({"num_key_value_heads": 1, "sliding_window": 3})),
        ),
        (
            "qwen2: biases, 6 heads over 3 kv heads, untied",
            variant(
                "qwen2",
                json!({"hidden_size": 48, "num_attention_heads": 6, "num_key_value_heads": 3,
                       "tie_word_embeddings": false}),
            ),
        ),
        (
            "qwen3: head_dim 24 with d_model 48",
            variant(
                "qwen3",
                json!({"hidden_size": 48, "head_dim": 24, "num_attention_heads": 4, "num_key_value_heads": 2,
                       "layer_types": ["full_attention", "full_attention", "full_attention"],
                       "num_hidden_layers": 3}),
            ),
        ),
        (
            "gemma: head_dim 32 with 2 heads of d_model 48",
            variant(
                "gemma",
                json!({"hidden_size": 48, "head_dim": 32, "num_attention_heads": 2}),
            ),
        ),
        (
            "gemma2: window 3, 3 layers, query_pre_attn_scalar 20",
            variant(
                "gemma2",
                json!({"sliding_window": 3, "num_hidden_layers": 3, "query_pre_attn_scalar": 20}),
            ),
        ),
        (
            "phi3: half rotary, window 5",
            variant("phi3", json!({"partial_rotary_factor": 0.5, "sliding_window": 5})),
        ),
        (
            "gemma3: 4 layers in a pattern of 3, window 3, linear rope scaling 4 on global layers",
            variant(
                "gemma3",
                json!({"num_hidden_layers": 4, "sliding_window_pattern": 3, "sliding_window": 3,
                       "rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
            ),
        ),
        (
            "gemma3: transformers-5 keys, 6 heads over 3 kv heads of 8, scaling on global layers",
            variant(
                "gemma3",
                json!({"num_hidden_layers": 3, "num_attention_heads": 6, "num_key_value_heads": 3, "head_dim": 8,
                       "layer_types": ["full_attention", "sliding_attention", "sliding_attention"],
                       "sliding_window_pattern": null, "sliding_window": 5, "rope_theta": null,
                       "rope_local_base_freq": null, "rope_scaling": null,
                       "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 500.0},
                                           "full_attention": {"rope_type": "linear", "factor": 2.0,
                                                              "rope_theta": 20000.0}}}),
            ),
        ),
        (
            "olmo2: 6 heads over 2 kv heads, head_dim 12 with d_model 48, linear rope scaling 3",
            variant(
                "olmo2",
                json!({"hidden_size": 48, "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 12,
                       "num_hidden_layers": 3, "rope_scaling": {"rope_type": "linear", "factor": 3.0}}),
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

fn log_probs(t: &Tensor) -> Tensor {
    candle_nn::ops::log_softmax(t, D::Minus1).unwrap()
}

#[test]
fn sharded_and_bf16_checkpoints_load_to_the_same_model() {
    for (i, (name, config)) in variants().into_iter().enumerate() {
        let weights = synthetic_checkpoint(&config, i as u64).unwrap();
        let root = TempDir::new(&format!("synthetic-files-{i}"));
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
        assert!(root.join("sharded/model.safetensors.index.json").is_file());
        let opts = LoadOptions::no_processing();
        let single = load(&root.join("single"), &opts);
        let tokens = prompt(&single, 2, 9, 1);
        let want = single.forward(&tokens).unwrap();
        let sharded = load(&root.join("sharded"), &opts).forward(&tokens).unwrap();
        assert_eq!(max_abs_diff(&sharded, &want), 0.0, "{name}: sharded");
        let bf16 = load(&root.join("bf16"), &opts).forward(&tokens).unwrap();
        let rounded = load(&root.join("rounded"), &opts).forward(&tokens).unwrap();
        assert_eq!(
            max_abs_diff(&bf16, &rounded),
            0.0,
            "{name}: a bf16 file is its values in f32"
        );
        assert!(max_abs_diff(&bf16, &want) > 0.0, "{name}: the bf16 file was rounded");
        // Kept in bf16 on request.
        let in_bf16 = load(&root.join("bf16"), &opts.clone().with_dtype(DType::BF16));
        assert_eq!(in_bf16.dtype(), DType::BF16);
        let got = in_bf16.forward(&tokens).unwrap().to_dtype(DType::F32).unwrap();
        let scale = max_abs_diff(&want, &want.zeros_like().unwrap());
        assert!(max_abs_diff(&got, &want) < 0.1 * scale, "{name}: bf16 compute");
    }
}

#[test]
fn processing_keeps_log_probs_and_hooks_fire_as_registered() {
    for (i, (name, config)) in variants().into_iter().enumerate() {
        let weights = synthetic_checkpoint(&config, 10 + i as u64).unwrap();
        let dir = TempDir::new(&format!("synthetic-proc-{i}"));
        write_checkpoint(&dir, &config, &weights, DType::F32, 1).unwrap();
        let raw = load(&dir, &LoadOptions::no_processing());
        let processed = load(&dir, &LoadOptions::default());
        let tokens = prompt(&raw, 2, 11, 2);
        let (a, cache) = raw.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
        let b = processed.forward(&tokens).unwrap();
        let (la, lb) = (log_probs(&a), log_probs(&b));
        let scale = max_abs_diff(&la, &la.zeros_like().unwrap());
        assert!(
            max_abs_diff(&la, &lb) < 1e-4 * scale,
            "{name}: {}",
            max_abs_diff(&la, &lb)
        );
        let mut fired: Vec<&str> = cache.keys().collect();
        let names = raw.hook_names();
        let mut registered: Vec<&str> = names.iter().map(String::as_str).collect();
        fired.sort();
        registered.sort();
        assert_eq!(fired, registered, "{name}");
    }
}

#[test]
fn kv_cache_and_padding_equal_recomputing() {
    for (i, (name, config)) in variants().into_iter().enumerate() {
        let weights = synthetic_checkpoint(&config, 20 + i as u64).unwrap();
        let dir = TempDir::new(&format!("synthetic-kv-{i}"));
        write_checkpoint(&dir, &config, &weights, DType::F32, 1).unwrap();
        for opts in [LoadOptions::no_processing(), LoadOptions::default()] {
            let m = load(&dir, &opts);
            let tokens = prompt(&m, 2, 12, 3);
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

            // Row 1 left-padded by 3: its real positions are the unpadded sequence's.
            let short = tokens.get(1).unwrap().narrow(0, 0, 9).unwrap();
            let pad = Tensor::zeros(3, DType::U32, &Device::Cpu).unwrap();
            let padded = Tensor::stack(&[tokens.get(0).unwrap(), Tensor::cat(&[&pad, &short], 0).unwrap()], 0).unwrap();
            let mask = Tensor::new(&[[1u32; 12], [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]], &Device::Cpu).unwrap();
            let out = m
                .forward_with(&padded, &ForwardOptions::new().attention_mask(mask))
                .unwrap()
                .logits
                .unwrap();
            let alone = m.forward(&short.unsqueeze(0).unwrap()).unwrap();
            let got = out.get(1).unwrap().narrow(0, 3, 9).unwrap();
            assert!(
                max_abs_diff(&got, &alone.squeeze(0).unwrap()) < 1e-4 * scale,
                "{name}: left padding"
            );
            assert!(
                max_abs_diff(&out.get(0).unwrap(), &full.get(0).unwrap()) < 1e-4 * scale,
                "{name}: unpadded row"
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

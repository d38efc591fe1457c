//! Every family at other sizes and settings than the TransformerLens references:
//! synthetic checkpoints (seeded random weights under each family's names) with
//! grouped heads of other ratios, `head_dim` apart from `d_model / n_heads`, partial
//! rotary, Llama 3.1 rotary scaling, sliding windows shorter than the input, sequential
//! NeoX blocks and attention biases; Gemma 3's local/global patterns with two rotary
//! bases and linear scaling, OLMo 2's post-norm blocks with grouped heads, OPT's post-LN
//! blocks, embedding projections and missing final norm. Each is checked for what must hold whatever the
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
        (
            "gpt_neo: local windows of 3, 3 layers of 3 heads",
            variant(
                "gpt_neo",
                json!({"window_size": 3, "attention_layers": ["local", "global", "local"],
                       "attention_types": [[["local", "global"], 1], [["local"], 1]],
                       "num_layers": 3, "hidden_size": 48, "num_heads": 3}),
            ),
        ),
        (
            "opt: 6 heads of d_model 48, ffn 80, untied, 3 layers",
            variant(
                "opt",
                json!({"hidden_size": 48, "word_embed_proj_dim": 48, "num_attention_heads": 6,
                       "ffn_dim": 80, "num_hidden_layers": 3, "tie_word_embeddings": false}),
            ),
        ),
        (
            "opt: no biases (enable_bias false)",
            variant("opt", json!({"enable_bias": false})),
        ),
        (
            "opt: post-LN with project_in / project_out (opt-350m's layout), 3 layers",
            variant(
                "opt",
                json!({"do_layer_norm_before": false, "word_embed_proj_dim": 32, "num_hidden_layers": 3}),
            ),
        ),
        (
            "opt: pre-LN with projections to 48, untied lm_head",
            variant("opt", json!({"word_embed_proj_dim": 48, "tie_word_embeddings": false})),
        ),
        (
            "opt: pre-LN without its final norm (_remove_final_layer_norm)",
            variant("opt", json!({"_remove_final_layer_norm": true})),
        ),
        (
            "phi: qk_layernorm, 6 heads over 2 kv heads, half rotary, tied",
            variant(
                "phi",
                json!({"hidden_size": 48, "num_attention_heads": 6, "num_key_value_heads": 2,
                       "partial_rotary_factor": 0.5, "qk_layernorm": true, "tie_word_embeddings": true,
                       "rope_theta": 500.0}),
            ),
        ),
        (
            "gptj: 6 of 8 dimensions rotated, n_inner 100, 3 layers",
            variant(
                "gptj",
                json!({"n_embd": 48, "n_head": 6, "rotary_dim": 6, "n_inner": 100, "n_layer": 3}),
            ),
        ),
        (
            "bloom: 6 heads",
            variant("bloom", json!({"hidden_size": 48, "n_head": 6})),
        ),
        (
            "bloom: 12 heads, 3 layers",
            variant("bloom", json!({"hidden_size": 96, "n_head": 12, "n_layer": 3})),
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
        if raw.cfg().is_alibi() {
            // As TransformerLens: registered for ALiBi models, never fired.
            assert!(registered.contains(&"hook_pos_embed"), "{name}");
            registered.retain(|n| *n != "hook_pos_embed");
        }
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

/// A synthetic checkpoint of each classic family: LayerNorm gains (whatever the
/// family calls them) are drawn around 1, biases are there and small, as in the
/// TransformerLens references.
#[test]
fn synthetic_layer_norms_have_gains_near_one_and_biases() {
    for family in ["gpt_neo", "opt", "phi", "gptj", "bloom"] {
        let config = variant(family, json!({}));
        let weights = synthetic_checkpoint(&config, 7).unwrap();
        let mean = |t: &Tensor| t.mean_all().unwrap().to_scalar::<f32>().unwrap();
        let mut gains = 0;
        for (name, t) in &weights {
            let norm = ["ln_1", "ln_2", "ln_f", "layernorm", "layer_norm"]
                .iter()
                .any(|n| name.contains(n));
            if norm && name.ends_with(".weight") {
                gains += 1;
                assert!((mean(t) - 1.0).abs() < 0.2, "{family}: {name} has mean {}", mean(t));
            } else if name.ends_with(".bias") {
                let size = max_abs_diff(t, &t.zeros_like().unwrap());
                assert!(size > 0.0 && size < 0.5, "{family}: {name}");
            }
        }
        // Two layers: two norms per block (one for GPT-J's and Phi's parallel blocks),
        // the final norm, and BLOOM's embedding norm.
        let want = match family {
            "gptj" | "phi" => 3,
            "bloom" => 6,
            _ => 5,
        };
        assert_eq!(gains, want, "{family}: every LayerNorm gain");
    }
}

/// GPT-Neo's local layers attend to the last `window_size` positions only (the
/// reference's window is longer than its prompt): with a window of 3 on 11 tokens, a
/// local layer's pattern is zero beyond it and a global layer's is not.
#[test]
fn gpt_neo_local_layers_see_their_window_only() {
    let config = variant(
        "gpt_neo",
        json!({"window_size": 3, "attention_layers": ["local", "global"], "attention_types": null}),
    );
    let dir = TempDir::new("synthetic-neo-window");
    write_checkpoint(&dir, &config, &synthetic_checkpoint(&config, 3).unwrap(), DType::F32, 1).unwrap();
    let m = load(&dir, &LoadOptions::no_processing());
    let tokens = prompt(&m, 1, 11, 4);
    let (_, cache) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
    for (layer, window) in [(0, Some(3)), (1, None)] {
        let pattern = cache[&format!("blocks.{layer}.attn.hook_pattern")]
            .squeeze(0)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        for head in &pattern {
            for (i, row) in head.iter().enumerate() {
                for (j, &w) in row.iter().enumerate() {
                    let visible = j <= i && window.is_none_or(|w| i - j < w);
                    assert_eq!(w > 0.0, visible, "layer {layer}: query {i}, key {j}: {w}");
                }
            }
        }
    }
}

/// BLOOM with 6 heads (not a power of two): `hook_attn_scores` minus the scaled
/// `q . k` is Hugging Face's ALiBi slope of each head times `j - i` (2^(-2(h+1)) for
/// the first four heads, then 2^-1 and 2^-3), on a prompt and on a KV-cached step.
#[test]
fn bloom_alibi_uses_hugging_faces_slopes_for_six_heads() {
    let config = variant("bloom", json!({"hidden_size": 48, "n_head": 6}));
    let dir = TempDir::new("synthetic-bloom-alibi");
    write_checkpoint(&dir, &config, &synthetic_checkpoint(&config, 5).unwrap(), DType::F32, 1).unwrap();
    let m = load(&dir, &LoadOptions::no_processing());
    let slopes = [0.25f32, 0.0625, 0.015625, 0.00390625, 0.5, 0.125];
    let tokens = prompt(&m, 1, 7, 6);
    let check = |cache: &hooklens_core::ActivationCache, offset: usize, what: &str| {
        let q = cache["blocks.1.attn.hook_q"]
            .squeeze(0)
            .unwrap()
            .transpose(0, 1)
            .unwrap();
        let k = cache["blocks.1.attn.hook_k"]
            .squeeze(0)
            .unwrap()
            .transpose(0, 1)
            .unwrap();
        let raw = (q
            .contiguous()
            .unwrap()
            .matmul(&k.contiguous().unwrap().t().unwrap())
            .unwrap()
            / 8f64.sqrt())
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
        let scores = cache["blocks.1.attn.hook_attn_scores"]
            .squeeze(0)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        for (h, slope) in slopes.iter().enumerate() {
            for (i, row) in scores[h].iter().enumerate() {
                for (j, &s) in row.iter().enumerate() {
                    let qi = offset + i;
                    if j > qi {
                        assert_eq!(s, f32::NEG_INFINITY, "{what}: head {h}, query {qi}, key {j}");
                        continue;
                    }
                    let want = raw[h][i][j] + slope * (j as f32 - qi as f32);
                    assert!(
                        (s - want).abs() < 1e-4,
                        "{what}: head {h}, query {qi}, key {j}: {s} vs {want}"
                    );
                }
            }
        }
    };
    let (_, cache) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
    check(&cache, 0, "prompt");
    // One more token through the KV cache: its scores against all 8 keys, the cached
    // keys included (hook_k holds only the new key: the cached ones are recomputed).
    let mut kv = KvCache::new();
    m.forward_with_kv(&tokens, &ForwardOptions::new(), &mut kv).unwrap();
    let next = prompt(&m, 1, 1, 9);
    let (_, step) = m
        .run_with_cache(CacheOptions::new(), |m| {
            m.forward_with_kv(&next, &ForwardOptions::new(), &mut kv)
                .map(|out| out.logits)
        })
        .unwrap();
    let all = Tensor::cat(&[&tokens, &next], 1).unwrap();
    let (_, full) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&all)).unwrap();
    let got = step["blocks.1.attn.hook_attn_scores"].squeeze(2).unwrap();
    let want = full["blocks.1.attn.hook_attn_scores"]
        .narrow(2, 7, 1)
        .unwrap()
        .squeeze(2)
        .unwrap();
    assert!(
        max_abs_diff(&got, &want) < 1e-4,
        "the cached step's scores, ALiBi included"
    );
    check(&full, 0, "prompt and one more token");
}

/// Phi with `qk_layernorm` and grouped key/value heads (which TransformerLens reads
/// neither of), against a computation by hand from the checkpoint's tensors as
/// Hugging Face's `PhiAttention` does it: q/k projections, a LayerNorm with gain and
/// bias over each head, rotary on pairs `(i, i + 2)` of the first 4 of 8 dimensions,
/// then `q . k / sqrt(8)` with query head `h` reading key head `h / 3`.
#[test]
fn phi_qk_layernorm_matches_a_hand_computation() {
    let config = variant(
        "phi",
        json!({"hidden_size": 48, "num_attention_heads": 6, "num_key_value_heads": 2,
               "partial_rotary_factor": 0.5, "qk_layernorm": true, "rope_theta": 500.0}),
    );
    let weights = synthetic_checkpoint(&config, 11).unwrap();
    let dir = TempDir::new("synthetic-phi-qk");
    write_checkpoint(&dir, &config, &weights, DType::F32, 1).unwrap();
    let m = load(&dir, &LoadOptions::no_processing());
    let p = 6;
    let tokens = prompt(&m, 1, p, 8);
    let (_, cache) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
    let (n_heads, n_kv, dh, rot, eps) = (6, 2, 8, 4, 1e-5f32);
    let vec1 = |name: &str| weights[name].to_vec1::<f32>().unwrap();
    let mat = |name: &str| weights[name].to_vec2::<f32>().unwrap();
    let x = cache["blocks.0.ln1.hook_normalized"]
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let a = "model.layers.0.self_attn";
    // [pos][head][d_head] after projection, per-head LayerNorm and rotary.
    let heads = |which: &str, n: usize| -> Vec<Vec<Vec<f32>>> {
        let (w, b) = (
            mat(&format!("{a}.{which}_proj.weight")),
            vec1(&format!("{a}.{which}_proj.bias")),
        );
        let (g, nb) = (
            vec1(&format!("{a}.{which}_layernorm.weight")),
            vec1(&format!("{a}.{which}_layernorm.bias")),
        );
        (0..p)
            .map(|t| {
                (0..n)
                    .map(|h| {
                        let y: Vec<f32> = (0..dh)
                            .map(|i| {
                                let row = &w[h * dh + i];
                                b[h * dh + i] + row.iter().zip(&x[t]).map(|(a, b)| a * b).sum::<f32>()
                            })
                            .collect();
                        let mean = y.iter().sum::<f32>() / dh as f32;
                        let var = y.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / dh as f32;
                        let n: Vec<f32> = (0..dh)
                            .map(|i| (y[i] - mean) / (var + eps).sqrt() * g[i] + nb[i])
                            .collect();
                        let mut out = n.clone();
                        for i in 0..rot / 2 {
                            let angle = t as f64 * 500f64.powf(-(2.0 * i as f64) / rot as f64);
                            let (c, s) = (angle.cos() as f32, angle.sin() as f32);
                            out[i] = n[i] * c - n[i + rot / 2] * s;
                            out[i + rot / 2] = n[i + rot / 2] * c + n[i] * s;
                        }
                        out
                    })
                    .collect()
            })
            .collect()
    };
    let (q, k) = (heads("q", n_heads), heads("k", n_kv));
    let close = |what: &str, got: &Tensor, want: Vec<f32>| {
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 1e-4, "{what}[{i}]: {a} vs {b}");
        }
    };
    close("hook_rot_q", &cache["blocks.0.attn.hook_rot_q"], q.concat().concat());
    close("hook_rot_k", &cache["blocks.0.attn.hook_rot_k"], k.concat().concat());
    let mut scores = Vec::new();
    for h in 0..n_heads {
        for (i, q_i) in q.iter().enumerate() {
            for (j, k_j) in k.iter().enumerate() {
                scores.push(if j > i {
                    f32::NEG_INFINITY
                } else {
                    q_i[h].iter().zip(&k_j[h / 3]).map(|(a, b)| a * b).sum::<f32>() / (dh as f32).sqrt()
                });
            }
        }
    }
    let got = cache["blocks.0.attn.hook_attn_scores"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (i, (a, b)) in got.iter().zip(&scores).enumerate() {
        assert!(a == b || (a - b).abs() < 1e-4, "hook_attn_scores[{i}]: {a} vs {b}");
    }
    // The norm really is there: without it the rotated queries differ.
    assert!(
        max_abs_diff(
            &cache["blocks.0.attn.hook_q"],
            &cache["blocks.0.attn.q_norm.hook_normalized"]
                .reshape((1, p, n_heads, dh))
                .unwrap()
        ) > 1e-2
    );
}

/// Published checkpoints of the classic families come with their causal-LM class's
/// prefix (`transformer.`, `model.`) or without it (the base model's names, as some
/// on the Hub are saved): the reference checkpoint with the prefix taken off loads to
/// the same model.
#[test]
fn classic_checkpoints_load_with_or_without_their_prefix() {
    for (family, prefix) in [
        ("gpt_neo", "transformer."),
        ("gptj", "transformer."),
        ("opt", "model."),
        ("bloom", "transformer."),
    ] {
        let dir = hooklens_testutil::testdata().join(family).join("model");
        let tensors = hooklens_testutil::load_tensors(dir.join("model.safetensors"));
        let stripped: std::collections::HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, t)| (k.strip_prefix(prefix).unwrap_or(k).to_string(), t.clone()))
            .collect();
        assert!(stripped.keys().all(|k| !k.starts_with(prefix)), "{family}");
        let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let tmp = TempDir::new(&format!("unprefixed-{family}"));
        write_checkpoint(&tmp, &config, &stripped, DType::F32, 1).unwrap();
        let want = load(&dir, &LoadOptions::default());
        let got = load(&tmp, &LoadOptions::default());
        let tokens = prompt(&want, 2, 8, 5);
        assert_eq!(
            max_abs_diff(&got.forward(&tokens).unwrap(), &want.forward(&tokens).unwrap()),
            0.0,
            "{family}"
        );
    }
}

/// The classic families' parameters in `state_dict` under TransformerLens's names:
/// BLOOM's `embed.ln.w` / `embed.ln.b` (kept by processing), GPT-J's and Phi's `b_U`
/// (`lm_head.bias`, centred by processing), a parallel block's `ln2` equal to `ln1`.
#[test]
fn state_dict_has_the_classic_families_parameters() {
    let dir = |family: &str| hooklens_testutil::testdata().join(family).join("model");
    let sd = |family: &str, opts: &LoadOptions| -> std::collections::HashMap<String, Tensor> {
        load(&dir(family), opts).state_dict().unwrap().into_iter().collect()
    };
    let bloom = hooklens_testutil::load_tensors(dir("bloom").join("model.safetensors"));
    for opts in [LoadOptions::no_processing(), LoadOptions::default()] {
        let got = sd("bloom", &opts);
        for (ours, theirs) in [("embed.ln.w", "weight"), ("embed.ln.b", "bias")] {
            let want = &bloom[&format!("transformer.word_embeddings_layernorm.{theirs}")];
            assert_eq!(max_abs_diff(&got[ours], want), 0.0, "bloom: {ours}");
        }
    }
    for family in ["gptj", "phi"] {
        let b_u = &hooklens_testutil::load_tensors(dir(family).join("model.safetensors"))["lm_head.bias"];
        let raw = sd(family, &LoadOptions::no_processing());
        assert_eq!(max_abs_diff(&raw["unembed.b_U"], b_u), 0.0, "{family}: b_U");
        assert_eq!(
            max_abs_diff(&raw["blocks.0.ln2.w"], &raw["blocks.0.ln1.w"]),
            0.0,
            "{family}: ln2 is ln1"
        );
        let processed = sd(family, &LoadOptions::default());
        let mean = processed["unembed.b_U"].mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(mean.abs() < 1e-6, "{family}: b_U centred");
    }
}

//! Seeded random GPT-2 weights in the Hugging Face layout, and writing a checkpoint.
//!
//! Benchmarks need a GPT-2-small-shaped model without a download, and training starts
//! from GPT-2's initialisation; both must be reproducible from a seed, which candle's
//! CPU random generator is not. Weights follow GPT-2's init: normal(0, 0.02) for
//! matrices and embeddings, LayerNorm gains 1, biases 0.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use hooklens_core::__internal::save_safetensors;
use hooklens_core::{Error, Result};

use crate::config::{ActFn, TransformerConfig};
use crate::ops::SeededRng;

/// GPT-2's initialisation for `cfg`, seeded: tensors by Hugging Face name (no
/// `transformer.` prefix, no `lm_head`: tied to `wte`), f32 on the CPU.
/// Shapes: `wte` `[d_vocab, d_model]`, `wpe` `[n_ctx, d_model]`, `h.{i}.attn.c_attn.weight`
/// `[d_model, 3*d_model]`, `h.{i}.mlp.c_fc.weight` `[d_model, d_mlp]`, ...
pub fn random_weights(cfg: &TransformerConfig, seed: u64) -> Result<HashMap<String, Tensor>> {
    let (d, m) = (cfg.d_model, cfg.d_mlp);
    let mut rng = SeededRng::new(seed);
    let mut w = HashMap::new();
    let ones = |n: usize| Tensor::ones(n, DType::F32, &Device::Cpu);
    let zeros = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu);
    w.insert("wte.weight".to_string(), rng.normal_tensor(&[cfg.d_vocab, d], 0.02)?);
    w.insert("wpe.weight".to_string(), rng.normal_tensor(&[cfg.n_ctx, d], 0.01)?);
    for i in 0..cfg.n_layers {
        let p = |s: &str| format!("h.{i}.{s}");
        w.insert(p("ln_1.weight"), ones(d)?);
        w.insert(p("ln_1.bias"), zeros(d)?);
        w.insert(p("attn.c_attn.weight"), rng.normal_tensor(&[d, 3 * d], 0.02)?);
        w.insert(p("attn.c_attn.bias"), zeros(3 * d)?);
        w.insert(p("attn.c_proj.weight"), rng.normal_tensor(&[d, d], 0.02)?);
        w.insert(p("attn.c_proj.bias"), zeros(d)?);
        w.insert(p("ln_2.weight"), ones(d)?);
        w.insert(p("ln_2.bias"), zeros(d)?);
        w.insert(p("mlp.c_fc.weight"), rng.normal_tensor(&[d, m], 0.02)?);
        w.insert(p("mlp.c_fc.bias"), zeros(m)?);
        w.insert(p("mlp.c_proj.weight"), rng.normal_tensor(&[m, d], 0.02)?);
        w.insert(p("mlp.c_proj.bias"), zeros(d)?);
    }
    w.insert("ln_f.weight".to_string(), ones(d)?);
    w.insert("ln_f.bias".to_string(), zeros(d)?);
    Ok(w)
}

/// The Hugging Face `config.json` text for `cfg`.
pub fn hf_config_json(cfg: &TransformerConfig) -> String {
    let act = match cfg.act_fn {
        ActFn::GeluNew => "gelu_new",
        ActFn::Gelu => "gelu",
        ActFn::Relu => "relu",
        ActFn::Silu => "silu",
    };
    let value = serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": act,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_embd": cfg.d_model,
        "n_inner": cfg.d_mlp,
        "n_positions": cfg.n_ctx,
        "n_ctx": cfg.n_ctx,
        "vocab_size": cfg.d_vocab,
        "layer_norm_epsilon": cfg.eps,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
    });
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// Writes `weights` (Hugging Face names) as `dir/model.safetensors` in `dtype`, and
/// `dir/config.json` for `cfg`: a directory `HookedTransformer::from_dir` loads. Both files
/// are written to temporary names and renamed when complete.
pub fn save_hf_checkpoint(
    dir: impl AsRef<Path>,
    cfg: &TransformerConfig,
    weights: &HashMap<String, Tensor>,
    dtype: DType,
) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let converted: Vec<(String, Tensor)> = weights
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let refs: Vec<(&str, &Tensor)> = converted.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    save_safetensors(&dir.join("model.safetensors"), refs, meta)?;
    let config = dir.join("config.json");
    let tmp = dir.join(".config.json.tmp");
    std::fs::write(&tmp, hf_config_json(cfg)).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &config).map_err(|e| Error::io(&config, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HookedTransformer, LoadOptions};

    #[test]
    fn same_seed_same_weights_and_they_load() {
        let cfg = TransformerConfig::new(2, 32, 4, 100, 16);
        let a = random_weights(&cfg, 7).unwrap();
        let b = random_weights(&cfg, 7).unwrap();
        let c = random_weights(&cfg, 8).unwrap();
        let same = hooklens_testutil::max_abs_diff;
        assert_eq!(same(&a["wte.weight"], &b["wte.weight"]), 0.0);
        assert!(same(&a["wte.weight"], &c["wte.weight"]) > 0.0);
        let dir = std::env::temp_dir().join(format!("hooklens-random-init-{}", std::process::id()));
        save_hf_checkpoint(&dir, &cfg, &a, DType::F16).unwrap();
        let model = HookedTransformer::from_dir(&dir, &LoadOptions::no_processing()).unwrap();
        assert_eq!(model.cfg().n_layers, 2);
        assert_eq!(model.cfg().d_vocab, 100);
        let tokens = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
        assert_eq!(model.forward(&tokens).unwrap().dims(), &[1, 3, 100]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

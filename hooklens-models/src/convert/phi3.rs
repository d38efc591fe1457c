//! Phi-3 (`Phi3ForCausalLM`): the Llama arrangement with fused projections:
//! `self_attn.qkv_proj` `[(n_heads + 2 n_kv) * d_head, d_model]` stacks all query
//! heads, then all key heads, then all value heads, and `mlp.gate_up_proj`
//! `[2 d_mlp, d_model]` is the gate over the up projection. `sliding_window`, when
//! set, applies to every layer and `partial_rotary_factor` to the rotary width, as in
//! Hugging Face (TransformerLens 2.16.1 ignores both); `longrope` scaling is refused.

use candle_core::Tensor;
use hooklens_core::Result;

use super::hf_config::HfConfig;
use super::llama::{llama_config, sliding_windows};
use super::Family;
use super::{finish, linear_weight};
use crate::config::TransformerConfig;
use crate::loading::TensorSource;
use crate::model::params::{LayerWeights, TransformerWeights};

/// The Phi-3 family.
pub(crate) const FAMILY: Family = Family {
    name: "Phi-3",
    model_types: &["phi3"],
    classes: &["Phi3ForCausalLM"],
    config,
    weights,
};

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    let mut cfg = llama_config(hf, false)?;
    sliding_windows(hf, &mut cfg, 0)?;
    Ok(cfg)
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, _origin: &str) -> Result<TransformerWeights> {
    let (d, v, h, kv, dh, mlp) = (
        cfg.d_model,
        cfg.d_vocab,
        cfg.n_heads,
        cfg.n_kv_heads(),
        cfg.d_head,
        cfg.d_mlp,
    );
    let w_e = src.get("model.embed_tokens.weight", &[v, d])?;
    let device = w_e.device().clone();
    let zeros = |n: usize| Tensor::zeros(n, src.dtype(), &device);
    let norm = |name: &str| -> Result<_> { Ok(Some((src.get(&format!("{name}.weight"), &[d])?, None))) };
    let mut layers = Vec::new();
    for i in 0..cfg.n_layers {
        let p = format!("model.layers.{i}");
        let qkv = (h + 2 * kv) * dh;
        // [gate; up] rows: once transposed, the gate's columns then the up projection's.
        let gate_up = linear_weight(src, &format!("{p}.mlp.gate_up_proj.weight"), 2 * mlp, d)?;
        layers.push(LayerWeights {
            ln1: norm(&format!("{p}.input_layernorm"))?,
            ln1_post: None,
            ln2: norm(&format!("{p}.post_attention_layernorm"))?,
            ln2_post: None,
            // [q; k; v] rows are already the model's q | k | v columns once transposed.
            w_qkv: linear_weight(src, &format!("{p}.self_attn.qkv_proj.weight"), qkv, d)?,
            b_qkv: zeros(qkv)?,
            q_norm: None,
            k_norm: None,
            w_o: linear_weight(src, &format!("{p}.self_attn.o_proj.weight"), d, h * dh)?,
            b_o: zeros(d)?,
            w_gate: Some(gate_up.narrow(1, 0, mlp)?.contiguous()?),
            w_in: gate_up.narrow(1, mlp, mlp)?.contiguous()?,
            b_in: zeros(mlp)?,
            w_out: linear_weight(src, &format!("{p}.mlp.down_proj.weight"), d, mlp)?,
            b_out: zeros(d)?,
        });
    }
    finish(
        src,
        cfg,
        w_e,
        None,
        layers,
        norm("model.norm")?,
        "lm_head.weight",
        cfg.tie_word_embeddings,
    )
}

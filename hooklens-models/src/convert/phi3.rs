//! Phi-3 (`Phi3ForCausalLM`): the Llama arrangement with fused projections:
//! `self_attn.qkv_proj` `[(n_heads + 2 n_kv) * d_head, d_model]` stacks all query
//! heads, then all key heads, then all value heads, and `mlp.gate_up_proj`
//! `[2 d_mlp, d_model]` is the gate over the up projection. `sliding_window`, when
//! set, applies to every layer and `partial_rotary_factor` to the rotary width, as in
//! Hugging Face (TransformerLens 2.16.1 ignores both); `longrope` scaling is refused.

use hooklens_core::Result;
use serde_json::json;

use super::family::Family;
use super::hf_config::HfConfig;
use super::llama::{llama_config, read_llama_layout, sliding_windows, LlamaLayout, LLAMA_FIELDS, SLIDING_FIELDS};
use crate::config::{ActFn, TransformerConfig};
use crate::loading::TensorSource;
use crate::params::TransformerWeights;

/// The Phi-3 family.
pub(crate) const FAMILY: Family = Family {
    name: "Phi-3",
    model_types: &["phi3"],
    classes: &["Phi3ForCausalLM"],
    fields: &[LLAMA_FIELDS, SLIDING_FIELDS],
    config,
    weights,
};

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    // Phi3Config's default: `rms_norm_eps: float = 1e-5`.
    let hf = &hf.with_absent(&[("rms_norm_eps", json!(1e-5))]);
    let mut cfg = llama_config(hf, false, "hidden_act", ActFn::Silu)?;
    // Hugging Face builds every projection with `bias=False`, whatever the config says.
    cfg.attention_bias = Some(false);
    sliding_windows(hf, &mut cfg, 0)?;
    // Phi3RotaryEmbedding rotates `int(head_dim * partial_rotary_factor)` dimensions.
    let fraction = hf.rotary_fraction(None, 1.0)?;
    cfg.rotary_dim = Some(((fraction * cfg.d_head as f64) as usize).max(2) & !1);
    Ok(cfg)
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, origin: &str) -> Result<TransformerWeights> {
    let layout = LlamaLayout {
        fused_projections: true,
        ..LlamaLayout::default()
    };
    read_llama_layout(src, cfg, origin, &layout)
}

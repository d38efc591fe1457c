//! Qwen 3 (`Qwen3ForCausalLM`): the Llama layout plus an RMSNorm over each query and
//! key head (`self_attn.q_norm`, `k_norm`, `[head_dim]`) before rotary; `head_dim` is
//! independent of `hidden_size`. TransformerLens does not prepend BOS by default.

use hooklens_core::Result;
use serde_json::json;

use super::family::Family;
use super::hf_config::HfConfig;
use super::llama::{attention_bias, read_llama_layout, LlamaLayout, LLAMA_FIELDS, SLIDING_FIELDS};
use super::qwen2::{qwen_config, QWEN_FIELDS};
use crate::config::TransformerConfig;
use crate::loading::TensorSource;
use crate::params::TransformerWeights;

/// The Qwen 3 family.
pub(crate) const FAMILY: Family = Family {
    name: "Qwen 3",
    model_types: &["qwen3"],
    classes: &["Qwen3ForCausalLM"],
    fields: &[LLAMA_FIELDS, SLIDING_FIELDS, QWEN_FIELDS],
    config,
    weights,
};

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    // Qwen3Config's default: `head_dim: int = 128`.
    let hf = &hf.with_absent(&[("head_dim", json!(128))]);
    let mut cfg = qwen_config(hf)?;
    cfg.use_qk_norm = true;
    cfg.attention_bias = Some(attention_bias(hf)?);
    Ok(cfg)
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, origin: &str) -> Result<TransformerWeights> {
    let layout = LlamaLayout {
        qk_norm: true,
        ..LlamaLayout::default()
    };
    read_llama_layout(src, cfg, origin, &layout)
}

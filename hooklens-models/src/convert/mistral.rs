//! Mistral (`MistralForCausalLM`): the Llama layout, with a sliding window in every
//! layer when `sliding_window` is set (Mistral-7B-v0.1: 4096; v0.2 on: none).

use hooklens_core::Result;
use serde_json::json;

use super::family::Family;
use super::hf_config::HfConfig;
use super::llama::{llama_config, read_llama_layout, sliding_windows, LlamaLayout, LLAMA_FIELDS, SLIDING_FIELDS};
use crate::config::{ActFn, TransformerConfig};
use crate::loading::TensorSource;
use crate::params::TransformerWeights;

/// The Mistral family.
pub(crate) const FAMILY: Family = Family {
    name: "Mistral",
    model_types: &["mistral"],
    classes: &["MistralForCausalLM"],
    fields: &[LLAMA_FIELDS, SLIDING_FIELDS],
    config,
    weights,
};

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    // MistralConfig's defaults: `num_key_value_heads: int = 8`, `sliding_window: int | None = 4096`.
    let hf = &hf.with_absent(&[("num_key_value_heads", json!(8)), ("sliding_window", json!(4096))]);
    let mut cfg = llama_config(hf, false, "hidden_act", ActFn::Silu)?;
    // Hugging Face builds every projection with `bias=False`, whatever the config says.
    cfg.attention_bias = Some(false);
    sliding_windows(hf, &mut cfg, 0)?;
    Ok(cfg)
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, origin: &str) -> Result<TransformerWeights> {
    read_llama_layout(src, cfg, origin, &LlamaLayout::default())
}

//! Mistral (`MistralForCausalLM`): the Llama layout, with a sliding window in every
//! layer when `sliding_window` is set (Mistral-7B-v0.1: 4096; v0.2 on: none).

use hooklens_core::Result;

use super::hf_config::HfConfig;
use super::llama::{llama_config, read_llama_layout, sliding_windows, LlamaLayout};
use super::Family;
use crate::config::TransformerConfig;
use crate::loading::TensorSource;
use crate::model::params::TransformerWeights;

/// The Mistral family.
pub(crate) const FAMILY: Family = Family {
    name: "Mistral",
    model_types: &["mistral"],
    classes: &["MistralForCausalLM"],
    config,
    weights,
};

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    let mut cfg = llama_config(hf, false)?;
    sliding_windows(hf, &mut cfg, 0)?;
    Ok(cfg)
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, origin: &str) -> Result<TransformerWeights> {
    read_llama_layout(src, cfg, origin, &LlamaLayout::default())
}

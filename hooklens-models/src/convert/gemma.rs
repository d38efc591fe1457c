//! Gemma (`GemmaForCausalLM`): the Llama layout with the embedding scaled by
//! `sqrt(d_model)`, RMSNorm gains applied as `1 + w`, a GELU-tanh gate whatever
//! `hidden_act` says (as Hugging Face), and tied embeddings.

use hooklens_core::Result;

use super::hf_config::HfConfig;
use super::llama::{llama_config, read_llama_layout, LlamaLayout};
use super::Family;
use crate::config::{ActFn, TransformerConfig};
use crate::loading::TensorSource;
use crate::model::params::TransformerWeights;

/// The Gemma family.
pub(crate) const FAMILY: Family = Family {
    name: "Gemma",
    model_types: &["gemma"],
    classes: &["GemmaForCausalLM"],
    config,
    weights,
};

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    let mut cfg = llama_config(hf, true)?;
    gemma_common(&mut cfg);
    Ok(cfg)
}

/// What Gemma and Gemma 2 share beyond the Llama config.
pub(super) fn gemma_common(cfg: &mut TransformerConfig) {
    cfg.act_fn = ActFn::GeluNew;
    cfg.embed_scale = Some((cfg.d_model as f64).sqrt());
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, origin: &str) -> Result<TransformerWeights> {
    let layout = LlamaLayout {
        norm_plus_one: true,
        ..LlamaLayout::default()
    };
    read_llama_layout(src, cfg, origin, &layout)
}

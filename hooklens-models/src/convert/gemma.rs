//! Gemma (`GemmaForCausalLM`): the Llama layout with the embedding scaled by
//! `sqrt(d_model)`, RMSNorm gains applied as `1 + w`, the gate's activation from
//! `hidden_act` (GELU-tanh by default, and for the legacy `"gelu"`, as Hugging Face),
//! and tied embeddings.

use hooklens_core::Result;
use serde_json::json;

use super::family::Family;
use super::hf_config::HfConfig;
use super::llama::{attention_bias, llama_config, read_llama_layout, LlamaLayout, LLAMA_FIELDS};
use crate::config::{ActFn, TransformerConfig};
use crate::loading::TensorSource;
use crate::params::TransformerWeights;

/// The Gemma family.
pub(crate) const FAMILY: Family = Family {
    name: "Gemma",
    model_types: &["gemma"],
    classes: &["GemmaForCausalLM"],
    fields: &[LLAMA_FIELDS],
    config,
    weights,
};

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    // GemmaConfig's defaults: `head_dim: int = 256`, `num_key_value_heads: int = 16`.
    let hf = &hf.with_absent(&[("head_dim", json!(256)), ("num_key_value_heads", json!(16))]);
    // Hugging Face's GemmaMLP: `ACT2FN[config.hidden_act]` (default "gelu_pytorch_tanh"),
    // `hidden_activation` unread; GemmaConfig replaces the legacy "gelu" of the official
    // releases by "gelu_pytorch_tanh" (transformers 5).
    let legacy_gelu = hf.get("hidden_act").and_then(|v| v.as_str()) == Some("gelu");
    let mut cfg = llama_config(hf, true, "hidden_act", ActFn::GeluNew)?;
    if legacy_gelu {
        cfg.act_fn = ActFn::GeluNew;
    }
    gemma_common(hf, &mut cfg)?;
    Ok(cfg)
}

/// What Gemma and Gemma 2 share beyond the Llama config.
pub(super) fn gemma_common(hf: &HfConfig, cfg: &mut TransformerConfig) -> Result<()> {
    cfg.embed_scale = Some((cfg.d_model as f64).sqrt());
    cfg.attention_bias = Some(attention_bias(hf)?);
    Ok(())
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, origin: &str) -> Result<TransformerWeights> {
    let layout = LlamaLayout {
        norm_plus_one: true,
        ..LlamaLayout::default()
    };
    read_llama_layout(src, cfg, origin, &layout)
}

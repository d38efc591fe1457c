//! OLMo 2 (`Olmo2ForCausalLM`): the Llama layout without norms before attention and
//! the MLP; instead an RMSNorm after each (`post_attention_layernorm`,
//! `post_feedforward_layernorm`, plain `w` gains), applied to the branch's output before
//! the residual add. The q/k RMSNorms (`self_attn.q_norm` `[heads * head_dim]`,
//! `k_norm` `[kv_heads * head_dim]`) normalise a position's whole projection, every
//! head together, before the split into heads and rotary.

use hooklens_core::Result;
use serde_json::json;

use super::family::Family;
use super::hf_config::HfConfig;
use super::llama::{attention_bias, llama_config, read_llama_layout, LlamaLayout, LLAMA_FIELDS};
use crate::config::{ActFn, QkNormOver, TransformerConfig};
use crate::loading::TensorSource;
use crate::params::TransformerWeights;

/// The OLMo 2 family.
pub(crate) const FAMILY: Family = Family {
    name: "OLMo 2",
    model_types: &["olmo2"],
    classes: &["Olmo2ForCausalLM"],
    fields: &[LLAMA_FIELDS],
    config,
    weights,
};

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    // Olmo2Config's defaults where they differ from what `llama_config` assumes.
    let hf = &hf.with_absent(&[("rms_norm_eps", json!(1e-5))]);
    let mut cfg = llama_config(hf, false, "hidden_act", ActFn::Silu)?;
    cfg.attention_bias = Some(attention_bias(hf)?);
    cfg.use_normalization_before = false;
    cfg.use_normalization_before_and_after = true;
    cfg.use_qk_norm = true;
    cfg.qk_norm_over = QkNormOver::Projection;
    Ok(cfg)
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, origin: &str) -> Result<TransformerWeights> {
    let layout = LlamaLayout {
        post_norms_only: true,
        qk_norm: true,
        ..LlamaLayout::default()
    };
    read_llama_layout(src, cfg, origin, &layout)
}

//! OLMoE (`OlmoeForCausalLM`): Llama's pre-norm blocks with OLMo 2's q/k RMSNorms over
//! a position's whole projection (`self_attn.q_norm` `[hidden_size]`, `k_norm`
//! `[kv_heads * head_dim]`, before the split into heads and rotary), and a sparse
//! mixture of `num_experts` SwiGLU experts of width `intermediate_size`,
//! `num_experts_per_tok` per token, whose top-k probabilities are not renormalised
//! unless `norm_topk_prob` (false in OLMoE-1B-7B: the mixing weights sum to less than
//! 1). Checkpoint: `mlp.gate` (the router) and `mlp.experts.{e}.{gate,up,down}_proj`.

use hooklens_core::Result;
use serde_json::{json, Value};

use super::family::Family;
use super::hf_config::HfConfig;
use super::llama::{attention_bias, llama_config, read_llama_layout, LlamaLayout, LLAMA_FIELDS};
use super::moe::{read_experts, set_experts, MOE_FIELDS};
use super::qwen3_moe::MLP_EXPERTS;
use crate::config::{ActFn, QkNormOver, TransformerConfig};
use crate::loading::TensorSource;
use crate::params::TransformerWeights;

/// The OLMoE family.
pub(crate) const FAMILY: Family = Family {
    name: "OLMoE",
    model_types: &["olmoe"],
    classes: &["OlmoeForCausalLM"],
    fields: &[LLAMA_FIELDS, MOE_FIELDS, &["clip_qkv"]],
    config,
    weights,
};

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    // OlmoeConfig's defaults where they differ from the Llama readers'.
    let hf = &hf.with_absent(&[("rms_norm_eps", json!(1e-5))]);
    // `clip_qkv` clamps the q/k/v projections to [-c, c] before the norms.
    match hf.get("clip_qkv") {
        None | Some(Value::Null) => {}
        Some(v) => {
            return Err(hf.bad(format!(
                "field `clip_qkv` is {v}: clamping the q/k/v projections is not supported (only null)"
            )))
        }
    }
    let mut cfg = llama_config(hf, false, "hidden_act", ActFn::Silu)?;
    // OlmoeAttention sizes q_norm by `hidden_size`: the whole query projection only
    // when the heads span d_model.
    if cfg.n_heads * cfg.d_head != cfg.d_model {
        return Err(hf.bad(format!(
            "field `head_dim` ({}) times `num_attention_heads` ({}) is not `hidden_size` ({}): \
             OLMoE's query norm has hidden_size gains",
            cfg.d_head, cfg.n_heads, cfg.d_model
        )));
    }
    cfg.attention_bias = Some(attention_bias(hf)?);
    cfg.use_qk_norm = true;
    cfg.qk_norm_over = QkNormOver::Projection;
    set_experts(hf, &mut cfg, &["num_experts", "num_local_experts"], 64, 8, false)?;
    Ok(cfg)
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, origin: &str) -> Result<TransformerWeights> {
    let layout = LlamaLayout {
        qk_norm: true,
        sparse_mlp: true,
        ..LlamaLayout::default()
    };
    let mut w = read_llama_layout(src, cfg, origin, &layout)?;
    w.moe = read_experts(src, cfg, &MLP_EXPERTS)?;
    Ok(w)
}

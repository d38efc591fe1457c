//! Qwen3-MoE (`Qwen3MoeForCausalLM`): Qwen 3's attention (an RMSNorm over each query
//! and key head before rotary, `head_dim` from the config) and a sparse mixture of
//! `num_experts` SwiGLU experts of width `moe_intermediate_size`, `num_experts_per_tok`
//! per token, renormalised when `norm_topk_prob`. Checkpoint: `mlp.gate` (the router)
//! and `mlp.experts.{e}.{gate,up,down}_proj`. Only all-sparse models load: layers
//! listed in `mlp_only_layers`, or skipped by a `decoder_sparse_step` above 1, would be
//! dense MLPs, which a model of hooklens's does not mix with sparse ones.

use hooklens_core::Result;
use serde_json::{json, Value};

use super::family::Family;
use super::hf_config::HfConfig;
use super::llama::{
    attention_bias, llama_config, read_llama_layout, sliding_windows, LlamaLayout, LLAMA_FIELDS, SLIDING_FIELDS,
};
use super::moe::{read_experts, set_experts, ExpertNames, MOE_FIELDS};
use crate::config::{ActFn, TransformerConfig};
use crate::loading::TensorSource;
use crate::params::TransformerWeights;

/// The Qwen3-MoE family.
pub(crate) const FAMILY: Family = Family {
    name: "Qwen3-MoE",
    model_types: &["qwen3_moe"],
    classes: &["Qwen3MoeForCausalLM"],
    fields: &[
        LLAMA_FIELDS,
        SLIDING_FIELDS,
        MOE_FIELDS,
        &["decoder_sparse_step", "mlp_only_layers", "moe_intermediate_size"],
    ],
    config,
    weights,
};

/// The experts as Qwen3-MoE and OLMoE store them.
pub(super) const MLP_EXPERTS: ExpertNames = ExpertNames {
    router: "mlp.gate",
    experts: "mlp.experts",
    gate: "gate_proj",
    up: "up_proj",
    down: "down_proj",
};

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    // Qwen3MoeConfig's defaults where they differ from the Llama readers'.
    let hf = &hf.with_absent(&[("num_key_value_heads", json!(4)), ("moe_intermediate_size", json!(768))]);
    match hf.get("mlp_only_layers") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(v) => {
            return Err(hf.bad(format!(
                "field `mlp_only_layers` is {v}: dense MLP layers mixed with sparse ones are not supported \
                 (only models whose every layer is a mixture of experts load)"
            )))
        }
    }
    if let Some(step) = hf.opt_usize("decoder_sparse_step")? {
        if step != 1 {
            return Err(hf.bad(format!(
                "field `decoder_sparse_step` is {step}: only every layer sparse (1) is supported, \
                 dense MLP layers mixed with sparse ones are not"
            )));
        }
    }
    let mut cfg = llama_config(hf, false, "hidden_act", ActFn::Silu)?;
    cfg.d_mlp = hf.usize("moe_intermediate_size")?;
    cfg.use_qk_norm = true;
    cfg.attention_bias = Some(attention_bias(hf)?);
    // As Qwen 2 / 3 in TransformerLens: no BOS by default.
    cfg.default_prepend_bos = false;
    // Qwen3MoeConfig keeps `sliding_window` only with `use_sliding_window` (default
    // false), and then every layer's attention uses it.
    if hf.bool_or("use_sliding_window", false)? {
        sliding_windows(hf, &mut cfg, 0)?;
    }
    set_experts(hf, &mut cfg, &["num_experts", "num_local_experts"], 128, 8, false)?;
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

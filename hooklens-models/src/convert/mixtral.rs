//! Mixtral (`MixtralForCausalLM`): Mistral's attention (no biases; a sliding window
//! when `sliding_window` is set, null in the published configs) and a sparse mixture of
//! `num_local_experts` SwiGLU experts, `num_experts_per_tok` per token, the chosen
//! probabilities renormalised. Checkpoint: `block_sparse_moe.gate` (the router) and
//! `block_sparse_moe.experts.{e}.w1` (gate), `w3` (up), `w2` (down); expert width
//! `intermediate_size`.

use hooklens_core::Result;
use serde_json::json;

use super::family::Family;
use super::hf_config::HfConfig;
use super::llama::{llama_config, read_llama_layout, sliding_windows, LlamaLayout, LLAMA_FIELDS, SLIDING_FIELDS};
use super::moe::{read_experts, set_experts, ExpertNames, MOE_FIELDS};
use crate::config::{ActFn, TransformerConfig};
use crate::loading::TensorSource;
use crate::params::TransformerWeights;

/// The Mixtral family.
pub(crate) const FAMILY: Family = Family {
    name: "Mixtral",
    model_types: &["mixtral"],
    classes: &["MixtralForCausalLM"],
    fields: &[LLAMA_FIELDS, SLIDING_FIELDS, MOE_FIELDS],
    config,
    weights,
};

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    // MixtralConfig's defaults where they differ from the Llama readers'.
    let hf = &hf.with_absent(&[
        ("num_key_value_heads", json!(8)),
        ("rms_norm_eps", json!(1e-5)),
        ("rope_theta", json!(1e6)),
        ("intermediate_size", json!(14336)),
    ]);
    let mut cfg = llama_config(hf, false, "hidden_act", ActFn::Silu)?;
    // MixtralAttention builds every projection with `bias=False`.
    cfg.attention_bias = Some(false);
    sliding_windows(hf, &mut cfg, 0)?;
    // MixtralSparseMoeBlock always divides the top-k probabilities by their sum.
    set_experts(hf, &mut cfg, &["num_local_experts"], 8, 2, true)?;
    cfg.norm_topk_prob = true;
    Ok(cfg)
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, origin: &str) -> Result<TransformerWeights> {
    let layout = LlamaLayout {
        sparse_mlp: true,
        ..LlamaLayout::default()
    };
    let mut w = read_llama_layout(src, cfg, origin, &layout)?;
    w.moe = read_experts(
        src,
        cfg,
        &ExpertNames {
            router: "block_sparse_moe.gate",
            experts: "block_sparse_moe.experts",
            gate: "w1",
            up: "w3",
            down: "w2",
        },
    )?;
    Ok(w)
}

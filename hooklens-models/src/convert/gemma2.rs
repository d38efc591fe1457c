//! Gemma 2 (`Gemma2ForCausalLM`): Gemma plus norms after attention and after the MLP,
//! attention scores scaled by `query_pre_attn_scalar^-0.5` and soft-capped
//! (`attn_logit_softcapping`), soft-capped logits (`final_logit_softcapping`), and
//! sliding-window layers alternating with global ones (even layers local, or as
//! `layer_types` lists them).

use hooklens_core::Result;
use serde_json::json;

use super::family::Family;
use super::gemma::gemma_common;
use super::hf_config::HfConfig;
use super::llama::{llama_config, read_llama_layout, LlamaLayout, LLAMA_FIELDS};
use crate::config::{ActFn, AttnType, TransformerConfig};
use crate::loading::TensorSource;
use crate::params::TransformerWeights;

/// The Gemma 2 family.
pub(crate) const FAMILY: Family = Family {
    name: "Gemma 2",
    model_types: &["gemma2"],
    classes: &["Gemma2ForCausalLM"],
    fields: &[LLAMA_FIELDS, GEMMA2_FIELDS],
    config,
    weights,
};

/// The fields Gemma 2 reads beyond the Llama config's.
const GEMMA2_FIELDS: &[&str] = &[
    "hidden_activation",
    "query_pre_attn_scalar",
    "sliding_window",
    "final_logit_softcapping",
    "attn_logit_softcapping",
];

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    // Gemma2Config's defaults (a null keeps its meaning: no cap, no window).
    let hf = &hf.with_absent(&[
        ("head_dim", json!(256)),
        ("num_key_value_heads", json!(4)),
        ("query_pre_attn_scalar", json!(256)),
        ("sliding_window", json!(4096)),
        ("final_logit_softcapping", json!(30.0)),
        ("attn_logit_softcapping", json!(50.0)),
    ]);
    // Hugging Face's Gemma2MLP: `ACT2FN[config.hidden_activation]` (default
    // "gelu_pytorch_tanh"); `hidden_act` unread.
    let mut cfg = llama_config(hf, true, "hidden_activation", ActFn::GeluNew)?;
    gemma_common(hf, &mut cfg)?;
    cfg.use_normalization_before_and_after = true;
    if let Some(s) = hf.opt_f64("query_pre_attn_scalar")? {
        cfg.attn_scale = Some(s.sqrt());
    }
    cfg.attn_scores_soft_cap = hf.opt_f64("attn_logit_softcapping")?;
    cfg.output_logits_soft_cap = hf.opt_f64("final_logit_softcapping")?;
    if let Some(window) = hf.opt_usize("sliding_window")? {
        let types = match hf.layer_types(cfg.n_layers)? {
            Some(t) => t,
            None => (0..cfg.n_layers)
                .map(|l| if l % 2 == 0 { AttnType::Local } else { AttnType::Global })
                .collect(),
        };
        cfg.window_size = Some(window);
        cfg.attn_types = Some(types);
    }
    Ok(cfg)
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, origin: &str) -> Result<TransformerWeights> {
    let layout = LlamaLayout {
        norm_plus_one: true,
        sandwich_norms: true,
        ..LlamaLayout::default()
    };
    read_llama_layout(src, cfg, origin, &layout)
}

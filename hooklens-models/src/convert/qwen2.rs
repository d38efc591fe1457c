//! Qwen 1.5 / 2 / 2.5 (`Qwen2ForCausalLM`): the Llama layout with q/k/v biases.
//! Sliding windows only with `use_sliding_window`, from layer `max_window_layers` on
//! (or as `layer_types` lists them). TransformerLens does not prepend BOS by default.

use hooklens_core::Result;
use serde_json::json;

use super::family::Family;
use super::hf_config::HfConfig;
use super::llama::{llama_config, read_llama_layout, sliding_windows, LlamaLayout, LLAMA_FIELDS, SLIDING_FIELDS};
use crate::config::{ActFn, TransformerConfig};
use crate::loading::TensorSource;
use crate::params::TransformerWeights;

/// The Qwen 2 family.
pub(crate) const FAMILY: Family = Family {
    name: "Qwen 2",
    model_types: &["qwen2"],
    classes: &["Qwen2ForCausalLM"],
    fields: &[LLAMA_FIELDS, SLIDING_FIELDS, QWEN_FIELDS],
    config,
    weights,
};

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    let mut cfg = qwen_config(hf)?;
    // Hugging Face's Qwen2Attention: q/k/v `bias=True`, o_proj `bias=False`, whatever
    // the config says.
    cfg.attention_bias = Some(true);
    Ok(cfg)
}

/// The fields [`qwen_config`] reads beyond the Llama config's.
pub(super) const QWEN_FIELDS: &[&str] = &["max_window_layers"];

/// What Qwen 2 and Qwen 3 share beyond the Llama config: no BOS by default, and
/// sliding windows only with `use_sliding_window`, from `max_window_layers` on.
pub(super) fn qwen_config(hf: &HfConfig) -> Result<TransformerConfig> {
    // Qwen2Config / Qwen3Config defaults: `num_key_value_heads = 32`, `sliding_window = 4096`,
    // `max_window_layers = 28`.
    let hf = &hf.with_absent(&[
        ("num_key_value_heads", json!(32)),
        ("sliding_window", json!(4096)),
        ("max_window_layers", json!(28)),
    ]);
    let mut cfg = llama_config(hf, false, "hidden_act", ActFn::Silu)?;
    cfg.default_prepend_bos = false;
    if hf.bool_or("use_sliding_window", false)? {
        let first = hf.opt_usize("max_window_layers")?.unwrap_or(0);
        sliding_windows(hf, &mut cfg, first)?;
    }
    Ok(cfg)
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, origin: &str) -> Result<TransformerWeights> {
    let layout = LlamaLayout {
        qkv_bias_only: true,
        ..LlamaLayout::default()
    };
    read_llama_layout(src, cfg, origin, &layout)
}

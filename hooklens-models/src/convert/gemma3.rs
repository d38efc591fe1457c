//! Gemma 3, text only (`Gemma3ForCausalLM`, `model_type: "gemma3_text"`): Gemma 2's
//! layout (four norms per layer, `1 + w` gains, the embedding scaled by
//! `sqrt(d_model)`, scores scaled by `query_pre_attn_scalar^-0.5`) plus a `1 + w`
//! RMSNorm over each query and key head before rotary (`self_attn.q_norm` / `k_norm`),
//! sliding-window layers in a pattern (`sliding_window_pattern`: layer `i` is local iff
//! `(i + 1) % pattern != 0`; or `layer_types`), and two rotary bases: local layers use
//! `rope_local_base_freq`, unscaled, global ones `rope_theta` with `rope_scaling`
//! (linear in the 4B+ releases). No soft caps unless the config sets them.
//!
//! transformers 5 writes the rotary settings per layer type instead:
//! `rope_parameters: {"sliding_attention": {..}, "full_attention": {..}}`; both forms
//! are read.
//!
//! The multimodal checkpoints (`Gemma3ForConditionalGeneration`, `model_type: "gemma3"`,
//! the 4B-27B releases) load as their language model: the config is `text_config`, the
//! tensors are under `language_model.model.` (as published) or `model.language_model.`
//! (as transformers 4.52+ saves them), and the vision tower and projector stay unread.

use hooklens_core::Result;
use serde_json::json;

use super::family::Family;
use super::gemma::gemma_common;
use super::hf_config::HfConfig;
use super::llama::{llama_config, read_llama_layout, LlamaLayout, LLAMA_FIELDS};
use crate::config::{ActFn, AttnType, TransformerConfig};
use crate::loading::TensorSource;
use crate::params::TransformerWeights;

/// The Gemma 3 (text) family.
pub(crate) const FAMILY: Family = Family {
    name: "Gemma 3",
    model_types: &["gemma3_text"],
    classes: &["Gemma3ForCausalLM"],
    fields: &[LLAMA_FIELDS, GEMMA3_FIELDS],
    config,
    weights,
};

/// A multimodal Gemma 3 checkpoint, read as its language model.
pub(crate) const MULTIMODAL: Family = Family {
    name: "Gemma 3 (multimodal checkpoint: its language model)",
    model_types: &["gemma3"],
    classes: &["Gemma3ForConditionalGeneration"],
    fields: &[LLAMA_FIELDS, GEMMA3_FIELDS, &["text_config"]],
    config: multimodal_config,
    weights: multimodal_weights,
};

/// The fields Gemma 3 reads beyond the Llama config's (a multimodal checkpoint's
/// inside its `text_config`).
const GEMMA3_FIELDS: &[&str] = &[
    "hidden_activation",
    "query_pre_attn_scalar",
    "sliding_window",
    "sliding_window_pattern",
    "rope_local_base_freq",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "use_bidirectional_attention",
];

/// Gemma3TextConfig's `sliding_window_pattern` default: five local layers, then a
/// global one.
const DEFAULT_PATTERN: usize = 6;

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    // Gemma3TextConfig's defaults (the published multimodal configs leave most of them
    // out of `text_config`); a null keeps its meaning (no cap, no window).
    let hf = &hf.with_absent(&[
        ("vocab_size", json!(262208)),
        ("hidden_size", json!(2304)),
        ("intermediate_size", json!(9216)),
        ("num_hidden_layers", json!(26)),
        ("num_attention_heads", json!(8)),
        ("num_key_value_heads", json!(4)),
        ("head_dim", json!(256)),
        ("max_position_embeddings", json!(131072)),
        ("query_pre_attn_scalar", json!(256)),
        ("sliding_window", json!(4096)),
        ("rope_theta", json!(1_000_000.0)),
        ("rope_local_base_freq", json!(10_000.0)),
        ("bos_token_id", json!(2)),
        ("eos_token_id", json!(1)),
    ]);
    if hf.bool_or("use_bidirectional_attention", false)? {
        return Err(
            hf.bad("field `use_bidirectional_attention` is true: only causal (decoder) Gemma 3 models are supported")
        );
    }
    // Gemma3MLP: `ACT2FN[config.hidden_activation]` (default "gelu_pytorch_tanh").
    let mut cfg = llama_config(&global_rope(hf)?, true, "hidden_activation", ActFn::GeluNew)?;
    gemma_common(hf, &mut cfg)?;
    cfg.use_normalization_before_and_after = true;
    cfg.use_qk_norm = true;
    if let Some(s) = hf.opt_f64("query_pre_attn_scalar")? {
        cfg.attn_scale = Some(s.sqrt());
    }
    cfg.attn_scores_soft_cap = hf.opt_f64("attn_logit_softcapping")?;
    cfg.output_logits_soft_cap = hf.opt_f64("final_logit_softcapping")?;
    let types = match hf.layer_types(cfg.n_layers)? {
        Some(t) => t,
        None => {
            let pattern = hf.opt_usize("sliding_window_pattern")?.unwrap_or(DEFAULT_PATTERN);
            (0..cfg.n_layers)
                .map(|i| {
                    if (i + 1) % pattern != 0 {
                        AttnType::Local
                    } else {
                        AttnType::Global
                    }
                })
                .collect()
        }
    };
    if types.contains(&AttnType::Local) {
        let window = hf
            .opt_usize("sliding_window")?
            .ok_or_else(|| hf.bad("the config has sliding-window layers but `sliding_window` is null"))?;
        cfg.window_size = Some(window);
        cfg.rotary_base_local = Some(local_rope_base(hf)?);
    }
    cfg.attn_types = Some(types);
    Ok(cfg)
}

/// The config whose rotary settings `llama_config` reads: the global layers' ones.
/// A transformers-5 `rope_parameters` keyed by layer type is replaced by its
/// `full_attention` entry; the legacy `rope_theta` / `rope_scaling` are already theirs.
fn global_rope(hf: &HfConfig) -> Result<HfConfig> {
    Ok(match hf.rope_parameters_of("full_attention")? {
        Some(h) => h,
        None => hf.with_absent(&[]),
    })
}

/// The local layers' rotary base: `rope_parameters.sliding_attention.rope_theta`
/// (transformers 5), else `rope_local_base_freq`. Hugging Face never scales it; a
/// transformers-5 config that asks for a scaling there is refused rather than run
/// unscaled.
fn local_rope_base(hf: &HfConfig) -> Result<f64> {
    let Some(local) = hf.rope_parameters_of("sliding_attention")? else {
        return Ok(hf.opt_f64("rope_local_base_freq")?.unwrap_or(10_000.0));
    };
    let rope = local.rope("rope_local_base_freq", 10_000.0)?;
    if rope.ntk_by_parts.is_some() || rope.linear_factor.is_some() {
        return Err(hf.bad(
            "field `rope_parameters.sliding_attention` scales the rotary of sliding-window layers, \
             which hooklens does not support (only `full_attention` may be scaled)",
        ));
    }
    Ok(rope.base)
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, origin: &str) -> Result<TransformerWeights> {
    let layout = LlamaLayout {
        norm_plus_one: true,
        sandwich_norms: true,
        qk_norm: true,
        ..LlamaLayout::default()
    };
    read_llama_layout(src, cfg, origin, &layout)
}

/// The language model's config: `text_config`, with the top level's token ids and
/// tying where it leaves them out (Gemma3Config ties the language model's head to its
/// embedding).
fn multimodal_config(hf: &HfConfig) -> Result<TransformerConfig> {
    let text = hf.nested("text_config", &["bos_token_id", "eos_token_id", "tie_word_embeddings"])?;
    match text.model_type() {
        None | Some("gemma3_text") => config(&text),
        Some(other) => Err(hf.bad(format!(
            "field `text_config.model_type` is \"{other}\": a Gemma 3 multimodal config holds a \"gemma3_text\" one"
        ))),
    }
}

/// The top-level prefixes of a multimodal checkpoint's image side, in both layouts.
const VISION_PREFIXES: [&str; 4] = [
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
];

fn multimodal_weights(src: &dyn TensorSource, cfg: &TransformerConfig, origin: &str) -> Result<TransformerWeights> {
    // As published (transformers 4.50): `language_model.model.*`, `language_model.lm_head`;
    // saved by transformers 4.52 and later: `model.language_model.*`, `lm_head`.
    let published = src.contains("language_model.model.embed_tokens.weight");
    let renamed = LanguageModel {
        src,
        prefix: if published {
            "language_model.model."
        } else {
            "model.language_model."
        },
        head: if published {
            "language_model.lm_head.weight"
        } else {
            "lm_head.weight"
        },
    };
    for p in VISION_PREFIXES {
        src.allow_unread(p);
    }
    weights(&renamed, cfg, origin)
}

/// A multimodal checkpoint seen under Gemma3ForCausalLM's names: `model.X` is
/// `prefix + X`, `lm_head.weight` is `head`.
struct LanguageModel<'a> {
    src: &'a dyn TensorSource,
    prefix: &'static str,
    head: &'static str,
}

impl LanguageModel<'_> {
    fn map(&self, name: &str) -> String {
        match name.strip_prefix("model.") {
            Some(rest) => format!("{}{rest}", self.prefix),
            None if name == "lm_head.weight" => self.head.to_string(),
            None => name.to_string(),
        }
    }
}

impl TensorSource for LanguageModel<'_> {
    fn contains(&self, name: &str) -> bool {
        self.src.contains(&self.map(name))
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<candle_core::Tensor> {
        self.src.get(&self.map(name), shape)
    }

    fn dtype(&self) -> candle_core::DType {
        self.src.dtype()
    }

    fn fresh(&self) -> bool {
        self.src.fresh()
    }

    fn allow_unread(&self, prefix: &str) {
        self.src.allow_unread(prefix)
    }
}

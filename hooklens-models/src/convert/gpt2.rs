//! GPT-2 (`GPT2LMHeadModel`): Hugging Face config and tensors.
//!
//! `GPT2LMHeadModel.save_pretrained` writes names with a `transformer.` prefix; the
//! `openai-community/gpt2` files have no prefix and carry `h.{i}.attn.bias` causal-mask
//! buffers, which are ignored. `lm_head.weight` is tied to `wte.weight` when absent.
//! Conv1D weights are `[in, out]`, which is also the layout the model multiplies with.

use candle_core::Tensor;
use hooklens_core::{Error, Result};

use super::family::Family;
use super::hf_config::HfConfig;
use super::weights::finish;
use crate::config::{ActFn, TransformerConfig};
use crate::loading::TensorSource;
use crate::params::{LayerWeights, TransformerWeights};

/// The GPT-2 family.
pub(crate) const FAMILY: Family = Family {
    name: "GPT-2",
    model_types: &["gpt2"],
    classes: &["GPT2LMHeadModel", "GPT2Model"],
    fields: &[GPT2_FIELDS],
    config,
    weights,
};

/// The fields GPT-2 reads.
const GPT2_FIELDS: &[&str] = &[
    "n_layer",
    "n_embd",
    "n_head",
    "vocab_size",
    "n_positions",
    "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx",
    "reorder_and_upcast_attn",
    "add_cross_attention",
    "n_inner",
    "layer_norm_epsilon",
    "activation_function",
    "bos_token_id",
    "eos_token_id",
];

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    let n_layers = hf.usize("n_layer")?;
    let d_model = hf.usize("n_embd")?;
    let n_heads = hf.usize("n_head")?;
    let d_vocab = hf.usize("vocab_size")?;
    let n_ctx = hf.usize("n_positions")?;
    // Variants of the attention that neither this model nor TransformerLens implement.
    for (field, unsupported) in [
        ("scale_attn_weights", false),
        ("scale_attn_by_inverse_layer_idx", true),
        ("reorder_and_upcast_attn", true),
        ("add_cross_attention", true),
    ] {
        if hf.get(field).and_then(|v| v.as_bool()) == Some(unsupported) {
            return Err(hf.bad(format!(
                "field `{field}` is {unsupported}: this GPT-2 variant is not supported"
            )));
        }
    }
    let d_head = hf.d_head(d_model, "n_embd", n_heads, "n_head")?;
    let d_mlp = match hf.opt_usize("n_inner")? {
        // Checked: a nonsense `n_embd` must be an error, not an overflow.
        None => d_model
            .checked_mul(4)
            .ok_or_else(|| hf.bad(format!("field `n_embd` is too large: {d_model}")))?,
        Some(n) => n,
    };
    Ok(TransformerConfig {
        d_head,
        d_mlp,
        eps: hf.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
        act_fn: hf.act_fn(&["activation_function"], ActFn::GeluNew)?,
        bos_token_id: hf.token("bos_token_id", d_vocab)?,
        eos_token_id: hf.token("eos_token_id", d_vocab)?,
        ..TransformerConfig::new(n_layers, d_model, n_heads, d_vocab, n_ctx)
    })
}

/// Reads every GPT-2 tensor from `src`, accepting names with or without the
/// `transformer.` prefix and tying `lm_head` to `wte` when it is absent.
pub(crate) fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, origin: &str) -> Result<TransformerWeights> {
    let prefix = if src.contains("transformer.wte.weight") {
        "transformer."
    } else if src.contains("wte.weight") {
        ""
    } else {
        return Err(Error::invalid(format!(
            "{origin}: no tensor `wte.weight` or `transformer.wte.weight`: not a GPT-2 checkpoint"
        )));
    };
    let (d, v, n_ctx, mlp) = (cfg.d_model, cfg.d_vocab, cfg.n_ctx, cfg.d_mlp);
    let get = |name: &str, shape: &[usize]| src.get(&format!("{prefix}{name}"), shape);
    let ln = |name: &str| -> Result<Option<(Tensor, Option<Tensor>)>> {
        Ok(Some((
            get(&format!("{name}.weight"), &[d])?,
            Some(get(&format!("{name}.bias"), &[d])?),
        )))
    };
    let w_e = get("wte.weight", &[v, d])?;
    let w_pos = get("wpe.weight", &[n_ctx, d])?;
    // Not `with_capacity(n_layers)`: a nonsense `n_layer` must fail on its first missing
    // layer, not abort on reserving room for all of them.
    let mut layers = Vec::new();
    for i in 0..cfg.n_layers {
        let h = format!("h.{i}");
        layers.push(LayerWeights {
            ln1: ln(&format!("{h}.ln_1"))?,
            ln1_post: None,
            w_qkv: get(&format!("{h}.attn.c_attn.weight"), &[d, 3 * d])?,
            b_qkv: get(&format!("{h}.attn.c_attn.bias"), &[3 * d])?,
            q_norm: None,
            k_norm: None,
            w_o: get(&format!("{h}.attn.c_proj.weight"), &[d, d])?,
            b_o: get(&format!("{h}.attn.c_proj.bias"), &[d])?,
            ln2: ln(&format!("{h}.ln_2"))?,
            ln2_post: None,
            w_gate: None,
            w_in: get(&format!("{h}.mlp.c_fc.weight"), &[d, mlp])?,
            b_in: get(&format!("{h}.mlp.c_fc.bias"), &[mlp])?,
            w_out: get(&format!("{h}.mlp.c_proj.weight"), &[mlp, d])?,
            b_out: get(&format!("{h}.mlp.c_proj.bias"), &[d])?,
        });
    }
    let ln_final = ln("ln_f")?;
    // lm_head is never under the `transformer.` prefix; without it, W_U is tied to W_E.
    let tied = !src.contains("lm_head.weight");
    finish(src, cfg, w_e, Some(w_pos), layers, ln_final, "lm_head.weight", tied)
}

#[cfg(test)]
mod tests {
    use super::super::config_from_hf_str;
    use crate::config::ActFn;

    const TINY: &str = r#"{"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
        "bos_token_id": 511, "eos_token_id": 511, "layer_norm_epsilon": 1e-05, "model_type": "gpt2",
        "n_ctx": 64, "n_embd": 64, "n_head": 4, "n_inner": null, "n_layer": 2, "n_positions": 64,
        "vocab_size": 512}"#;

    #[test]
    fn reads_hf_names() {
        let c = config_from_hf_str(TINY, "config.json").unwrap();
        assert_eq!((c.n_layers, c.d_model, c.n_heads, c.d_head), (2, 64, 4, 16));
        assert_eq!((c.d_mlp, c.d_vocab, c.n_ctx), (256, 512, 64));
        assert_eq!(c.act_fn, ActFn::GeluNew);
        assert_eq!(c.eos_token_id, Some(511));
        c.validate().unwrap();
    }

    #[test]
    fn bad_fields_are_named() {
        let e = config_from_hf_str(&TINY.replace("\"n_head\": 4", "\"n_head\": 5"), "c.json").unwrap_err();
        assert!(
            e.to_string().contains("c.json") && e.to_string().contains("n_head"),
            "{e}"
        );
        let e = config_from_hf_str(&TINY.replace("\"n_layer\": 2,", ""), "c.json").unwrap_err();
        assert!(e.to_string().contains("`n_layer` is missing"), "{e}");
        let e = config_from_hf_str(&TINY.replace("\"gpt2\"", "\"bert\""), "c.json").unwrap_err();
        assert!(e.to_string().contains("model_type"), "{e}");
        let e = config_from_hf_str(&TINY.replace("gelu_new", "swiglu"), "c.json").unwrap_err();
        assert!(e.to_string().contains("activation_function"), "{e}");
        let variant = TINY.replace(
            "\"n_layer\": 2,",
            "\"n_layer\": 2, \"scale_attn_by_inverse_layer_idx\": true,",
        );
        let e = config_from_hf_str(&variant, "c.json").unwrap_err();
        assert!(e.to_string().contains("scale_attn_by_inverse_layer_idx"), "{e}");
    }
}

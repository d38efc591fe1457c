//! OPT (`OPTForCausalLM`): learned positions whose table is offset by two (position
//! `p` is row `p + 2` of `embed_positions`; `W_pos` is rows 2 and on), sequential
//! pre-LN blocks (`self_attn_layer_norm` before attention, the layer's
//! `final_layer_norm` before the MLP), biases everywhere, relu, tied embeddings. Names
//! with the `model.` prefix (`OPTForCausalLM`) or without (`OPTModel`) are read.
//!
//! Two variants are refused with an error naming the field (TransformerLens 2.16.1
//! cannot load them either; the one published OPT that has them, facebook/opt-350m,
//! has both): post-LN blocks (`do_layer_norm_before: false`: each block normalises
//! after its residual additions and there is no final norm, which the shared block
//! does not do) and `word_embed_proj_dim` different from `hidden_size` (`project_in` /
//! `project_out` around the blocks).

use candle_core::Tensor;
use hooklens_core::Result;

use super::hf_config::HfConfig;
use super::{finish, linear_weight, Family};
use crate::config::{ActFn, NormalizationType, TransformerConfig};
use crate::loading::TensorSource;
use crate::model::params::{LayerWeights, NormParams, TransformerWeights};

/// The OPT family.
pub(crate) const FAMILY: Family = Family {
    name: "OPT",
    model_types: &["opt"],
    classes: &["OPTForCausalLM"],
    fields: &[OPT_FIELDS],
    config,
    weights,
};

/// OPT's offset into its position table (`OPTLearnedPositionalEmbedding.offset`).
const POSITION_OFFSET: usize = 2;

/// The fields this family reads.
const OPT_FIELDS: &[&str] = &[
    "_remove_final_layer_norm",
    "activation_function",
    "bos_token_id",
    "do_layer_norm_before",
    "enable_bias",
    "eos_token_id",
    "ffn_dim",
    "hidden_size",
    "layer_norm_elementwise_affine",
    "max_position_embeddings",
    "num_attention_heads",
    "num_hidden_layers",
    "tie_word_embeddings",
    "vocab_size",
    "word_embed_proj_dim",
];

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    let n_layers = hf.usize("num_hidden_layers")?;
    let d_model = hf.usize("hidden_size")?;
    let n_heads = hf.usize("num_attention_heads")?;
    let d_vocab = hf.usize("vocab_size")?;
    let n_ctx = hf.usize("max_position_embeddings")?;
    let d_head = hf.d_head(d_model, "hidden_size", n_heads, "num_attention_heads")?;
    if !hf.bool_or("do_layer_norm_before", true)? {
        return Err(hf.bad(
            "field `do_layer_norm_before` is false: post-LN OPT (facebook/opt-350m) is not supported \
             (its blocks normalise after the residual additions, which the shared block does not do)",
        ));
    }
    if hf.bool_or("_remove_final_layer_norm", false)? {
        return Err(
            hf.bad("field `_remove_final_layer_norm` is true: an OPT without its final LayerNorm is not supported")
        );
    }
    if let Some(w) = hf.opt_usize("word_embed_proj_dim")? {
        if w != d_model {
            return Err(hf.bad(format!(
                "field `word_embed_proj_dim` is {w}, not `hidden_size` ({d_model}): OPT with \
                 `project_in` / `project_out` (facebook/opt-350m) is not supported"
            )));
        }
    }
    if !hf.bool_or("layer_norm_elementwise_affine", true)? {
        return Err(hf.bad(
            "field `layer_norm_elementwise_affine` is false: OPT LayerNorms without parameters are not supported",
        ));
    }
    Ok(TransformerConfig {
        d_head,
        d_mlp: hf.usize("ffn_dim")?,
        // OPT's LayerNorms are `nn.LayerNorm(..)` with torch's default eps.
        eps: 1e-5,
        act_fn: hf.act_fn(&["activation_function"], ActFn::Relu)?,
        normalization_type: NormalizationType::LN,
        bos_token_id: hf.token("bos_token_id", d_vocab)?,
        eos_token_id: hf.token("eos_token_id", d_vocab)?,
        // OPTAttention / OPTDecoderLayer: `bias=config.enable_bias` on every linear layer.
        attention_bias: Some(hf.bool_or("enable_bias", true)?),
        tie_word_embeddings: hf.bool_or("tie_word_embeddings", true)?,
        ..TransformerConfig::new(n_layers, d_model, n_heads, d_vocab, n_ctx)
    })
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, _origin: &str) -> Result<TransformerWeights> {
    let (d, v, n_ctx, mlp) = (cfg.d_model, cfg.d_vocab, cfg.n_ctx, cfg.d_mlp);
    let bias = cfg.attention_bias != Some(false);
    let ln = |name: &str| -> Result<Option<NormParams>> {
        Ok(Some((
            src.get(&format!("{name}.weight"), &[d])?,
            Some(src.get(&format!("{name}.bias"), &[d])?),
        )))
    };
    // `OPTForCausalLM` weights have the `model.` prefix, `OPTModel`'s none.
    let pre = if src.contains("decoder.embed_tokens.weight") && !src.contains("model.decoder.embed_tokens.weight") {
        ""
    } else {
        "model."
    };
    let w_e = src.get(&format!("{pre}decoder.embed_tokens.weight"), &[v, d])?;
    let device = w_e.device().clone();
    let zeros = |n: usize| Tensor::zeros(n, src.dtype(), &device);
    let get_bias = |name: &str, n: usize| -> Result<Tensor> {
        if bias {
            src.get(name, &[n])
        } else {
            Ok(zeros(n)?)
        }
    };
    let w_pos = src
        .get(
            &format!("{pre}decoder.embed_positions.weight"),
            &[n_ctx + POSITION_OFFSET, d],
        )?
        .narrow(0, POSITION_OFFSET, n_ctx)?
        .contiguous()?;
    let mut layers = Vec::new();
    for i in 0..cfg.n_layers {
        let p = format!("{pre}decoder.layers.{i}");
        let a = format!("{p}.self_attn");
        let q = linear_weight(src, &format!("{a}.q_proj.weight"), d, d)?;
        let k = linear_weight(src, &format!("{a}.k_proj.weight"), d, d)?;
        let vv = linear_weight(src, &format!("{a}.v_proj.weight"), d, d)?;
        let b_qkv = if bias {
            Tensor::cat(
                &[
                    &src.get(&format!("{a}.q_proj.bias"), &[d])?,
                    &src.get(&format!("{a}.k_proj.bias"), &[d])?,
                    &src.get(&format!("{a}.v_proj.bias"), &[d])?,
                ],
                0,
            )?
        } else {
            zeros(3 * d)?
        };
        layers.push(LayerWeights {
            ln1: ln(&format!("{p}.self_attn_layer_norm"))?,
            ln1_post: None,
            // The layer's `final_layer_norm` is the norm before its MLP.
            ln2: ln(&format!("{p}.final_layer_norm"))?,
            ln2_post: None,
            w_qkv: Tensor::cat(&[&q, &k, &vv], 1)?,
            b_qkv,
            q_norm: None,
            k_norm: None,
            w_o: linear_weight(src, &format!("{a}.out_proj.weight"), d, d)?,
            b_o: get_bias(&format!("{a}.out_proj.bias"), d)?,
            w_gate: None,
            w_in: linear_weight(src, &format!("{p}.fc1.weight"), mlp, d)?,
            b_in: get_bias(&format!("{p}.fc1.bias"), mlp)?,
            w_out: linear_weight(src, &format!("{p}.fc2.weight"), d, mlp)?,
            b_out: get_bias(&format!("{p}.fc2.bias"), d)?,
        });
    }
    let ln_final = ln(&format!("{pre}decoder.final_layer_norm"))?;
    finish(
        src,
        cfg,
        w_e,
        Some(w_pos),
        layers,
        ln_final,
        "lm_head.weight",
        cfg.tie_word_embeddings,
    )
}

#[cfg(test)]
mod tests {
    use super::super::config_from_hf_str;
    use crate::config::ActFn;

    const TINY: &str = r#"{"model_type": "opt", "architectures": ["OPTForCausalLM"],
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 128,
        "vocab_size": 512, "max_position_embeddings": 64, "do_layer_norm_before": true,
        "word_embed_proj_dim": 64, "activation_function": "relu"}"#;

    #[test]
    fn reads_hf_names_and_refuses_post_ln() {
        let c = config_from_hf_str(TINY, "config.json").unwrap();
        assert_eq!((c.d_mlp, c.act_fn, c.eps), (128, ActFn::Relu, 1e-5));
        assert!(c.tie_word_embeddings);
        let post = TINY.replace("\"do_layer_norm_before\": true", "\"do_layer_norm_before\": false");
        let e = config_from_hf_str(&post, "c.json").unwrap_err();
        assert!(
            e.to_string().contains("do_layer_norm_before") && e.to_string().contains("c.json"),
            "{e}"
        );
        let projected = TINY.replace("\"word_embed_proj_dim\": 64", "\"word_embed_proj_dim\": 32");
        let e = config_from_hf_str(&projected, "c.json").unwrap_err();
        assert!(e.to_string().contains("word_embed_proj_dim"), "{e}");
    }
}

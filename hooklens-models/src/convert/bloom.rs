//! BLOOM (`BloomForCausalLM`): a LayerNorm right after the token embedding
//! (`word_embeddings_layernorm`, TransformerLens's `embed.ln`, never folded), no
//! position embedding but ALiBi biases on the attention scores (see
//! `model/alibi.rs`: Hugging Face's slopes for every head count), sequential pre-LN
//! blocks with biases everywhere, `query_key_value` fused per head as GPT-NeoX's (rows
//! ordered (head, q/k/v, d_head)), gelu with the tanh approximation, tied embeddings.
//!
//! Published checkpoints store the names with or without the `transformer.` prefix
//! (`BloomModel` or `BloomForCausalLM` weights); both are read. BLOOM has no context
//! length in its config: as TransformerLens, `n_ctx` is 2048 (ALiBi itself has no
//! limit). `apply_residual_connection_post_layernorm: true` (residuals taken after
//! the norms) is refused.

use hooklens_core::Result;

use super::family::Family;
use super::hf_config::HfConfig;
use super::neox::per_head_to_stacked;
use super::weights::{finish, linear_weight};
use crate::config::{ActFn, NormalizationType, PositionalEmbeddingType, TransformerConfig};
use crate::loading::TensorSource;
use crate::params::{LayerWeights, NormParams, TransformerWeights};

/// The BLOOM family.
pub(crate) const FAMILY: Family = Family {
    name: "BLOOM",
    model_types: &["bloom"],
    classes: &["BloomForCausalLM"],
    fields: &[BLOOM_FIELDS],
    config,
    weights,
};

/// The context length of a BLOOM model (TransformerLens's cap; BLOOM was trained on 2048).
const BLOOM_N_CTX: usize = 2048;

/// The fields this family reads.
const BLOOM_FIELDS: &[&str] = &[
    "apply_residual_connection_post_layernorm",
    "bos_token_id",
    "eos_token_id",
    "hidden_size",
    "layer_norm_epsilon",
    "n_embed",
    "n_head",
    "n_layer",
    "num_attention_heads",
    "num_hidden_layers",
    "tie_word_embeddings",
    "vocab_size",
];

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    // BloomConfig's attribute map: `num_hidden_layers` -> `n_layer`, `num_attention_heads` -> `n_head`.
    let field = |names: [&str; 2]| -> Result<usize> {
        match hf.opt_usize(names[0])? {
            Some(n) => Ok(n),
            None => hf.usize(names[1]),
        }
    };
    let n_layers = field(["n_layer", "num_hidden_layers"])?;
    let n_heads = field(["n_head", "num_attention_heads"])?;
    let d_model = match hf.opt_usize("hidden_size")? {
        Some(n) => n,
        None => hf.usize("n_embed")?,
    };
    let d_vocab = hf.usize("vocab_size")?;
    let d_head = hf.d_head(d_model, "hidden_size", n_heads, "n_head")?;
    if hf.bool_or("apply_residual_connection_post_layernorm", false)? {
        return Err(hf.bad(
            "field `apply_residual_connection_post_layernorm` is true: BLOOM with residuals after the norms is not supported",
        ));
    }
    let d_mlp = d_model
        .checked_mul(4)
        .ok_or_else(|| hf.bad(format!("field `hidden_size` is too large: {d_model}")))?;
    Ok(TransformerConfig {
        d_head,
        d_mlp,
        eps: hf.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
        // `bloom_gelu_forward`: the tanh approximation (TransformerLens `gelu_fast`).
        act_fn: ActFn::GeluNew,
        normalization_type: NormalizationType::LN,
        bos_token_id: hf.token("bos_token_id", d_vocab)?,
        eos_token_id: hf.token("eos_token_id", d_vocab)?,
        positional_embedding_type: PositionalEmbeddingType::Alibi,
        post_embedding_ln: true,
        tie_word_embeddings: hf.bool_or("tie_word_embeddings", true)?,
        default_prepend_bos: false,
        ..TransformerConfig::new(n_layers, d_model, n_heads, d_vocab, BLOOM_N_CTX)
    })
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, _origin: &str) -> Result<TransformerWeights> {
    let (d, v, h, dh, mlp) = (cfg.d_model, cfg.d_vocab, cfg.n_heads, cfg.d_head, cfg.d_mlp);
    // `BloomModel` weights have no prefix; `BloomForCausalLM`'s have `transformer.`.
    let prefix = if src.contains("word_embeddings.weight") && !src.contains("transformer.word_embeddings.weight") {
        ""
    } else {
        "transformer."
    };
    let get = |name: &str, shape: &[usize]| src.get(&format!("{prefix}{name}"), shape);
    let ln = |name: &str| -> Result<NormParams> {
        Ok((
            get(&format!("{name}.weight"), &[d])?,
            Some(get(&format!("{name}.bias"), &[d])?),
        ))
    };
    let w_e = get("word_embeddings.weight", &[v, d])?;
    let embed_ln = ln("word_embeddings_layernorm")?;
    let mut layers = Vec::new();
    for i in 0..cfg.n_layers {
        let p = format!("h.{i}");
        let linear = |name: &str, out: usize, inp: usize| linear_weight(src, &format!("{prefix}{p}.{name}"), out, inp);
        let qkv = get(&format!("{p}.self_attention.query_key_value.weight"), &[3 * d, d])?;
        let w_qkv = crate::ops::transposed(&per_head_to_stacked(&qkv, h, dh)?)?;
        drop(qkv);
        let b_qkv = per_head_to_stacked(
            &get(&format!("{p}.self_attention.query_key_value.bias"), &[3 * d])?,
            h,
            dh,
        )?;
        layers.push(LayerWeights {
            ln1: Some(ln(&format!("{p}.input_layernorm"))?),
            ln1_post: None,
            ln2: Some(ln(&format!("{p}.post_attention_layernorm"))?),
            ln2_post: None,
            w_qkv,
            b_qkv,
            q_norm: None,
            k_norm: None,
            w_o: linear("self_attention.dense.weight", d, d)?,
            b_o: get(&format!("{p}.self_attention.dense.bias"), &[d])?,
            w_gate: None,
            w_in: linear("mlp.dense_h_to_4h.weight", mlp, d)?,
            b_in: get(&format!("{p}.mlp.dense_h_to_4h.bias"), &[mlp])?,
            w_out: linear("mlp.dense_4h_to_h.weight", d, mlp)?,
            b_out: get(&format!("{p}.mlp.dense_4h_to_h.bias"), &[d])?,
        });
    }
    let ln_final = Some(ln("ln_f")?);
    // lm_head is never under the `transformer.` prefix.
    let mut w = finish(
        src,
        cfg,
        w_e,
        None,
        layers,
        ln_final,
        "lm_head.weight",
        cfg.tie_word_embeddings,
    )?;
    w.embed_ln = Some(embed_ln);
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::super::config_from_hf_str;
    use crate::config::PositionalEmbeddingType;

    const TINY: &str = r#"{"model_type": "bloom", "architectures": ["BloomForCausalLM"],
        "hidden_size": 48, "n_layer": 2, "n_head": 6, "vocab_size": 512,
        "layer_norm_epsilon": 1e-5, "apply_residual_connection_post_layernorm": false}"#;

    #[test]
    fn reads_hf_names() {
        let c = config_from_hf_str(TINY, "config.json").unwrap();
        assert_eq!((c.n_heads, c.d_head, c.d_mlp, c.n_ctx), (6, 8, 192, 2048));
        assert_eq!(c.positional_embedding_type, PositionalEmbeddingType::Alibi);
        assert!(c.post_embedding_ln && !c.default_prepend_bos && c.tie_word_embeddings);
        let post = TINY.replace("layernorm\": false", "layernorm\": true");
        let e = config_from_hf_str(&post, "c.json").unwrap_err();
        assert!(
            e.to_string().contains("apply_residual_connection_post_layernorm"),
            "{e}"
        );
    }
}

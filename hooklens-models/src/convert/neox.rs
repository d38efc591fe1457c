//! GPT-NeoX / Pythia (`GPTNeoXForCausalLM`): LayerNorms with biases, attention and MLP
//! in parallel (`use_parallel_residual`), rotary over the first `rotary_pct` of each
//! head, exact GELU, and an untied `embed_out`. `query_key_value` is fused per head:
//! its rows are ordered (head, q/k/v, d_head), not `[q; k; v]`.

use candle_core::Tensor;
use hooklens_core::Result;

use super::family::Family;
use super::hf_config::HfConfig;
use super::weights::{finish, linear_weight};
use crate::config::{ActFn, NormalizationType, PositionalEmbeddingType, TransformerConfig};
use crate::loading::TensorSource;
use crate::params::{LayerWeights, NormParams, TransformerWeights};

/// The GPT-NeoX family.
pub(crate) const FAMILY: Family = Family {
    name: "GPT-NeoX",
    model_types: &["gpt_neox"],
    classes: &["GPTNeoXForCausalLM"],
    fields: &[NEOX_FIELDS],
    config,
    weights,
};

/// The fields GPT-NeoX reads.
const NEOX_FIELDS: &[&str] = &[
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "vocab_size",
    "max_position_embeddings",
    "rotary_pct",
    "rotary_emb_base",
    "intermediate_size",
    "layer_norm_eps",
    "hidden_act",
    "bos_token_id",
    "eos_token_id",
    "use_parallel_residual",
    "tie_word_embeddings",
    "attention_bias",
];

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    let n_layers = hf.usize("num_hidden_layers")?;
    let d_model = hf.usize("hidden_size")?;
    let n_heads = hf.usize("num_attention_heads")?;
    let d_vocab = hf.usize("vocab_size")?;
    let n_ctx = hf.usize("max_position_embeddings")?;
    let d_head = hf.d_head(d_model, "hidden_size", n_heads, "num_attention_heads")?;
    // Hugging Face: `int(head_size * rotary_pct)`, `rotary_pct` 0.25 by default
    // (GPTNeoXConfig: `rotary_pct=0.25`; transformers 5: `kwargs.pop("rotary_pct", 0.25)`).
    let pct = hf.rotary_fraction(Some("rotary_pct"), 0.25)?;
    let rotary_dim = ((pct * d_head as f64) as usize).max(2) & !1;
    let rope = hf.rope("rotary_emb_base", 10000.0)?;
    let d_mlp = match hf.opt_usize("intermediate_size")? {
        Some(n) => n,
        None => d_model
            .checked_mul(4)
            .ok_or_else(|| hf.bad(format!("field `hidden_size` is too large: {d_model}")))?,
    };
    Ok(TransformerConfig {
        d_head,
        d_mlp,
        eps: hf.opt_f64("layer_norm_eps")?.unwrap_or(1e-5),
        act_fn: hf.act_fn(&["hidden_act"], ActFn::Gelu)?,
        normalization_type: NormalizationType::LN,
        bos_token_id: hf.token("bos_token_id", d_vocab)?,
        eos_token_id: hf.token("eos_token_id", d_vocab)?,
        positional_embedding_type: PositionalEmbeddingType::Rotary,
        rotary_dim: Some(rotary_dim),
        rotary_base: rope.base,
        ntk_by_parts_rope: rope.ntk_by_parts,
        rotary_linear_factor: rope.linear_factor,
        parallel_attn_mlp: hf.bool_or("use_parallel_residual", true)?,
        tie_word_embeddings: hf.bool_or("tie_word_embeddings", false)?,
        // GPTNeoXAttention: `query_key_value` and `dense` have `bias=config.attention_bias`.
        attention_bias: Some(hf.bool_or("attention_bias", true)?),
        ..TransformerConfig::new(n_layers, d_model, n_heads, d_vocab, n_ctx)
    })
}

/// `[3 * n_heads * d_head, ..]` rows ordered (head, q/k/v, d_head) -> (q/k/v, head, d_head).
pub(super) fn per_head_to_stacked(t: &Tensor, n_heads: usize, d_head: usize) -> candle_core::Result<Tensor> {
    let rest: Vec<usize> = t.dims()[1..].to_vec();
    let mut shape = vec![n_heads, 3, d_head];
    shape.extend(&rest);
    let t = t.reshape(shape)?.transpose(0, 1)?.contiguous()?;
    let mut flat = vec![3 * n_heads * d_head];
    flat.extend(&rest);
    t.reshape(flat)
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, _origin: &str) -> Result<TransformerWeights> {
    let (d, v, h, dh, mlp) = (cfg.d_model, cfg.d_vocab, cfg.n_heads, cfg.d_head, cfg.d_mlp);
    let ln = |name: &str| -> Result<Option<NormParams>> {
        Ok(Some((
            src.get(&format!("{name}.weight"), &[d])?,
            Some(src.get(&format!("{name}.bias"), &[d])?),
        )))
    };
    let w_e = src.get("gpt_neox.embed_in.weight", &[v, d])?;
    let mut layers = Vec::new();
    for i in 0..cfg.n_layers {
        let p = format!("gpt_neox.layers.{i}");
        let qkv = src.get(&format!("{p}.attention.query_key_value.weight"), &[3 * d, d])?;
        let w_qkv = crate::ops::transposed(&per_head_to_stacked(&qkv, h, dh)?)?;
        drop(qkv);
        let bias = cfg.attention_bias != Some(false);
        let zeros = |n: usize| Tensor::zeros(n, src.dtype(), w_e.device());
        let b_qkv = if bias {
            per_head_to_stacked(
                &src.get(&format!("{p}.attention.query_key_value.bias"), &[3 * d])?,
                h,
                dh,
            )?
        } else {
            zeros(3 * d)?
        };
        layers.push(LayerWeights {
            ln1: ln(&format!("{p}.input_layernorm"))?,
            ln1_post: None,
            ln2: ln(&format!("{p}.post_attention_layernorm"))?,
            ln2_post: None,
            w_qkv,
            b_qkv,
            q_norm: None,
            k_norm: None,
            w_o: linear_weight(src, &format!("{p}.attention.dense.weight"), d, d)?,
            b_o: if bias {
                src.get(&format!("{p}.attention.dense.bias"), &[d])?
            } else {
                zeros(d)?
            },
            w_gate: None,
            w_in: linear_weight(src, &format!("{p}.mlp.dense_h_to_4h.weight"), mlp, d)?,
            b_in: src.get(&format!("{p}.mlp.dense_h_to_4h.bias"), &[mlp])?,
            w_out: linear_weight(src, &format!("{p}.mlp.dense_4h_to_h.weight"), d, mlp)?,
            b_out: src.get(&format!("{p}.mlp.dense_4h_to_h.bias"), &[d])?,
        });
    }
    let ln_final = ln("gpt_neox.final_layer_norm")?;
    finish(
        src,
        cfg,
        w_e,
        None,
        layers,
        ln_final,
        "embed_out.weight",
        cfg.tie_word_embeddings,
    )
}

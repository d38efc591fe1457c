//! Phi (`PhiForCausalLM`: phi-1, phi-1.5, phi-2): one LayerNorm per block feeding
//! attention and MLP in parallel (`resid_post = resid_pre + attn(ln(x)) + mlp(ln(x))`;
//! as TransformerLens, `ln2` is a copy of `ln1`, so its hooks equal `ln1`'s and the
//! copy folds into `W_in`), partial rotary on pairs `(i, i + rotary_dim/2)` with
//! `rotary_dim = int(partial_rotary_factor * d_head)` (Hugging Face truncates),
//! biases on every projection, gelu_new, and an untied `lm_head` with a bias (`b_U`).
//!
//! Beyond TransformerLens 2.16.1, which reads neither: `num_key_value_heads` (grouped
//! key/value projections) and `qk_layernorm` (a LayerNorm with gain and bias over each
//! query and key head, `self_attn.q_layernorm` / `k_layernorm`, before rotary, as
//! Hugging Face's `PhiAttention`; hooks `attn.q_norm.*` / `attn.k_norm.*`).

use candle_core::Tensor;
use hooklens_core::Result;

use super::family::Family;
use super::hf_config::HfConfig;
use super::weights::{finish, linear_weight};
use crate::config::{ActFn, NormalizationType, PositionalEmbeddingType, TransformerConfig};
use crate::loading::TensorSource;
use crate::params::{LayerWeights, NormParams, TransformerWeights};

/// The Phi family.
pub(crate) const FAMILY: Family = Family {
    name: "Phi",
    model_types: &["phi"],
    classes: &["PhiForCausalLM"],
    fields: &[PHI_FIELDS],
    config,
    weights,
};

/// The fields this family reads.
const PHI_FIELDS: &[&str] = &[
    "bos_token_id",
    "eos_token_id",
    "hidden_act",
    "hidden_size",
    "intermediate_size",
    "layer_norm_eps",
    "max_position_embeddings",
    "num_attention_heads",
    "num_hidden_layers",
    "num_key_value_heads",
    "qk_layernorm",
    "rope_theta",
    "tie_word_embeddings",
    "vocab_size",
];

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    let n_layers = hf.usize("num_hidden_layers")?;
    let d_model = hf.usize("hidden_size")?;
    let n_heads = hf.usize("num_attention_heads")?;
    let d_vocab = hf.usize("vocab_size")?;
    let n_ctx = hf.usize("max_position_embeddings")?;
    let d_head = hf.d_head(d_model, "hidden_size", n_heads, "num_attention_heads")?;
    let n_kv = hf.opt_usize("num_key_value_heads")?.unwrap_or(n_heads);
    if !n_heads.is_multiple_of(n_kv) {
        return Err(hf.bad(format!(
            "field `num_attention_heads` ({n_heads}) is not a multiple of field `num_key_value_heads` ({n_kv})"
        )));
    }
    // PhiConfig's default `partial_rotary_factor` is 0.5; the rotary width is
    // `int(head_dim * partial_rotary_factor)` (TransformerLens rounds; the same for
    // every published Phi).
    let fraction = hf.rotary_fraction(None, 0.5)?;
    let rotary_dim = (fraction * d_head as f64) as usize;
    if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) {
        return Err(hf.bad(format!(
            "field `partial_rotary_factor` ({fraction}) gives {rotary_dim} rotary dimensions of a {d_head}-wide head: \
             rotary needs an even, positive number"
        )));
    }
    let rope = hf.rope("rope_theta", 10000.0)?;
    Ok(TransformerConfig {
        d_head,
        d_mlp: hf.usize("intermediate_size")?,
        eps: hf.opt_f64("layer_norm_eps")?.unwrap_or(1e-5),
        act_fn: hf.act_fn(&["hidden_act"], ActFn::GeluNew)?,
        normalization_type: NormalizationType::LN,
        bos_token_id: hf.token("bos_token_id", d_vocab)?,
        eos_token_id: hf.token("eos_token_id", d_vocab)?,
        n_key_value_heads: (n_kv != n_heads).then_some(n_kv),
        positional_embedding_type: PositionalEmbeddingType::Rotary,
        rotary_dim: Some(rotary_dim),
        rotary_base: rope.base,
        ntk_by_parts_rope: rope.ntk_by_parts,
        rotary_linear_factor: rope.linear_factor,
        parallel_attn_mlp: true,
        use_qk_norm: hf.bool_or("qk_layernorm", false)?,
        tie_word_embeddings: hf.bool_or("tie_word_embeddings", false)?,
        attention_bias: Some(true),
        ..TransformerConfig::new(n_layers, d_model, n_heads, d_vocab, n_ctx)
    })
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, _origin: &str) -> Result<TransformerWeights> {
    let (d, v, h, kv, dh, mlp) = (
        cfg.d_model,
        cfg.d_vocab,
        cfg.n_heads,
        cfg.n_kv_heads(),
        cfg.d_head,
        cfg.d_mlp,
    );
    let ln = |name: &str, len: usize| -> Result<NormParams> {
        Ok((
            src.get(&format!("{name}.weight"), &[len])?,
            Some(src.get(&format!("{name}.bias"), &[len])?),
        ))
    };
    let w_e = src.get("model.embed_tokens.weight", &[v, d])?;
    let mut layers = Vec::new();
    for i in 0..cfg.n_layers {
        let p = format!("model.layers.{i}");
        let a = format!("{p}.self_attn");
        let q = linear_weight(src, &format!("{a}.q_proj.weight"), h * dh, d)?;
        let k = linear_weight(src, &format!("{a}.k_proj.weight"), kv * dh, d)?;
        let vv = linear_weight(src, &format!("{a}.v_proj.weight"), kv * dh, d)?;
        let b_qkv = Tensor::cat(
            &[
                &src.get(&format!("{a}.q_proj.bias"), &[h * dh])?,
                &src.get(&format!("{a}.k_proj.bias"), &[kv * dh])?,
                &src.get(&format!("{a}.v_proj.bias"), &[kv * dh])?,
            ],
            0,
        )?;
        let ln1 = ln(&format!("{p}.input_layernorm"), d)?;
        let (q_norm, k_norm) = if cfg.use_qk_norm {
            (
                Some(ln(&format!("{a}.q_layernorm"), dh)?),
                Some(ln(&format!("{a}.k_layernorm"), dh)?),
            )
        } else {
            (None, None)
        };
        layers.push(LayerWeights {
            // The block's one norm feeds both branches: ln2 is a copy of it.
            ln2: Some(ln1.clone()),
            ln1: Some(ln1),
            ln1_post: None,
            ln2_post: None,
            w_qkv: Tensor::cat(&[&q, &k, &vv], 1)?,
            b_qkv,
            q_norm,
            k_norm,
            w_o: linear_weight(src, &format!("{a}.dense.weight"), d, h * dh)?,
            b_o: src.get(&format!("{a}.dense.bias"), &[d])?,
            w_gate: None,
            w_in: linear_weight(src, &format!("{p}.mlp.fc1.weight"), mlp, d)?,
            b_in: src.get(&format!("{p}.mlp.fc1.bias"), &[mlp])?,
            w_out: linear_weight(src, &format!("{p}.mlp.fc2.weight"), d, mlp)?,
            b_out: src.get(&format!("{p}.mlp.fc2.bias"), &[d])?,
        });
    }
    let ln_final = Some(ln("model.final_layernorm", d)?);
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
    // PhiForCausalLM: `lm_head = nn.Linear(hidden_size, vocab_size, bias=True)`, tied or not.
    w.b_u = src.get("lm_head.bias", &[v])?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::super::config_from_hf_str;

    const TINY: &str = r#"{"model_type": "phi", "architectures": ["PhiForCausalLM"],
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
        "vocab_size": 512, "max_position_embeddings": 64, "partial_rotary_factor": 0.4,
        "num_key_value_heads": 2, "qk_layernorm": true}"#;

    #[test]
    fn reads_partial_rotary_groups_and_qk_layernorm() {
        let c = config_from_hf_str(TINY, "config.json").unwrap();
        // int(0.4 * 16) = 6; int(0.35 * 16) = 5 is odd.
        assert_eq!((c.rotary_dim, c.n_kv_heads(), c.use_qk_norm), (Some(6), 2, true));
        assert!(c.parallel_attn_mlp && !c.tie_word_embeddings);
        let odd = TINY.replace("0.4", "0.35");
        let e = config_from_hf_str(&odd, "c.json").unwrap_err();
        assert!(e.to_string().contains("partial_rotary_factor"), "{e}");
    }
}

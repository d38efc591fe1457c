//! GPT-J (`GPTJForCausalLM`): one LayerNorm per block feeding attention and MLP in
//! parallel (as TransformerLens, `ln2` is a copy of `ln1`: its hooks equal `ln1`'s and
//! the copy folds into `W_in`), rotary on the first `rotary_dim` dimensions of each
//! head with **adjacent** pairs `(2i, 2i + 1)` (`rotate_every_two`; base 10000, which
//! the config does not name), q/k/v/out projections without biases, gelu_new, and an
//! untied `lm_head` with a bias (`b_U`). Names with or without the `transformer.`
//! prefix are read (`lm_head` never has it).
//!
//! `n_inner` sets the MLP width as in Hugging Face (`n_inner if not None else 4 *
//! n_embd`); TransformerLens 2.16.1 always takes `4 * n_embd` and cannot load a
//! checkpoint that sets it (no published GPT-J does).

use candle_core::Tensor;
use hooklens_core::Result;
use serde_json::json;

use super::family::Family;
use super::hf_config::HfConfig;
use super::weights::{finish, linear_weight};
use crate::config::{ActFn, NormalizationType, PositionalEmbeddingType, TransformerConfig};
use crate::loading::TensorSource;
use crate::params::{LayerWeights, NormParams, TransformerWeights};

/// The GPT-J family.
pub(crate) const FAMILY: Family = Family {
    name: "GPT-J",
    model_types: &["gptj"],
    classes: &["GPTJForCausalLM"],
    fields: &[GPTJ_FIELDS],
    config,
    weights,
};

/// The fields this family reads.
const GPTJ_FIELDS: &[&str] = &[
    "activation_function",
    "bos_token_id",
    "eos_token_id",
    "layer_norm_epsilon",
    "n_embd",
    "n_head",
    "n_inner",
    "n_layer",
    "n_positions",
    "rotary_dim",
    "tie_word_embeddings",
    "vocab_size",
];

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    let n_layers = hf.usize("n_layer")?;
    let d_model = hf.usize("n_embd")?;
    let n_heads = hf.usize("n_head")?;
    let d_vocab = hf.usize("vocab_size")?;
    let n_ctx = hf.usize("n_positions")?;
    let d_head = hf.d_head(d_model, "n_embd", n_heads, "n_head")?;
    // GPTJConfig's default `rotary_dim` is 64; set to null, Hugging Face builds
    // tables `n_embd` wide that do not fit a head, so null is refused here.
    let rotary_dim = hf.with_absent(&[("rotary_dim", json!(64))]).usize("rotary_dim")?;
    if !rotary_dim.is_multiple_of(2) || rotary_dim > d_head {
        return Err(hf.bad(format!(
            "field `rotary_dim` is {rotary_dim}: expected an even number of at most the head width {d_head}"
        )));
    }
    let d_mlp = match hf.opt_usize("n_inner")? {
        Some(n) => n,
        None => d_model
            .checked_mul(4)
            .ok_or_else(|| hf.bad(format!("field `n_embd` is too large: {d_model}")))?,
    };
    Ok(TransformerConfig {
        d_head,
        d_mlp,
        eps: hf.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
        act_fn: hf.act_fn(&["activation_function"], ActFn::GeluNew)?,
        normalization_type: NormalizationType::LN,
        bos_token_id: hf.token("bos_token_id", d_vocab)?,
        eos_token_id: hf.token("eos_token_id", d_vocab)?,
        positional_embedding_type: PositionalEmbeddingType::Rotary,
        rotary_dim: Some(rotary_dim),
        // `create_sinusoidal_positions`: `10000 ** (arange(0, dim, 2) / dim)`.
        rotary_base: 10000.0,
        rotary_adjacent_pairs: true,
        parallel_attn_mlp: true,
        tie_word_embeddings: hf.bool_or("tie_word_embeddings", false)?,
        attention_bias: Some(false),
        ..TransformerConfig::new(n_layers, d_model, n_heads, d_vocab, n_ctx)
    })
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, _origin: &str) -> Result<TransformerWeights> {
    let (d, v, mlp) = (cfg.d_model, cfg.d_vocab, cfg.d_mlp);
    let ln = |name: &str| -> Result<NormParams> {
        Ok((
            src.get(&format!("{name}.weight"), &[d])?,
            Some(src.get(&format!("{name}.bias"), &[d])?),
        ))
    };
    // `*ForCausalLM` weights have the `transformer.` prefix, the base model's none.
    let pre = if src.contains("wte.weight") && !src.contains("transformer.wte.weight") {
        ""
    } else {
        "transformer."
    };
    let w_e = src.get(&format!("{pre}wte.weight"), &[v, d])?;
    let zeros = |n: usize| Tensor::zeros(n, src.dtype(), w_e.device());
    let mut layers = Vec::new();
    for i in 0..cfg.n_layers {
        let p = format!("{pre}h.{i}");
        let q = linear_weight(src, &format!("{p}.attn.q_proj.weight"), d, d)?;
        let k = linear_weight(src, &format!("{p}.attn.k_proj.weight"), d, d)?;
        let vv = linear_weight(src, &format!("{p}.attn.v_proj.weight"), d, d)?;
        let ln1 = ln(&format!("{p}.ln_1"))?;
        layers.push(LayerWeights {
            // The block's one norm feeds both branches: ln2 is a copy of it.
            ln2: Some(ln1.clone()),
            ln1: Some(ln1),
            ln1_post: None,
            ln2_post: None,
            w_qkv: Tensor::cat(&[&q, &k, &vv], 1)?,
            b_qkv: zeros(3 * d)?,
            q_norm: None,
            k_norm: None,
            w_o: linear_weight(src, &format!("{p}.attn.out_proj.weight"), d, d)?,
            b_o: zeros(d)?,
            w_gate: None,
            w_in: linear_weight(src, &format!("{p}.mlp.fc_in.weight"), mlp, d)?,
            b_in: src.get(&format!("{p}.mlp.fc_in.bias"), &[mlp])?,
            w_out: linear_weight(src, &format!("{p}.mlp.fc_out.weight"), d, mlp)?,
            b_out: src.get(&format!("{p}.mlp.fc_out.bias"), &[d])?,
        });
    }
    let ln_final = Some(ln(&format!("{pre}ln_f"))?);
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
    // GPTJForCausalLM: `lm_head = nn.Linear(n_embd, vocab_size)`, with a bias.
    w.b_u = src.get("lm_head.bias", &[v])?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::super::config_from_hf_str;

    const TINY: &str = r#"{"model_type": "gptj", "architectures": ["GPTJForCausalLM"],
        "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64, "vocab_size": 512,
        "rotary_dim": 4, "n_inner": null}"#;

    #[test]
    fn reads_hf_names() {
        let c = config_from_hf_str(TINY, "config.json").unwrap();
        assert_eq!((c.rotary_dim, c.d_mlp, c.rotary_base), (Some(4), 256, 10000.0));
        assert!(c.rotary_adjacent_pairs && c.parallel_attn_mlp && !c.tie_word_embeddings);
        let c = config_from_hf_str(&TINY.replace("\"n_inner\": null", "\"n_inner\": 100"), "c.json").unwrap();
        assert_eq!(c.d_mlp, 100);
        let e = config_from_hf_str(&TINY.replace("\"rotary_dim\": 4", "\"rotary_dim\": 5"), "c.json").unwrap_err();
        assert!(e.to_string().contains("rotary_dim"), "{e}");
        let e = config_from_hf_str(&TINY.replace("\"rotary_dim\": 4", "\"rotary_dim\": null"), "c.json").unwrap_err();
        assert!(e.to_string().contains("rotary_dim"), "{e}");
        // Absent: GPTJConfig's default, 64 (wider than these 16-wide heads).
        let e = config_from_hf_str(&TINY.replace("\"rotary_dim\": 4,", ""), "c.json").unwrap_err();
        assert!(e.to_string().contains("rotary_dim` is 64"), "{e}");
    }
}

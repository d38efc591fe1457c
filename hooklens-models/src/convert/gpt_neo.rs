//! GPT-Neo (`GPTNeoForCausalLM`): GPT-2's arrangement (learned positions, sequential
//! blocks, LayerNorms with biases, gelu_new, tied embeddings) with `nn.Linear` layers
//! (`[out, in]`, not GPT-2's Conv1D), q/k/v projections without biases, **no**
//! `1/sqrt(d_head)` scaling of the attention scores, and layers that alternate
//! between global and local (sliding-window) attention as `attention_layers` says.
//! Names with the `transformer.` prefix (`GPTNeoForCausalLM`) or without (`GPTNeoModel`)
//! are read.

use candle_core::Tensor;
use hooklens_core::Result;
use serde_json::Value;

use super::family::Family;
use super::hf_config::HfConfig;
use super::weights::{finish, linear_weight};
use crate::config::{ActFn, AttnType, NormalizationType, TransformerConfig};
use crate::loading::TensorSource;
use crate::params::{LayerWeights, NormParams, TransformerWeights};

/// The GPT-Neo family.
pub(crate) const FAMILY: Family = Family {
    name: "GPT-Neo",
    model_types: &["gpt_neo"],
    classes: &["GPTNeoForCausalLM"],
    fields: &[GPT_NEO_FIELDS],
    config,
    weights,
};

/// The attention type of every layer: `attention_layers` (what `GPTNeoConfig` writes),
/// else `attention_types` expanded (`[[["global", "local"], 12]]`: the pattern repeated
/// 12 times), as `GPTNeoConfig.expand_attention_types_params` does.
fn attention_layers(hf: &HfConfig, n_layers: usize) -> Result<Vec<AttnType>> {
    let parse = |t: &Value, field: &str| match t.as_str() {
        Some("global") => Ok(AttnType::Global),
        Some("local") => Ok(AttnType::Local),
        _ => Err(hf.bad(format!("field `{field}` has {t}: expected \"global\" or \"local\""))),
    };
    let layers: Vec<AttnType> = if let Some(v) = hf.get("attention_layers") {
        let list = v
            .as_array()
            .ok_or_else(|| hf.bad(format!("field `attention_layers` is {v}: expected a list")))?;
        list.iter()
            .map(|t| parse(t, "attention_layers"))
            .collect::<Result<_>>()?
    } else if let Some(v) = hf.get("attention_types") {
        let bad = || {
            hf.bad(format!(
                "field `attention_types` is {v}: expected a list of [[types...], repeats]"
            ))
        };
        let mut out = Vec::new();
        for item in v.as_array().ok_or_else(bad)? {
            let pair = item.as_array().filter(|p| p.len() == 2).ok_or_else(bad)?;
            let types = pair[0].as_array().ok_or_else(bad)?;
            let repeats = pair[1].as_u64().ok_or_else(bad)?;
            for _ in 0..repeats.min(n_layers as u64 + 1) {
                for t in types {
                    out.push(parse(t, "attention_types")?);
                }
            }
        }
        out
    } else {
        return Err(hf.bad("fields `attention_layers` and `attention_types` are both missing"));
    };
    if layers.len() != n_layers {
        return Err(hf.bad(format!(
            "`attention_layers` lists {} layers, but `num_layers` is {n_layers}",
            layers.len()
        )));
    }
    Ok(layers)
}

/// The fields this family reads.
const GPT_NEO_FIELDS: &[&str] = &[
    "activation_function",
    "attention_layers",
    "attention_types",
    "bos_token_id",
    "eos_token_id",
    "hidden_size",
    "intermediate_size",
    "layer_norm_epsilon",
    "max_position_embeddings",
    "num_heads",
    "num_layers",
    "tie_word_embeddings",
    "vocab_size",
    "window_size",
];

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    let n_layers = hf.usize("num_layers")?;
    let d_model = hf.usize("hidden_size")?;
    let n_heads = hf.usize("num_heads")?;
    let d_vocab = hf.usize("vocab_size")?;
    let n_ctx = hf.usize("max_position_embeddings")?;
    let d_head = hf.d_head(d_model, "hidden_size", n_heads, "num_heads")?;
    // GPTNeoMLP: `intermediate_size if not None else 4 * hidden_size` (TransformerLens
    // always takes 4 * d_model and cannot load a checkpoint that sets it).
    let d_mlp = match hf.opt_usize("intermediate_size")? {
        Some(n) => n,
        None => d_model
            .checked_mul(4)
            .ok_or_else(|| hf.bad(format!("field `hidden_size` is too large: {d_model}")))?,
    };
    let types = attention_layers(hf, n_layers)?;
    let any_local = types.contains(&AttnType::Local);
    Ok(TransformerConfig {
        d_head,
        d_mlp,
        eps: hf.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
        act_fn: hf.act_fn(&["activation_function"], ActFn::GeluNew)?,
        normalization_type: NormalizationType::LN,
        bos_token_id: hf.token("bos_token_id", d_vocab)?,
        eos_token_id: hf.token("eos_token_id", d_vocab)?,
        // GPTNeoSelfAttention computes `q @ k^T` unscaled (TransformerLens `use_attn_scale: false`).
        attn_scale: Some(1.0),
        // GPTNeoConfig's default window is 256.
        window_size: if any_local {
            Some(hf.opt_usize("window_size")?.unwrap_or(256))
        } else {
            None
        },
        attn_types: any_local.then_some(types),
        tie_word_embeddings: hf.bool_or("tie_word_embeddings", true)?,
        ..TransformerConfig::new(n_layers, d_model, n_heads, d_vocab, n_ctx)
    })
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, _origin: &str) -> Result<TransformerWeights> {
    let (d, v, n_ctx, mlp) = (cfg.d_model, cfg.d_vocab, cfg.n_ctx, cfg.d_mlp);
    let ln = |name: &str| -> Result<Option<NormParams>> {
        Ok(Some((
            src.get(&format!("{name}.weight"), &[d])?,
            Some(src.get(&format!("{name}.bias"), &[d])?),
        )))
    };
    // `*ForCausalLM` weights have the `transformer.` prefix, the base model's none.
    let pre = if src.contains("wte.weight") && !src.contains("transformer.wte.weight") {
        ""
    } else {
        "transformer."
    };
    let w_e = src.get(&format!("{pre}wte.weight"), &[v, d])?;
    let w_pos = src.get(&format!("{pre}wpe.weight"), &[n_ctx, d])?;
    let mut layers = Vec::new();
    for i in 0..cfg.n_layers {
        let p = format!("{pre}h.{i}");
        let a = format!("{p}.attn.attention");
        let q = linear_weight(src, &format!("{a}.q_proj.weight"), d, d)?;
        let k = linear_weight(src, &format!("{a}.k_proj.weight"), d, d)?;
        let vv = linear_weight(src, &format!("{a}.v_proj.weight"), d, d)?;
        layers.push(LayerWeights {
            ln1: ln(&format!("{p}.ln_1"))?,
            ln1_post: None,
            ln2: ln(&format!("{p}.ln_2"))?,
            ln2_post: None,
            w_qkv: Tensor::cat(&[&q, &k, &vv], 1)?,
            // GPTNeoSelfAttention: q/k/v_proj have `bias=False`, out_proj a bias.
            b_qkv: Tensor::zeros(3 * d, src.dtype(), w_e.device())?,
            q_norm: None,
            k_norm: None,
            w_o: linear_weight(src, &format!("{a}.out_proj.weight"), d, d)?,
            b_o: src.get(&format!("{a}.out_proj.bias"), &[d])?,
            w_gate: None,
            w_in: linear_weight(src, &format!("{p}.mlp.c_fc.weight"), mlp, d)?,
            b_in: src.get(&format!("{p}.mlp.c_fc.bias"), &[mlp])?,
            w_out: linear_weight(src, &format!("{p}.mlp.c_proj.weight"), d, mlp)?,
            b_out: src.get(&format!("{p}.mlp.c_proj.bias"), &[d])?,
        });
    }
    let ln_final = ln(&format!("{pre}ln_f"))?;
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
    use crate::config::AttnType;

    const TINY: &str = r#"{"model_type": "gpt_neo", "architectures": ["GPTNeoForCausalLM"],
        "hidden_size": 64, "num_layers": 4, "num_heads": 4, "vocab_size": 512,
        "max_position_embeddings": 64, "window_size": 8,
        "attention_types": [[["global", "local"], 2]]}"#;

    #[test]
    fn attention_types_are_expanded() {
        let c = config_from_hf_str(TINY, "config.json").unwrap();
        let g = AttnType::Global;
        let l = AttnType::Local;
        assert_eq!(c.attn_types, Some(vec![g, l, g, l]));
        assert_eq!((c.window_size, c.attn_scale(), c.d_mlp), (Some(8), 1.0, 256));
        let e = config_from_hf_str(&TINY.replace("2]]", "3]]"), "c.json").unwrap_err();
        assert!(e.to_string().contains("attention_layers"), "{e}");
        let e = config_from_hf_str(&TINY.replace("\"local\"]", "\"sparse\"]"), "c.json").unwrap_err();
        assert!(e.to_string().contains("attention_types"), "{e}");
    }
}

//! gpt-oss (`GptOssForCausalLM`): Llama's pre-norm blocks with biases on q, k, v and o,
//! a learned **sink** logit per head that joins each softmax and is dropped after it,
//! sliding-window and full layers alternating (`layer_types`; even layers sliding by
//! default), YaRN rotary (`rope_scaling` / `rope_parameters` `rope_type: "yarn"`), and a
//! sparse mixture of experts whose router has a bias, takes the top-k of its logits and
//! softmaxes those k, and whose experts are clamped SwiGLUs with biases. Checkpoint:
//! the bf16 layout transformers writes: `self_attn.sinks`, `mlp.router.{weight,bias}`,
//! `mlp.experts.gate_up_proj` `[E, d_model, 2 d_mlp]` (gate and up **interleaved** by
//! column: gate = even columns), `gate_up_proj_bias` `[E, 2 d_mlp]`, `down_proj`
//! `[E, d_mlp, d_model]`, `down_proj_bias` `[E, d_model]`. The published checkpoints'
//! MXFP4 experts (`gate_up_proj_blocks` / `_scales`, `down_proj_blocks` / `_scales`,
//! `quantization_config.quant_method: "mxfp4"`) are dequantised on load exactly as
//! transformers dequantises them (see `mxfp4.rs`), into the load dtype.

use candle_core::{IndexOp, Tensor};
use hooklens_core::Result;
use serde_json::{json, Map, Value};

use super::family::Family;
use super::hf_config::HfConfig;
use super::llama::{llama_config, read_llama_layout, LlamaLayout, LLAMA_FIELDS};
use super::moe::{set_experts, MOE_FIELDS};
use super::mxfp4;
use super::weights::linear_weight;
use crate::config::{ActFn, AttnType, ClampedSwiglu, TransformerConfig, YarnRope};
use crate::loading::TensorSource;
use crate::params::{ExpertWeights, MoeWeights, TransformerWeights};

/// The gpt-oss family.
pub(crate) const FAMILY: Family = Family {
    name: "gpt-oss",
    model_types: &["gpt_oss"],
    classes: &["GptOssForCausalLM"],
    fields: &[
        LLAMA_FIELDS,
        MOE_FIELDS,
        &["sliding_window", "swiglu_alpha", "swiglu_limit", "quantization_config"],
    ],
    config,
    weights,
};

/// A positive number `key` of the rotary settings `s` (in `field`), else `default`.
fn num(hf: &HfConfig, s: &Map<String, Value>, field: &str, key: &str, default: Option<f64>) -> Result<f64> {
    match s.get(key).filter(|v| !v.is_null()) {
        Some(v) => v
            .as_f64()
            .filter(|x| *x > 0.0 && x.is_finite())
            .ok_or_else(|| hf.bad(format!("field `{field}.{key}` is {v}: expected a positive number"))),
        None => default.ok_or_else(|| hf.bad(format!("field `{field}`: YaRN needs `{key}`"))),
    }
}

/// The rotary base and YaRN settings, from `rope_parameters` (transformers 5) or
/// `rope_scaling` with `rope_theta` (published configs); GptOssConfig's YaRN when
/// neither is there.
fn rope(hf: &HfConfig) -> Result<(f64, Option<YarnRope>)> {
    let (s, field) = match (hf.object("rope_parameters")?, hf.object("rope_scaling")?) {
        (Some(p), _) => (Some(p), "rope_parameters"),
        (None, l) => (l, "rope_scaling"),
    };
    let base = match s.and_then(|s| s.get("rope_theta")).filter(|v| !v.is_null()) {
        Some(_) => num(hf, s.unwrap_or(&Map::new()), field, "rope_theta", None)?,
        None => hf.opt_f64("rope_theta")?.unwrap_or(150000.0),
    };
    let default = json!({"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                         "truncate": false, "original_max_position_embeddings": 4096});
    let default = default.as_object().cloned().unwrap_or_default();
    let s = s.unwrap_or(&default);
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    match kind {
        "default" => return Ok((base, None)),
        "yarn" => {}
        other => {
            return Err(hf.bad(format!(
                "field `{field}`: rope type `{other}` is not supported for gpt-oss (supported: \"yarn\", \"default\")"
            )))
        }
    }
    let factor = num(hf, s, field, "factor", None)?;
    let original = match s.get("original_max_position_embeddings").filter(|v| !v.is_null()) {
        Some(_) => num(hf, s, field, "original_max_position_embeddings", None)?,
        None => hf.usize("max_position_embeddings")? as f64,
    };
    for key in ["mscale", "mscale_all_dim"] {
        if s.get(key).is_some_and(|v| !v.is_null()) {
            return Err(hf.bad(format!(
                "field `{field}.{key}`: YaRN's mscale settings are not supported"
            )));
        }
    }
    // Hugging Face's `get_mscale(factor)`, unless the config names the factor.
    let mscale = if factor <= 1.0 { 1.0 } else { 0.1 * factor.ln() + 1.0 };
    let truncate = match s.get("truncate") {
        None | Some(Value::Null) => true,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| hf.bad(format!("field `{field}.truncate` is {v}: expected true or false")))?,
    };
    Ok((
        base,
        Some(YarnRope {
            factor,
            beta_fast: num(hf, s, field, "beta_fast", Some(32.0))?,
            beta_slow: num(hf, s, field, "beta_slow", Some(1.0))?,
            original_ctx_len: original,
            truncate,
            attention_factor: num(hf, s, field, "attention_factor", Some(mscale))?,
        }),
    ))
}

/// Refuses a `quantization_config` other than MXFP4 (the only one whose tensors are
/// read: `weights` dequantises them); none means a dense checkpoint.
fn quantization(hf: &HfConfig) -> Result<()> {
    let Some(q) = hf.object("quantization_config")? else {
        return Ok(());
    };
    match q.get("quant_method") {
        Some(Value::String(m)) if m == "mxfp4" => Ok(()),
        other => Err(hf.bad(format!(
            "field `quantization_config.quant_method` is {}: only \"mxfp4\" quantised gpt-oss checkpoints are read",
            other.map_or("missing".to_string(), Value::to_string)
        ))),
    }
}

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    // GptOssConfig's defaults where they differ from the Llama readers'.
    let hf = &hf.with_absent(&[
        ("num_key_value_heads", json!(8)),
        ("head_dim", json!(64)),
        ("rms_norm_eps", json!(1e-5)),
        ("sliding_window", json!(128)),
        ("attention_bias", json!(true)),
    ]);
    quantization(hf)?;
    let (base, yarn) = rope(hf)?;
    // The shared readers refuse YaRN: they get the base alone.
    let plain = hf
        .without(&["rope_parameters", "rope_scaling", "rope_theta"])
        .with_absent(&[("rope_theta", json!(base))]);
    let mut cfg = llama_config(&plain, false, "hidden_act", ActFn::Silu)?;
    cfg.yarn_rope = yarn;
    cfg.attention_bias = Some(hf.bool_or("attention_bias", true)?);
    // Even layers sliding, odd layers full, unless `layer_types` says otherwise.
    let types = match hf.layer_types(cfg.n_layers)? {
        Some(t) => t,
        None => (0..cfg.n_layers)
            .map(|i| if i % 2 == 0 { AttnType::Local } else { AttnType::Global })
            .collect(),
    };
    if types.contains(&AttnType::Local) {
        cfg.window_size = Some(hf.usize("sliding_window")?);
        cfg.attn_types = Some(types);
    }
    set_experts(hf, &mut cfg, &["num_local_experts", "num_experts"], 128, 4, false)?;
    cfg.moe_softmax_after_topk = true;
    let positive = |field: &str, default: f64| -> Result<f64> { Ok(hf.opt_f64(field)?.unwrap_or(default)) };
    cfg.moe_clamped_swiglu = Some(ClampedSwiglu {
        limit: positive("swiglu_limit", 7.0)?,
        alpha: positive("swiglu_alpha", 1.702)?,
    });
    Ok(cfg)
}

/// Columns `parity, parity + 2, ...` of `t` `[.., 2 m]` (gate: 0, up: 1), contiguous.
fn interleaved(t: &Tensor, parity: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let last = dims.len() - 1;
    let mut split = dims[..last].to_vec();
    split.extend([dims[last] / 2, 2]);
    Ok(t.reshape(split)?
        .narrow(last + 1, parity, 1)?
        .squeeze(last + 1)?
        .contiguous()?)
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, origin: &str) -> Result<TransformerWeights> {
    let layout = LlamaLayout {
        sparse_mlp: true,
        ..LlamaLayout::default()
    };
    let mut w = read_llama_layout(src, cfg, origin, &layout)?;
    let (d, m, h) = (cfg.d_model, cfg.d_mlp, cfg.n_heads);
    let n_experts = cfg.num_experts.unwrap_or(0);
    for i in 0..cfg.n_layers {
        let p = format!("model.layers.{i}");
        w.attn_sinks.push(src.get(&format!("{p}.self_attn.sinks"), &[h])?);
        let gate_up_bias = src.get(&format!("{p}.mlp.experts.gate_up_proj_bias"), &[n_experts, 2 * m])?;
        // Dense, or MXFP4 blocks and scales dequantised here (onto the device the
        // source put the bias on: the source does not name its device).
        let expert_weight = |name: String, inputs: usize, outputs: usize| -> Result<Tensor> {
            if mxfp4::is_packed(src, &name) {
                mxfp4::read_packed(src, &name, n_experts, inputs, outputs, gate_up_bias.device())
            } else {
                src.get(&name, &[n_experts, inputs, outputs])
            }
        };
        let gate_up = expert_weight(format!("{p}.mlp.experts.gate_up_proj"), d, 2 * m)?;
        let down = expert_weight(format!("{p}.mlp.experts.down_proj"), m, d)?;
        let down_bias = src.get(&format!("{p}.mlp.experts.down_proj_bias"), &[n_experts, d])?;
        let experts = (0..n_experts)
            .map(|e| {
                let (gu, gub) = (gate_up.i(e)?, gate_up_bias.i(e)?);
                Ok(ExpertWeights {
                    // Already `[in, out]`: gpt-oss multiplies `x @ gate_up_proj[e]`.
                    w_gate: interleaved(&gu, 0)?,
                    w_in: interleaved(&gu, 1)?,
                    w_out: down.i(e)?.contiguous()?,
                    b_gate: Some(interleaved(&gub, 0)?),
                    b_in: Some(interleaved(&gub, 1)?),
                    b_out: Some(down_bias.i(e)?.contiguous()?),
                })
            })
            .collect::<Result<_>>()?;
        w.moe.push(MoeWeights {
            w_router: linear_weight(src, &format!("{p}.mlp.router.weight"), n_experts, d)?,
            b_router: Some(src.get(&format!("{p}.mlp.router.bias"), &[n_experts])?),
            experts,
        });
    }
    Ok(w)
}

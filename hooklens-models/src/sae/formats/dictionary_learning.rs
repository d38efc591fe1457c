//! dictionary_learning (SAEBench and others): `config.json` (`trainer`, `buffer`) and
//! `ae.pt`, a PyTorch state dict, per folder.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::Tensor;
use hooklens_core::Result;
use serde_json::{json, Map, Value};

use super::{bad_file, json_uint, object, read_json, Converted, FileTensors, Source};

/// SAELens's `dictionary_learning_1`: the trainer's `dict_class` picks the architecture
/// (`AutoEncoderTopK`: top-k; `GatedAutoEncoder`: gated; `BatchTopKSAE` and
/// `MatryoshkaBatchTopKSAE`: JumpReLU with the saved threshold; `JumpReluAutoEncoder`:
/// JumpReLU without `b_dec` subtracted from the input; else standard), on
/// `blocks.<layer>.hook_resid_post`.
pub(super) fn load(src: &Source) -> Result<Converted> {
    let (cfg, architecture) = config(src)?;
    let (tensors, weights_file) = state_dict(src, architecture)?;
    Ok(Converted {
        cfg,
        tensors,
        weights_file,
    })
}

/// SAELens's config dict for the folder's `config.json` (overrides applied), and the
/// architecture it names.
fn config(src: &Source) -> Result<(Map<String, Value>, &'static str)> {
    let cfg_path = src.file(&src.in_folder("config.json"))?;
    let config = read_json(&cfg_path)?;
    let trainer = config
        .get("trainer")
        .and_then(Value::as_object)
        .ok_or_else(|| bad_file(&cfg_path, "no `trainer` object".into()))?;
    let ctx_len = config
        .get("buffer")
        .and_then(Value::as_object)
        .ok_or_else(|| bad_file(&cfg_path, "no `buffer` object".into()))
        .and_then(|b| json_uint(b, "ctx_len", &cfg_path))?;
    let layer = json_uint(trainer, "layer", &cfg_path)?;
    let d_in = json_uint(trainer, "activation_dim", &cfg_path)?;
    let d_sae = json_uint(trainer, "dict_size", &cfg_path)?;
    let dict_class = trainer
        .get("dict_class")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_file(&cfg_path, "no `trainer.dict_class`".into()))?;
    let lm_name = trainer
        .get("lm_name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_file(&cfg_path, "no `trainer.lm_name`".into()))?;
    let topk = dict_class == "AutoEncoderTopK";
    let kwargs = if topk {
        json!({ "k": json_uint(trainer, "k", &cfg_path)? })
    } else {
        json!({})
    };
    let (architecture, apply_b_dec_to_input) = match dict_class {
        "GatedAutoEncoder" => ("gated", true),
        "MatryoshkaBatchTopKSAE" | "BatchTopKSAE" => ("jumprelu", true),
        "JumpReluAutoEncoder" => ("jumprelu", false),
        _ => ("standard", true),
    };
    let cfg = object(json!({
        "architecture": architecture,
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "model_name": lm_name.rsplit('/').next().unwrap_or(lm_name),
        "hook_name": format!("blocks.{layer}.hook_resid_post"),
        "hook_head_index": null,
        "activation_fn": if topk { "topk" } else { "relu" },
        "activation_fn_kwargs": kwargs,
        "apply_b_dec_to_input": apply_b_dec_to_input,
        "finetuning_scaling_factor": false,
        "prepend_bos": true,
        "dataset_path": "monology/pile-uncopyrighted",
        "context_size": ctx_len,
        "normalize_activations": "none",
    }));
    // SAELens ends this getter with the overrides spread in, like the others.
    Ok((src.overridden(cfg), architecture))
}

/// SAELens's state dict from the folder's `ae.pt` for an SAE of `architecture`, and
/// that file's path.
fn state_dict(src: &Source, architecture: &str) -> Result<(HashMap<&'static str, Tensor>, PathBuf)> {
    let path = src.file(&src.in_folder("ae.pt"))?;
    let file = FileTensors::torch(&path, src.device)?;
    let pick = |a: &str, linear: &str| -> Result<Tensor> {
        if file.has(a) {
            file.get(a)
        } else {
            // nn.Linear's `[out, in]`, transposed to SAELens's `x @ W`.
            file.get_transposed(linear)
        }
    };
    let mut tensors = HashMap::new();
    let w_enc = pick("W_enc", "encoder.weight")?;
    tensors.insert("W_dec", pick("W_dec", "decoder.weight")?);
    let b_dec = ["b_dec", "bias", "decoder_bias"]
        .iter()
        .find(|n| file.has(n))
        .ok_or_else(|| bad_file(&path, "no decoder bias (`b_dec`, `bias` or `decoder_bias`)".into()))?;
    tensors.insert("b_dec", file.get(b_dec)?);
    // `b_enc` wins over `encoder.bias` when both are there, as in SAELens.
    for (from, to) in [
        ("encoder.bias", "b_enc"),
        ("b_enc", "b_enc"),
        ("mag_bias", "b_mag"),
        ("gate_bias", "b_gate"),
        ("r_mag", "r_mag"),
    ] {
        if file.has(from) {
            tensors.insert(to, file.get(from)?);
        }
    }
    // AutoEncoderTopK saves a threshold too, but encodes per-token top-k.
    if architecture == "jumprelu" && file.has("threshold") {
        let t = file.get("threshold")?;
        let t = if t.rank() == 0 {
            Tensor::full(
                t.to_scalar::<f32>()?,
                w_enc.dims().get(1).copied().unwrap_or(0),
                src.device,
            )?
        } else {
            t
        };
        tensors.insert("threshold", t);
    }
    tensors.insert("W_enc", w_enc);
    Ok((tensors, path))
}

//! Gemma Scope 2 (Gemma 3): `params.safetensors` (lower-case `w_enc`, `w_dec`, ...) in
//! each folder, with a small `config.json` or none; SAELens's `gemma_3` reads the hook
//! from the folder name and the sizes from the tensors.

use std::collections::HashMap;

use candle_core::Tensor;
use hooklens_core::{Error, Result};
use serde_json::{json, Map, Value};

use super::{number_after, object, read_json, Converted, FileTensors, Source};

/// SAELens's `gemma_3` (`get_gemma_3_config_from_hf`, `gemma_3_sae_huggingface_loader`).
pub(super) fn load(src: &Source) -> Result<Converted> {
    let folder = src.folder;
    if folder.contains("clt") {
        // SAELens reads a CLT layer's `<folder>.safetensors` and sums its decoders;
        // the shipped directory has no such release.
        return Err(invalid(src, "cross-layer transcoder (`clt`) folders are not read"));
    }
    let layer = number_after(folder, "layer_").ok_or_else(|| invalid(src, "no `layer_N` in the folder name"))?;
    let transcoder = folder.contains("transcoder");
    let raw = raw_config(src, layer, transcoder)?;
    let (hook_name, hook_name_out) = hook_names(src, layer, transcoder)?;

    let path = src.file(&src.in_folder("params.safetensors"))?;
    let file = FileTensors::safetensors(&path, src.device)?;
    let w_enc = file.get_rank("w_enc", 2)?;
    let (d_in, d_sae) = (w_enc.dims()[0], w_enc.dims()[1]);
    let model_name = hub_model_name(src, &raw)?;
    let skip = raw.get("affine_connection").and_then(Value::as_bool).unwrap_or(false);
    let architecture = match (transcoder, skip) {
        (false, _) => "jumprelu",
        (true, true) => "jumprelu_skip_transcoder",
        (true, false) => "jumprelu_transcoder",
    };
    let mut cfg = json!({
        "architecture": architecture,
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "model_name": model_name,
        "hook_name": hook_name,
        "hook_head_index": null,
        "finetuning_scaling_factor": false,
        "prepend_bos": true,
        "dataset_path": "monology/pile-uncopyrighted",
        "context_size": 1024,
        "apply_b_dec_to_input": false,
        "normalize_activations": "none",
        "reshape_activations": "none",
    });
    if let Some(out) = hook_name_out {
        cfg["hook_name_out"] = json!(out);
    }
    if transcoder {
        cfg["d_out"] = json!(file.dims("w_dec")?.last().copied().unwrap_or(0));
    }
    let cfg = src.overridden(object(cfg));
    Ok(Converted {
        cfg,
        tensors: state_dict(&file, w_enc)?,
        weights_file: path,
    })
}

/// The error for the SAE `src` names, saying `what` is wrong.
fn invalid(src: &Source, what: &str) -> Error {
    Error::invalid(format!(
        "Gemma Scope 2 SAE `{}` folder `{}`: {what}",
        src.repo_id, src.folder
    ))
}

/// The raw config (`architecture`, `model_name`, ...): `config.json` when the
/// repository has one, else what SAELens infers from the names; `jump_relu` only.
fn raw_config(src: &Source, layer: usize, transcoder: bool) -> Result<Map<String, Value>> {
    let raw = match src.file(&src.in_folder("config.json")) {
        Ok(path) => read_json(&path)?,
        Err(_) => infer_raw(src, layer, transcoder).map_err(|w| invalid(src, &w))?,
    };
    if raw.get("architecture").and_then(Value::as_str) != Some("jump_relu") {
        return Err(invalid(
            src,
            &format!(
                "config.json's architecture is {}, not `jump_relu` (SAELens refuses it too)",
                raw.get("architecture").unwrap_or(&Value::Null)
            ),
        ));
    }
    Ok(raw)
}

/// The hook read and, for a transcoder, the hook written (`hook_name`,
/// `hook_name_out`), from the folder name's hook kind.
fn hook_names(src: &Source, layer: usize, transcoder: bool) -> Result<(String, Option<String>)> {
    let folder = src.folder;
    let hooks = if folder.contains("resid_post") {
        (format!("blocks.{layer}.hook_resid_post"), None)
    } else if folder.contains("attn_out") {
        (format!("blocks.{layer}.attn.hook_z"), None)
    } else if folder.contains("mlp_out") {
        (format!("blocks.{layer}.hook_mlp_out"), None)
    } else if transcoder {
        (
            format!("blocks.{layer}.hook_mlp_in"),
            Some(format!("blocks.{layer}.hook_mlp_out")),
        )
    } else {
        return Err(invalid(
            src,
            "no hook kind (resid_post, attn_out, mlp_out, transcoder) in the folder name",
        ));
    };
    Ok(hooks)
}

/// The Hugging Face id of the model, from the raw config's `model_name` as SAELens
/// rewrites it (`google/` prefix, `gemma-3` spelling).
fn hub_model_name(src: &Source, raw: &Map<String, Value>) -> Result<String> {
    let mut model_name = raw
        .get("model_name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(src, "config.json has no `model_name`"))?
        .to_string();
    if !model_name.contains("google") {
        model_name = format!("google/{model_name}");
    }
    model_name = model_name.replace("-v3", "-3");
    if model_name.contains("270m") {
        // The 270m model on the hub has no `-pt` suffix.
        model_name = model_name.replace("-pt", "");
    }
    Ok(model_name)
}

/// SAELens's state dict (`W_enc` `[d_in, d_sae]`, `W_dec`, `b_enc`, `b_dec`,
/// `threshold`, and `W_skip` `[d_out, d_in]` when stored) from `params.safetensors`'s
/// `file`, whose `w_enc` is already read.
fn state_dict(file: &FileTensors, w_enc: Tensor) -> Result<HashMap<&'static str, Tensor>> {
    let mut tensors = HashMap::new();
    tensors.insert("W_enc", w_enc);
    tensors.insert("W_dec", file.get("w_dec")?);
    tensors.insert("b_enc", file.get("b_enc")?);
    tensors.insert("b_dec", file.get("b_dec")?);
    tensors.insert("threshold", file.get("threshold")?);
    if file.has("affine_skip_connection") {
        // Stored `[d_in, d_out]`; SAELens's W_skip is `[d_out, d_in]`.
        tensors.insert("W_skip", file.get_transposed("affine_skip_connection")?);
    }
    Ok(tensors)
}

/// SAELens's `_infer_gemma_3_raw_cfg_dict`, for folders without a `config.json`.
fn infer_raw(src: &Source, layer: usize, transcoder: bool) -> std::result::Result<Map<String, Value>, String> {
    let folder = src.folder;
    let known = transcoder || ["resid_post", "attn_out", "mlp_out"].iter().any(|k| folder.contains(k));
    if !known {
        return Err("no config.json, and no hook kind in the folder name to infer one from".into());
    }
    let _ = layer; // SAELens's inferred hf_hook_point_* are metadata only.
    let mut raw = Map::new();
    raw.insert("architecture".into(), json!("jump_relu"));
    raw.insert(
        "model_name".into(),
        json!(src.repo_id.replace("gemma-scope-2", "gemma-3")),
    );
    if transcoder {
        raw.insert("affine_connection".into(), json!(folder.contains("affine")));
    }
    Ok(raw)
}

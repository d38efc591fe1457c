//! Gemma Scope (Gemma 2): `params.npz` in each `layer_N/width_Wk/...` folder, with no
//! config: SAELens's `gemma_2` and `gemma_2_transcoder` infer the model, hook and sizes
//! from the repository and folder names.

use std::collections::HashMap;

use hooklens_core::Result;
use serde_json::{json, Value};

use super::{bad_file, number_after, object, Converted, FileTensors, Source};

/// Dictionary widths by the folder's `width_*` part, in SAELens's order (the first
/// contained in the folder name wins).
const WIDTHS: &[(&str, u64)] = &[
    ("width_4k", 4096),
    ("width_16k", 16384),
    ("width_32k", 32768),
    ("width_65k", 65536),
    ("width_131k", 131072),
    ("width_262k", 262144),
    ("width_524k", 524288),
    ("width_1m", 1048576),
];

/// Models by a part of the repository id, in SAELens's order (`2b-it` before `2b`).
const MODELS: &[(&str, &str, u64)] = &[
    ("2b-it", "gemma-2-2b-it", 2304),
    ("9b-it", "gemma-2-9b-it", 3584),
    ("27b-it", "gemma-2-27b-it", 4608),
    ("2b", "gemma-2-2b", 2304),
    ("9b", "gemma-2-9b", 3584),
    ("27b", "gemma-2-27b", 4608),
];

fn invalid(src: &Source, what: &str) -> hooklens_core::Error {
    hooklens_core::Error::invalid(format!(
        "Gemma Scope SAE `{}` folder `{}`: {what}",
        src.repo_id, src.folder
    ))
}

/// SAELens's `gemma_2` (`get_gemma_2_config_from_hf` and its loader): a JumpReLU SAE
/// on the residual stream (`res` repositories; `embedding` folders read `hook_embed`),
/// `hook_mlp_out` (`mlp`) or `attn.hook_z` (`att`, flattened heads).
pub(super) fn gemma_2(src: &Source) -> Result<Converted> {
    let folder = src.folder;
    let d_sae = WIDTHS.iter().find(|(k, _)| folder.contains(k)).map(|(_, w)| *w);
    let embedding = folder.contains("embedding");
    let layer = match number_after(folder, "layer_") {
        Some(l) => l,
        None if embedding => 0,
        None => {
            return Err(invalid(
                src,
                "no `layer_N` in the folder name (SAELens reads the layer from it)",
            ))
        }
    };
    let repo = src.repo_id;
    let (model_key, model_name, mut d_in) = *MODELS
        .iter()
        .find(|(k, _, _)| repo.contains(k))
        .ok_or_else(|| invalid(src, "no model size (2b, 9b, 27b) in the repository id"))?;
    let hook_name = if repo.contains("res") && !embedding {
        format!("blocks.{layer}.hook_resid_post")
    } else if repo.contains("res") {
        "hook_embed".to_string()
    } else if repo.contains("mlp") {
        format!("blocks.{layer}.hook_mlp_out")
    } else if repo.contains("att") {
        // SAELens looks the size up by the first model key the repository contains.
        d_in = match model_key.trim_end_matches("-it") {
            "2b" => 2048,
            "9b" => 4096,
            "27b" => 4608,
            _ => d_in,
        };
        format!("blocks.{layer}.attn.hook_z")
    } else {
        return Err(invalid(src, "no hook kind (res, mlp, att) in the repository id"));
    };
    let cfg = json!({
        "architecture": "jumprelu",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "model_name": model_name,
        "hook_name": hook_name,
        "hook_head_index": null,
        "activation_fn": "relu",
        "finetuning_scaling_factor": false,
        "prepend_bos": true,
        "dataset_path": "monology/pile-uncopyrighted",
        "context_size": 1024,
        "apply_b_dec_to_input": false,
        "normalize_activations": null,
    });
    let cfg = src.overridden(object(cfg));

    let path = src.file(&src.in_folder("params.npz"))?;
    let file = FileTensors::npz(&path, src.device)?;
    let mut tensors = HashMap::new();
    for (name, key) in [
        ("W_enc", "W_enc"),
        ("W_dec", "W_dec"),
        ("b_enc", "b_enc"),
        ("b_dec", "b_dec"),
        ("threshold", "threshold"),
    ] {
        // SAELens renames `w_*` keys to `W_*`.
        let lower = key.to_lowercase();
        let t = if file.has(key) {
            file.get(key)?
        } else {
            file.get(&lower)?
        };
        tensors.insert(name, t);
    }
    check_scaling_factor(&file, &path)?;
    if embedding {
        // Trained on embeddings scaled by sqrt(d_model) (Gemma's embedding scale), which
        // SAELens moves into the weights; d_in is the config's, overrides included.
        let d = cfg.get("d_in").and_then(Value::as_f64).unwrap_or(d_in as f64).sqrt();
        let w_enc = tensors["W_enc"].affine(1.0 / d, 0.0)?;
        let w_dec = tensors["W_dec"].affine(d, 0.0)?;
        tensors.insert("W_enc", w_enc);
        tensors.insert("W_dec", w_dec);
    }
    Ok(Converted {
        cfg,
        tensors,
        weights_file: path,
    })
}

/// SAELens drops an all-ones `scaling_factor`; any other would need
/// `finetuning_scaling_factor`, which SAELens's Gemma Scope config sets false, so
/// SAELens refuses it.
fn check_scaling_factor(file: &FileTensors, path: &std::path::Path) -> Result<()> {
    if file.has("scaling_factor") {
        let s = file.get("scaling_factor")?.flatten_all()?.to_vec1::<f32>()?;
        if s.iter().any(|v| (v - 1.0).abs() > 1e-5) {
            return Err(bad_file(
                path,
                "`scaling_factor` is not all ones (SAELens refuses it: the config has no finetuning_scaling_factor)"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// SAELens's `gemma_2_transcoder`: a JumpReLU transcoder from `ln2.hook_normalized`
/// to `hook_mlp_out` of the folder's (or repository's) layer.
pub(super) fn gemma_2_transcoder(src: &Source) -> Result<Converted> {
    let folder = src.folder;
    let d_sae = match WIDTHS
        .iter()
        .find(|(k, _)| k != &"width_32k" && k != &"width_131k" && folder.contains(k))
    {
        Some((_, w)) => *w,
        None => {
            let k = number_after(folder, "width_")
                .filter(|_| folder.contains("k"))
                .ok_or_else(|| invalid(src, "no `width_*` in the folder name"))?;
            // SAELens's fallback: `width_(\d+)k`.
            if !folder.contains(&format!("width_{k}k")) {
                return Err(invalid(src, "no `width_*` in the folder name"));
            }
            k as u64 * 1024
        }
    };
    let layer = number_after(folder, "layer_")
        .or_else(|| number_after(src.repo_id, "layer_"))
        .ok_or_else(|| invalid(src, "no `layer_N` in the folder name or repository id"))?;
    let (_, model_name, d_model) = *MODELS
        .iter()
        .find(|(k, _, _)| src.repo_id.contains(k))
        .ok_or_else(|| invalid(src, "no model size (2b, 9b, 27b) in the repository id"))?;
    let cfg = json!({
        "architecture": "jumprelu_transcoder",
        "d_in": d_model,
        "d_out": d_model,
        "d_sae": d_sae,
        "dtype": "float32",
        "activation_fn": "relu",
        "normalize_activations": "none",
        "model_name": model_name,
        "hook_name": format!("blocks.{layer}.ln2.hook_normalized"),
        "hook_name_out": format!("blocks.{layer}.hook_mlp_out"),
        "hook_head_index": null,
        "prepend_bos": true,
        "dataset_path": "monology/pile-uncopyrighted",
        "context_size": 1024,
        "apply_b_dec_to_input": false,
    });
    let cfg = src.overridden(object(cfg));
    let path = src.file(&src.in_folder("params.npz"))?;
    let file = FileTensors::npz(&path, src.device)?;
    // SAELens accepts several spellings of each name, case-insensitively.
    let mut tensors = HashMap::new();
    let mut names: Vec<&String> = file.tensors.keys().collect();
    names.sort_unstable();
    for name in names {
        let target = match name.to_lowercase().as_str() {
            "w_enc" | "wenc" | "w_e" => "W_enc",
            "w_dec" | "wdec" | "w_d" => "W_dec",
            "b_enc" | "benc" | "b_e" => "b_enc",
            "b_dec" | "bdec" | "b_d" => "b_dec",
            "threshold" => "threshold",
            _ => continue,
        };
        tensors.insert(target, file.get(name)?);
    }
    Ok(Converted {
        cfg,
        tensors,
        weights_file: path,
    })
}

//! Transcoders published for circuit-tracer (`mwhanna/qwen3-*-transcoders`): one
//! `layer_N.safetensors` per layer at the repository's root, sizes in wandb's
//! `wandb-config.yaml` and the model in circuit-tracer's `config.yaml`.

use std::collections::HashMap;

use hooklens_core::{Error, Result};
use serde_json::json;

use super::yaml::Yaml;
use super::{object, Converted, FileTensors, Source};

/// SAELens's `mwhanna_transcoder`: a ReLU transcoder from `blocks.<layer>.mlp.hook_in`
/// to `blocks.<layer>.hook_mlp_out`; the layer is the file name's last `_` part.
pub(super) fn load(src: &Source) -> Result<Converted> {
    let file_name = src.folder;
    let invalid = |what: String| Error::invalid(format!("transcoder `{}` file `{file_name}`: {what}", src.repo_id));
    let layer: usize = file_name
        .trim_end_matches(".safetensors")
        .rsplit('_')
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| invalid("the file name does not end in `_<layer>`".into()))?;
    // Some repositories misspell wandb's file name; SAELens tries both.
    let wandb_path = src
        .file("wandb-config.yaml")
        .or_else(|_| src.file("wanb-config.yaml"))?;
    let wandb = Yaml::read(&wandb_path)?;
    let value = |key: &str| -> Result<usize> {
        wandb
            .nested(key, "value")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::BadFile {
                path: wandb_path.clone(),
                reason: format!("no integer `{key}.value`"),
            })
    };
    let (d_model, d_feature, batch_size) = (value("d_model")?, value("d_feature")?, value("batch_size")?);
    let model_name = match src.file("config.yaml") {
        Ok(path) => {
            let base = Yaml::read(&path)?;
            base.scalar("model_name")
                .map(str::to_string)
                .ok_or_else(|| Error::BadFile {
                    path: path.clone(),
                    reason: "no `model_name`".into(),
                })?
        }
        // The 14b transcoders have no config.yaml: SAELens names the model from the
        // repository id's `qwen3-<size>b`.
        Err(_) => {
            let id = src.repo_id;
            let size = id
                .find("qwen3-")
                .map(|at| &id[at + 6..])
                .and_then(|rest| rest.find('b').map(|end| &rest[..end]))
                .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| invalid("no config.yaml, and no Qwen3 size in the repository id".into()))?;
            format!("Qwen/Qwen3-{size}B")
        }
    };
    let cfg = src.overridden(object(json!({
        "architecture": "transcoder",
        "d_in": d_model,
        "d_out": d_model,
        "d_sae": d_feature,
        "dtype": "float32",
        "activation_fn": "relu",
        "normalize_activations": "none",
        "model_name": model_name,
        "hook_name": format!("blocks.{layer}.mlp.hook_in"),
        "hook_name_out": format!("blocks.{layer}.hook_mlp_out"),
        "dataset_path": "monology/pile-uncopyrighted",
        "context_size": batch_size,
        "apply_b_dec_to_input": false,
        "model_from_pretrained_kwargs": {"fold_ln": false},
    })));

    let path = src.file(file_name)?;
    let file = FileTensors::safetensors(&path, src.device)?;
    let mut tensors = HashMap::new();
    // Stored `[d_sae, d_in]`; SAELens transposes it and keeps the rest as saved.
    tensors.insert("W_enc", file.get_transposed("W_enc")?);
    for name in ["W_dec", "b_enc", "b_dec", "W_skip"] {
        if file.has(name) {
            tensors.insert(name, file.get(name)?);
        }
    }
    Ok(Converted {
        cfg,
        tensors,
        weights_file: path,
    })
}

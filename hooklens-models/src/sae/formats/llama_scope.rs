//! Llama Scope (`fnlp/Llama3_1-8B-Base-LX*`): `hyperparams.json` and
//! `checkpoints/final.safetensors` (`encoder.*` / `decoder.*` linear layers) per folder.

use std::collections::HashMap;

use candle_core::Tensor;
use hooklens_core::Result;
use serde_json::{json, Value};

use super::{bad_file, json_uint, object, read_json, Converted, FileTensors, Source};

/// SAELens's `llama_scope`: a JumpReLU SAE with one threshold for every feature, trained
/// on inputs scaled to norm sqrt(d_model) (`expected_average_only_in`; the release's
/// `norm_scaling_factor` is folded into the weights after loading). The threshold is
/// rescaled here by `sqrt(d_model) / dataset_average_activation_norm.in`, as SAELens
/// does, to match that fold.
pub(super) fn load(src: &Source) -> Result<Converted> {
    let hyper_path = src.file(&src.in_folder("hyperparams.json"))?;
    let hyper = read_json(&hyper_path)?;
    let d_in = json_uint(&hyper, "d_model", &hyper_path)?;
    let d_sae = json_uint(&hyper, "d_sae", &hyper_path)?;
    let avg_norm = hyper
        .get("dataset_average_activation_norm")
        .and_then(|n| n.get("in"))
        .and_then(Value::as_f64)
        .filter(|n| *n > 0.0)
        .ok_or_else(|| bad_file(&hyper_path, "no positive `dataset_average_activation_norm.in`".into()))?;
    let threshold = hyper
        .get("jump_relu_threshold")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad_file(&hyper_path, "no numeric `jump_relu_threshold`".into()))?;
    let hook_name = hyper
        .get("hook_point_in")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_file(&hyper_path, "no `hook_point_in`".into()))?;
    let norm_scaling = (d_in as f64).sqrt() / avg_norm;
    let threshold = threshold * norm_scaling;
    let cfg = json!({
        "architecture": "jumprelu",
        "jump_relu_threshold": threshold,
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "bfloat16",
        "model_name": "meta-llama/Llama-3.1-8B",
        "hook_name": hook_name,
        "hook_head_index": null,
        "activation_fn": "relu",
        "finetuning_scaling_factor": false,
        "prepend_bos": true,
        "dataset_path": "cerebras/SlimPajama-627B",
        "context_size": 1024,
        "apply_b_dec_to_input": false,
        "normalize_activations": "expected_average_only_in",
    });
    let cfg = src.overridden(object(cfg));

    let path = src.file(&src.in_folder("checkpoints/final.safetensors"))?;
    let file = FileTensors::safetensors(&path, src.device)?;
    let mut tensors = HashMap::new();
    // nn.Linear weights are `[out, in]`: transposed to SAELens's `x @ W`.
    tensors.insert("W_enc", file.get_transposed("encoder.weight")?);
    tensors.insert("W_dec", file.get_transposed("decoder.weight")?);
    tensors.insert("b_enc", file.get("encoder.bias")?);
    tensors.insert("b_dec", file.get("decoder.bias")?);
    // The threshold is made in the config's dtype (bf16 unless overridden, and
    // SAELens's from_pretrained overrides it with its f32 default).
    let t = Tensor::full(threshold as f32, d_sae, src.device)?;
    tensors.insert("threshold", t);
    Ok(Converted {
        cfg,
        tensors,
        weights_file: path,
    })
}

//! Cross-layer transcoders published for circuit-tracer (`mntss/clt-*`): per layer N,
//! `W_enc_N.safetensors` (`W_enc_N` `[d_sae, d_in]`, `b_enc_N`, `b_dec_N`) and
//! `W_dec_N.safetensors` (`W_dec_N` `[d_sae, later layers, d_out]`), with
//! circuit-tracer's `config.yaml` at the root.

use std::collections::HashMap;

use hooklens_core::{Error, Result};
use serde_json::json;

use super::yaml::Yaml;
use super::{object, Converted, FileTensors, Source};

/// SAELens's `mntss_clt_layer_transcoder`: one layer of a cross-layer transcoder as a
/// single-layer ReLU transcoder whose decoder is the sum of the layer's decoders to
/// every later layer. As SAELens warns, that is for reading feature activations, not
/// for reconstruction.
pub(super) fn load(src: &Source) -> Result<Converted> {
    let layer = src.folder;
    if layer.is_empty() || !layer.chars().all(|c| c.is_ascii_digit()) {
        return Err(Error::invalid(format!(
            "cross-layer transcoder `{}`: the SAE's path `{layer}` is not a layer number",
            src.repo_id
        )));
    }
    let yaml_path = src.file("config.yaml")?;
    let base = Yaml::read(&yaml_path)?;
    let field = |key: &str| -> Result<String> {
        base.scalar(key).map(str::to_string).ok_or_else(|| Error::BadFile {
            path: yaml_path.clone(),
            reason: format!("no `{key}`"),
        })
    };
    let (model_name, hook_in, hook_out) = (
        field("model_name")?,
        field("feature_input_hook")?,
        field("feature_output_hook")?,
    );
    let enc_path = src.file(&format!("W_enc_{layer}.safetensors"))?;
    let dec_path = src.file(&format!("W_dec_{layer}.safetensors"))?;
    let enc = FileTensors::safetensors(&enc_path, src.device)?;
    let dec = FileTensors::safetensors(&dec_path, src.device)?;
    let b_dec = enc.get_rank(&format!("b_dec_{layer}"), 1)?;
    let b_enc = enc.get_rank(&format!("b_enc_{layer}"), 1)?;
    let (d_in, d_sae) = (b_dec.dims()[0], b_enc.dims()[0]);
    let cfg = src.overridden(object(json!({
        "architecture": "transcoder",
        "d_in": d_in,
        "d_out": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "activation_fn": "relu",
        "normalize_activations": "none",
        "model_name": model_name,
        "hook_name": format!("blocks.{layer}.{hook_in}"),
        "hook_name_out": format!("blocks.{layer}.{hook_out}"),
        "apply_b_dec_to_input": false,
        "model_from_pretrained_kwargs": {"fold_ln": false},
    })));
    let mut tensors = HashMap::new();
    tensors.insert("W_enc", enc.get_transposed(&format!("W_enc_{layer}"))?);
    tensors.insert("b_enc", b_enc);
    tensors.insert("b_dec", b_dec);
    tensors.insert("W_dec", dec.get_rank(&format!("W_dec_{layer}"), 3)?.sum(1)?);
    Ok(Converted {
        cfg,
        tensors,
        weights_file: enc_path,
    })
}

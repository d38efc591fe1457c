//! Writing files atomically, and the trained SAE as a SAELens 6 folder: `cfg.json` as
//! `TrainingSAE.save_inference_model` writes it, `sae_weights.safetensors`, and the
//! trainer's `sparsity.safetensors` (log10 feature firing frequencies).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use hooklens_core::{Error, Result};
use serde_json::{json, Value};

use super::options::{TrainArchitecture, TrainOptions};

/// The SAELens version whose folder format is written (and whose training semantics the
/// trainer follows).
pub(crate) const SAELENS_FORMAT_VERSION: &str = "6.54.12";

/// A sibling temporary path of `path`: hidden, so listings never take it for a result.
fn temp_of(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader (or a
/// run killed mid-write) never sees half a file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_of(path);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Saves `tensors` as safetensors at `path`, atomically.
pub(crate) fn save_tensors_atomic(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let tmp = temp_of(path);
    candle_core::safetensors::save(tensors, &tmp)
        .map_err(|e| Error::invalid(format!("{}: writing safetensors: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// SAELens 6's inference `cfg.json` for an SAE trained with `opts` on `hook` (after the
/// normalisation is folded in, so `normalize_activations` is `none`); for a transcoder
/// (`out`: its output hook and width) SAELens's `transcoder` / `jumprelu_transcoder`
/// config: `d_out`, `apply_b_dec_to_input` false, `hook_name_out` in the metadata.
pub(crate) fn cfg_json(opts: &TrainOptions, d_in: usize, hook: &str, out: Option<(&str, usize)>) -> Value {
    let details = match opts.architecture {
        TrainArchitecture::Standard => json!({
            "decoder_init_norm": opts.decoder_init_norm,
            "l1_coefficient": opts.l1_coefficient,
            "lp_norm": opts.lp_norm,
            "l1_warm_up_steps": opts.l1_warm_up_steps,
        }),
        TrainArchitecture::TopK => json!({
            "decoder_init_norm": opts.decoder_init_norm,
            "use_sparse_activations": false,
            "aux_loss_coefficient": opts.aux_loss_coefficient,
        }),
        TrainArchitecture::BatchTopK => json!({
            "decoder_init_norm": opts.decoder_init_norm,
            "k": opts.k,
            "use_sparse_activations": false,
            "aux_loss_coefficient": opts.aux_loss_coefficient,
            "rescale_acts_by_decoder_norm": true,
            "topk_threshold_lr": opts.topk_threshold_lr,
        }),
        TrainArchitecture::MatryoshkaBatchTopK => json!({
            "decoder_init_norm": opts.decoder_init_norm,
            "k": opts.k,
            "use_sparse_activations": false,
            "aux_loss_coefficient": opts.aux_loss_coefficient,
            "rescale_acts_by_decoder_norm": true,
            "topk_threshold_lr": opts.topk_threshold_lr,
            "matryoshka_widths": opts.matryoshka_levels(),
            "use_matryoshka_aux_loss": opts.use_matryoshka_aux_loss,
        }),
        TrainArchitecture::JumpRelu => json!({
            "decoder_init_norm": opts.decoder_init_norm,
            "jumprelu_init_threshold": opts.jumprelu_init_threshold,
            "jumprelu_bandwidth": opts.jumprelu_bandwidth,
            "jumprelu_sparsity_loss_mode": opts.jumprelu_sparsity_loss_mode.name(),
            "l0_coefficient": opts.l0_coefficient,
            "l0_warm_up_steps": opts.l0_warm_up_steps,
            "pre_act_loss_coefficient": opts.pre_act_loss_coefficient,
            "jumprelu_tanh_scale": opts.jumprelu_tanh_scale,
            "jumprelu_ste_to_input": opts.jumprelu_ste_to_input,
            "target_l0": opts.target_l0,
        }),
    };
    // SAELens saves a (Matryoshka) BatchTopK SAE for inference as JumpReLU.
    let inference_architecture = match opts.architecture {
        TrainArchitecture::BatchTopK | TrainArchitecture::MatryoshkaBatchTopK => "jumprelu",
        other => other.name(),
    };
    let mut cfg = json!({
        "reshape_activations": "none",
        "normalize_activations": "none",
        "device": "cpu",
        "apply_b_dec_to_input": true,
        "d_in": d_in,
        "d_sae": opts.d_sae,
        "metadata": {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "sae_lens_training_version": SAELENS_FORMAT_VERSION,
            "hook_name": hook,
            "training_architecture": opts.architecture.name(),
            "training_architecture_details": details,
            "trained_with": concat!("hooklens ", env!("CARGO_PKG_VERSION")),
        },
        "dtype": "float32",
        "architecture": inference_architecture,
    });
    if let Some((hook_out, d_out)) = out {
        cfg["architecture"] = json!(format!(
            "{}transcoder",
            match inference_architecture {
                "jumprelu" => "jumprelu_",
                _ => "",
            }
        ));
        cfg["apply_b_dec_to_input"] = json!(false);
        cfg["d_out"] = json!(d_out);
        cfg["metadata"]["hook_name_out"] = json!(hook_out);
    }
    if opts.architecture == TrainArchitecture::TopK {
        cfg["k"] = json!(opts.k);
        // The saved weights have the decoder norms folded in (unit rows), so ranking by
        // them changes nothing; SAELens writes `true` all the same.
        cfg["rescale_acts_by_decoder_norm"] = json!(true);
    }
    cfg
}

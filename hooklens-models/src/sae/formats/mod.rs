//! Readers for the file formats SAELens converts on load (a release's
//! `conversion_func`): each file here reads one publisher's files into what SAELens's
//! conversion function makes of them, its config dict (turned into a [`SaeConfig`]
//! as SAELens turns it into its config class) and state dict, on which SAELens's
//! loading then folds the release's `norm_scaling_factor` where the config asks for
//! it (`expected_average_only_in`).
//!
//! One dispatch ([`load`]) by the function's name; `releases::CONVERTED_FORMATS` lists
//! the names read.

mod dictionary_learning;
mod gemma_scope;
mod gemma_scope_2;
mod llama_scope;
mod mntss_clt;
mod mwhanna;
pub(crate) mod npz;
mod yaml;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use hooklens_core::{Error, Result};
use serde_json::{Map, Value};

use super::autoencoder::{check_finite, GatedWeights, Sae, SaeWeights};
use super::config::{Architecture, SaeConfig};
use crate::loading::hub::{repo_files, HubOptions};
use crate::loading::SafetensorsFile;

use super::releases::CONVERTED_FORMATS as CONVERTED;

/// Where a converted SAE's files are: SAELens's `repo_id` and `folder_name`, the
/// config overrides SAELens passes its loader, and how to fetch.
pub(crate) struct Source<'a> {
    /// The Hugging Face repository.
    pub repo_id: &'a str,
    /// The release's path for the SAE id (a folder, or for some formats a file name).
    pub folder: &'a str,
    /// SAELens's `cfg_overrides`: the release's `config_overrides` (and the caller's).
    pub overrides: &'a Map<String, Value>,
    /// The release's `norm_scaling_factor` for this SAE id.
    pub norm_scaling_factor: Option<f64>,
    /// Cache and download options.
    pub hub: &'a HubOptions,
    /// Where the weights go.
    pub device: &'a Device,
}

impl Source<'_> {
    /// The local copy of `file` (a path inside the repository), from the cache or
    /// downloaded into it.
    fn file(&self, file: &str) -> Result<PathBuf> {
        let what = format!("SAE `{}` folder `{}`", self.repo_id, self.folder);
        let mut found = repo_files(self.repo_id, &[file.to_string()], self.hub, &what)?;
        Ok(found.remove(0))
    }

    /// `name` inside the SAE's folder.
    fn in_folder(&self, name: &str) -> String {
        let folder = self.folder.trim_matches('/');
        if folder.is_empty() {
            name.to_string()
        } else {
            format!("{folder}/{name}")
        }
    }

    /// `cfg` with the overrides set over it, as each SAELens config getter ends.
    fn overridden(&self, mut cfg: Map<String, Value>) -> Map<String, Value> {
        for (k, v) in self.overrides {
            cfg.insert(k.clone(), v.clone());
        }
        cfg
    }
}

/// Loads the SAE `src` names with the reader for SAELens's conversion function `func`;
/// a function with no reader is an error naming it.
pub(crate) fn load(func: &str, src: &Source) -> Result<Sae> {
    let converted = match func {
        "gemma_2" => gemma_scope::gemma_2(src)?,
        "gemma_2_transcoder" => gemma_scope::gemma_2_transcoder(src)?,
        "gemma_3" => gemma_scope_2::load(src)?,
        "llama_scope" => llama_scope::load(src)?,
        "dictionary_learning_1" => dictionary_learning::load(src)?,
        "mwhanna_transcoder" => mwhanna::load(src)?,
        "mntss_clt_layer_transcoder" => mntss_clt::load(src)?,
        other => {
            return Err(Error::invalid(format!(
                "SAE `{}` folder `{}` is published in a format SAELens converts with `{other}`, which hooklens \
                 does not read (it reads {}); `hooklens saes` marks the releases that load",
                src.repo_id,
                src.folder,
                CONVERTED.join(", ")
            )))
        }
    };
    converted.into_sae(src.norm_scaling_factor)
}

/// The paths inside the repository that the reader for `func` may read for the SAE at
/// `folder` (optional files included; none for a function with no reader): what a
/// caller must not overwrite once they are cached.
pub(crate) fn repo_paths(func: &str, folder: &str) -> Vec<String> {
    let folder = folder.trim_matches('/');
    let inside = |name: &str| {
        if folder.is_empty() {
            name.to_string()
        } else {
            format!("{folder}/{name}")
        }
    };
    match func {
        "gemma_2" | "gemma_2_transcoder" => vec![inside("params.npz")],
        "gemma_3" => vec![inside("config.json"), inside("params.safetensors")],
        "llama_scope" => vec![inside("hyperparams.json"), inside("checkpoints/final.safetensors")],
        "dictionary_learning_1" => vec![inside("config.json"), inside("ae.pt")],
        "mwhanna_transcoder" => ["wandb-config.yaml", "wanb-config.yaml", "config.yaml", folder]
            .map(String::from)
            .to_vec(),
        "mntss_clt_layer_transcoder" => vec![
            "config.yaml".to_string(),
            format!("W_enc_{folder}.safetensors"),
            format!("W_dec_{folder}.safetensors"),
        ],
        _ => Vec::new(),
    }
}

/// What a conversion function returns: SAELens's config dict and state dict.
pub(crate) struct Converted {
    /// The config dict, with SAELens's keys (read as a `cfg.json` is, so the legacy
    /// defaults SAELens's `handle_config_defaulting` applies apply too).
    pub cfg: Map<String, Value>,
    /// The state dict, SAELens's names (`W_enc` `[d_in, d_sae]`, `W_dec`
    /// `[d_sae, d_out]`, ...), in f32.
    pub tensors: HashMap<&'static str, Tensor>,
    /// The file the weights came from, named in errors.
    pub weights_file: PathBuf,
}

impl Converted {
    fn into_sae(mut self, norm_scaling_factor: Option<f64>) -> Result<Sae> {
        let bad = |reason: String| Error::BadFile {
            path: self.weights_file.clone(),
            reason,
        };
        let fold = expects_norm_folding(&self.cfg);
        let text = Value::Object(std::mem::take(&mut self.cfg)).to_string();
        let cfg = SaeConfig::from_json_str_with(&text, &self.weights_file, None)?;
        let mut take = |name: &str| self.tensors.remove(name);
        let missing = |name: &str| bad(format!("no `{name}` in the converted weights"));
        let w_enc = take("W_enc").ok_or_else(|| missing("W_enc"))?;
        let w_dec = take("W_dec").ok_or_else(|| missing("W_dec"))?;
        let b_dec = take("b_dec").ok_or_else(|| missing("b_dec"))?;
        let gated = cfg.architecture == Architecture::Gated;
        let weights = SaeWeights {
            w_enc,
            b_enc: if gated {
                None
            } else {
                Some(take("b_enc").ok_or_else(|| missing("b_enc"))?)
            },
            w_dec,
            b_dec,
            threshold: match cfg.architecture {
                Architecture::JumpRelu => Some(take("threshold").ok_or_else(|| missing("threshold"))?),
                _ => None,
            },
            gated: if gated {
                Some(GatedWeights {
                    b_gate: take("b_gate").ok_or_else(|| missing("b_gate"))?,
                    r_mag: take("r_mag").ok_or_else(|| missing("r_mag"))?,
                    b_mag: take("b_mag").ok_or_else(|| missing("b_mag"))?,
                })
            } else {
                None
            },
            w_skip: if cfg.skip {
                Some(take("W_skip").ok_or_else(|| missing("W_skip"))?)
            } else {
                None
            },
        };
        check_finite(&weights).map_err(bad)?;
        let sae = Sae::new(cfg, weights).map_err(|e| bad(e.to_string()))?;
        match norm_scaling_factor {
            Some(s) if fold => fold_norm_scaling(&sae, s),
            _ => Ok(sae),
        }
    }
}

/// Whether SAELens folds a release's `norm_scaling_factor` into an SAE of this config
/// dict: `normalize_activations` `expected_average_only_in` (or `true`, which SAELens's
/// legacy handling turns into it).
pub(crate) fn expects_norm_folding(cfg: &Map<String, Value>) -> bool {
    match cfg.get("normalize_activations") {
        Some(Value::String(s)) => s == "expected_average_only_in",
        Some(Value::Bool(b)) => *b,
        _ => false,
    }
}

/// SAELens's `fold_activation_norm_scaling_factor`: the input scaling by `s` moved into
/// the weights (`W_enc * s`, `W_dec / s`, `b_dec / s`; `b_enc` and thresholds are
/// already in the scaled units).
pub(crate) fn fold_norm_scaling(sae: &Sae, s: f64) -> Result<Sae> {
    if !(s.is_finite() && s > 0.0) {
        return Err(Error::invalid(format!(
            "SAE `{}`: norm_scaling_factor {s} is not a positive number",
            sae.cfg().hook_name
        )));
    }
    let mut w = sae.weights().clone();
    w.w_enc = w.w_enc.affine(s, 0.0)?;
    w.w_dec = w.w_dec.affine(1.0 / s, 0.0)?;
    w.b_dec = w.b_dec.affine(1.0 / s, 0.0)?;
    Sae::new(sae.cfg().clone(), w)
}

/// A file's tensors by name, in f32, for the readers to pick from with errors naming
/// the file.
pub(crate) struct FileTensors {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl FileTensors {
    /// Every float tensor of a safetensors file (f32, f16 or bf16), as f32.
    fn safetensors(path: &Path, device: &Device) -> Result<Self> {
        let file = SafetensorsFile::open(path, device, DType::F32)?;
        let mut tensors = HashMap::new();
        for name in crate::loading::TensorSource::names(&file) {
            let shape = file.shape_of(&name).map(<[usize]>::to_vec).unwrap_or_default();
            // Integer tensors (step counters and the like) are not weights.
            if let Ok(t) = crate::loading::TensorSource::get(&file, &name, &shape) {
                tensors.insert(name, t);
            }
        }
        Ok(FileTensors {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// Every array of a `.npz` archive, as f32.
    fn npz(path: &Path, device: &Device) -> Result<Self> {
        Ok(FileTensors {
            path: path.to_path_buf(),
            tensors: npz::read_npz(path, device)?.into_iter().collect(),
        })
    }

    /// Every float tensor of a PyTorch state dict (`torch.save` of a dict of tensors),
    /// as f32.
    fn torch(path: &Path, device: &Device) -> Result<Self> {
        let bad = |e: candle_core::Error| Error::BadFile {
            path: path.to_path_buf(),
            reason: format!("not a PyTorch state dict candle reads: {e}"),
        };
        let pth = candle_core::pickle::PthTensors::new(path, None).map_err(bad)?;
        let mut tensors = HashMap::new();
        let names: Vec<String> = pth.tensor_infos().keys().cloned().collect();
        for name in names {
            let Some(t) = pth.get(&name).map_err(bad)? else {
                continue;
            };
            if t.dtype().is_float() {
                tensors.insert(name, t.to_dtype(DType::F32)?.to_device(device)?);
            }
        }
        Ok(FileTensors {
            path: path.to_path_buf(),
            tensors,
        })
    }

    fn bad(&self, reason: String) -> Error {
        Error::BadFile {
            path: self.path.clone(),
            reason,
        }
    }

    /// Whether the file holds tensor `name`.
    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Tensor `name`, or an error naming the file and what it holds.
    fn get(&self, name: &str) -> Result<Tensor> {
        self.tensors.get(name).cloned().ok_or_else(|| {
            let mut held: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
            held.sort_unstable();
            self.bad(format!("no tensor `{name}` (it holds: {})", held.join(", ")))
        })
    }

    /// Tensor `name`'s shape.
    fn dims(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.get(name)?.dims().to_vec())
    }

    /// Tensor `name`, which must have `rank` axes.
    fn get_rank(&self, name: &str, rank: usize) -> Result<Tensor> {
        let t = self.get(name)?;
        if t.rank() != rank {
            return Err(self.bad(format!(
                "tensor `{name}` has shape {:?}: expected {rank} axes",
                t.dims()
            )));
        }
        Ok(t)
    }

    /// Matrix `name` stored `[a, b]`, returned `[b, a]` (contiguous): a PyTorch
    /// `[out, in]` weight turned into SAELens's `x @ W` layout, or the like.
    fn get_transposed(&self, name: &str) -> Result<Tensor> {
        Ok(self.get_rank(name, 2)?.t()?.contiguous()?)
    }
}

/// The JSON object in `path` (a small config file).
fn read_json(path: &Path) -> Result<Map<String, Value>> {
    let text = crate::loading::read_bounded(path, crate::loading::MAX_CONFIG_BYTES)?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad_file(path, "expected a JSON object at the top level".into())),
        Err(e) => Err(bad_file(path, format!("not valid JSON: {e}"))),
    }
}

/// The map of a `json!` object literal.
fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn bad_file(path: &Path, reason: String) -> Error {
    Error::BadFile {
        path: path.to_path_buf(),
        reason,
    }
}

/// The non-negative integer after the first `prefix` in `s` (`layer_12` -> 12).
fn number_after(s: &str, prefix: &str) -> Option<usize> {
    s.match_indices(prefix).find_map(|(at, _)| {
        let digits: String = s[at + prefix.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

/// A JSON integer field of `obj` (read from `path`), as a positive usize.
fn json_uint(obj: &Map<String, Value>, key: &str, path: &Path) -> Result<usize> {
    obj.get(key)
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| bad_file(path, format!("`{key}` is missing or not a non-negative integer")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_after_finds_saelens_layer_patterns() {
        assert_eq!(number_after("layer_12/width_16k/canonical", "layer_"), Some(12));
        assert_eq!(number_after("resid_post/layer_9_width_16k", "layer_"), Some(9));
        assert_eq!(number_after("embedding/width_4k", "layer_"), None);
        assert_eq!(number_after("layer_x/layer_3", "layer_"), Some(3));
    }

    #[test]
    fn every_converted_name_dispatches_and_others_are_named() {
        let hub = HubOptions::from_env()
            .offline(true)
            .cache_dir(std::env::temp_dir().join("hooklens-no-cache"));
        let overrides = Map::new();
        for func in CONVERTED.iter().copied().chain(["goodfire"]) {
            let src = Source {
                repo_id: "nobody/nothing",
                folder: "layer_0",
                overrides: &overrides,
                norm_scaling_factor: None,
                hub: &hub,
                device: &Device::Cpu,
            };
            let err = load(func, &src).expect_err("nothing is cached").to_string();
            if func == "goodfire" {
                assert!(err.contains("`goodfire`") && err.contains("does not read"), "{err}");
            } else {
                assert!(!err.contains("does not read"), "{func}: {err}");
            }
        }
    }
}

//! Synthetic checkpoints of any family: seeded random tensors under the family's
//! Hugging Face names and shapes, for tests and benchmarks of other sizes than a
//! published checkpoint's. The names and shapes come from the family's own converter
//! (it is run against a source that makes up each tensor it asks for), so a new
//! family needs nothing here.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use hooklens_core::__internal::save_safetensors;
use hooklens_core::{Error, Result};

use super::{family_of, hf_config::HfConfig};
use crate::loading::TensorSource;
use crate::ops::SeededRng;

/// Hands out a random tensor for every name the converter asks for, and keeps it.
struct Recorder {
    rng: RefCell<SeededRng>,
    made: RefCell<Vec<(String, Tensor)>>,
    /// The mean of norm gains: 1, or 0 where the family stores `w` for `1 + w` (Gemma).
    gain_mean: f64,
    /// Whether optional attention biases exist (`q_proj.bias`, ...).
    attention_bias: bool,
}

impl TensorSource for Recorder {
    fn contains(&self, name: &str) -> bool {
        // GPT-2's converter finds its prefix by `wte.weight`; Qwen 2's biases by name.
        name == "wte.weight" || (self.attention_bias && name.ends_with("_proj.bias"))
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let mut rng = self.rng.borrow_mut();
        // Every family's norm names: `*norm*` (`input_layernorm`, OPT's
        // `self_attn_layer_norm` / `final_layer_norm`, BLOOM's `word_embeddings_layernorm`,
        // Phi's `final_layernorm` and `q_layernorm`, ...) and GPT-2's, GPT-Neo's and
        // GPT-J's `ln_1` / `ln_2` / `ln_f`.
        let is_norm = name.contains("norm") || name.contains(".ln_") || name.starts_with("ln_f");
        let t = if is_norm && name.ends_with("weight") {
            (rng.normal_tensor(shape, 0.3)? + self.gain_mean)?
        } else if name.ends_with("bias") {
            rng.normal_tensor(shape, 0.05)?
        } else {
            rng.normal_tensor(shape, 0.08)?
        };
        self.made.borrow_mut().push((name.to_string(), t.clone()));
        Ok(t)
    }
}

/// Seeded random weights for the model `config_json` (a Hugging Face `config.json` of
/// any supported family) under the family's tensor names and shapes, f32: norm gains
/// `1 + 0.3 N(0,1)` (Gemma: `0.3 N(0,1)`, applied as `1 + w`), biases `0.05 N(0,1)`,
/// everything else `0.08 N(0,1)`, as the TransformerLens reference checkpoints are
/// made. Attention biases are made where the config says `attention_bias: true` (or
/// for Qwen 2, which always has them).
pub fn synthetic_checkpoint(config_json: &str, seed: u64) -> Result<HashMap<String, Tensor>> {
    let hf = HfConfig::parse(config_json, Path::new("config.json"))?;
    let family = family_of(&hf)?;
    let mut cfg = (family.config)(&hf)?;
    cfg.original_architecture = family.classes[0].to_string();
    cfg.validate()?;
    let recorder = Recorder {
        rng: RefCell::new(SeededRng::new(seed)),
        made: RefCell::new(Vec::new()),
        gain_mean: if family.model_types[0].starts_with("gemma") {
            0.0
        } else {
            1.0
        },
        attention_bias: family.model_types[0] == "qwen2" || hf.bool_or("attention_bias", false)?,
    };
    (family.weights)(&recorder, &cfg, "synthetic")?;
    Ok(recorder.made.into_inner().into_iter().collect())
}

/// Writes a model folder: `config.json` (the text given) and the tensors in `dtype`,
/// as `model.safetensors` when `shards` is 1, else as `shards` files
/// `model-0000i-of-0000n.safetensors` and the `model.safetensors.index.json` that maps
/// every tensor to its shard, as `save_pretrained` writes large checkpoints.
pub fn write_checkpoint(
    dir: impl AsRef<Path>,
    config_json: &str,
    tensors: &HashMap<String, Tensor>,
    dtype: DType,
    shards: usize,
) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let shards = shards.clamp(1, names.len().max(1));
    let per_shard = names.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(per_shard.max(1)).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, shards)
        };
        let converted: Vec<(&str, Tensor)> = chunk
            .iter()
            .map(|k| Ok((k.as_str(), tensors[*k].to_dtype(dtype)?.contiguous()?)))
            .collect::<Result<_>>()?;
        let refs: Vec<(&str, &Tensor)> = converted.iter().map(|(k, t)| (*k, t)).collect();
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        save_safetensors(&dir.join(&file), refs, meta)?;
        for k in chunk {
            weight_map.insert((*k).clone(), serde_json::Value::String(file.clone()));
        }
    }
    if shards > 1 {
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        let path = dir.join(crate::loading::SHARD_INDEX);
        std::fs::write(&path, index.to_string()).map_err(|e| Error::io(&path, e))?;
    }
    let path = dir.join("config.json");
    std::fs::write(&path, config_json).map_err(|e| Error::io(&path, e))
}

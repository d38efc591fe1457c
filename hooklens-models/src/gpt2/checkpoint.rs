//! Reading Hugging Face GPT-2 checkpoints (safetensors), in both published layouts.
//!
//! `GPT2LMHeadModel.save_pretrained` writes names with a `transformer.` prefix; the
//! `openai-community/gpt2` files have no prefix and carry `h.{i}.attn.bias` causal-mask
//! buffers, which are ignored. `lm_head.weight` is tied to `wte.weight` when absent.
//! Conv1D weights are `[in, out]`, which is also the layout the model multiplies with.

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use hooklens_core::{Error, Result};

use super::config::Gpt2Config;
use super::processing::ProcessingOptions;

/// How to load a checkpoint: dtype, device and weight processing.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The dtype of the weights and activations (f32 by default; f16 / bf16 on request).
    /// Processing is always computed in f32 first.
    pub dtype: DType,
    /// Where the weights live.
    pub device: Device,
    /// Weight processing, TransformerLens `from_pretrained`'s defaults unless changed.
    pub processing: ProcessingOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DType::F32,
            device: Device::Cpu,
            processing: ProcessingOptions::default(),
        }
    }
}

impl LoadOptions {
    /// TransformerLens's `from_pretrained_no_processing`: the weights as stored.
    pub fn no_processing() -> Self {
        LoadOptions {
            processing: ProcessingOptions::none(),
            ..Self::default()
        }
    }

    /// These options with `dtype`.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// These options with `device`.
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// These options with `processing`.
    pub fn with_processing(mut self, processing: ProcessingOptions) -> Self {
        self.processing = processing;
        self
    }
}

/// The weights of one block in the model's own layout (Hugging Face's Conv1D layout).
#[derive(Clone, Debug)]
pub(crate) struct LayerWeights {
    pub(crate) ln1: Option<(Tensor, Tensor)>,
    pub(crate) w_qkv: Tensor,
    pub(crate) b_qkv: Tensor,
    pub(crate) w_o: Tensor,
    pub(crate) b_o: Tensor,
    pub(crate) ln2: Option<(Tensor, Tensor)>,
    pub(crate) w_in: Tensor,
    pub(crate) b_in: Tensor,
    pub(crate) w_out: Tensor,
    pub(crate) b_out: Tensor,
}

/// All weights of a GPT-2 before they are put into modules.
#[derive(Clone, Debug)]
pub(crate) struct Gpt2Weights {
    pub(crate) w_e: Tensor,
    pub(crate) w_pos: Tensor,
    pub(crate) layers: Vec<LayerWeights>,
    pub(crate) ln_final: Option<(Tensor, Tensor)>,
    /// `[d_model, d_vocab]`.
    pub(crate) w_u: Tensor,
    pub(crate) b_u: Tensor,
}

impl Gpt2Weights {
    /// Every tensor converted to `dtype`.
    pub(crate) fn to_dtype(&self, dtype: DType) -> candle_core::Result<Self> {
        let c = |t: &Tensor| t.to_dtype(dtype);
        let ln = |p: &Option<(Tensor, Tensor)>| -> candle_core::Result<Option<(Tensor, Tensor)>> {
            p.as_ref().map(|(w, b)| Ok((c(w)?, c(b)?))).transpose()
        };
        Ok(Gpt2Weights {
            w_e: c(&self.w_e)?,
            w_pos: c(&self.w_pos)?,
            layers: self
                .layers
                .iter()
                .map(|l| {
                    Ok(LayerWeights {
                        ln1: ln(&l.ln1)?,
                        w_qkv: c(&l.w_qkv)?,
                        b_qkv: c(&l.b_qkv)?,
                        w_o: c(&l.w_o)?,
                        b_o: c(&l.b_o)?,
                        ln2: ln(&l.ln2)?,
                        w_in: c(&l.w_in)?,
                        b_in: c(&l.b_in)?,
                        w_out: c(&l.w_out)?,
                        b_out: c(&l.b_out)?,
                    })
                })
                .collect::<candle_core::Result<_>>()?,
            ln_final: ln(&self.ln_final)?,
            w_u: c(&self.w_u)?,
            b_u: c(&self.b_u)?,
        })
    }
}

/// Where checkpoint tensors come from: a safetensors file or a candle `VarBuilder`.
pub(crate) trait TensorSource {
    /// Whether the source holds `name`.
    fn contains(&self, name: &str) -> bool;
    /// The tensor `name`, which must have `shape` and a float dtype, as f32.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
}

/// A memory-mapped safetensors file; errors name the file and the tensor.
pub(crate) struct SafetensorsFile {
    path: PathBuf,
    st: MmapedSafetensors,
    device: Device,
}

impl SafetensorsFile {
    /// Maps `path` and reads its header (a truncated or malformed file fails here).
    pub(crate) fn open(path: &Path, device: &Device) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        // SAFETY: the file is mapped read-only; as everywhere with mmap, it must not be
        // modified while the model is being loaded (tensors are copied out of the map).
        let st = unsafe { MmapedSafetensors::new(path) }.map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            reason: format!("not a readable safetensors file (truncated or corrupt?): {e}"),
        })?;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            st,
            device: device.clone(),
        })
    }

    fn bad(&self, reason: String) -> Error {
        Error::BadFile {
            path: self.path.clone(),
            reason,
        }
    }
}

impl TensorSource for SafetensorsFile {
    fn contains(&self, name: &str) -> bool {
        self.st.get(name).is_ok()
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let view = self
            .st
            .get(name)
            .map_err(|_| self.bad(format!("tensor `{name}` is missing (expected shape {shape:?})")))?;
        if view.shape() != shape {
            return Err(self.bad(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                view.shape()
            )));
        }
        let t = candle_core::safetensors::Load::load(&view, &self.device)
            .map_err(|e| self.bad(format!("tensor `{name}` cannot be read: {e}")))?;
        if !t.dtype().is_float() {
            return Err(self.bad(format!(
                "tensor `{name}` has dtype {:?}, expected a float dtype (f32, f16, bf16 or f64)",
                t.dtype()
            )));
        }
        Ok(t.to_dtype(DType::F32)?)
    }
}

impl TensorSource for VarBuilder<'_> {
    fn contains(&self, name: &str) -> bool {
        self.contains_tensor(name)
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = VarBuilder::get(self, shape, name)
            .map_err(|e| Error::invalid(format!("checkpoint tensor `{name}` (expected shape {shape:?}): {e}")))?;
        Ok(t.to_dtype(DType::F32)?)
    }
}

/// Reads every GPT-2 tensor from `src`, accepting names with or without the
/// `transformer.` prefix and tying `lm_head` to `wte` when it is absent.
pub(crate) fn read_weights(src: &dyn TensorSource, cfg: &Gpt2Config, origin: &str) -> Result<Gpt2Weights> {
    let prefix = if src.contains("transformer.wte.weight") {
        "transformer."
    } else if src.contains("wte.weight") {
        ""
    } else {
        return Err(Error::invalid(format!(
            "{origin}: no tensor `wte.weight` or `transformer.wte.weight`: not a GPT-2 checkpoint"
        )));
    };
    // The sizes below are multiplied (`3 * d`): a config built in code is checked first.
    cfg.validate()?;
    let (d, v, n_ctx, mlp) = (cfg.d_model, cfg.d_vocab, cfg.n_ctx, cfg.d_mlp);
    let get = |name: &str, shape: &[usize]| src.get(&format!("{prefix}{name}"), shape);
    let ln = |name: &str| -> Result<Option<(Tensor, Tensor)>> {
        Ok(Some((
            get(&format!("{name}.weight"), &[d])?,
            get(&format!("{name}.bias"), &[d])?,
        )))
    };
    let w_e = get("wte.weight", &[v, d])?;
    let w_pos = get("wpe.weight", &[n_ctx, d])?;
    // Not `with_capacity(n_layers)`: a nonsense `n_layer` must fail on its first missing
    // layer, not abort on reserving room for all of them.
    let mut layers = Vec::new();
    for i in 0..cfg.n_layers {
        let h = format!("h.{i}");
        layers.push(LayerWeights {
            ln1: ln(&format!("{h}.ln_1"))?,
            w_qkv: get(&format!("{h}.attn.c_attn.weight"), &[d, 3 * d])?,
            b_qkv: get(&format!("{h}.attn.c_attn.bias"), &[3 * d])?,
            w_o: get(&format!("{h}.attn.c_proj.weight"), &[d, d])?,
            b_o: get(&format!("{h}.attn.c_proj.bias"), &[d])?,
            ln2: ln(&format!("{h}.ln_2"))?,
            w_in: get(&format!("{h}.mlp.c_fc.weight"), &[d, mlp])?,
            b_in: get(&format!("{h}.mlp.c_fc.bias"), &[mlp])?,
            w_out: get(&format!("{h}.mlp.c_proj.weight"), &[mlp, d])?,
            b_out: get(&format!("{h}.mlp.c_proj.bias"), &[d])?,
        });
    }
    let ln_final = ln("ln_f")?;
    // lm_head is never under the `transformer.` prefix.
    let w_u = if src.contains("lm_head.weight") {
        src.get("lm_head.weight", &[v, d])?.t()?
    } else {
        w_e.t()?
    };
    let b_u = Tensor::zeros(v, DType::F32, w_e.device())?;
    Ok(Gpt2Weights {
        w_e,
        w_pos,
        layers,
        ln_final,
        w_u,
        b_u,
    })
}

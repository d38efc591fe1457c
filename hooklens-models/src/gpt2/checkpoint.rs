//! Reading Hugging Face GPT-2 checkpoints (safetensors), in both published layouts.
//!
//! `GPT2LMHeadModel.save_pretrained` writes names with a `transformer.` prefix; the
//! `openai-community/gpt2` files have no prefix and carry `h.{i}.attn.bias` causal-mask
//! buffers, which are ignored. `lm_head.weight` is tied to `wte.weight` when absent.
//! Conv1D weights are `[in, out]`, which is also the layout the model multiplies with.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use hooklens_core::{Error, Result};

use super::config::Gpt2Config;
use super::processing::ProcessingOptions;
use super::unembed::UnembedFactors;

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
    /// `[d_model, d_vocab]`: the base of `W_U` (see [`UnembedFactors`]); `W_E`
    /// transposed, a view of its storage, when `tied`.
    pub(crate) w_u: Tensor,
    /// What processing did to `W_U`, kept as factors rather than a new matrix.
    pub(crate) unembed_factors: UnembedFactors,
    /// Whether `w_u` is a view of `w_e`'s storage (no `lm_head` in the checkpoint).
    pub(crate) tied: bool,
    pub(crate) b_u: Tensor,
    /// Whether every tensor's storage belongs to these weights alone (read from a file
    /// into fresh buffers), so that processing may edit it in place instead of holding
    /// a second copy of the largest tensors. `w_u` may still be a view of `w_e`.
    pub(crate) exclusive: bool,
}

impl Gpt2Weights {
    /// Every tensor converted to `dtype`.
    pub(crate) fn to_dtype(&self, dtype: DType) -> candle_core::Result<Self> {
        let c = |t: &Tensor| t.to_dtype(dtype);
        let ln = |p: &Option<(Tensor, Tensor)>| -> candle_core::Result<Option<(Tensor, Tensor)>> {
            p.as_ref().map(|(w, b)| Ok((c(w)?, c(b)?))).transpose()
        };
        let w_e = c(&self.w_e)?;
        Ok(Gpt2Weights {
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
            // A tied base stays a view of the converted W_E, not a copy of its own.
            w_u: if self.tied { w_e.t()? } else { c(&self.w_u)? },
            unembed_factors: self.unembed_factors.to_dtype(dtype)?,
            tied: self.tied,
            b_u: c(&self.b_u)?,
            w_e,
            // A conversion to the same dtype shares storage.
            exclusive: false,
        })
    }
}

/// Where checkpoint tensors come from: a safetensors file or a candle `VarBuilder`.
pub(crate) trait TensorSource {
    /// Whether the source holds `name`.
    fn contains(&self, name: &str) -> bool;
    /// The tensor `name`, which must have `shape` and a float dtype, as f32.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// Whether `get` returns fresh storage that nothing else holds.
    fn fresh(&self) -> bool {
        false
    }
}

/// One tensor's entry in a safetensors header.
struct TensorEntry {
    /// The header's dtype name (`F32`, `BF16`, `I64`, ...).
    dtype: String,
    shape: Vec<usize>,
    /// Byte range in the file (already offset past the header).
    start: u64,
    len: usize,
}

/// A safetensors file read tensor by tensor with positioned reads; errors name the
/// file and the tensor.
///
/// Not memory-mapped: copying tensors out of a map keeps both the mapped pages and the
/// copies resident until the map is dropped, which doubles the peak memory of a load.
/// Reading each tensor straight into its own buffer peaks at the parameters plus the
/// header (the file's pages stay in the page cache, which is not the process's memory).
pub(crate) struct SafetensorsFile {
    path: PathBuf,
    file: std::fs::File,
    tensors: std::collections::HashMap<String, TensorEntry>,
    device: Device,
}

/// safetensors' own bound on the header (100 MB): a longer one is a corrupt length.
const MAX_HEADER_BYTES: u64 = 100_000_000;

impl SafetensorsFile {
    /// Opens `path` and reads its header; a truncated or malformed file fails here
    /// (the header's tensors must tile the data exactly, as safetensors checks).
    pub(crate) fn open(path: &Path, device: &Device) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let bad = |reason: String| Error::BadFile {
            path: path.to_path_buf(),
            reason: format!("not a readable safetensors file (truncated or corrupt?): {reason}"),
        };
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut len_bytes = [0u8; 8];
        read_exact_at(&file, &mut len_bytes, 0)
            .map_err(|_| bad(format!("{file_len} bytes, too short for the header length")))?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_BYTES || header_len > file_len - 8 {
            return Err(bad(format!(
                "header length {header_len} does not fit a file of {file_len} bytes"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        read_exact_at(&file, &mut header, 8).map_err(|e| Error::io(path, e))?;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
        let data_start = 8 + header_len;
        let mut tensors = std::collections::HashMap::with_capacity(header.len());
        let mut ranges = Vec::with_capacity(header.len());
        for (name, entry) in header {
            if name == "__metadata__" {
                continue;
            }
            let (dtype, shape, (a, b)) = parse_entry(&entry).ok_or_else(|| bad(format!("bad entry for `{name}`")))?;
            let size = dtype_size(&dtype).ok_or_else(|| bad(format!("tensor `{name}` has unknown dtype {dtype}")))?;
            let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            if b < a || numel.and_then(|n| n.checked_mul(size)) != Some(b - a) {
                return Err(bad(format!(
                    "tensor `{name}`: offsets {a}..{b} do not hold {dtype} {shape:?}"
                )));
            }
            ranges.push((a, b));
            tensors.insert(
                name,
                TensorEntry {
                    dtype,
                    shape,
                    start: data_start + a as u64,
                    len: b - a,
                },
            );
        }
        // The tensors must cover the data exactly, with no gap or overlap.
        ranges.sort_unstable();
        let mut end = 0;
        for (a, b) in ranges {
            if a != end {
                return Err(bad(format!("tensor data are not contiguous at byte {a}")));
            }
            end = b;
        }
        if data_start + end as u64 != file_len {
            return Err(bad(format!(
                "the header describes {} bytes of data, the file holds {}",
                end,
                file_len - data_start
            )));
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            file,
            tensors,
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

/// `(dtype, shape, data_offsets)` of one header entry.
fn parse_entry(v: &serde_json::Value) -> Option<(String, Vec<usize>, (usize, usize))> {
    let dtype = v.get("dtype")?.as_str()?.to_string();
    let shape = v
        .get("shape")?
        .as_array()?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<_>>>()?;
    let offsets = v.get("data_offsets")?.as_array()?;
    let off = |i: usize| offsets.get(i)?.as_u64().and_then(|o| usize::try_from(o).ok());
    if offsets.len() != 2 {
        return None;
    }
    Some((dtype, shape, (off(0)?, off(1)?)))
}

/// Bytes per element of a safetensors dtype name.
fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// The candle dtype of a float safetensors dtype name.
fn float_dtype(dtype: &str) -> Option<DType> {
    Some(match dtype {
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F32" => DType::F32,
        "F64" => DType::F64,
        _ => return None,
    })
}

/// Fills `buf` from `file` at `offset`, without moving a shared cursor.
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = file;
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(buf)
    }
}

impl TensorSource for SafetensorsFile {
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn fresh(&self) -> bool {
        // Each tensor is read into a new buffer (and converted to f32 if it was not).
        true
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| self.bad(format!("tensor `{name}` is missing (expected shape {shape:?})")))?;
        if entry.shape != shape {
            return Err(self.bad(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                entry.shape
            )));
        }
        let dtype = float_dtype(&entry.dtype).ok_or_else(|| {
            self.bad(format!(
                "tensor `{name}` has dtype {}, expected a float dtype (f32, f16, bf16 or f64)",
                entry.dtype
            ))
        })?;
        let cannot_read = |e: std::io::Error| self.bad(format!("tensor `{name}` cannot be read: {e}"));
        let t = if dtype == DType::F32 {
            // Read straight into the tensor's own f32 buffer: no second copy.
            let mut data = vec![0f32; entry.len / 4];
            // SAFETY: any bit pattern is a valid f32, and the byte view covers exactly
            // the vector's initialised elements.
            let bytes = unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<u8>(), entry.len) };
            read_exact_at(&self.file, bytes, entry.start).map_err(cannot_read)?;
            // safetensors stores little-endian values.
            if cfg!(target_endian = "big") {
                data.iter_mut()
                    .for_each(|x| *x = f32::from_bits(u32::from_le(x.to_bits())));
            }
            Tensor::from_vec(data, shape, &Device::Cpu)?
        } else {
            let mut bytes = vec![0u8; entry.len];
            read_exact_at(&self.file, &mut bytes, entry.start).map_err(cannot_read)?;
            Tensor::from_raw_buffer(&bytes, dtype, shape, &Device::Cpu)?.to_dtype(DType::F32)?
        };
        Ok(t.to_device(&self.device)?)
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
    let tied = !src.contains("lm_head.weight");
    let w_u = if tied {
        w_e.t()?
    } else {
        src.get("lm_head.weight", &[v, d])?.t()?
    };
    let b_u = Tensor::zeros(v, DType::F32, w_e.device())?;
    Ok(Gpt2Weights {
        w_e,
        w_pos,
        layers,
        ln_final,
        w_u,
        unembed_factors: UnembedFactors::default(),
        tied,
        b_u,
        exclusive: src.fresh(),
    })
}

//! Loading checkpoints: safetensors files read tensor by tensor (one file, or the
//! shards of a `model.safetensors.index.json`; f32, f16 or bf16, and u8 for packed
//! quantised weights), and the Hugging Face hub.

pub mod hub;
mod known_fields;
mod safetensors;
mod sharded;
mod used_tensors;

use std::path::Path;

use candle_core::{DType, Device};
use hooklens_core::{Error, Result};

pub(crate) use known_fields::KnownFields;
pub(crate) use safetensors::{SafetensorsFile, TensorSource};
pub(crate) use sharded::{ShardIndex, ShardedSafetensors};
pub(crate) use used_tensors::UsedTensors;

/// The single-file checkpoint's name in a model folder.
pub(crate) const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub(crate) const SHARD_INDEX: &str = "model.safetensors.index.json";

/// The most a `config.json` or an SAE's `cfg.json` may hold: real ones are a few KiB.
pub(crate) const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// The most a shard index may hold: one entry (~100 bytes) per tensor, so even a model
/// of 100,000 tensors needs a small part of this.
pub(crate) const MAX_SHARD_INDEX_BYTES: u64 = 64 << 20;

/// Reads the small text file `path` (a JSON config or index), refusing it unread when
/// it holds more than `limit` bytes: such a file is not one, and parsing it would take
/// many times its size in memory.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<String> {
    use std::io::Read;
    let too_big = |len: u64| Error::BadFile {
        path: path.to_path_buf(),
        reason: format!(
            "{len} bytes, more than the {} MiB such a file may hold: not read",
            limit >> 20
        ),
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > limit {
        return Err(too_big(len));
    }
    // Bounded again while reading: the file may grow, or not be a regular file.
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| Error::BadFile {
        path: path.to_path_buf(),
        reason: format!("not UTF-8 text: {e}"),
    })
}

/// The dtype to read a checkpoint in for a model of `dtype`: half precision is kept
/// as it is; anything else is read as f32 (weight processing computes in f32) and
/// converted once processed.
pub(crate) fn read_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => dtype,
        _ => DType::F32,
    }
}

/// Opens the checkpoint of the model folder `dir`: `model.safetensors`, else the
/// shards `model.safetensors.index.json` lists. Neither is an error naming both.
pub(crate) fn open_checkpoint(dir: &Path, device: &Device, dtype: DType) -> Result<Box<dyn TensorSource>> {
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return fits(Box::new(SafetensorsFile::open(&single, device, dtype)?), &single);
    }
    let index = dir.join(SHARD_INDEX);
    if index.is_file() {
        return fits(Box::new(ShardedSafetensors::open(&index, device, dtype)?), &index);
    }
    Err(Error::io(
        single,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no {SINGLE_FILE} and no {SHARD_INDEX} in the model folder"),
        ),
    ))
}

/// Opens a checkpoint file: a safetensors file, or a sharded checkpoint's index.
pub(crate) fn open_checkpoint_file(path: &Path, device: &Device, dtype: DType) -> Result<Box<dyn TensorSource>> {
    if path.to_string_lossy().ends_with(".index.json") {
        fits(Box::new(ShardedSafetensors::open(path, device, dtype)?), path)
    } else {
        fits(Box::new(SafetensorsFile::open(path, device, dtype)?), path)
    }
}

/// `src` when its tensors, as its header describes them, fit in the memory available;
/// an error naming the checkpoint and both sizes otherwise (reading them would abort
/// the process instead).
fn fits(src: Box<dyn TensorSource>, path: &Path) -> Result<Box<dyn TensorSource>> {
    hooklens_core::__internal::check_memory(
        &format!("loading {}", path.display()),
        src.load_bytes(),
        "load it in half precision (--dtype bf16 / LoadOptions::with_dtype) or on a machine with more memory",
    )?;
    Ok(src)
}

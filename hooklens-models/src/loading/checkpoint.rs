//! Opening a model folder's checkpoint: its single `model.safetensors`, or the shards
//! of its index, checked against the memory available.

use std::path::Path;

use candle_core::{DType, Device};
use hooklens_core::{Error, Result};

use super::safetensors::{SafetensorsFile, TensorSource};
use super::sharded::ShardedSafetensors;

/// The single-file checkpoint's name in a model folder.
pub(crate) const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub(crate) const SHARD_INDEX: &str = "model.safetensors.index.json";

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

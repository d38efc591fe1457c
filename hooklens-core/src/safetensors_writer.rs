//! Writing safetensors files: streamed tensor by tensor, through [`write_atomically`].
//!
//! Not `safetensors::serialize_to_file`: it sizes its own `.tmpXXXXXX` file before
//! filling it, never fsyncs, and a writer killed mid-write leaves that file under a
//! name nothing recognises as ours. The header and layout here are the crate's own
//! (tensors sorted by alignment, then by name), so the files are the same bytes.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use candle_core::{DType, Tensor};
use safetensors::tensor::{Metadata, TensorInfo};

use crate::atomic_file::{pause_point, write_atomically};
use crate::{Error, Result};

/// Elements converted at a time: bounds the extra memory a save needs to one chunk,
/// whatever the size of a tensor.
const CHUNK: usize = 1 << 22;

/// Writes `tensors` as safetensors at `path`: to a hidden temporary sibling, fsynced,
/// then renamed over `path` (see [`write_atomically`]), so an interrupted save never
/// leaves a file that looks whole.
pub fn save_safetensors(path: &Path, tensors: Vec<(&str, &Tensor)>, metadata: HashMap<String, String>) -> Result<()> {
    let bad = |reason: String| Error::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let mut tensors = tensors;
    tensors.sort_by(|(ln, l), (rn, r)| st_dtype(r.dtype()).cmp(&st_dtype(l.dtype())).then(ln.cmp(rn)));
    let mut infos = Vec::with_capacity(tensors.len());
    let mut offset = 0usize;
    for (name, t) in &tensors {
        let len = t
            .elem_count()
            .checked_mul(t.dtype().size_in_bytes())
            .ok_or_else(|| bad(format!("tensor `{name}` is too large to save")))?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| bad(format!("tensor `{name}` is too large to save")))?;
        infos.push((
            name.to_string(),
            TensorInfo {
                dtype: st_dtype(t.dtype()),
                shape: t.dims().to_vec(),
                data_offsets: (offset, end),
            },
        ));
        offset = end;
    }
    let meta = Metadata::new(Some(metadata), infos).map_err(|e| bad(e.to_string()))?;
    let mut header = serde_json::to_string(&meta)
        .map_err(|e| bad(e.to_string()))?
        .into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    write_atomically(path, |w| {
        let io = |e| Error::io(path, e);
        w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&header).map_err(io)?;
        for (i, (_, t)) in tensors.iter().enumerate() {
            write_tensor(w, t, path)?;
            if i == 0 {
                pause_point(w);
            }
        }
        Ok(())
    })
}

fn st_dtype(d: DType) -> safetensors::Dtype {
    d.into()
}

/// The little-endian bytes of `t`, a chunk of elements at a time.
fn write_tensor(w: &mut dyn Write, t: &Tensor, path: &Path) -> Result<()> {
    let flat = t.flatten_all()?;
    let n = flat.elem_count();
    let mut start = 0;
    while start < n {
        let len = CHUNK.min(n - start);
        let part = flat.narrow(0, start, len)?;
        let io = |e| Error::io(path, e);
        match t.dtype() {
            DType::U8 => w.write_all(&part.to_vec1::<u8>()?),
            DType::U32 => write_le(w, &part.to_vec1::<u32>()?, |x| x.to_le_bytes()),
            DType::I16 => write_le(w, &part.to_vec1::<i16>()?, |x| x.to_le_bytes()),
            DType::I32 => write_le(w, &part.to_vec1::<i32>()?, |x| x.to_le_bytes()),
            DType::I64 => write_le(w, &part.to_vec1::<i64>()?, |x| x.to_le_bytes()),
            DType::BF16 => write_le(w, &part.to_vec1::<half::bf16>()?, |x| x.to_le_bytes()),
            DType::F16 => write_le(w, &part.to_vec1::<half::f16>()?, |x| x.to_le_bytes()),
            DType::F32 => write_le(w, &part.to_vec1::<f32>()?, |x| x.to_le_bytes()),
            DType::F64 => write_le(w, &part.to_vec1::<f64>()?, |x| x.to_le_bytes()),
            other => return Err(Error::invalid(format!("cannot save a tensor of dtype {other:?}"))),
        }
        .map_err(io)?;
        start += len;
    }
    Ok(())
}

/// Writes `xs` as little-endian bytes, through one reused buffer.
fn write_le<T: Copy, const N: usize>(w: &mut dyn Write, xs: &[T], bytes: impl Fn(T) -> [u8; N]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(xs.len() * N);
    for &x in xs {
        buf.extend_from_slice(&bytes(x));
    }
    w.write_all(&buf)
}

//! Reading safetensors checkpoints tensor by tensor: one file, or the shards a
//! `model.safetensors.index.json` lists. Errors name the file and the tensor.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use hooklens_core::{Error, Result};

/// Where checkpoint tensors come from: a safetensors file or a candle `VarBuilder`.
pub(crate) trait TensorSource {
    /// Whether the source holds `name`.
    fn contains(&self, name: &str) -> bool;
    /// The tensor `name`, which must have `shape` and a float dtype, in the source's
    /// load dtype (see [`TensorSource::dtype`]).
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// The raw bytes of the `U8` tensor `name`, which must have `shape` (packed
    /// quantised weights: MXFP4 blocks and scales). Sources that only hold float
    /// tensors refuse it.
    fn get_u8(&self, name: &str, shape: &[usize]) -> Result<Vec<u8>> {
        let _ = shape;
        Err(Error::invalid(format!(
            "checkpoint tensor `{name}`: this source cannot read u8 (quantised) tensors"
        )))
    }
    /// The dtype `get` returns: the one the model is loaded in, or f32 when the
    /// checkpoint's values are upcast (half-precision files read into f32 models).
    fn dtype(&self) -> DType {
        DType::F32
    }
    /// Whether `get` returns fresh storage that nothing else holds.
    fn fresh(&self) -> bool {
        false
    }
    /// Every tensor name the source holds; empty when it cannot list them.
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
    /// The bytes reading every float tensor in the load dtype takes (MXFP4 `_blocks`
    /// counted as the values they dequantise to); 0 when unknown.
    fn load_bytes(&self) -> u64 {
        0
    }
    /// Declares the tensors whose names start with `prefix` no part of the model (a
    /// multimodal checkpoint's vision tower), so that a load leaves them unread without
    /// reporting them unused. Only the source that records reads keeps it.
    fn allow_unread(&self, _prefix: &str) {}
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
    /// The dtype tensors are returned in.
    dtype: DType,
}

/// safetensors' own bound on the header (100 MB): a longer one is a corrupt length.
const MAX_HEADER_BYTES: u64 = 100_000_000;

impl SafetensorsFile {
    /// Opens `path` and reads its header; a truncated or malformed file fails here
    /// (the header's tensors must tile the data exactly, as safetensors checks).
    pub(crate) fn open(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        // Checked before opening: a FIFO would hang the open, a device would be read
        // on and on; each is named as what it is, not as missing.
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => {}
            Ok(meta) => {
                return Err(Error::io(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        match hooklens_core::__internal::file_kind(&meta) {
                            "not a regular file" => "not a regular file".to_string(),
                            kind => format!("{kind}, not a regular file"),
                        },
                    ),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::io(path, std::io::Error::new(e.kind(), "no such file")))
            }
            Err(e) => return Err(Error::io(path, e)),
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
        let header: Header = serde_json::from_slice(&header).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => bad(format!("bad header: {e}")),
            _ => bad(format!("header is not JSON: {e}")),
        })?;
        let data_start = 8 + header_len;
        let mut tensors = std::collections::HashMap::with_capacity(header.0.len());
        let mut ranges = Vec::with_capacity(header.0.len());
        for (name, entry) in header.0 {
            let HeaderEntry {
                dtype,
                shape,
                data_offsets: (a, b),
            } = entry;
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
            dtype,
        })
    }

    /// The shape of tensor `name`, if the file holds it.
    pub(crate) fn shape_of(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.shape.as_slice())
    }

    /// Rows `rows` (indices along the first axis) of tensor `name`, as f32 in the
    /// order asked, each row `shape[1..]` long; f32, bf16 and f16 tensors. Only those
    /// rows are read from the file, so a decoder far larger than memory costs what its
    /// active rows cost.
    pub(crate) fn read_rows_f32(&self, name: &str, rows: &[usize]) -> Result<Vec<f32>> {
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| self.bad(format!("tensor `{name}` is missing")))?;
        let n_rows = entry.shape.first().copied().unwrap_or(1);
        let row_len: usize = entry.shape.iter().skip(1).product();
        let size = match entry.dtype.as_str() {
            "F32" => 4,
            "BF16" | "F16" => 2,
            other => return Err(self.bad(format!("tensor `{name}` has dtype {other}, expected f32, bf16 or f16"))),
        };
        let mut out = Vec::with_capacity(rows.len() * row_len);
        let mut bytes = vec![0u8; row_len * size];
        for &r in rows {
            if r >= n_rows {
                return Err(self.bad(format!("tensor `{name}` has {n_rows} rows; row {r} asked for")));
            }
            let offset = entry.start + (r * row_len * size) as u64;
            read_exact_at(&self.file, &mut bytes, offset)
                .map_err(|e| self.bad(format!("tensor `{name}` cannot be read: {e}")))?;
            match entry.dtype.as_str() {
                "F32" => out.extend(
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ),
                "BF16" => out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
                ),
                _ => out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
                ),
            }
        }
        Ok(out)
    }

    /// The whole tensor `name` as f32 with its shape.
    pub(crate) fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let shape = self
            .shape_of(name)
            .ok_or_else(|| self.bad(format!("tensor `{name}` is missing")))?
            .to_vec();
        let n = shape.first().copied().unwrap_or(1);
        let rows: Vec<usize> = (0..n).collect();
        let data = if shape.is_empty() {
            // A scalar: one "row" of one element.
            self.read_rows_f32(name, &[0])?
        } else {
            self.read_rows_f32(name, &rows)?
        };
        Ok((data, shape))
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn bad(&self, reason: String) -> Error {
        Error::BadFile {
            path: self.path.clone(),
            reason,
        }
    }
}

/// A safetensors header, typed as safetensors reads it: `__metadata__` is a map of
/// strings (any other value is refused, as safetensors refuses it) and is not kept;
/// every other key is a tensor's entry, in file order.
struct Header(Vec<(String, HeaderEntry)>);

/// One tensor's entry in the header.
#[derive(serde::Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

impl<'de> serde::Deserialize<'de> for Header {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Header;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of tensor entries")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Header, A::Error> {
                let mut entries = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if name == "__metadata__" {
                        // Checked, then dropped: a map of strings only.
                        map.next_value::<MetadataStrings>()?;
                    } else {
                        let entry = map
                            .next_value::<HeaderEntry>()
                            .map_err(|e| serde::de::Error::custom(format_args!("tensor `{name}`: {e}")))?;
                        entries.push((name, entry));
                    }
                }
                Ok(Header(entries))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// `__metadata__`, read only to check that every value is a string.
struct MetadataStrings;

impl<'de> serde::Deserialize<'de> for MetadataStrings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = MetadataStrings;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`__metadata__` as a map of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<MetadataStrings, A::Error> {
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    map.next_value::<std::borrow::Cow<'de, str>>().map_err(|e| {
                        serde::de::Error::custom(format_args!(
                            "`__metadata__.{key}` must be a string, as safetensors requires: {e}"
                        ))
                    })?;
                }
                Ok(MetadataStrings)
            }
        }
        d.deserialize_map(Visit)
    }
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

/// An element type a tensor can be read into directly: its bits are little-endian
/// in a safetensors file.
trait LeElement: bytemuck::Pod + Default {
    /// The value from little-endian bits.
    fn swap_from_le(self) -> Self;
}

impl LeElement for f32 {
    fn swap_from_le(self) -> Self {
        f32::from_bits(u32::from_le(self.to_bits()))
    }
}

impl LeElement for half::bf16 {
    fn swap_from_le(self) -> Self {
        half::bf16::from_bits(u16::from_le(self.to_bits()))
    }
}

impl LeElement for half::f16 {
    fn swap_from_le(self) -> Self {
        half::f16::from_bits(u16::from_le(self.to_bits()))
    }
}

/// The elements of `entry`, read from `file` into a vector of their own type.
fn read_le<T: LeElement>(
    file: &std::fs::File,
    entry: &TensorEntry,
    cannot_read: &dyn Fn(std::io::Error) -> Error,
) -> Result<Vec<T>> {
    let mut data = vec![T::default(); entry.len / std::mem::size_of::<T>()];
    // Any bit pattern is a value of these types (`Pod`), so the file's bytes go straight in.
    read_exact_at(file, bytemuck::cast_slice_mut(&mut data), entry.start).map_err(cannot_read)?;
    if cfg!(target_endian = "big") {
        data.iter_mut().for_each(|x| *x = x.swap_from_le());
    }
    Ok(data)
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

    fn get_u8(&self, name: &str, shape: &[usize]) -> Result<Vec<u8>> {
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| self.bad(format!("tensor `{name}` is missing (expected u8 {shape:?})")))?;
        if entry.dtype != "U8" {
            return Err(self.bad(format!("tensor `{name}` has dtype {}, expected U8", entry.dtype)));
        }
        if entry.shape != shape {
            return Err(self.bad(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                entry.shape
            )));
        }
        let mut bytes = vec![0u8; entry.len];
        read_exact_at(&self.file, &mut bytes, entry.start)
            .map_err(|e| self.bad(format!("tensor `{name}` cannot be read: {e}")))?;
        Ok(bytes)
    }

    fn fresh(&self) -> bool {
        // Each tensor is read into a new buffer (and converted if it was not in the
        // load dtype).
        true
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn load_bytes(&self) -> u64 {
        let size = self.dtype.size_in_bytes() as u64;
        self.tensors
            .iter()
            .filter_map(|(name, e)| {
                // MXFP4 blocks are dequantised on load: two values per byte.
                let per_element = match float_dtype(&e.dtype) {
                    Some(_) => size,
                    None if e.dtype == "U8" && name.ends_with("_blocks") => 2 * size,
                    None => return None,
                };
                Some(e.shape.iter().fold(per_element, |n, &d| n.saturating_mul(d as u64)))
            })
            .fold(0, u64::saturating_add)
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
        // Read straight into the tensor's own buffer when the file holds the dtype the
        // model wants: no second copy of any tensor.
        let t = match (dtype, self.dtype) {
            (DType::F32, DType::F32) => {
                Tensor::from_vec(read_le::<f32>(&self.file, entry, &cannot_read)?, shape, &Device::Cpu)?
            }
            (DType::BF16, DType::BF16) => Tensor::from_vec(
                read_le::<half::bf16>(&self.file, entry, &cannot_read)?,
                shape,
                &Device::Cpu,
            )?,
            (DType::F16, DType::F16) => Tensor::from_vec(
                read_le::<half::f16>(&self.file, entry, &cannot_read)?,
                shape,
                &Device::Cpu,
            )?,
            (from, to) => {
                let mut bytes = vec![0u8; entry.len];
                read_exact_at(&self.file, &mut bytes, entry.start).map_err(cannot_read)?;
                let src = Tensor::from_raw_buffer(&bytes, from, shape, &Device::Cpu)?;
                if to == DType::F16 && from != DType::F16 {
                    // A finite value beyond f16's range would become inf, and the model
                    // would later give non-finite results with no word of why.
                    let max = src
                        .abs()?
                        .to_dtype(DType::F32)?
                        .flatten_all()?
                        .max(0)?
                        .to_scalar::<f32>()?;
                    if max.is_finite() && half::f16::from_f32(max).is_infinite() {
                        return Err(self.bad(format!(
                            "tensor `{name}` holds {max:e}, which does not fit in f16 (largest {}): use bf16 or f32",
                            half::f16::MAX
                        )));
                    }
                }
                src.to_dtype(to)?
            }
        };
        Ok(t.to_device(&self.device)?)
    }
}

impl TensorSource for VarBuilder<'_> {
    fn contains(&self, name: &str) -> bool {
        self.contains_tensor(name)
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        VarBuilder::get(self, shape, name)
            .map_err(|e| Error::invalid(format!("checkpoint tensor `{name}` (expected shape {shape:?}): {e}")))
    }

    fn dtype(&self) -> DType {
        VarBuilder::dtype(self)
    }
}

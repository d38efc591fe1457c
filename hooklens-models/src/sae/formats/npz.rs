//! NumPy's `.npz` archives (a zip of `.npy` files), as Gemma Scope publishes its SAEs.
//!
//! `np.savez` stores its entries uncompressed; those are read. A compressed entry
//! (`np.savez_compressed`) is refused with an error naming it: the zip reader in
//! candle's tree (the `zip` crate, without its compression features) reads stored
//! entries only.

use std::io::Read;
use std::path::Path;

use candle_core::{Device, Tensor};
use hooklens_core::{Error, Result};

/// The most one `.npy` entry may claim: a larger size is a corrupt header (Gemma
/// Scope's largest, a 1M-wide 27B SAE's encoder, is 19 GB).
const MAX_ENTRY_BYTES: u64 = 64 << 30;

/// Every array of the `.npz` at `path`, by name (the entry's name without `.npy`), as
/// f32 tensors of the array's shape on `device`; f32, f64 and f16 arrays.
pub(crate) fn read_npz(path: &Path, device: &Device) -> Result<Vec<(String, Tensor)>> {
    let bad = |reason: String| Error::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| bad(format!("not a .npz (zip) archive: {e}")))?;
    let mut out = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index_raw(i)
            .map_err(|e| bad(format!("zip entry {i} cannot be read: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| bad(format!("zip entry {i} has no readable name: {e}")))?
            .into_owned();
        let Some(array) = name.strip_suffix(".npy") else {
            return Err(bad(format!("entry `{name}` is not a .npy array")));
        };
        if entry.compression() != zip::CompressionMethod::Stored {
            return Err(bad(format!(
                "entry `{name}` is compressed ({}): only the stored entries np.savez writes are read \
                 (re-save it with np.savez, not np.savez_compressed)",
                entry.compression()
            )));
        }
        if entry.size() > MAX_ENTRY_BYTES {
            return Err(bad(format!("entry `{name}` claims {} bytes", entry.size())));
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("entry `{name}` cannot be read: {e}")))?;
        let tensor = parse_npy(&bytes, device).map_err(|reason| bad(format!("entry `{name}`: {reason}")))?;
        out.push((array.to_string(), tensor));
    }
    Ok(out)
}

/// One `.npy` file's bytes -> an f32 tensor of its shape. The header is a Python dict
/// literal: `{'descr': '<f4', 'fortran_order': False, 'shape': (16, 32), }`.
fn parse_npy(bytes: &[u8], device: &Device) -> std::result::Result<Tensor, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (no \\x93NUMPY magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!(".npy format version {v} is not 1, 2 or 3")),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or("the .npy header runs past the entry")?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let descr = dict_value(header, "descr").ok_or("the .npy header has no 'descr'")?;
    let fortran = dict_value(header, "fortran_order").ok_or("the .npy header has no 'fortran_order'")?;
    let shape_text = dict_value(header, "shape").ok_or("the .npy header has no 'shape'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran = match fortran {
        "False" => false,
        "True" => true,
        other => return Err(format!("'fortran_order' is {other}")),
    };
    let shape: Vec<usize> = shape_text
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("'shape' {shape_text} is not a tuple of sizes"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("'shape' {shape_text} overflows"))?;
    let data = &bytes[start + header_len..];
    let size = match descr {
        "<f4" => 4,
        "<f8" => 8,
        "<f2" => 2,
        other => {
            return Err(format!(
                "dtype '{other}' is not read (little-endian f32, f64 or f16 only)"
            ))
        }
    };
    if numel.checked_mul(size) != Some(data.len()) {
        return Err(format!(
            "{} bytes of data for a {descr} array of shape {shape:?} (want {numel} x {size})",
            data.len()
        ));
    }
    let values: Vec<f32> = match size {
        4 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        8 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")) as f32)
            .collect(),
        _ => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    };
    let err = |e: candle_core::Error| e.to_string();
    if fortran && shape.len() > 1 {
        // Column-major: the data are the transpose's rows.
        let reversed: Vec<usize> = shape.iter().rev().copied().collect();
        let t = Tensor::from_vec(values, reversed, device).map_err(err)?;
        let axes: Vec<usize> = (0..shape.len()).rev().collect();
        t.permute(axes).and_then(|t| t.contiguous()).map_err(err)
    } else {
        Tensor::from_vec(values, shape, device).map_err(err)
    }
}

/// The text of `key`'s value in a `.npy` header's dict literal.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[at + key.len() + 2..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn npy_arrays_read_in_c_and_fortran_order() {
        let d = &Device::Cpu;
        let t = parse_npy(&npy("<f4", false, "(2, 3)", &f32s(&[0., 1., 2., 3., 4., 5.])), d).unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), [[0., 1., 2.], [3., 4., 5.]]);
        let t = parse_npy(&npy("<f4", true, "(2, 3)", &f32s(&[0., 3., 1., 4., 2., 5.])), d).unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), [[0., 1., 2.], [3., 4., 5.]]);
        let t = parse_npy(&npy("<f4", false, "(3,)", &f32s(&[1., 2., 3.])), d).unwrap();
        assert_eq!(t.dims(), [3]);
        let t = parse_npy(&npy("<f4", false, "()", &f32s(&[7.])), d).unwrap();
        assert_eq!(t.dims(), [] as [usize; 0]);
    }

    #[test]
    fn bad_npy_says_what_is_wrong() {
        let d = &Device::Cpu;
        let err = parse_npy(&npy("<f4", false, "(2, 3)", &f32s(&[0.; 5])), d).unwrap_err();
        assert!(err.contains("20 bytes") && err.contains("[2, 3]"), "{err}");
        let err = parse_npy(&npy("<i8", false, "(1,)", &[0; 8]), d).unwrap_err();
        assert!(err.contains("'<i8'"), "{err}");
        let err = parse_npy(b"PK\x03\x04 not npy", d).unwrap_err();
        assert!(err.contains("magic"), "{err}");
        let err = parse_npy(&npy("<f4", false, "(2, x)", &[]), d).unwrap_err();
        assert!(err.contains("'shape'"), "{err}");
    }
}

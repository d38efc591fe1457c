//! Reading a small text file (a JSON config or a shard index) with a bound on its
//! size, so that something that is not such a file is refused unread.

use std::path::Path;

use hooklens_core::{Error, Result};

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

//! Content fingerprints: what a resumed harvest compares to prove that it continues
//! the same corpus with the same model, whatever the paths are called.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{CliError, CliResult};

/// The SHA-256 of `path`'s content, in hex; `what` names the file in errors (`--input`).
pub fn file_sha256(what: &str, path: &Path) -> CliResult<String> {
    let mut hasher = Sha256::new();
    hash_file(&mut hasher, what, path)?;
    Ok(hex(&hasher.finalize()))
}

/// The SHA-256 of several files' contents in order (each one's length first, so that
/// bytes cannot move from one file to the next unnoticed).
pub fn files_sha256(what: &str, paths: &[PathBuf]) -> CliResult<String> {
    let mut hasher = Sha256::new();
    for path in paths {
        hash_file(&mut hasher, what, path)?;
    }
    Ok(hex(&hasher.finalize()))
}

/// The SHA-256 of `bytes`, in hex.
pub fn bytes_sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hash_file(hasher: &mut Sha256, what: &str, path: &Path) -> CliResult<()> {
    let err = |e: std::io::Error| CliError(format!("{what} {}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    hasher.update(len.to_le_bytes());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(err)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A reader that hashes what passes through it as [`file_sha256`] hashes a file of
/// `len` bytes: what a harvest read can then be compared with what it fingerprinted
/// (bytes of another number, or other bytes, give another hash).
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    /// Hashes `inner`, which had `len` bytes when it was fingerprinted.
    pub fn new(inner: R, len: u64) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(len.to_le_bytes());
        HashingReader { inner, hasher }
    }

    /// The hash of what was read so far, in hex.
    pub fn sha256(&self) -> String {
        hex(&self.hasher.clone().finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

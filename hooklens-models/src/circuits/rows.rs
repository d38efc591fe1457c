//! Rows of f32 values of one width, held in memory or, past a memory budget, in a
//! temporary file: the attribution's edge rows and the adjacency matrix, which grow with
//! the square of the node count.
//!
//! The file is created and at once unlinked, so nothing is left behind whatever happens
//! to the process; it lives as long as its handle. Rows are appended in order and read
//! back with positioned reads, so a reader never needs more than the rows it asks for.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use hooklens_core::{Error, Result};

/// Where the rows live.
enum Store {
    Memory(Vec<f32>),
    File(File),
}

/// Rows of `width` f32 values, appended in order.
pub(crate) struct Rows {
    width: usize,
    rows: usize,
    store: Store,
}

/// A fresh, already unlinked temporary file in `dir`.
fn unlinked_temp(dir: &Path) -> Result<File> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        ".hooklens-attribution-{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
    Ok(file)
}

fn to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl Rows {
    /// Empty rows in memory.
    pub(crate) fn in_memory(width: usize, capacity_rows: usize) -> Self {
        Rows {
            width,
            rows: 0,
            store: Store::Memory(Vec::with_capacity(capacity_rows * width)),
        }
    }

    /// Empty rows in a temporary file in `dir`.
    pub(crate) fn in_file(width: usize, dir: &Path) -> Result<Self> {
        Ok(Rows {
            width,
            rows: 0,
            store: Store::File(unlinked_temp(dir)?),
        })
    }

    /// Values per row.
    pub(crate) fn width(&self) -> usize {
        self.width
    }

    /// Whether the rows are in memory.
    pub(crate) fn as_slice(&self) -> Option<&[f32]> {
        match &self.store {
            Store::Memory(v) => Some(v),
            Store::File(_) => None,
        }
    }

    /// Appends whole rows (`values.len()` a multiple of the width).
    pub(crate) fn push(&mut self, values: &[f32]) -> Result<()> {
        debug_assert_eq!(values.len() % self.width.max(1), 0);
        let n = values.len() / self.width.max(1);
        match &mut self.store {
            Store::Memory(v) => v.extend_from_slice(values),
            Store::File(f) => {
                let offset = (self.rows * self.width * 4) as u64;
                write_all_at(f, &to_bytes(values), offset)?;
            }
        }
        self.rows += n;
        Ok(())
    }

    /// Row `r` into `buf` (`width` long).
    pub(crate) fn read(&self, r: usize, buf: &mut [f32]) -> Result<()> {
        if r >= self.rows || buf.len() != self.width {
            return Err(Error::invalid(format!(
                "row {r} of {} (width {}) asked into {} values",
                self.rows,
                self.width,
                buf.len()
            )));
        }
        match &self.store {
            Store::Memory(v) => buf.copy_from_slice(&v[r * self.width..(r + 1) * self.width]),
            Store::File(f) => {
                let mut bytes = vec![0u8; self.width * 4];
                read_exact_at(f, &mut bytes, (r * self.width * 4) as u64)?;
                for (o, b) in buf.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
        Ok(())
    }

    /// Row `r` as a new vector.
    pub(crate) fn row(&self, r: usize) -> Result<Vec<f32>> {
        let mut buf = vec![0.0; self.width];
        self.read(r, &mut buf)?;
        Ok(buf)
    }
}

fn temp_error(e: std::io::Error) -> Error {
    Error::invalid(format!("the attribution's temporary file: {e}"))
}

fn write_all_at(f: &File, bytes: &[u8], offset: u64) -> Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(f, bytes, offset).map_err(temp_error)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = f;
        f.seek(SeekFrom::Start(offset)).map_err(temp_error)?;
        f.write_all(bytes).map_err(temp_error)
    }
}

fn read_exact_at(f: &File, bytes: &mut [u8], offset: u64) -> Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(f, bytes, offset).map_err(temp_error)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = f;
        f.seek(SeekFrom::Start(offset)).map_err(temp_error)?;
        f.read_exact(bytes).map_err(temp_error)
    }
}

/// The adjacency matrix of a graph, `[n, n]` (rows targets, columns sources): in memory,
/// or in a temporary file when it exceeded the attribution's memory budget.
pub struct Adjacency {
    pub(crate) rows: Rows,
}

impl std::fmt::Debug for Adjacency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adjacency")
            .field("n", &self.n())
            .field("in_memory", &self.as_slice().is_some())
            .finish()
    }
}

impl Adjacency {
    /// An in-memory matrix from its row-major values (`n * n` of them).
    pub fn from_vec(n: usize, values: Vec<f32>) -> Result<Self> {
        if values.len() != n * n {
            return Err(Error::invalid(format!(
                "an adjacency matrix of {n} nodes has {} values, got {}",
                n * n,
                values.len()
            )));
        }
        Ok(Adjacency {
            rows: Rows {
                width: n,
                rows: n,
                store: Store::Memory(values),
            },
        })
    }

    /// Nodes.
    pub fn n(&self) -> usize {
        self.rows.width
    }

    /// The row-major values when the matrix is in memory.
    pub fn as_slice(&self) -> Option<&[f32]> {
        self.rows.as_slice()
    }

    /// Row `target`: the direct effect of every source on it, `[n]`.
    pub fn row(&self, target: usize) -> Result<Vec<f32>> {
        self.rows.row(target)
    }

    /// Row `target` into `buf` (`[n]`).
    pub fn read_row(&self, target: usize, buf: &mut [f32]) -> Result<()> {
        self.rows.read(target, buf)
    }

    /// The whole matrix in memory, `[n * n]` row-major (checked against the available
    /// memory first).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        if let Some(v) = self.as_slice() {
            return Ok(v.to_vec());
        }
        let n = self.n();
        hooklens_core::__internal::check_memory(
            "the adjacency matrix",
            (n as u64) * (n as u64) * 4,
            "read it row by row (Adjacency::row)",
        )?;
        let mut out = vec![0.0f32; n * n];
        for (t, row) in out.chunks_mut(n.max(1)).enumerate().take(n) {
            self.rows.read(t, row)?;
        }
        Ok(out)
    }
}

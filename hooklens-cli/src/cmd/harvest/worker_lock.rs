//! One worker per (output directory, shard index): two processes appending shards to
//! one manifest would mix two harvests under a manifest that names one input.

use std::fs::File;
use std::path::Path;

use crate::error::{CliError, CliResult};

/// The lock of one worker, held for as long as this value lives. An advisory lock on
/// a file: the system releases it when the process ends however it ends, so a killed
/// worker's lock never blocks the run that resumes it.
pub struct WorkerLock {
    _file: File,
}

impl WorkerLock {
    /// Takes the lock `IIIII-of-KKKKK.lock` in `dir`; a live worker holding it is an
    /// error naming the lock file.
    pub fn acquire(dir: &Path, prefix: &str) -> CliResult<Self> {
        let path = dir.join(format!("{prefix}.lock"));
        // Only a regular file (or none): a FIFO would hang the open, and a link (even a
        // dangling one) would be followed to create a file outside the directory.
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CliError(format!("cannot read the lock file {}: {e}", path.display()))),
            Ok(m) if m.is_file() => {}
            Ok(m) => {
                let what = if m.file_type().is_symlink() {
                    "a symbolic link"
                } else {
                    crate::output::kind(&m)
                };
                return Err(CliError(format!(
                    "the lock file {} is {what}, not a regular file: move it away",
                    path.display()
                )));
            }
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CliError(format!("cannot open the lock file {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(WorkerLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(CliError(format!(
                "another harvest is writing worker {prefix} in {} (it holds {}); one worker per \
                 --shard-index: wait for it, or give this one another --shard-index or --out",
                dir.display(),
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(CliError(format!("cannot lock {}: {e}", path.display()))),
        }
    }
}

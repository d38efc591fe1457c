//! What an output path may be: a regular file to replace or a new name, never a device,
//! a FIFO or a directory, and never one of the run's own inputs; and what an input file
//! read whole must be: a regular file (a FIFO would hang the read, a device would be
//! read until memory runs out).
//!
//! Files are written by renaming a temporary file over the path, which replaces
//! whatever directory entry is there: `/dev/null` would become a regular file, and an
//! input named as the output would be gone before anyone noticed. So each output is
//! checked before anything runs.

use std::path::{Path, PathBuf};

use crate::error::{CliError, CliResult};

/// The file identity of `path` (device and inode, following links), if it exists.
#[cfg(unix)]
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Where identities are not available, the canonical path stands in for one.
#[cfg(not(unix))]
fn identity(path: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(path).ok()
}

/// What kind of thing `meta` is, for a message.
pub(crate) fn kind(meta: &std::fs::Metadata) -> &'static str {
    hooklens::__internal::file_kind(meta)
}

/// Checks that the output file `path` (given with `flag`) can be replaced: it is new
/// or a regular file (a link is followed to see which), and it is none of `inputs`
/// (the same file by identity, however either is spelled). `-` is refused here: the
/// callers whose format may go to standard output let it through before.
pub fn check_output_file(flag: &str, path: &Path, inputs: &[PathBuf]) -> CliResult<()> {
    let shown = path.display();
    if path.as_os_str() == "-" {
        return Err(CliError(format!(
            "{flag} -: standard output cannot take this file; name a file to write"
        )));
    }
    if path.file_name().is_none() {
        return Err(CliError(format!("{flag} {shown}: not a file path")));
    }
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => {
            return Err(CliError(format!(
                "{flag} {shown} is {}: hooklens writes only to regular files or new paths",
                kind(&meta)
            )));
        }
        Ok(_) => {}
        Err(_) => {
            // A new path is a file's name, not a directory's (`dir/`), or the run would
            // fail only at its end, with its work lost.
            if path
                .as_os_str()
                .to_string_lossy()
                .ends_with(['/', std::path::MAIN_SEPARATOR])
            {
                return Err(CliError(format!(
                    "{flag} {shown} ends with a separator, a directory's name: name a file to write"
                )));
            }
        }
    }
    if let Some(id) = identity(path) {
        for input in inputs {
            if identity(input).as_ref() == Some(&id) {
                return Err(CliError(format!(
                    "{flag} {shown} is the input {}: writing it would destroy the input; name another file",
                    input.display()
                )));
            }
        }
    }
    Ok(())
}

/// Checks that the directory the output file `path` (given with `flag`) goes into is
/// there, so that a run does not fail only at its end, when it writes.
pub fn check_output_parent(flag: &str, path: &Path) -> CliResult<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    match parent.filter(|p| !p.is_dir()) {
        Some(parent) => Err(CliError(format!(
            "{flag} {}: {} is not a directory that is there; create it or name another file",
            path.display(),
            parent.display()
        ))),
        None => Ok(()),
    }
}

/// Checks the output directory `path` (given with `flag`): new, or a directory.
pub fn check_output_dir(flag: &str, path: &Path) -> CliResult<()> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => Err(CliError(format!(
            "{flag} {} is {}: expected a directory (or a new path)",
            path.display(),
            if meta.is_file() { "a file" } else { kind(&meta) }
        ))),
        _ => Ok(()),
    }
}

/// The most a JSON configuration file (an SAE's `cfg.json`) may hold: real ones are a
/// few kilobytes.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Checks the input file `path` (given with `flag`) before it is opened: a regular
/// file (a link is followed to see which), of at most `max_bytes` where given. Returns
/// its length.
pub fn check_input_file(flag: &str, path: &Path, max_bytes: Option<u64>) -> CliResult<u64> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| CliError(format!("{flag} {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(CliError(format!(
            "{flag} {shown} is {}: expected a regular file",
            kind(&meta)
        )));
    }
    match max_bytes {
        Some(max) if meta.len() > max => Err(CliError(format!(
            "{flag} {shown} is {} bytes, more than the {max} a configuration file may hold",
            meta.len()
        ))),
        _ => Ok(meta.len()),
    }
}

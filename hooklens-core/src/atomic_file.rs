//! Replacing a file so that nobody, not even after a crash or a kill, sees half of it.
//!
//! A file is written to a hidden temporary sibling (`.NAME.tmp-PID-N`), fsynced,
//! renamed over its final name, and the directory is fsynced so that the rename itself
//! survives a machine crash. Nothing sizes the file before it is filled, so a listed
//! file is never a run of zeros of the right length.
//!
//! A writer killed mid-write cannot remove its temporary file; the next write of the
//! same file removes the temporaries that dead writers left behind (and the
//! safetensors crate's own `.tmpXXXXXX` siblings, which older versions of hooklens left).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The marker between a target's name and the writer's id in a temporary file's name.
const TMP_MARK: &str = ".tmp-";

/// The longest file name most file systems accept (`NAME_MAX`), in bytes.
const NAME_MAX: usize = 255;

/// Set (to anything) in tests only: every write pauses forever halfway, after some
/// bytes are on disk, so that a test can kill the writer mid-write deterministically.
pub const PAUSE_MID_WRITE_ENV: &str = "HOOKLENS_TEST_PAUSE_MID_WRITE";

/// Writes `path` as the module says: temporary sibling, fsync, rename, fsync of the
/// directory. `fill` writes the content and may call [`pause_point`] once it has
/// written some of it. Errors name `path`; a failed write leaves no temporary file.
pub fn write_atomically(path: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{}: not a file path", path.display())))?
        .to_string_lossy()
        .into_owned();
    remove_dead_temporaries(path, &file_name);
    let tmp = temporary_path(path, &file_name);
    let result = (|| {
        // `create_new`: a temporary name that somehow exists is never written through
        // (it could be a link planted to redirect the write).
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(path, e))?;
        {
            let mut buffered = std::io::BufWriter::with_capacity(1 << 20, &mut file);
            fill(&mut buffered)?;
            buffered.flush().map_err(|e| Error::io(path, e))?;
        }
        file.sync_all().map_err(|e| Error::io(path, e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        sync_parent(path);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Called by a writer halfway through its content: with [`PAUSE_MID_WRITE_ENV`] set,
/// flushes what is written so far and never returns (a test kills the process).
pub fn pause_point(w: &mut dyn Write) {
    if std::env::var_os(PAUSE_MID_WRITE_ENV).is_some() {
        let _ = w.flush();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

/// Fsyncs the directory holding `path`, so that a rename into it survives a crash.
/// Best effort: some systems cannot open a directory for syncing, and the file's own
/// content is already on disk.
fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Unique per process and per call: two threads writing one path at once must not
/// share a temporary file.
fn temporary_path(path: &Path, file_name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let suffix = format!("{TMP_MARK}{}-{n}", std::process::id());
    // A name near the limit still gets a temporary sibling: its own name is cut short
    // (at a character boundary) rather than the write failing for the suffix.
    let room = NAME_MAX - 1 - suffix.len();
    let mut cut = file_name.len().min(room);
    while !file_name.is_char_boundary(cut) {
        cut -= 1;
    }
    path.with_file_name(format!(".{}{suffix}", &file_name[..cut]))
}

/// Whether `name` is a temporary file of a hooklens writer (`.NAME.tmp-PID-N`) or of the
/// safetensors crate (`.tmpXXXXXX`): a file that is never a finished output.
pub fn is_temporary(name: &str) -> bool {
    temporary_parts(name).is_some() || is_safetensors_temporary(name)
}

/// `(target name prefix, writer's pid)` of a hooklens temporary file name.
fn temporary_parts(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix('.')?;
    let at = rest.rfind(TMP_MARK)?;
    let (pid, n) = rest[at + TMP_MARK.len()..].split_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((&rest[..at], pid.parse().ok()?))
}

/// The `tempfile` crate's default name, which `safetensors::serialize_to_file` uses:
/// `.tmp` and six letters or digits.
fn is_safetensors_temporary(name: &str) -> bool {
    name.strip_prefix(".tmp")
        .is_some_and(|r| r.len() == 6 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Whether process `pid` is alive. Where that cannot be told, every process counts as
/// alive, so that no live writer's file is ever removed.
fn alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Removes the temporary files of `path` whose writers are dead, and the safetensors
/// crate's temporaries beside it (no writer of this version makes those). Best effort:
/// a file that cannot be removed is left for the next write.
fn remove_dead_temporaries(path: &Path, file_name: &str) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stale = match temporary_parts(&name) {
            Some((target, pid)) => !target.is_empty() && file_name.starts_with(target) && !alive(pid),
            None => is_safetensors_temporary(&name),
        };
        if stale && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_recognised_and_fit_the_name_limit() {
        let long = "x".repeat(250) + ".safetensors";
        let tmp = temporary_path(Path::new("/d").join(&long).as_path(), &long);
        let name = tmp.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.len() <= NAME_MAX, "{}", name.len());
        assert!(is_temporary(&name), "{name}");
        let (target, pid) = temporary_parts(&name).unwrap();
        assert!(long.starts_with(target));
        assert_eq!(pid, std::process::id());
        assert!(is_temporary(".tmpAb3dE9"));
        assert!(!is_temporary("cache.safetensors"));
        assert!(!is_temporary(".tmp-notes"));
    }
}

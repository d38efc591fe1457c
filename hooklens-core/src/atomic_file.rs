//! Replacing a file so that nobody, not even after a crash or a kill, sees half of it.
//!
//! A file is written to a hidden temporary sibling (`.NAME.tmp-hooklens-HOST-PID-N`,
//! where HOST names this boot of this machine and the writer's PID namespace), fsynced,
//! renamed over its final name, and the directory is fsynced so that the rename itself
//! survives a machine crash. Nothing sizes the file before it is filled, so a listed
//! file is never a run of zeros of the right length.
//!
//! A writer killed mid-write cannot remove its temporary file; the next write of the
//! same file removes the temporaries that dead writers left behind, and only those that
//! are provably a dead hooklens writer's: the name must be of this form, with the HOST of
//! the process looking (a writer in another container or on another machine sharing the
//! folder has a PID that means nothing here), and that PID must be dead. Any other file,
//! whatever its name (a `.tmpXXXXXX` of another program included), is never touched.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The marker between a target's name and the writer's id in a temporary file's name.
const TMP_MARK: &str = ".tmp-";

/// What follows [`TMP_MARK`] in the names this version gives its temporaries, before
/// the HOST, PID and counter.
const TMP_TAG: &str = "hooklens-";

/// The longest file name most file systems accept (`NAME_MAX`), in bytes.
const NAME_MAX: usize = 255;

/// Set (to anything) in tests only: every write pauses forever halfway, after some
/// bytes are on disk, so that a test can kill the writer mid-write deterministically.
/// Read only in debug builds (`debug_assertions`, which tests use): a release build
/// ignores it, so a user who sets it never gets a writer that stops mid-write.
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
/// Compiled only into debug builds: in a release build it does nothing, whatever the
/// environment says.
#[cfg(debug_assertions)]
pub fn pause_point(w: &mut dyn Write) {
    if std::env::var_os(PAUSE_MID_WRITE_ENV).is_some() {
        let _ = w.flush();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

/// Called by a writer halfway through its content. This is a release build: it does
/// nothing, and [`PAUSE_MID_WRITE_ENV`] is ignored.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn pause_point(_w: &mut dyn Write) {}

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
    let host = host_id().unwrap_or("unknown");
    let suffix = format!("{TMP_MARK}{TMP_TAG}{host}-{}-{n}", std::process::id());
    // A name near the limit still gets a temporary sibling: its own name is cut short
    // (at a character boundary) rather than the write failing for the suffix.
    let room = NAME_MAX - 1 - suffix.len();
    let mut cut = file_name.len().min(room);
    while !file_name.is_char_boundary(cut) {
        cut -= 1;
    }
    path.with_file_name(format!(".{}{suffix}", &file_name[..cut]))
}

/// Whether `name` is a temporary file of a hooklens writer: `.NAME.tmp-hooklens-HOST-PID-N`,
/// or `.NAME.tmp-PID-N` as older versions named them. Other names (the safetensors
/// crate's `.tmpXXXXXX` included) are not: hooklens never makes them.
pub fn is_temporary(name: &str) -> bool {
    temporary_parts(name).is_some()
}

/// The parts of a hooklens temporary file name.
#[derive(Debug, PartialEq)]
struct TempName<'a> {
    /// The start of the target's name (cut short when the name is long).
    target: &'a str,
    /// The writer's [`host_id`]; `None` in the names of older versions, which had none.
    host: Option<&'a str>,
    /// The writer's process id, in its own PID namespace.
    pid: u32,
}

/// The parts of `name` if it is a hooklens temporary file name (see [`is_temporary`]).
fn temporary_parts(name: &str) -> Option<TempName<'_>> {
    let rest = name.strip_prefix('.')?;
    let at = rest.rfind(TMP_MARK)?;
    let target = &rest[..at];
    let tail = &rest[at + TMP_MARK.len()..];
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (host, ids) = match tail.strip_prefix(TMP_TAG) {
        Some(t) => {
            let (host, ids) = t.split_once('-')?;
            if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return None;
            }
            (Some(host), ids)
        }
        None => (None, tail),
    };
    let (pid, n) = ids.split_once('-')?;
    if !digits(pid) || !digits(n) {
        return None;
    }
    Some(TempName {
        target,
        host,
        pid: pid.parse().ok()?,
    })
}

/// This process's HOST in temporary names: 16 hex digits of a hash of the kernel's boot
/// id (one per boot of one machine) and of the inode of the PID namespace (one per
/// container), so that two writers with the same HOST read PIDs the same way. `None`
/// where either cannot be read: then no temporary file is ever removed.
fn host_id() -> Option<&'static str> {
    static HOST: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
        let (boot, ns) = (boot.trim(), ns.to_string_lossy());
        if boot.is_empty() || !ns.starts_with("pid:[") {
            return None;
        }
        // FNV-1a, 64 bits: stable across builds and versions, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in boot.bytes().chain([0]).chain(ns.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Some(format!("{h:016x}"))
    })
    .as_deref()
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

/// Whether the temporary file `name`, beside the target `file_name`, is provably one a
/// dead hooklens writer of `file_name` left: named by this version, with our HOST (so its
/// PID is one of our namespace) and a PID that is not alive.
fn is_dead_writers(name: &str, file_name: &str) -> bool {
    let Some(ours) = host_id() else {
        return false;
    };
    temporary_parts(name).is_some_and(|t| {
        !t.target.is_empty() && file_name.starts_with(t.target) && t.host == Some(ours) && !alive(t.pid)
    })
}

/// Removes the temporary files of `path` that provably belong to dead writers (see
/// [`is_dead_writers`]); nothing else. Best effort: a file that cannot be removed is left
/// for the next write.
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
        if is_dead_writers(&name, file_name) && entry.file_type().is_ok_and(|t| t.is_file()) {
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
        let t = temporary_parts(&name).unwrap();
        assert!(long.starts_with(t.target));
        assert_eq!(t.pid, std::process::id());
        assert_eq!(t.host, Some(host_id().unwrap()));
        assert!(name.contains(".tmp-hooklens-"), "{name}");
        // Older versions' names are still hooklens temporaries, with no host.
        let old = temporary_parts(".a.bin.tmp-12-3").unwrap();
        assert_eq!((old.target, old.host, old.pid), ("a.bin", None, 12));
        // The safetensors crate's names are not ours.
        assert!(!is_temporary(".tmpAb3dE9"));
        assert!(!is_temporary("cache.safetensors"));
        assert!(!is_temporary(".tmp-notes"));
        assert!(!is_temporary(".a.tmp-hooklens--1-2"));
    }

    /// Without [`PAUSE_MID_WRITE_ENV`] (and, in a release build, whatever it says),
    /// `pause_point` returns at once and leaves what is written alone.
    #[test]
    fn pause_point_is_a_no_op_without_the_variable() {
        if cfg!(debug_assertions) {
            // Setting the variable would pause this test forever; only its absence can be
            // checked here (the killed-writer tests check that it pauses when set).
            assert!(
                std::env::var_os(PAUSE_MID_WRITE_ENV).is_none(),
                "{PAUSE_MID_WRITE_ENV} is set in the test environment"
            );
        } else {
            std::env::set_var(PAUSE_MID_WRITE_ENV, "1");
        }
        let mut written = Vec::new();
        written.extend_from_slice(b"half");
        pause_point(&mut written);
        written.extend_from_slice(b" done");
        assert_eq!(written, b"half done");
        if !cfg!(debug_assertions) {
            std::env::remove_var(PAUSE_MID_WRITE_ENV);
        }
    }

    /// A PID that no process can have on Linux (above `PID_MAX_LIMIT`, 2^22).
    const DEAD: u32 = 99_999_999;

    #[test]
    fn only_provably_dead_hooklens_temporaries_are_removed() {
        let dir = std::env::temp_dir().join(format!("hooklens-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let host = host_id().expect("this test runs where /proc tells the boot and PID namespace");
        let other = if host == "0123456789abcdef" {
            "fedcba9876543210"
        } else {
            "0123456789abcdef"
        };
        let me = std::process::id();
        let dead_ours = format!(".out.bin.tmp-hooklens-{host}-{DEAD}-0");
        let kept = [
            // Another program's temporary (the tempfile crate's name).
            ".tmpAb3dE9".to_string(),
            // A writer in another container or machine: its PID means nothing here.
            format!(".out.bin.tmp-hooklens-{other}-{DEAD}-0"),
            // An older version's name: which namespace its PID is in is unknown.
            format!(".out.bin.tmp-{DEAD}-0"),
            // A live writer of ours.
            format!(".out.bin.tmp-hooklens-{host}-{me}-7"),
            // A dead writer of another file.
            format!(".other.bin.tmp-hooklens-{host}-{DEAD}-0"),
            // Not a temporary name at all.
            format!(".out.bin.tmp-hooklens-{host}-{DEAD}-x"),
        ];
        for name in kept.iter().chain([&dead_ours]) {
            std::fs::write(dir.join(name), b"partial").unwrap();
        }
        write_atomically(&dir.join("out.bin"), |w| {
            w.write_all(b"done").map_err(|e| Error::io("out.bin", e))
        })
        .unwrap();
        assert_eq!(std::fs::read(dir.join("out.bin")).unwrap(), b"done");
        assert!(
            !dir.join(&dead_ours).exists(),
            "a dead writer's temporary of ours is left"
        );
        for name in &kept {
            assert!(dir.join(name).exists(), "{name} was removed");
        }
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left.len(), kept.len() + 1, "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! How much memory a run may still take, so that a run too large for the machine is an
//! error that says so before it allocates, not an abort halfway through.
//!
//! Allocation failure in Rust aborts the process; tensors are allocated deep inside
//! candle, where nothing can catch it. So the callers that know a run's size (a
//! checkpoint's header, a batch's logits, a harvest's shard) compare it with what is
//! available first.

use crate::{Error, Result};

/// Overrides the available-memory figure, in bytes (tests set a tiny one; a user may
/// set a smaller one than the machine's to leave room for other work).
pub const AVAILABLE_MEMORY_ENV: &str = "HOOKLENS_AVAILABLE_MEMORY";

/// The bytes this process can still allocate, as far as can be told: the smallest of
/// the system's available memory, the cgroup's limit less its usage, the address-space
/// limit (`ulimit -v`) less the address space in use, and [`AVAILABLE_MEMORY_ENV`].
/// `None` when none of them can be read (the check is then skipped).
pub fn available_memory() -> Option<u64> {
    let from_env = std::env::var(AVAILABLE_MEMORY_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok());
    [from_env, mem_available(), cgroup_room(), address_space_room()]
        .into_iter()
        .flatten()
        .min()
}

/// Fails when `need` bytes for `what` exceed [`available_memory`]; `hint` says what
/// makes the run smaller (a flag, a smaller batch).
pub fn check_memory(what: &str, need: u64, hint: &str) -> Result<()> {
    match available_memory() {
        Some(avail) if need > avail => Err(Error::invalid(format!(
            "{what} needs about {} of memory, but about {} is available: {hint}",
            human(need),
            human(avail)
        ))),
        _ => Ok(()),
    }
}

/// Bytes as MiB or GiB, for messages.
pub fn human(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    let mib = bytes as f64 / MIB;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

/// `MemAvailable` of `/proc/meminfo`.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    kib_field(line)
}

/// The value of a `Name:   123 kB` line, in bytes.
fn kib_field(line: &str) -> Option<u64> {
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The cgroup (v2) memory limit less the cgroup's usage, when a limit is set.
fn cgroup_room() -> Option<u64> {
    let max = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
    let max: u64 = max.trim().parse().ok()?; // "max": no limit
    let current: u64 = std::fs::read_to_string("/sys/fs/cgroup/memory.current")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(max.saturating_sub(current))
}

/// `ulimit -v` less the address space already in use.
fn address_space_room() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max address space"))?;
    let limit: u64 = line.split_whitespace().nth(3)?.parse().ok()?; // "unlimited": none
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let used = kib_field(status.lines().find(|l| l.starts_with("VmSize:"))?)?;
    Some(limit.saturating_sub(used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_need_above_what_is_available_is_an_error_naming_both() {
        assert!(check_memory("x", 0, "smaller").is_ok());
        if let Some(avail) = available_memory() {
            let err = check_memory("the logits", avail + (1 << 30), "use a smaller batch")
                .unwrap_err()
                .to_string();
            assert!(err.contains("the logits needs about"), "{err}");
            assert!(err.contains("is available: use a smaller batch"), "{err}");
        }
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert_eq!(kib_field("MemAvailable:   2048 kB"), Some(2 << 20));
    }
}

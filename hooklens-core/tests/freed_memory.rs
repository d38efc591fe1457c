//! `retain_freed_memory` in a process of its own: the setting is process-wide, and
//! other tests allocating at the same time would blur the page-fault counts.

/// Minor page faults of this process so far (`/proc/self/stat`, field 10).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    after_name
        .split(' ')
        .nth(7)
        .expect("minflt field")
        .parse()
        .expect("minflt number")
}

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn a_freed_buffer_is_reused_without_faulting_its_pages_again() {
    assert!(hooklens_core::retain_freed_memory());
    const BYTES: usize = 24 << 20;
    let pages = (BYTES / 4096) as u64;
    // Activations are freed in one order and asked for again in another: a block of
    // the first size must serve the second request without fresh pages.
    let first = std::hint::black_box(vec![1u8; BYTES]);
    let second = std::hint::black_box(vec![2u8; BYTES / 2]);
    drop(first);
    drop(second);
    let before = minor_faults();
    let again = std::hint::black_box(vec![3u8; BYTES]);
    let faults = minor_faults() - before;
    assert_eq!(again[BYTES - 1], 3);
    assert!(
        faults < pages / 10,
        "{faults} page faults for a {BYTES}-byte buffer after one of that size was freed ({pages} pages)"
    );
}

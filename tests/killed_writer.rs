//! A writer killed mid-write never leaves a file that looks complete (issue 6).
//!
//! `ActivationCache::save` (and so `hooklens cache --out`, and every safetensors file
//! the command line writes) writes to a temporary name and renames it when complete.
//! This test re-runs its own binary as a child that saves large caches one after
//! another, SIGKILLs it while it is writing one of them (not the first), and checks
//! what is on disk: the file before it whole, the cut one absent at its final path
//! (only its temporary file, under another, hidden name, remains).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use hooklens::ActivationCache;

const CHILD_ENV: &str = "HOOKLENS_KILLED_WRITER_DIR";
/// Four tensors of 4 Mi f32 each: 64 MiB per file, long enough to be caught mid-write.
const TENSORS: [&str; 4] = [
    "hook_embed",
    "blocks.0.hook_resid_pre",
    "blocks.0.attn.hook_z",
    "hook_final",
];
const LEN: usize = 4 << 20;

fn final_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("cache-{i}.safetensors"))
}

/// Files the child writes at most, should nobody kill it.
const MAX_FILES: usize = 300;

/// The child: saves cache `i` (every value equal to `i`) at `cache-{i}.safetensors`,
/// for i = 0, 1, 2, ... until killed, keeping only the last two finished files so that
/// the disk never fills. Without the environment variable (a normal test run) it does
/// nothing.
#[test]
fn child_writer_for_the_kill_test() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    for i in 0..MAX_FILES {
        let mut cache = ActivationCache::new(true);
        for name in TENSORS {
            cache.insert(name, Tensor::full(i as f32, LEN, &Device::Cpu).unwrap());
        }
        cache.save(final_path(&dir, i)).unwrap();
        if i >= 2 {
            std::fs::remove_file(final_path(&dir, i - 2)).unwrap();
        }
    }
}

/// Kills the child when dropped, so that a failing assertion in the parent never
/// leaves a writer running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The index `k` of a temporary file `.cache-{k}.safetensors.tmp-...`, if `name` is one.
fn tmp_index(name: &str) -> Option<usize> {
    let rest = name.strip_prefix(".cache-")?;
    let (k, tail) = rest.split_once('.')?;
    tail.starts_with("safetensors.tmp-").then(|| k.parse().ok()).flatten()
}

/// The temporary files in `dir` (names starting with a dot).
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_writer_killed_mid_write_leaves_no_complete_looking_file() {
    let dir = std::env::temp_dir().join(format!("hooklens-killed-writer-{}", std::process::id()));
    // A kill can land between two files (after a rename, before the next temporary file
    // exists); then nothing was cut and the attempt is repeated.
    for attempt in 0..5 {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = KillOnDrop(
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "child_writer_for_the_kill_test",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, &dir)
                .spawn()
                .unwrap(),
        );
        // Wait until some file after the first is being written.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if temporaries(&dir).iter().any(|n| tmp_index(n).is_some_and(|k| k >= 1)) {
                break;
            }
            assert!(Instant::now() < deadline, "the child never got past its first file");
            assert!(child.0.try_wait().unwrap().is_none(), "the child ended on its own");
            std::thread::sleep(Duration::from_micros(200));
        }
        drop(child); // SIGKILL: no destructor, no cleanup runs in the child

        let left = temporaries(&dir);
        let Some(k) = left.iter().find_map(|n| tmp_index(n)) else {
            eprintln!("attempt {attempt}: the kill landed between files, trying again");
            continue;
        };
        // The file being written when the process died is not at its final path...
        assert!(!final_path(&dir, k).exists(), "cut file {k} sits at its final path");
        assert!(!final_path(&dir, k + 1).exists());
        // ...and the file finished before it is whole, every value as written.
        let before = ActivationCache::load(final_path(&dir, k - 1), &Device::Cpu).unwrap();
        assert_eq!(before.keys().collect::<Vec<_>>(), TENSORS);
        for (name, t) in before.iter() {
            assert_eq!(t.dims(), [LEN], "{name}");
            let t = t.to_dtype(DType::F32).unwrap();
            let want = (k - 1) as f32;
            assert_eq!(t.min_all().unwrap().to_scalar::<f32>().unwrap(), want, "{name}");
            assert_eq!(t.max_all().unwrap().to_scalar::<f32>().unwrap(), want, "{name}");
        }
        // What the dead writer leaves is a hidden temporary file, which no reader of
        // `cache-1.safetensors` sees (and which a later save does not reuse).
        std::fs::remove_dir_all(&dir).unwrap();
        return;
    }
    let _ = std::fs::remove_dir_all(&dir);
    panic!("five kills in a row landed between files");
}

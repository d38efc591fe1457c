//! A writer killed mid-write never leaves a file that looks complete (issues 6, 18).
//!
//! `ActivationCache::save` (and so `hooklens cache --out`, and every safetensors file
//! the command line writes) writes to a temporary name, fsyncs and renames it when
//! complete. This test re-runs its own binary as a child that saves a cache, then saves
//! a second one with `HOOKLENS_TEST_PAUSE_MID_WRITE` set, which makes the writer stop
//! halfway with bytes on disk: the SIGKILL lands mid-write every time. It then checks
//! what is on disk (the first file whole, the cut one only under its temporary name)
//! and that the next save of that file leaves nothing behind.

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
/// A one-element tensor holding the file's number.
const INDEX: &str = "index";

fn final_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("cache-{i}.safetensors"))
}

/// The child: saves cache 0, then cache 1 with the writer told to pause halfway. Not a
/// test of its own: ignored, so a normal run skips it and reports it as ignored; only
/// the parent runs it (with `--ignored`), and run by hand without the parent's
/// directory it fails.
#[test]
#[ignore = "the child process of a_writer_killed_mid_write_leaves_no_complete_looking_file, which runs it"]
fn child_writer_for_the_kill_test() {
    let dir = std::env::var_os(CHILD_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{CHILD_ENV} is not set: this child runs only under its parent test"));
    for i in 0..2 {
        if i == 1 {
            std::env::set_var(hooklens::__internal::PAUSE_MID_WRITE_ENV, "1");
        }
        make_cache(i).save(final_path(&dir, i)).unwrap();
    }
    panic!("the second save should have paused");
}

/// Cache `i`: the large tensors, and `index` holding `i`.
fn make_cache(i: usize) -> ActivationCache {
    let mut cache = ActivationCache::new(true);
    for (j, name) in TENSORS.into_iter().enumerate() {
        cache.insert(name, Tensor::full(j as f32, LEN, &Device::Cpu).unwrap());
    }
    cache.insert(INDEX, Tensor::new(&[i as f32], &Device::Cpu).unwrap());
    cache
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

/// Every `cache-*.safetensors` at its final path in `dir`, with its number.
fn finals(dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let k = name
                        .strip_prefix("cache-")?
                        .strip_suffix(".safetensors")?
                        .parse()
                        .ok()?;
                    Some((k, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Loads cache `k` and checks it is whole: every tensor, every value as written.
fn assert_whole(path: &Path, k: usize) {
    let cache = ActivationCache::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut names = TENSORS.to_vec();
    names.push(INDEX);
    assert_eq!(cache.keys().collect::<Vec<_>>(), names);
    assert_eq!(cache[INDEX].to_vec1::<f32>().unwrap(), [k as f32]);
    for (j, name) in TENSORS.into_iter().enumerate() {
        let t = cache[name].to_dtype(DType::F32).unwrap();
        assert_eq!(t.dims(), [LEN], "{name}");
        assert_eq!(t.min_all().unwrap().to_scalar::<f32>().unwrap(), j as f32, "{name}");
        assert_eq!(t.max_all().unwrap().to_scalar::<f32>().unwrap(), j as f32, "{name}");
    }
}

#[test]
fn a_writer_killed_mid_write_leaves_no_complete_looking_file() {
    let dir = std::env::temp_dir().join(format!("hooklens-killed-writer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "--ignored",
                "child_writer_for_the_kill_test",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .spawn()
            .unwrap(),
    );
    // Waits for file 0 at its final path and file 1's temporary file with bytes in it.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let paused = temporaries(&dir)
            .iter()
            .any(|n| tmp_index(n) == Some(1) && std::fs::metadata(dir.join(n)).is_ok_and(|m| m.len() > 0));
        if paused && !finals(&dir).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the child never reached the middle of its second file"
        );
        assert!(child.0.try_wait().unwrap().is_none(), "the child ended on its own");
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(child); // SIGKILL, mid-write: no destructor, no cleanup runs in the child

    let on_disk = finals(&dir);
    assert_eq!(
        on_disk.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [0],
        "only file 0 is final"
    );
    assert_whole(&on_disk[0].1, 0);
    assert!(!final_path(&dir, 1).exists(), "the cut file sits at its final path");
    assert!(
        !temporaries(&dir).is_empty(),
        "the kill left no temporary: it did not land mid-write"
    );
    // The next save of the cut file removes the dead writer's temporary.
    make_cache(1).save(final_path(&dir, 1)).unwrap();
    assert_whole(&final_path(&dir, 1), 1);
    assert_eq!(temporaries(&dir), Vec::<String>::new(), "temporaries left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

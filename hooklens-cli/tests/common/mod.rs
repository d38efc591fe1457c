//! What every CLI test needs: the repository's fixture paths, a temporary directory
//! removed on drop, and the `hooklens` binary run offline, with its outcome checked.
// Each test binary uses a different part of this module.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub use hooklens_testutil::{load_tensors as load, max_abs_diff, TempDir};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The TransformerLens reference checkpoint.
pub fn tiny_model() -> PathBuf {
    root().join("testdata/tiny-gpt2/model")
}

/// The reference tokens, i64 `[2, 10]`.
pub fn tiny_tokens() -> PathBuf {
    root().join("testdata/tiny-gpt2/tokens.safetensors")
}

/// The `hooklens` binary with `args`, offline and with an empty Hugging Face cache, so
/// that no test can reach the network.
pub fn offline_command<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hooklens"));
    cmd.args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", std::env::temp_dir().join("hooklens-cli-no-cache"));
    cmd
}

/// Runs `hooklens` with `args` through [`offline_command`] and waits for it.
pub fn hooklens<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    offline_command(args).output().expect("the hooklens binary runs")
}

/// A success; returns what it printed on stdout.
pub fn ok_stdout(o: Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A success; returns what it printed on stderr (progress, notes, warnings).
pub fn ok_stderr(o: Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failure with a readable message: non-zero exit, `needle` on stderr, no panic.
/// Returns stderr.
pub fn fails(o: Output, needle: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "succeeded: stdout {} stderr {err}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// `hooklens` with `args` started in the background, told to pause halfway through its
/// first file write (`PAUSE_MID_WRITE_ENV`), so that a kill lands mid-write.
pub fn spawn_paused_mid_write<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Child {
    offline_command(args)
        .env(hooklens::__internal::PAUSE_MID_WRITE_ENV, "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The names of the hidden files (temporaries are `.NAME.tmp-...`) in `dir`.
pub fn hidden_files(dir: &Path) -> std::io::Result<Vec<String>> {
    Ok(std::fs::read_dir(dir)?
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect())
}

/// The reference attribution case `name`: `testdata/<name>` with `model/`, `transcoders/`
/// and `tokens.safetensors`.
pub fn circuit_case(name: &str) -> PathBuf {
    root().join("testdata").join(name)
}

/// `attribute --model <case>/model --tokens <case>/tokens.safetensors --transcoders
/// <transcoders>`, then `extra`.
pub fn attribute_args<S: AsRef<std::ffi::OsStr>>(
    case: &Path,
    transcoders: impl AsRef<std::ffi::OsStr>,
    extra: &[S],
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "attribute".into(),
        "--model".into(),
        case.join("model").into(),
        "--tokens".into(),
        case.join("tokens.safetensors").into(),
        "--transcoders".into(),
        transcoders.as_ref().into(),
    ];
    args.extend(extra.iter().map(|a| a.as_ref().to_os_string()));
    args
}

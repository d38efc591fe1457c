//! What every CLI test needs: the repository's fixture paths, a temporary directory
//! removed on drop, and the `hooklens` binary run offline.
// Each test binary uses a different part of this module.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::Command;

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

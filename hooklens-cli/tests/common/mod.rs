//! What every CLI test needs: the repository's fixture paths, a temporary directory
//! removed on drop, and the `hooklens` binary run offline.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh, empty directory named by `tag` and this process.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hooklens-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// [`TempDir::path`] as a string, for argument lists.
    pub fn s(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

/// Every tensor of a safetensors file, by name.
pub fn load(path: &std::path::Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap()
}

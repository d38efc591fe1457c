//! How Hugging Face ids are resolved: the cache, offline mode, revision and endpoint,
//! read from the environment as Python's `huggingface_hub` reads them.

use std::path::PathBuf;

/// How Hugging Face ids are resolved. [`HubOptions::from_env`] reads the variables
/// Python's `huggingface_hub` reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubOptions {
    /// The cache directory (the `hub` folder holding `models--*`).
    pub cache_dir: PathBuf,
    /// Never use the network: only the cache (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Branch, tag or commit hash (default `main`).
    pub revision: String,
    /// Show a progress bar while downloading.
    pub progress: bool,
    /// The hub's address (`HF_ENDPOINT`), when not the default.
    pub endpoint: Option<String>,
    /// An access token (`HF_TOKEN`); without one, the cache's `token` file is used.
    pub token: Option<String>,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self::from_env()
    }
}

impl HubOptions {
    /// Options from the environment: `HF_HUB_CACHE` (or the older
    /// `HUGGINGFACE_HUB_CACHE`), else `HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
    /// else `~/.cache/huggingface/hub`; `HF_HUB_OFFLINE`; `HF_ENDPOINT`; `HF_TOKEN`.
    pub fn from_env() -> Self {
        Self::from_vars(|key| std::env::var(key).ok().filter(|v| !v.is_empty()))
    }

    /// [`HubOptions::from_env`] with the variables read through `var`, so tests need
    /// not touch the process environment.
    pub(crate) fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        HubOptions {
            cache_dir: cache_dir_from(&var),
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| is_truthy(&v)),
            revision: "main".into(),
            progress: true,
            endpoint: var("HF_ENDPOINT"),
            token: var("HF_TOKEN"),
        }
    }

    /// Uses `dir` as the cache directory.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = dir.into();
        self
    }

    /// Forbids (or allows) the network.
    pub fn offline(mut self, yes: bool) -> Self {
        self.offline = yes;
        self
    }

    /// Resolves this branch, tag or commit instead of `main`.
    pub fn revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = revision.into();
        self
    }

    /// Shows (or hides) the download progress bar.
    pub fn progress(mut self, yes: bool) -> Self {
        self.progress = yes;
        self
    }
}

/// `huggingface_hub`'s reading of boolean variables.
fn is_truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE")
}

fn cache_dir_from(var: &impl Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(dir) = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
        return PathBuf::from(dir);
    }
    if let Some(home) = var("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let cache = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("huggingface").join("hub")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_is_read_as_huggingface_hub_reads_it() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            HubOptions::from_vars(move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
        };
        assert_eq!(
            env(&[("HOME", "/home/u")]).cache_dir,
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
        assert_eq!(
            env(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")]).cache_dir,
            PathBuf::from("/xdg/huggingface/hub")
        );
        assert_eq!(env(&[("HF_HOME", "/hf")]).cache_dir, PathBuf::from("/hf/hub"));
        assert_eq!(
            env(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c")]).cache_dir,
            PathBuf::from("/c")
        );
        assert!(env(&[("HF_HUB_OFFLINE", "1")]).offline);
        assert!(env(&[("HF_HUB_OFFLINE", "true")]).offline);
        assert!(!env(&[("HF_HUB_OFFLINE", "0")]).offline);
        assert!(!env(&[]).offline);
    }
}

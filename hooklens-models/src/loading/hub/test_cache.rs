//! A Hugging Face cache laid out for the tests of name resolution and of what loads
//! through it (`from_pretrained`, SAEs).

use std::path::{Path, PathBuf};

use hooklens_testutil::hub_standin::{cache_repo, repo_dir};

use super::files::{CONFIG_FILE, WEIGHTS_FILE};
use super::options::HubOptions;

/// The tiny GPT-2 of the test data: `config.json` and `model.safetensors`.
pub(crate) fn tiny_model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/tiny-gpt2/model")
}

/// `names` of `dir`, as `(prefix + name, path)`: what a stand-in serves or a cache holds.
pub(crate) fn named(dir: &Path, names: &[&str], prefix: &str) -> Vec<(String, PathBuf)> {
    names.iter().map(|n| (format!("{prefix}{n}"), dir.join(n))).collect()
}

/// Lays out the tiny model as Python's `huggingface_hub` caches `repo`, with or
/// without `refs/main`.
pub(crate) fn fake_cache(cache: &Path, repo: &str, with_ref: bool) {
    cache_repo(cache, repo, &named(&tiny_model_dir(), &[CONFIG_FILE, WEIGHTS_FILE], ""));
    if !with_ref {
        std::fs::remove_dir_all(repo_dir(cache, repo).join("refs")).unwrap();
    }
}

/// Hub options that read only the cache `cache`, ignoring the environment.
pub(crate) fn offline(cache: &Path) -> HubOptions {
    HubOptions::from_vars(|_| None).cache_dir(cache).offline(true)
}

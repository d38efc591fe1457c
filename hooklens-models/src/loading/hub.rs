//! Finding a model's files: a local directory, or a Hugging Face id looked up in the
//! local Hugging Face cache and downloaded into it when missing.
//!
//! The cache is the one Python's `huggingface_hub` uses (`models--gpt2/refs/main`,
//! `snapshots/<commit>/...`), so a model Python already downloaded is found without
//! network, and the other way round.

use std::path::{Path, PathBuf};

use hooklens_core::{Error, Result};

use crate::tokenizer::Tokenizer;

// The cache and the network: compiled with the `hub` feature only.
pub(crate) mod builtin_name;
#[cfg(feature = "hub")]
mod remote;
#[cfg(feature = "hub")]
pub(crate) use remote::repo_files;
#[cfg(feature = "hub")]
use remote::{download, from_cache, not_cached};
#[cfg(all(test, feature = "hub"))]
pub(crate) mod test_cache;

use builtin_name::is_builtin;

/// The configuration file of a model.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file of a model.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The optional tokenizer file of a model.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The index of a sharded checkpoint, used when there is no [`WEIGHTS_FILE`].
pub const SHARD_INDEX_FILE: &str = super::checkpoint::SHARD_INDEX;

/// The shard files a `model.safetensors.index.json` names, each once; an unreadable
/// index, or one naming a file outside its folder, is an error naming it.
#[cfg(feature = "hub")]
pub(crate) fn shard_files(index: &Path) -> Result<Vec<String>> {
    Ok(super::sharded::ShardIndex::read(index)?.files)
}

/// TransformerLens's names for models that are not Hugging Face ids.
const ALIASES: &[(&str, &str)] = &[("gpt2-small", "gpt2")];

/// Ids that Hugging Face moved under an organisation and still serves by both names;
/// Python's cache keeps each under the name it was asked for, so a cached copy may sit
/// under either.
#[cfg(feature = "hub")]
const SAME_REPO: &[(&str, &str)] = &[
    ("gpt2", "openai-community/gpt2"),
    ("gpt2-medium", "openai-community/gpt2-medium"),
    ("gpt2-large", "openai-community/gpt2-large"),
    ("gpt2-xl", "openai-community/gpt2-xl"),
    ("distilgpt2", "distilbert/distilgpt2"),
];

/// Where a model's files were found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A local directory given by path.
    Directory(PathBuf),
    /// A Hugging Face repository, found in (or downloaded into) a cache.
    Hub {
        /// The repository id the files were found under.
        repo: String,
        /// The revision asked for (branch, tag or commit).
        revision: String,
        /// The Hugging Face cache directory (the `hub` folder).
        cache_dir: PathBuf,
    },
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::Directory(dir) => write!(f, "{}", dir.display()),
            ModelSource::Hub { repo, revision, .. } if revision == "main" => write!(f, "{repo}"),
            ModelSource::Hub { repo, revision, .. } => write!(f, "{repo}@{revision}"),
        }
    }
}

/// The files of one model, all local.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFiles {
    /// `config.json` (Hugging Face GPT-2 config).
    pub config: PathBuf,
    /// `model.safetensors`.
    pub weights: PathBuf,
    /// `tokenizer.json`, when the model has one.
    pub tokenizer: Option<PathBuf>,
    /// Where they came from.
    pub source: ModelSource,
}

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

/// Finds the files of `name` with options from the environment; see [`resolve_with`].
pub fn resolve(name: &str) -> Result<ModelFiles> {
    resolve_with(name, &HubOptions::from_env())
}

/// Finds the files of `name`: a directory holding `config.json` and
/// `model.safetensors` (and optionally `tokenizer.json`), or a Hugging Face id
/// (`gpt2`, `openai-community/gpt2-medium`, `distilgpt2`, ...).
///
/// An id is looked up in the cache first, with no network at all when its files are
/// there; otherwise they are downloaded into the cache (with a progress bar unless
/// turned off), unless `opts.offline`. Errors say what was looked for and where.
pub fn resolve_with(name: &str, opts: &HubOptions) -> Result<ModelFiles> {
    let found = locate(name, opts, true)?;
    let weights = found
        .weights
        .ok_or_else(|| Error::invalid(format!("model `{name}`: no {WEIGHTS_FILE} found (internal error)")))?;
    Ok(ModelFiles {
        config: found.config,
        weights,
        tokenizer: found.tokenizer,
        source: found.source,
    })
}

/// What text needs of a model, without its weights: the config (for the vocabulary
/// size and BOS) and the tokenizer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextFiles {
    /// `config.json`.
    pub config: PathBuf,
    /// `tokenizer.json`, when the model has one.
    pub tokenizer: Option<PathBuf>,
    /// Where they came from.
    pub source: ModelSource,
}

impl TextFiles {
    /// The tokenizer of these files: their `tokenizer.json`, else GPT-2's BPE.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        tokenizer_of(self.tokenizer.as_deref())
    }
}

/// [`resolve_with`] for `config.json` and `tokenizer.json` only, so that tokenizing
/// with a model never downloads its weights.
pub fn resolve_text_with(name: &str, opts: &HubOptions) -> Result<TextFiles> {
    let found = locate(name, opts, false)?;
    Ok(TextFiles {
        config: found.config,
        tokenizer: found.tokenizer,
        source: found.source,
    })
}

/// Files found for a model; `weights` is `None` only when they were not asked for.
struct Found {
    config: PathBuf,
    weights: Option<PathBuf>,
    tokenizer: Option<PathBuf>,
    source: ModelSource,
}

/// The files that must be there: config, and weights if `with_weights`.
fn required(with_weights: bool) -> &'static [&'static str] {
    if with_weights {
        &[CONFIG_FILE, WEIGHTS_FILE]
    } else {
        &[CONFIG_FILE]
    }
}

fn locate(name: &str, opts: &HubOptions, with_weights: bool) -> Result<Found> {
    if is_builtin(name) {
        return Err(Error::invalid(format!(
            "model `{name}` is compiled into hooklens-models and has no files: load it with \
             HookedTransformer::builtin() or from_pretrained(\"{name}\") (a directory of that name is `./{name}`)"
        )));
    }
    let path = Path::new(name);
    if path.is_dir() {
        return from_directory(path, with_weights);
    }
    // A link by that name was meant as a directory, even if it leads nowhere (a loop,
    // a missing target): never take it for a Hugging Face id and fetch something else.
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        let why = match std::fs::metadata(path) {
            Err(e) => e.to_string(),
            Ok(_) => "it leads to a file, not a directory".to_string(),
        };
        return Err(Error::invalid(format!(
            "model `{name}` is a symbolic link that is not a model directory: {why}"
        )));
    }
    if looks_like_path(name) {
        return Err(Error::invalid(format!(
            "model `{name}`: no such directory (a model is a directory holding {CONFIG_FILE} and \
             {WEIGHTS_FILE}, or a Hugging Face id such as `gpt2`)"
        )));
    }
    let id = ALIASES.iter().find(|(a, _)| *a == name).map_or(name, |(_, id)| *id);
    check_repo_id(id)?;
    #[cfg(not(feature = "hub"))]
    let _ = (opts, with_weights);
    #[cfg(not(feature = "hub"))]
    return Err(Error::invalid(format!(
        "model `{id}`: no such directory, and this build of hooklens-models has no Hugging Face hub \
         (the `hub` cargo feature is off): give a model directory"
    )));
    #[cfg(feature = "hub")]
    {
        if let Some(found) = from_cache(id, opts, with_weights) {
            return Ok(found);
        }
        if opts.offline {
            return Err(not_cached(
                id,
                opts,
                with_weights,
                "offline mode (HF_HUB_OFFLINE) forbids downloading",
            ));
        }
        download(id, opts, with_weights)
    }
}

fn from_directory(dir: &Path, with_weights: bool) -> Result<Found> {
    // A sharded checkpoint's index stands in for the single file.
    let sharded = !dir.join(WEIGHTS_FILE).is_file() && dir.join(SHARD_INDEX_FILE).is_file();
    for file in required(with_weights) {
        if !(dir.join(file).is_file() || sharded && *file == WEIGHTS_FILE) {
            let or_index = if *file == WEIGHTS_FILE {
                format!(" (nor {SHARD_INDEX_FILE})")
            } else {
                String::new()
            };
            return Err(Error::invalid(format!(
                "model directory {}: no {file}{or_index} in it",
                dir.display()
            )));
        }
    }
    let weights_file = if sharded { SHARD_INDEX_FILE } else { WEIGHTS_FILE };
    Ok(Found {
        config: dir.join(CONFIG_FILE),
        weights: with_weights.then(|| dir.join(weights_file)),
        tokenizer: Some(dir.join(TOKENIZER_FILE)).filter(|p| p.is_file()),
        source: ModelSource::Directory(dir.to_path_buf()),
    })
}

/// Whether `name` can only be meant as a path: Hugging Face ids have at most one `/`
/// and never start with `.`, `/` or `~`.
fn looks_like_path(name: &str) -> bool {
    name.starts_with(['.', '/', '~']) || name.matches('/').count() > 1 || name.contains('\\')
}

fn check_repo_id(id: &str) -> Result<()> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.starts_with(['-', '.'])
            && !p.contains("..")
    };
    if id.split('/').count() <= 2 && id.split('/').all(ok_part) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "model `{id}`: neither a directory nor a valid Hugging Face id (`name` or `org/name`)"
        )))
    }
}

fn tokenizer_of(file: Option<&Path>) -> Result<Tokenizer> {
    match file {
        Some(file) => Tokenizer::from_file(file),
        None => Tokenizer::gpt2(),
    }
}

impl ModelFiles {
    /// The tokenizer of these files: their `tokenizer.json`, else GPT-2's BPE.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        tokenizer_of(self.tokenizer.as_deref())
    }

    /// Every file a load reads: the config, the checkpoint (a sharded one's index and
    /// each shard it names) and the tokenizer, when there is one. What an output must
    /// never overwrite, and what identifies the model's content.
    pub fn all_files(&self) -> Result<Vec<PathBuf>> {
        let mut files = vec![self.config.clone(), self.weights.clone()];
        if self.weights.to_string_lossy().ends_with(".index.json") {
            let dir = self.weights.parent().unwrap_or(Path::new("."));
            let index = super::sharded::ShardIndex::read(&self.weights)?;
            files.extend(index.files.iter().map(|f| dir.join(f)));
        }
        files.extend(self.tokenizer.clone());
        Ok(files)
    }
}

#[cfg(all(test, feature = "hub"))]
mod tests {
    use super::test_cache::{fake_cache, named, offline, tiny_model_dir};
    use super::*;
    use hooklens_testutil::hub_standin::{refused_endpoint, skipped_for_proxy, StandIn, COMMIT};
    use hooklens_testutil::TempDir;

    #[test]
    fn resolves_a_cached_id_offline() {
        let tmp = TempDir::new("cached");
        fake_cache(&tmp, "gpt2", true);
        let files = resolve_with("gpt2", &offline(&tmp)).unwrap();
        let snap = tmp.join("models--gpt2/snapshots").join(COMMIT);
        assert_eq!(files.config, snap.join(CONFIG_FILE));
        assert_eq!(files.weights, snap.join(WEIGHTS_FILE));
        assert_eq!(files.tokenizer, None);
        assert_eq!(files.source.to_string(), "gpt2");
        // The alias, and the organisation's name for the same repository, find it too.
        assert_eq!(
            resolve_with("gpt2-small", &offline(&tmp)).unwrap().weights,
            files.weights
        );
        let org = resolve_with("openai-community/gpt2", &offline(&tmp)).unwrap();
        assert_eq!(org.weights, files.weights);
        // A commit hash needs no ref.
        let pinned = resolve_with("gpt2", &offline(&tmp).revision(COMMIT)).unwrap();
        assert_eq!(pinned.weights, files.weights);
    }

    #[test]
    fn finds_organisation_ids_and_tokenizers() {
        let tmp = TempDir::new("org");
        fake_cache(&tmp, "openai-community/gpt2-medium", true);
        let snap = tmp.join("models--openai-community--gpt2-medium/snapshots").join(COMMIT);
        std::fs::write(snap.join(TOKENIZER_FILE), "{}").unwrap();
        let files = resolve_with("openai-community/gpt2-medium", &offline(&tmp)).unwrap();
        assert_eq!(files.tokenizer, Some(snap.join(TOKENIZER_FILE)));
        let short = resolve_with("gpt2-medium", &offline(&tmp)).unwrap();
        assert_eq!(
            short.source,
            ModelSource::Hub {
                repo: "openai-community/gpt2-medium".into(),
                revision: "main".into(),
                cache_dir: tmp.to_path_buf(),
            }
        );
    }

    #[test]
    fn offline_and_missing_says_what_and_where() {
        let tmp = TempDir::new("missing");
        // A snapshot without refs/main is not a usable `main`.
        fake_cache(&tmp, "distilgpt2", false);
        for name in ["gpt2-xl", "distilgpt2"] {
            let err = resolve_with(name, &offline(&tmp)).unwrap_err().to_string();
            assert!(err.contains(&format!("model `{name}`")), "{err}");
            assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
            assert!(err.contains(&tmp.display().to_string()), "{err}");
            assert!(err.contains(CONFIG_FILE) && err.contains(WEIGHTS_FILE), "{err}");
        }
        let err = resolve_with("gpt2-xl", &offline(&tmp)).unwrap_err().to_string();
        assert!(err.contains("models--gpt2-xl") && err.contains("models--openai-community--gpt2-xl"));
    }

    #[test]
    fn text_files_need_no_weights() {
        let tmp = TempDir::new("text");
        fake_cache(&tmp, "gpt2", true);
        let snap = tmp.join("models--gpt2/snapshots").join(COMMIT);
        std::fs::remove_file(snap.join(WEIGHTS_FILE)).unwrap();
        let text = resolve_text_with("gpt2", &offline(&tmp)).unwrap();
        assert_eq!(text.config, snap.join(CONFIG_FILE));
        assert_eq!(text.tokenizer().unwrap().vocab_size(), 50257);
        let err = resolve_with("gpt2", &offline(&tmp)).unwrap_err().to_string();
        assert!(err.contains("config.json and model.safetensors are not"), "{err}");
        let err = resolve_text_with("gpt2-xl", &offline(&tmp)).unwrap_err().to_string();
        assert!(err.contains("config.json is not"), "{err}");
    }

    #[test]
    fn directories_and_bad_names() {
        let dir = tiny_model_dir();
        let files = resolve_with(dir.to_str().unwrap(), &offline(Path::new("/nonexistent"))).unwrap();
        assert_eq!(files.source, ModelSource::Directory(dir.clone()));
        assert_eq!(files.weights, dir.join(WEIGHTS_FILE));
        let opts = offline(Path::new("/nonexistent"));
        let err = resolve_with("./no/such/model", &opts).unwrap_err().to_string();
        assert!(err.contains("no such directory"), "{err}");
        let err = resolve_with("bad id!", &opts).unwrap_err().to_string();
        assert!(err.contains("valid Hugging Face id"), "{err}");
        let no_weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let err = resolve_with(no_weights.to_str().unwrap(), &opts)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no config.json"), "{err}");
    }

    #[test]
    fn builtin_is_a_name_not_files() {
        let opts = offline(Path::new("/nonexistent"));
        let err = resolve_with("builtin", &opts).unwrap_err().to_string();
        assert!(err.contains("compiled into hooklens-models"), "{err}");
    }

    #[test]
    fn downloads_into_the_cache_then_works_offline() {
        if skipped_for_proxy() {
            return;
        }
        let tmp = TempDir::new("download");
        let server = StandIn::serve(named(&tiny_model_dir(), &[CONFIG_FILE, WEIGHTS_FILE], ""));
        let mut opts = HubOptions::from_vars(|_| None)
            .cache_dir(tmp.to_path_buf())
            .progress(false);
        opts.endpoint = Some(server.endpoint.clone());
        let files = resolve_with("openai-community/gpt2", &opts);
        let served = server.finish().len();
        let files = files.unwrap();
        let snap = tmp.join("models--openai-community--gpt2/snapshots").join(COMMIT);
        assert_eq!(files.config, snap.join(CONFIG_FILE));
        assert_eq!(files.weights, snap.join(WEIGHTS_FILE));
        assert_eq!(files.tokenizer, None, "the hub has no tokenizer.json: GPT-2's BPE then");
        for f in [CONFIG_FILE, WEIGHTS_FILE] {
            assert_eq!(
                std::fs::read(snap.join(f)).unwrap(),
                std::fs::read(tiny_model_dir().join(f)).unwrap()
            );
        }
        // config + weights: metadata and body each; tokenizer.json: one 404.
        assert_eq!(served, 5);
        let again = resolve_with("gpt2", &offline(&tmp)).unwrap();
        assert_eq!(again.weights, files.weights);
    }

    #[test]
    fn no_network_says_what_and_where() {
        if skipped_for_proxy() {
            return;
        }
        let endpoint = refused_endpoint();
        let tmp = TempDir::new("refused");
        let mut opts = HubOptions::from_vars(|_| None)
            .cache_dir(tmp.to_path_buf())
            .progress(false);
        opts.endpoint = Some(endpoint.clone());
        let err = resolve_with("gpt2", &opts).unwrap_err().to_string();
        let url = format!("{endpoint}/gpt2/resolve/main/config.json");
        assert!(
            err.contains(&format!("downloading config.json from {url} failed")),
            "{err}"
        );
        assert!(err.contains(&tmp.display().to_string()), "{err}");
    }

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

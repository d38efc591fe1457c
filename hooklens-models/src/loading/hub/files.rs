//! A model's files: their names in a model folder, where they were found, and the
//! tokenizer they hold.

use std::path::{Path, PathBuf};

use hooklens_core::Result;

use crate::tokenizer::Tokenizer;

/// The configuration file of a model.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file of a model.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The optional tokenizer file of a model.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The index of a sharded checkpoint, used when there is no [`WEIGHTS_FILE`].
pub const SHARD_INDEX_FILE: &str = crate::loading::SHARD_INDEX;

/// The shard files a `model.safetensors.index.json` names, each once; an unreadable
/// index, or one naming a file outside its folder, is an error naming it.
#[cfg(feature = "hub")]
pub(crate) fn shard_files(index: &Path) -> Result<Vec<String>> {
    Ok(crate::loading::ShardIndex::read(index)?.files)
}

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

/// Files found for a model; `weights` is `None` only when they were not asked for.
pub(super) struct Found {
    pub(super) config: PathBuf,
    pub(super) weights: Option<PathBuf>,
    pub(super) tokenizer: Option<PathBuf>,
    pub(super) source: ModelSource,
}

/// The tokenizer in `file`, else GPT-2's BPE.
pub(super) fn tokenizer_of(file: Option<&Path>) -> Result<Tokenizer> {
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
            let index = crate::loading::ShardIndex::read(&self.weights)?;
            files.extend(index.files.iter().map(|f| dir.join(f)));
        }
        files.extend(self.tokenizer.clone());
        Ok(files)
    }
}

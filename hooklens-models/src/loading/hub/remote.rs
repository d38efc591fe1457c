//! The Hugging Face side of finding files: the local cache Python's `huggingface_hub`
//! shares (`models--org--name/snapshots/<commit>/...`) and downloads into it.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};
use hooklens_core::{Error, Result};

use super::files::{shard_files, Found, ModelSource, CONFIG_FILE, SHARD_INDEX_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
use super::names::{check_repo_id, SAME_REPO};
use super::options::HubOptions;

/// The same repository under its other name (`gpt2` <-> `openai-community/gpt2`).
fn other_name(id: &str) -> Option<&'static str> {
    SAME_REPO
        .iter()
        .find_map(|&(a, b)| (a == id).then_some(b).or((b == id).then_some(a)))
}

fn repo(id: &str, revision: &str) -> Repo {
    Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string())
}

/// The cache folder of `id`, e.g. `<cache>/models--openai-community--gpt2`.
pub(crate) fn repo_cache_dir(cache_dir: &Path, id: &str) -> PathBuf {
    cache_dir.join(repo(id, "main").folder_name())
}

/// A file in the cache, by branch or tag (through `refs/`) or by commit hash.
fn cached_file(cache: &Cache, id: &str, revision: &str, file: &str) -> Option<PathBuf> {
    if let Some(path) = cache.repo(repo(id, revision)).get(file) {
        return Some(path);
    }
    let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    let path = repo_cache_dir(cache.path(), id)
        .join("snapshots")
        .join(revision)
        .join(file);
    (is_commit && path.is_file()).then_some(path)
}

fn hub_source(id: &str, opts: &HubOptions) -> ModelSource {
    ModelSource::Hub {
        repo: id.to_string(),
        revision: opts.revision.clone(),
        cache_dir: opts.cache_dir.clone(),
    }
}

pub(super) fn from_cache(id: &str, opts: &HubOptions, with_weights: bool) -> Option<Found> {
    let cache = Cache::new(opts.cache_dir.clone());
    for name in std::iter::once(id).chain(other_name(id)) {
        let found = |file: &str| cached_file(&cache, name, &opts.revision, file);
        let weights = if with_weights {
            let sharded = || {
                // The index, if every shard it names is cached beside it.
                let index = found(SHARD_INDEX_FILE)?;
                let shards = shard_files(&index).ok()?;
                shards.iter().all(|f| found(f).is_some()).then_some(index)
            };
            match found(WEIGHTS_FILE).or_else(sharded) {
                Some(w) => Some(w),
                None => continue,
            }
        } else {
            None
        };
        if let Some(config) = found(CONFIG_FILE) {
            return Some(Found {
                config,
                weights,
                tokenizer: found(TOKENIZER_FILE),
                source: hub_source(name, opts),
            });
        }
    }
    None
}

pub(super) fn not_cached(id: &str, opts: &HubOptions, with_weights: bool, why: &str) -> Error {
    let mut places = vec![repo_cache_dir(&opts.cache_dir, id)];
    places.extend(other_name(id).map(|other| repo_cache_dir(&opts.cache_dir, other)));
    let places: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
    let (what, verb) = if with_weights {
        (format!("{CONFIG_FILE} and {WEIGHTS_FILE}"), "are")
    } else {
        (CONFIG_FILE.to_string(), "is")
    };
    Error::invalid(format!(
        "model `{id}` (revision `{}`): {what} {verb} not in the Hugging Face cache \
         (looked in {}; cache directory {} from HF_HUB_CACHE / HF_HOME), and {why}",
        opts.revision,
        places.join(" and "),
        opts.cache_dir.display()
    ))
}

/// The download client for `opts`: its cache, endpoint, token and progress bar.
fn api(opts: &HubOptions) -> std::result::Result<hf_hub::api::sync::Api, hf_hub::api::sync::ApiError> {
    let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(Cache::new(opts.cache_dir.clone()))
        .with_progress(opts.progress)
        .with_user_agent("hooklens", env!("CARGO_PKG_VERSION"));
    if let Some(endpoint) = &opts.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    if opts.token.is_some() {
        builder = builder.with_token(opts.token.clone());
    }
    builder.build()
}

pub(super) fn download(id: &str, opts: &HubOptions, with_weights: bool) -> Result<Found> {
    let api = api(opts).map_err(|e| {
        not_cached(
            id,
            opts,
            with_weights,
            &format!("the download client could not start: {e}"),
        )
    })?;
    let remote = api.repo(repo(id, &opts.revision));
    let get = |file: &str| {
        remote.get(file).map_err(|e| {
            not_cached(
                id,
                opts,
                with_weights,
                &format!("downloading {file} from {} failed: {e}", remote.url(file)),
            )
        })
    };
    let config = get(CONFIG_FILE)?;
    let weights = if with_weights {
        match remote.get(WEIGHTS_FILE) {
            Ok(w) => Some(w),
            // Large checkpoints come as shards listed by an index.
            Err(single_err) => match remote.get(SHARD_INDEX_FILE) {
                Ok(index) => {
                    for shard in shard_files(&index)? {
                        get(&shard)?;
                    }
                    Some(index)
                }
                Err(_) => {
                    return Err(not_cached(
                        id,
                        opts,
                        with_weights,
                        &format!(
                        "downloading {WEIGHTS_FILE} from {} failed ({single_err}), and there is no {SHARD_INDEX_FILE}",
                        remote.url(WEIGHTS_FILE)
                    ),
                    ))
                }
            },
        }
    } else {
        None
    };
    // Many repositories have no tokenizer.json; GPT-2's BPE is the fallback then.
    let tokenizer = remote.get(TOKENIZER_FILE).ok();
    Ok(Found {
        config,
        weights,
        tokenizer,
        source: hub_source(id, opts),
    })
}

/// Files of the Hugging Face repository `id` by their paths in it (`folder/cfg.json`),
/// from the cache when all are there (no network at all), else downloaded into it
/// unless `opts.offline`. `what` names the thing in errors (`SAE blocks.0/...`).
pub(crate) fn repo_files(id: &str, files: &[String], opts: &HubOptions, what: &str) -> Result<Vec<PathBuf>> {
    check_repo_id(id)?;
    for f in files {
        if f.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
            return Err(Error::invalid(format!(
                "{what}: `{f}` is not a path inside the repository `{id}`"
            )));
        }
    }
    let cache = Cache::new(opts.cache_dir.clone());
    let cached: Option<Vec<PathBuf>> = files
        .iter()
        .map(|f| cached_file(&cache, id, &opts.revision, f))
        .collect();
    if let Some(found) = cached {
        return Ok(found);
    }
    let missing = |why: String| {
        Error::invalid(format!(
            "{what}: {} of `{id}` (revision `{}`) not in the Hugging Face cache (looked in {}; from HF_HUB_CACHE / HF_HOME), and {why}",
            files.join(", "),
            opts.revision,
            repo_cache_dir(&opts.cache_dir, id).display()
        ))
    };
    if opts.offline {
        return Err(missing("offline mode (HF_HUB_OFFLINE) forbids downloading".into()));
    }
    let api = api(opts).map_err(|e| missing(format!("the download client could not start: {e}")))?;
    let remote = api.repo(repo(id, &opts.revision));
    files
        .iter()
        .map(|f| {
            remote
                .get(f)
                .map_err(|e| missing(format!("downloading {f} from {} failed: {e}", remote.url(f))))
        })
        .collect()
}

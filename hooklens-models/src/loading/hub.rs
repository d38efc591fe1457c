//! Finding a model's files: a local directory, or a Hugging Face id looked up in the
//! local Hugging Face cache and downloaded into it when missing.
//!
//! The cache is the one Python's `huggingface_hub` uses (`models--gpt2/refs/main`,
//! `snapshots/<commit>/...`), so a model Python already downloaded is found without
//! network, and the other way round.

use std::path::Path;

use hooklens_core::{Error, Result};

pub(crate) mod builtin_name;
mod files;
mod names;
mod options;
// The cache and the network: compiled with the `hub` feature only.
#[cfg(feature = "hub")]
mod remote;
#[cfg(all(test, feature = "hub"))]
pub(crate) mod test_cache;

use builtin_name::is_builtin;
#[cfg(all(test, feature = "hub"))]
pub(crate) use files::shard_files;
use files::Found;
pub use files::{ModelFiles, ModelSource, TextFiles, CONFIG_FILE, SHARD_INDEX_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
use names::{check_repo_id, looks_like_path, ALIASES};
pub use options::HubOptions;
#[cfg(feature = "hub")]
pub(crate) use remote::repo_files;
#[cfg(feature = "hub")]
use remote::{download, from_cache, not_cached};

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
}

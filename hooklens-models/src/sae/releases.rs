//! SAELens's directory of named SAE releases (`pretrained_saes.yaml`), shipped as data
//! (`hooklens-models/data/sae_releases.json`, made from a given `sae-lens` version by
//! `scripts/sae_releases.py`): release -> Hugging Face repository, model, conversion
//! function, and per SAE id its folder, L0, variance explained and Neuronpedia id.
//!
//! Names resolve as SAELens's `get_repo_id_and_folder_name` resolves them: a known
//! release maps the SAE id to its repository and folder; an unknown release is taken
//! as a repository id, with the SAE id as the folder.
//!
//! ```
//! use hooklens_models::sae::releases;
//!
//! let found = releases::resolve("gpt2-small-res-jb", "blocks.8.hook_resid_pre")?;
//! assert_eq!(found.repo_id, "jbloom/GPT2-Small-SAEs-Reformatted");
//! assert_eq!(found.folder, "blocks.8.hook_resid_pre");
//! // Not a release SAELens knows: a repository and a folder.
//! let found = releases::resolve("me/my-saes", "layer_3")?;
//! assert_eq!((found.repo_id.as_str(), found.folder.as_str()), ("me/my-saes", "layer_3"));
//! assert!(found.release.is_none());
//! # Ok::<(), hooklens_core::Error>(())
//! ```

use std::sync::OnceLock;

use hooklens_core::{Error, Result};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The shipped directory's text.
const DIRECTORY: &str = include_str!("../../data/sae_releases.json");

/// One SAE of a release.
#[derive(Clone, Debug, Deserialize)]
pub struct ReleaseSae {
    /// The SAE id within its release (`layer_12/width_16k/canonical`).
    pub id: String,
    /// Its folder in the release's repository.
    pub path: String,
    /// Its average number of active features, when SAELens records it.
    #[serde(default)]
    pub l0: Option<f64>,
    /// Its variance explained, when SAELens records it.
    #[serde(default)]
    pub variance_explained: Option<f64>,
    /// Its Neuronpedia id, when it has one.
    #[serde(default)]
    pub neuronpedia: Option<String>,
    /// The factor SAELens scales its inputs by, when the release gives one.
    #[serde(default)]
    pub norm_scaling_factor: Option<f64>,
}

/// A named release: SAEs published together in one repository for one model.
#[derive(Clone, Debug, Deserialize)]
pub struct Release {
    /// The release's name (`gemma-scope-2b-pt-res-canonical`); filled in from the key.
    #[serde(skip)]
    pub name: String,
    /// Its Hugging Face repository.
    pub repo_id: String,
    /// The model it was trained on, as SAELens names it (`gemma-2-2b`, `gpt2-small`).
    pub model: String,
    /// SAELens's conversion function for its files, `None` for SAELens's own format.
    #[serde(default)]
    pub conversion_func: Option<String>,
    /// Config fields SAELens sets over each SAE's `cfg.json`.
    #[serde(default)]
    pub config_overrides: Option<Map<String, Value>>,
    /// Its SAEs, in the directory's order.
    pub saes: Vec<ReleaseSae>,
}

impl Release {
    /// The SAE `sae_id` of this release.
    pub fn sae(&self, sae_id: &str) -> Option<&ReleaseSae> {
        self.saes.iter().find(|s| s.id == sae_id)
    }
}

/// The shipped directory: the `sae-lens` version it comes from and its releases.
#[derive(Debug, Deserialize)]
struct Directory {
    sae_lens_version: String,
    releases: Map<String, Value>,
}

/// The parsed directory, releases sorted by name.
fn directory() -> &'static (String, Vec<Release>) {
    static PARSED: OnceLock<(String, Vec<Release>)> = OnceLock::new();
    PARSED.get_or_init(|| {
        // The file is part of the build: a parse failure is a bug caught by the tests.
        let dir: Directory = serde_json::from_str(DIRECTORY).expect("data/sae_releases.json is valid");
        let releases = dir
            .releases
            .into_iter()
            .map(|(name, v)| {
                let mut r: Release = serde_json::from_value(v).expect("data/sae_releases.json is valid");
                r.name = name;
                r
            })
            .collect();
        (dir.sae_lens_version, releases)
    })
}

/// The conversion functions (a release's `conversion_func`) whose file formats
/// [`Sae::from_release`](super::Sae::from_release) reads, besides SAELens's own format:
/// Gemma Scope (`gemma_2`, `gemma_2_transcoder`), Gemma Scope 2 (`gemma_3`), Llama Scope,
/// dictionary_learning's `ae.pt`, and circuit-tracer's transcoders.
pub const CONVERTED_FORMATS: &[&str] = &[
    "gemma_2",
    "gemma_3",
    "llama_scope",
    "dictionary_learning_1",
    "mwhanna_transcoder",
    "gemma_2_transcoder",
    "mntss_clt_layer_transcoder",
];

/// Whether releases converted with SAELens's `conversion_func` are read (SAELens's own
/// format, `sae_lens`, always is).
pub fn format_supported(conversion_func: &str) -> bool {
    conversion_func == "sae_lens" || CONVERTED_FORMATS.contains(&conversion_func)
}

/// The `sae-lens` version whose directory is shipped.
pub fn sae_lens_version() -> &'static str {
    &directory().0
}

/// Every known release, sorted by name.
pub fn all() -> &'static [Release] {
    &directory().1
}

/// The release named `name`, if SAELens's directory has it.
pub fn release(name: &str) -> Option<&'static Release> {
    all().iter().find(|r| r.name == name)
}

/// Where an SAE named by release and id is, and how its files are read.
#[derive(Clone, Debug)]
pub struct ResolvedSae {
    /// The Hugging Face repository.
    pub repo_id: String,
    /// The folder in it.
    pub folder: String,
    /// The release, when the name was a known one.
    pub release: Option<&'static Release>,
    /// The SAE's entry in the release.
    pub sae: Option<&'static ReleaseSae>,
}

impl ResolvedSae {
    /// SAELens's conversion function for the files, `None` for SAELens's own format.
    pub fn conversion_func(&self) -> Option<&'static str> {
        self.release.and_then(|r| r.conversion_func.as_deref())
    }
}

/// Resolves `release` / `sae_id` as SAELens does: a known release maps `sae_id` to its
/// repository and folder (an id the release lacks is an error listing the closest
/// ones); an unknown release is a repository id, with `sae_id` as the folder.
pub fn resolve(release_name: &str, sae_id: &str) -> Result<ResolvedSae> {
    let Some(release) = release(release_name) else {
        return Ok(ResolvedSae {
            repo_id: release_name.to_string(),
            folder: sae_id.to_string(),
            release: None,
            sae: None,
        });
    };
    let Some(sae) = release.sae(sae_id) else {
        return Err(Error::invalid(format!(
            "SAE id `{sae_id}` is not in release `{release_name}` ({} SAEs; closest: {}); `hooklens saes --release {release_name}` lists them",
            release.saes.len(),
            closest(sae_id, release.saes.iter().map(|s| s.id.as_str()), 3).join(", ")
        )));
    };
    Ok(ResolvedSae {
        repo_id: release.repo_id.clone(),
        folder: sae.path.clone(),
        release: Some(release),
        sae: Some(sae),
    })
}

/// The `n` names of `names` closest to `want` (fewest edits), closest first.
fn closest<'a>(want: &str, names: impl Iterator<Item = &'a str>, n: usize) -> Vec<&'a str> {
    let mut scored: Vec<(usize, &str)> = names.map(|s| (edit_distance(want, s), s)).collect();
    scored.sort();
    scored.into_iter().take(n).map(|(_, s)| s).collect()
}

/// Levenshtein distance between `a` and `b`, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_release_and_sae_id_resolves_to_its_repository_and_folder() {
        assert!(all().len() >= 100, "the directory holds SAELens's releases");
        let mut n = 0;
        for r in all() {
            assert!(!r.repo_id.is_empty() && !r.model.is_empty(), "{}", r.name);
            assert!(!r.saes.is_empty(), "{}", r.name);
            for s in &r.saes {
                let found = resolve(&r.name, &s.id).unwrap();
                assert_eq!(found.repo_id, r.repo_id, "{} {}", r.name, s.id);
                // The first entry of a repeated id is the one SAELens's dict keeps last,
                // but every repeat in the file names the same folder.
                assert_eq!(found.folder, r.sae(&s.id).unwrap().path);
                assert_eq!(found.conversion_func(), r.conversion_func.as_deref());
                n += 1;
            }
        }
        assert!(n > 10_000, "{n} SAEs");
        assert!(sae_lens_version().starts_with('6'));
    }

    #[test]
    fn unknown_ids_are_errors_naming_the_closest_and_unknown_releases_are_repositories() {
        let err = resolve("gpt2-small-res-jb", "blocks.8.hook_resid_pr")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not in release `gpt2-small-res-jb`"), "{err}");
        assert!(err.contains("blocks.8.hook_resid_pre"), "{err}");
        let found = resolve("org/repo", "a/b").unwrap();
        assert_eq!((found.repo_id.as_str(), found.folder.as_str()), ("org/repo", "a/b"));
        assert_eq!(found.conversion_func(), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn the_shipped_file_is_what_sae_lens_reads() {
        // Spot checks of the published directory: Gemma Scope's canonical release.
        let r = release("gemma-scope-2b-pt-res-canonical").expect("Gemma Scope is listed");
        assert_eq!(r.repo_id, "google/gemma-scope-2b-pt-res");
        assert_eq!(r.conversion_func.as_deref(), Some("gemma_2"));
        let s = r.sae("layer_12/width_16k/canonical").expect("its layer 12 SAE");
        assert!(s.path.starts_with("layer_12/width_16k/average_l0_"), "{}", s.path);
    }
}

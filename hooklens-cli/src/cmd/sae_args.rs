//! The flags that choose SAEs to splice into the model.

use std::path::Path;

use hooklens_models::sae::{releases, Sae, SaeSet};
use hooklens_models::HubOptions;

use crate::error::{CliError, CliResult};

/// `--sae` (repeatable) and `--sae-error-term`.
#[derive(clap::Args, Debug, Default)]
pub struct SaeArgs {
    /// An SAE or transcoder to splice in: a SAELens folder (cfg.json and
    /// sae_weights.safetensors), `RELEASE/SAE_ID` for a release of SAELens's directory
    /// (`gpt2-small-res-jb/blocks.8.hook_resid_pre`; `hooklens saes` lists them), or
    /// `REPO_ID:FOLDER` on the Hugging Face hub; hub files are cached as models are
    /// (HF_HUB_OFFLINE=1 never downloads). A folder that exists wins over a release of
    /// the same name. Repeat for several, one per hook point. It replaces its hook point
    /// (`cfg.json`'s hook_name; a transcoder's hook_name_out), whose place its own points
    /// take: `<hook>.hook_sae_acts_post`, ...
    #[arg(long = "sae", value_name = "DIR|RELEASE/SAE_ID|REPO:FOLDER")]
    pub saes: Vec<String>,
    /// Splice the SAEs with their error term (SAELens's use_error_term): the model's
    /// output is unchanged, and `<hook>.hook_sae_error` holds what each reconstruction misses.
    #[arg(long, requires = "saes")]
    pub sae_error_term: bool,
}

impl SaeArgs {
    /// The SAEs, loaded onto `device`, in the order given.
    pub fn load(&self, device: &candle_core::Device) -> CliResult<Vec<Sae>> {
        self.saes.iter().map(|spec| load_one(spec, device)).collect()
    }

    /// The files the SAEs are read from, which an output must not replace: a folder's
    /// `cfg.json` and `sae_weights.safetensors`, and for `REPO_ID:FOLDER` the same files
    /// in the Hugging Face cache, for `RELEASE/SAE_ID` those of the release's format
    /// (looked up there only, never downloaded: call after [`SaeArgs::load`], which has
    /// put them there).
    pub fn files(&self) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for spec in &self.saes {
            let path = Path::new(spec);
            if path.is_dir() {
                files.push(path.join(hooklens_models::sae::SAE_CFG_FILE));
                files.push(path.join(hooklens_models::sae::SAE_WEIGHTS_FILE));
            } else if let Some((repo, folder)) = hub_spec(spec) {
                let hub = HubOptions::from_env().offline(true);
                files.extend(Sae::pretrained_files(repo, folder, &hub).unwrap_or_default());
            } else if let Some((release, sae_id)) = release_spec(spec) {
                let hub = HubOptions::from_env().offline(true);
                files.extend(Sae::release_files(release, sae_id, &hub).unwrap_or_default());
            }
        }
        files
    }

    /// The SAEs as a set to splice in, with or without their error terms.
    pub fn set(&self, device: &candle_core::Device) -> CliResult<SaeSet> {
        let saes = self.load(device)?;
        Ok(SaeSet::from(&saes).use_error_term(self.sae_error_term))
    }
}

/// A `--names` pattern that names the point a spliced SAE replaces: that point neither
/// fires nor is cached while the SAE is there, so the error names the SAE's own points.
pub fn check_names_against_saes(saes: &SaeSet, patterns: &[String]) -> CliResult<()> {
    for p in patterns {
        if let Some((sae, error_term)) = saes.iter().find(|(sae, _)| sae.cfg().spliced_at() == p) {
            let error = if error_term { ", `.hook_sae_error`" } else { "" };
            return Err(CliError(format!(
                "--names {p}: the SAE spliced at this hook point (--sae, hook_name `{}`) replaces it: the point \
                 neither fires nor is cached while the SAE is there. Its own points are `{p}.hook_sae_input`, \
                 `.hook_sae_acts_pre`, `.hook_sae_acts_post`, `.hook_sae_recons`{error}, `.hook_sae_output`: \
                 give --names '{p}.hook_sae_*' (the model's value there is `{p}.hook_sae_input`)",
                sae.cfg().hook_name
            )));
        }
    }
    Ok(())
}

/// One `--sae` value: a directory, else `REPO_ID:FOLDER`. A folder's files are checked
/// before they are read: regular files (a FIFO would hang the read, a device would be
/// read until memory runs out), and a `cfg.json` of a config's size.
fn load_one(spec: &str, device: &candle_core::Device) -> CliResult<Sae> {
    use hooklens_models::sae::{SAE_CFG_FILE, SAE_WEIGHTS_FILE};
    let path = Path::new(spec);
    if path.is_dir() {
        let cfg = path.join(SAE_CFG_FILE);
        let weights = path.join(SAE_WEIGHTS_FILE);
        crate::output::check_input_file("--sae", &cfg, Some(crate::output::MAX_CONFIG_BYTES))?;
        crate::output::check_input_file("--sae", &weights, None)?;
        return Ok(Sae::from_files(&cfg, &weights, device)?);
    }
    if let Some((scheme, _)) = spec.split_once("://") {
        return Err(CliError(format!(
            "--sae {spec}: a {scheme}:// URL is not read: give a folder (cfg.json and sae_weights.safetensors) \
             or REPO_ID:FOLDER on the Hugging Face hub (e.g. jbloom/GPT2-Small-SAEs-Reformatted:blocks.0.hook_resid_pre)"
        )));
    }
    if let Some((repo, folder)) = hub_spec(spec) {
        return Ok(Sae::from_pretrained(repo, folder, &HubOptions::from_env(), device)?);
    }
    match release_spec(spec) {
        Some((release, sae_id)) => Sae::from_release(release, sae_id, &HubOptions::from_env(), device)
            .map_err(|e| CliError(format!("--sae {spec}: {e}"))),
        None => Err(CliError(format!(
            "--sae {spec}: no such directory, and `{}` is not a release of SAELens's directory \
             (an SAE is a folder holding cfg.json and sae_weights.safetensors, RELEASE/SAE_ID for a \
             release `hooklens saes` lists, or REPO_ID:FOLDER on the Hugging Face hub)",
            spec.split('/').next().unwrap_or(spec)
        ))),
    }
}

/// `(RELEASE, SAE_ID)` of an `--sae` value whose first `/`-separated part is a release
/// of SAELens's directory (release names have no `/`; SAE ids may).
fn release_spec(spec: &str) -> Option<(&str, &str)> {
    let (release, sae_id) = spec.split_once('/')?;
    (releases::release(release).is_some() && !sae_id.is_empty()).then_some((release, sae_id))
}

/// `(REPO_ID, FOLDER)` of an `--sae` value that names no folder here and is no URL.
fn hub_spec(spec: &str) -> Option<(&str, &str)> {
    if spec.contains("://") || spec.starts_with(['.', '/', '~']) {
        return None;
    }
    spec.split_once(':').filter(|(repo, _)| !repo.is_empty())
}

//! SAEs from the Hugging Face hub, by repository id and folder, through the same cache
//! and offline mode as models.

use candle_core::Device;
use hooklens_core::{Error, Result};

use super::autoencoder::{Sae, SAE_CFG_FILE, SAE_WEIGHTS_FILE};
use super::config::SaeConfig;
use super::releases;
use crate::loading::hub::{repo_files, HubOptions};

impl Sae {
    /// Loads the SAE in folder `path` of the Hugging Face repository `repo_id` (SAELens's
    /// `SAE.from_pretrained` with a repository id as the release; `path` `""` for an SAE at
    /// the repository's root): its `cfg.json` and `sae_weights.safetensors` come from the
    /// local Hugging Face cache when there (no network at all), else are downloaded into
    /// it, unless `hub.offline` (`HF_HUB_OFFLINE`). For SAELens's named releases, see
    /// [`Sae::from_release`].
    pub fn from_pretrained(repo_id: &str, path: &str, hub: &HubOptions, device: &Device) -> Result<Self> {
        let found = Self::pretrained_files(repo_id, path, hub)?;
        Self::from_files(&found[0], &found[1], device)
    }

    /// The local files (`cfg.json`, `sae_weights.safetensors`) that
    /// [`Sae::from_pretrained`] reads for the same arguments: from the cache, else
    /// downloaded into it unless `hub.offline`. With `hub.offline`, it tells which cached
    /// files an SAE given by repository was read from (what no output may replace).
    pub fn pretrained_files(repo_id: &str, path: &str, hub: &HubOptions) -> Result<Vec<std::path::PathBuf>> {
        let folder = path.trim_matches('/');
        let in_repo = |file: &str| {
            if folder.is_empty() {
                file.to_string()
            } else {
                format!("{folder}/{file}")
            }
        };
        let files = [in_repo(SAE_CFG_FILE), in_repo(SAE_WEIGHTS_FILE)];
        repo_files(repo_id, &files, hub, &format!("SAE `{repo_id}` folder `{folder}`"))
    }

    /// Loads SAE `sae_id` of SAELens release `release` (SAELens's
    /// `SAE.from_pretrained(release=.., sae_id=..)`): a release of SAELens's directory
    /// ([`releases`](super::releases)) maps the id to its repository and folder and sets
    /// the release's `config_overrides` over the SAE's `cfg.json`; any other release
    /// name is a repository id, with `sae_id` as the folder. Files come through the
    /// Hugging Face cache as for [`Sae::from_pretrained`]. A release published in another
    /// format than SAELens's (a `conversion_func`) is an error naming the function.
    ///
    /// ```no_run
    /// # fn main() -> hooklens_core::Result<()> {
    /// use hooklens_models::{sae::Sae, HubOptions};
    /// let sae = Sae::from_release(
    ///     "gpt2-small-res-jb",
    ///     "blocks.8.hook_resid_pre",
    ///     &HubOptions::from_env(),
    ///     &candle_core::Device::Cpu,
    /// )?;
    /// assert_eq!(sae.cfg().hook_name, "blocks.8.hook_resid_pre");
    /// # Ok(()) }
    /// ```
    pub fn from_release(release: &str, sae_id: &str, hub: &HubOptions, device: &Device) -> Result<Self> {
        let found = releases::resolve(release, sae_id)?;
        if let Some(func) = found.conversion_func() {
            return Err(Error::invalid(format!(
                "release `{release}` is published in another format than SAELens's (SAELens converts it with `{func}`), \
                 which hooklens does not read yet; releases in SAELens's own format load (`hooklens saes` marks them)"
            )));
        }
        let files = Self::pretrained_files(&found.repo_id, &found.folder, hub)?;
        let overrides = found.release.and_then(|r| r.config_overrides.as_ref());
        let text = crate::loading::read_bounded(&files[0], crate::loading::MAX_CONFIG_BYTES)?;
        let cfg = SaeConfig::from_json_str_with(&text, &files[0], overrides)?;
        Self::from_config_and_weights(cfg, &files[1], device)
    }
}

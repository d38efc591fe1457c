//! SAEs from the Hugging Face hub, by repository id and folder, through the same cache
//! and offline mode as models.

use candle_core::Device;
use hooklens_core::Result;

use super::autoencoder::{Sae, SAE_CFG_FILE, SAE_WEIGHTS_FILE};
use crate::loading::hub::{repo_files, HubOptions};

impl Sae {
    /// Loads the SAE in folder `path` of the Hugging Face repository `repo_id` (SAELens's
    /// `SAE.from_pretrained` with a repository id as the release; `path` `""` for an SAE at
    /// the repository's root): its `cfg.json` and `sae_weights.safetensors` come from the
    /// local Hugging Face cache when there (no network at all), else are downloaded into
    /// it, unless `hub.offline` (`HF_HUB_OFFLINE`). Named releases of SAELens's
    /// `pretrained_saes.yaml` are not resolved: give their repository and folder.
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
}

//! SAEs from the Hugging Face hub, by repository id and folder, through the same cache
//! and offline mode as models.

use candle_core::Device;
use hooklens_core::{Error, Result};

use super::autoencoder::{Sae, SAE_CFG_FILE, SAE_WEIGHTS_FILE};
use super::config::SaeConfig;
use super::{formats, releases};
use crate::loading::hub::{repo_files, HubOptions};
use serde_json::{Map, Value};

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

    /// The local files [`Sae::from_release`] reads for the same release and id, looked up
    /// in the cache only (never downloaded; files not cached are left out): SAELens's
    /// `cfg.json` and `sae_weights.safetensors`, or the files of the release's converted
    /// format. It tells which cached files no output may replace.
    pub fn release_files(release: &str, sae_id: &str, hub: &HubOptions) -> Result<Vec<std::path::PathBuf>> {
        let found = releases::resolve(release, sae_id)?;
        let offline = hub.clone().offline(true);
        let Some(func) = found.conversion_func() else {
            return Ok(Self::pretrained_files(&found.repo_id, &found.folder, &offline).unwrap_or_default());
        };
        let what = format!("SAE `{}` folder `{}`", found.repo_id, found.folder);
        Ok(formats::repo_paths(func, &found.folder)
            .into_iter()
            .filter_map(|p| repo_files(&found.repo_id, &[p], &offline, &what).ok())
            .flatten()
            .collect())
    }

    /// Loads SAE `sae_id` of SAELens release `release` (SAELens's
    /// `SAE.from_pretrained(release=.., sae_id=..)`): a release of SAELens's directory
    /// ([`releases`](super::releases)) maps the id to its repository and folder and sets
    /// the release's `config_overrides` over the SAE's `cfg.json`; any other release
    /// name is a repository id, with `sae_id` as the folder. Files come through the
    /// Hugging Face cache as for [`Sae::from_pretrained`]. Releases published in another
    /// format than SAELens's are read as SAELens's conversion function (the release's
    /// `conversion_func`) reads them, for the formats
    /// [`releases::format_supported`](super::releases::format_supported) names; any
    /// other is an error naming the function. As in SAELens, an SAE whose config asks for
    /// `expected_average_only_in` normalisation gets the release's `norm_scaling_factor`
    /// folded into its weights.
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
        Self::from_release_with(release, sae_id, None, hub, device)
    }

    /// [`Sae::from_release`] with `overrides` set over the SAE's config after the
    /// release's own `config_overrides`, as SAELens passes its loaders their
    /// `cfg_overrides` (a config getter that infers sizes from names, as Gemma Scope's
    /// does, takes `d_in` / `d_sae` from them too).
    pub fn from_release_with(
        release: &str,
        sae_id: &str,
        overrides: Option<&Map<String, Value>>,
        hub: &HubOptions,
        device: &Device,
    ) -> Result<Self> {
        let found = releases::resolve(release, sae_id)?;
        let mut all = found
            .release
            .and_then(|r| r.config_overrides.clone())
            .unwrap_or_default();
        all.extend(overrides.into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())));
        let norm_scaling_factor = found.sae.and_then(|s| s.norm_scaling_factor);
        if let Some(func) = found.conversion_func() {
            let src = formats::Source {
                repo_id: &found.repo_id,
                folder: &found.folder,
                overrides: &all,
                norm_scaling_factor,
                hub,
                device,
            };
            return formats::load(func, &src).map_err(|e| match e {
                Error::Invalid(msg) => Error::invalid(format!("release `{release}` SAE `{sae_id}`: {msg}")),
                other => other,
            });
        }
        let files = Self::pretrained_files(&found.repo_id, &found.folder, hub)?;
        let text = crate::loading::read_bounded(&files[0], crate::loading::MAX_CONFIG_BYTES)?;
        let cfg = SaeConfig::from_json_str_with(&text, &files[0], Some(&all))?;
        let sae = Self::from_config_and_weights(cfg, &files[1], device)?;
        // SAELens folds the release's norm_scaling_factor into any SAE whose config asks
        // for `expected_average_only_in` (SaeConfig reads that as none): only then is the
        // one field looked up again, without holding the rest of the file.
        let Some(s) = norm_scaling_factor else {
            return Ok(sae);
        };
        let keep = |k: &str| k == "normalize_activations";
        let known = crate::loading::KnownFields {
            keep: &keep,
            nested: &[],
        };
        let asks = match known.parse(&text) {
            Ok(Some(mut obj)) => {
                obj.extend(all);
                formats::expects_norm_folding(&obj)
            }
            _ => false,
        };
        if asks {
            formats::fold_norm_scaling(&sae, s)
        } else {
            Ok(sae)
        }
    }
}

#[cfg(all(test, feature = "hub"))]
mod tests {
    use std::path::Path;

    use hooklens_testutil::hub_standin::{skipped_for_proxy, StandIn, COMMIT};
    use hooklens_testutil::TempDir;

    use super::*;
    use crate::loading::hub::test_cache::{named, offline};

    #[test]
    fn saes_download_by_repo_and_folder_then_work_offline() {
        if skipped_for_proxy() {
            return;
        }
        let sae_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/saes/saes/topk");
        let tmp = TempDir::new("sae-download");
        let files = ["cfg.json", "sae_weights.safetensors"];
        let server = StandIn::serve(named(&sae_dir, &files, "blocks.1.attn.hook_z/"));
        let mut opts = HubOptions::from_vars(|_| None)
            .cache_dir(tmp.path("").as_path())
            .progress(false);
        opts.endpoint = Some(server.endpoint.clone());
        let dev = candle_core::Device::Cpu;
        let got = crate::sae::Sae::from_pretrained("org/tiny-saes", "blocks.1.attn.hook_z", &opts, &dev);
        let served = server.finish().len();
        let got = got.unwrap();
        assert_eq!(served, 4, "metadata and body of both files");
        let local = crate::sae::Sae::from_dir(&sae_dir, &dev).unwrap();
        assert_eq!(got.cfg(), local.cfg());
        let diff = hooklens_testutil::max_abs_diff(got.w_dec(), local.w_dec());
        assert_eq!(diff, 0.0);
        let snap = tmp
            .path("")
            .join("models--org--tiny-saes/snapshots")
            .join(COMMIT)
            .join("blocks.1.attn.hook_z");
        assert!(snap.join("cfg.json").is_file() && snap.join("sae_weights.safetensors").is_file());
        // Cached now: offline works, and another folder offline is an error naming it.
        let again = crate::sae::Sae::from_pretrained(
            "org/tiny-saes",
            "/blocks.1.attn.hook_z/",
            &offline(tmp.path("").as_path()),
            &dev,
        );
        assert_eq!(again.unwrap().cfg(), local.cfg());
        let err = crate::sae::Sae::from_pretrained(
            "org/tiny-saes",
            "blocks.0.hook_resid_pre",
            &offline(tmp.path("").as_path()),
            &dev,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("blocks.0.hook_resid_pre/cfg.json") && err.contains("HF_HUB_OFFLINE"),
            "{err}"
        );
        let err = crate::sae::Sae::from_pretrained("org/tiny-saes", "../x", &offline(tmp.path("").as_path()), &dev)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a path inside"), "{err}");
    }
}

//! `Sae::from_release`: SAELens's named releases resolved through the shipped directory
//! and read from the Hugging Face hub with no network (a stand-in on loopback serves the
//! reference SAE under a release's repository and folder).
#![cfg(feature = "hub")]

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use hooklens_models::sae::{releases, Normalization, Sae};
use hooklens_models::HubOptions;
use hooklens_testutil::hub_standin::{files_of, refused_endpoint, skipped_for_proxy, StandIn};
use hooklens_testutil::{testdata, TempDir};

fn standard_sae() -> PathBuf {
    testdata().join("saes/saes/standard")
}

/// Hub options with `cache` as the cache, downloading from `endpoint`.
fn hub(cache: &Path, endpoint: &str) -> HubOptions {
    let mut opts = HubOptions::from_env()
        .cache_dir(cache)
        .offline(false)
        .progress(false)
        .revision("main");
    opts.endpoint = Some(endpoint.to_string());
    opts.token = None;
    opts
}

fn same_outputs(a: &Sae, b: &Sae) -> f32 {
    let x = Tensor::randn(0f32, 1.0, (3, a.cfg().d_in), &Device::Cpu).unwrap();
    let d = (a.forward(&x).unwrap() - b.forward(&x).unwrap()).unwrap();
    d.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn a_named_release_reads_its_repository_folder_with_its_config_overrides() {
    if skipped_for_proxy() {
        return;
    }
    // SAELens's `mistral-7b-res-wg` sets `normalize_activations: constant_norm_rescale`
    // over every SAE's cfg.json; the reference SAE's own file says "none".
    let release = releases::release("mistral-7b-res-wg").expect("a release of the shipped directory");
    let entry = release.sae("blocks.8.hook_resid_pre").unwrap();
    let tmp = TempDir::new("sae-release");
    let server = StandIn::serve(files_of(&standard_sae(), &format!("{}/", entry.path)));
    let got = Sae::from_release(
        "mistral-7b-res-wg",
        "blocks.8.hook_resid_pre",
        &hub(&tmp.path("cache"), &server.endpoint),
        &Device::Cpu,
    );
    let asked = server.finish();
    let got = got.unwrap();
    let prefix = format!("/{}/resolve/main/{}/", release.repo_id, entry.path);
    assert!(
        !asked.is_empty() && asked.iter().all(|p| p.starts_with(&prefix)),
        "{asked:?}"
    );
    let plain = Sae::from_dir(standard_sae(), &Device::Cpu).unwrap();
    assert_eq!(plain.cfg().normalize_activations, Normalization::None);
    assert_eq!(got.cfg().normalize_activations, Normalization::ConstantNormRescale);
    let mut want = plain.cfg().clone();
    want.normalize_activations = Normalization::ConstantNormRescale;
    assert_eq!(got.cfg(), &want, "only the override differs");
}

#[test]
fn an_unknown_release_is_a_repository_and_the_sae_id_its_folder() {
    if skipped_for_proxy() {
        return;
    }
    let tmp = TempDir::new("sae-release-repo");
    let server = StandIn::serve(files_of(&standard_sae(), "deep/folder/"));
    let got = Sae::from_release(
        "someone/their-saes",
        "deep/folder",
        &hub(&tmp.path("cache"), &server.endpoint),
        &Device::Cpu,
    );
    let asked = server.finish();
    let got = got.unwrap();
    assert!(
        asked
            .iter()
            .all(|p| p.starts_with("/someone/their-saes/resolve/main/deep/folder/")),
        "{asked:?}"
    );
    let plain = Sae::from_dir(standard_sae(), &Device::Cpu).unwrap();
    assert_eq!(got.cfg(), plain.cfg());
    assert_eq!(same_outputs(&got, &plain), 0.0);
}

#[test]
fn releases_in_other_formats_and_unknown_ids_are_errors_before_any_request() {
    let tmp = TempDir::new("sae-release-refused");
    // A refused endpoint: an error here must come before any request.
    let hub = hub(&tmp.path("cache"), &refused_endpoint());
    let refused = |release: &str, id: &str| match Sae::from_release(release, id, &hub, &Device::Cpu) {
        Ok(_) => panic!("{release} {id}: loaded"),
        Err(e) => e.to_string(),
    };
    // Goodfire's .pth is a format hooklens does not read (tests/sae_formats.rs reads those it does).
    let err = refused("goodfire-llama-3.1-8b-instruct", "layer_19");
    assert!(
        err.contains("`goodfire`") && err.contains("goodfire-llama-3.1-8b-instruct"),
        "{err}"
    );
    let err = refused("gpt2-small-res-jb", "blocks.99.hook_resid_pre");
    assert!(err.contains("not in release `gpt2-small-res-jb`"), "{err}");
    assert!(err.contains("blocks.") && err.contains("hook_resid_pre"), "{err}");
}

#[test]
fn a_release_norm_scaling_factor_is_folded_when_the_config_expects_average_norm() {
    if skipped_for_proxy() {
        return;
    }
    // SAELens folds the release's norm_scaling_factor into any SAE whose config says
    // `expected_average_only_in`, SAELens's own format included: W_enc * s, W_dec / s,
    // b_dec / s. `gpt2-small-mlp-tm` records one per SAE.
    let release = releases::release("gpt2-small-mlp-tm").unwrap();
    let entry = release.sae("blocks.1.hook_mlp_out").unwrap();
    let s = entry.norm_scaling_factor.expect("a norm_scaling_factor") as f32;
    let tmp = TempDir::new("sae-release-fold");
    let plain = Sae::from_dir(standard_sae(), &Device::Cpu).unwrap();
    let cfg = std::fs::read_to_string(standard_sae().join("cfg.json")).unwrap();
    for (norm, folded) in [("expected_average_only_in", true), ("none", false)] {
        let dir = tmp.path(norm);
        std::fs::create_dir_all(&dir).unwrap();
        let text = cfg.replace(
            "\"normalize_activations\": \"none\"",
            &format!("\"normalize_activations\": \"{norm}\""),
        );
        assert!(text.contains(norm));
        std::fs::write(dir.join("cfg.json"), text).unwrap();
        std::fs::copy(
            standard_sae().join("sae_weights.safetensors"),
            dir.join("sae_weights.safetensors"),
        )
        .unwrap();
        let server = StandIn::serve(files_of(&dir, &format!("{}/", entry.path)));
        let got = Sae::from_release(
            &release.name,
            &entry.id,
            &hub(&tmp.path(&format!("cache-{norm}")), &server.endpoint),
            &Device::Cpu,
        );
        server.finish();
        let got = got.unwrap();
        assert_eq!(got.cfg().normalize_activations, Normalization::None);
        let k = if folded { s } else { 1.0 };
        let (g, p) = (got.weights(), plain.weights());
        let diff = |a: &Tensor, b: &Tensor| hooklens_testutil::max_abs_diff(a, b);
        assert!(diff(&g.w_enc, &(&p.w_enc * k as f64).unwrap()) < 1e-5, "{norm}: W_enc");
        assert!(diff(&g.w_dec, &(&p.w_dec / k as f64).unwrap()) < 1e-5, "{norm}: W_dec");
        assert!(diff(&g.b_dec, &(&p.b_dec / k as f64).unwrap()) < 1e-5, "{norm}: b_dec");
        assert_eq!(
            diff(g.b_enc.as_ref().unwrap(), p.b_enc.as_ref().unwrap()),
            0.0,
            "{norm}: b_enc"
        );
    }
}

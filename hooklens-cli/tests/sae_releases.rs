//! `hooklens saes` (SAELens's directory of named releases) and `--sae RELEASE/SAE_ID`,
//! read from a Hugging Face cache laid out as `huggingface_hub` lays it out.

mod common;

use common::*;
use hooklens_testutil::hub_standin::{cache_repo, files_of};

#[test]
fn saes_lists_releases_by_model_and_one_releases_ids() {
    let all = ok_stdout(hooklens(&["saes"]));
    let rows: Vec<&str> = all.lines().skip(2).collect();
    assert!(rows.len() > 100, "{} releases", rows.len());
    let jb = rows
        .iter()
        .find(|r| r.starts_with("gpt2-small-res-jb\t"))
        .expect("Joseph Bloom's GPT-2 release is listed");
    assert!(jb.contains("\tgpt2-small\t") && jb.contains("\tSAELens\t"), "{jb}");
    let scope = rows
        .iter()
        .find(|r| r.starts_with("gemma-scope-2b-pt-res-canonical\t"))
        .unwrap();
    assert!(scope.contains("\tgemma_2 (read)\t"), "{scope}");
    let goodfire = rows
        .iter()
        .find(|r| r.starts_with("goodfire-llama-3.1-8b-instruct\t"))
        .unwrap();
    assert!(goodfire.contains("goodfire (not read yet)"), "{goodfire}");

    let gpt2 = ok_stdout(hooklens(&["saes", "--model", "gpt2-small"]));
    let n = gpt2.lines().skip(2).count();
    assert!(n >= 10 && n < rows.len(), "{n}");
    assert!(
        gpt2.lines().skip(2).all(|r| r.split('\t').nth(1) == Some("gpt2-small")),
        "{gpt2}"
    );

    let ids = ok_stdout(hooklens(&["saes", "--release", "gpt2-small-res-jb"]));
    assert!(ids.contains("--sae gpt2-small-res-jb/SAE_ID"), "{ids}");
    let row = ids
        .lines()
        .find(|l| l.starts_with("blocks.8.hook_resid_pre\t"))
        .expect("layer 8 listed");
    let cols: Vec<&str> = row.split('\t').collect();
    assert!(cols[1].parse::<f64>().unwrap() > 1.0, "an L0: {row}");
    assert_eq!(cols[3], "blocks.8.hook_resid_pre");

    fails(hooklens(&["saes", "--release", "gpt2-small-res-j"]), "not a release");
    fails(hooklens(&["saes", "--model", "no-such-model"]), "no release");
}

#[test]
fn sae_given_as_release_and_id_splices_the_releases_folder() {
    let tmp = TempDir::new("sae-release-cli");
    let cache = tmp.path("cache");
    let sae = root().join("testdata/saes/saes/standard");
    // `mistral-7b-res-wg`'s folder for this id, holding the reference SAE; its release
    // sets normalize_activations over the file's "none".
    cache_repo(
        &cache,
        "JoshEngels/Mistral-7B-Residual-Stream-SAEs",
        &files_of(&sae, "mistral_7b_layer_8/"),
    );
    let cache_args = |sae: &str, out: &std::path::Path| {
        let mut cmd = offline_command(&[
            "cache".as_ref(),
            "--no-processing".as_ref(),
            "--model".as_ref(),
            tiny_model().as_os_str(),
            "--tokens".as_ref(),
            tiny_tokens().as_os_str(),
            "--sae".as_ref(),
            sae.as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ]);
        cmd.env("HF_HUB_CACHE", &cache);
        cmd.output().unwrap()
    };
    let by_release = tmp.path("release.safetensors");
    ok_stdout(cache_args("mistral-7b-res-wg/blocks.8.hook_resid_pre", &by_release));
    let by_folder = tmp.path("folder.safetensors");
    ok_stdout(cache_args(sae.to_str().unwrap(), &by_folder));
    let (a, b) = (load(&by_release), load(&by_folder));
    let name = "blocks.0.hook_resid_pre.hook_sae_input";
    assert_eq!(a[name].dims(), b[name].dims());
    // The override rescales each position to norm sqrt(d_in) before encoding, so the
    // features differ from the folder's, whose own config says "none".
    let acts = "blocks.0.hook_resid_pre.hook_sae_acts_pre";
    let diff = (&a[acts] - &b[acts]).unwrap().abs().unwrap().max_all().unwrap();
    assert!(
        diff.to_scalar::<f32>().unwrap() > 1e-3,
        "the release's override was applied"
    );

    // An id the release lacks; a first part that is no release and no folder.
    let err = fails(
        cache_args("mistral-7b-res-wg/blocks.9.hook_resid_pre", &tmp.path("x.safetensors")),
        "not in release `mistral-7b-res-wg`",
    );
    assert!(err.contains("blocks.8.hook_resid_pre"), "closest ids named: {err}");
    fails(
        cache_args("not-a-release/blocks.8", &tmp.path("y.safetensors")),
        "`not-a-release` is not a release",
    );
    // A format hooklens does not read: named, before any download.
    fails(
        cache_args("goodfire-llama-3.1-8b-instruct/layer_19", &tmp.path("z.safetensors")),
        "`goodfire`",
    );
}

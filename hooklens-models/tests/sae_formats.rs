//! `Sae::from_release` on releases published in other formats than SAELens's: each
//! `testdata/sae-formats/<case>/` (made by `scripts/sae_formats.py`) holds a tiny file
//! set in one format, laid out as its repository (`repo/`), and what SAELens 6.54.12's
//! own conversion made of it (`case.json`'s config, `expected.safetensors`' weights and
//! encode / decode / forward of a fixed input). A loopback stand-in for the hub serves
//! `repo/` under the real release's repository; the SAE hooklens reads must match.
#![cfg(feature = "hub")]

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use hooklens_models::sae::{releases, Architecture, Normalization, Sae};
use hooklens_models::HubOptions;
use hooklens_testutil::hub_standin::{skipped_for_proxy, StandIn};
use hooklens_testutil::{assert_close, load_tensors, TempDir};
use serde_json::{Map, Value};

/// The cases: `testdata/sae-formats/`, beside this crate.
fn cases() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/sae-formats")
}

/// SAELens computes in f32 as hooklens does; only summation order differs.
const TOLERANCE: f32 = 1e-5;

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

/// Every file under `dir`, as `(path relative to dir, path)`.
fn files_under(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let inner = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        if entry.path().is_dir() {
            files_under(&entry.path(), &inner, out);
        } else {
            out.push((inner, entry.path()));
        }
    }
}

/// A field of SAELens's config: in `metadata` (hooks, model) or at the top level.
fn field<'a>(cfg: &'a Value, key: &str) -> &'a Value {
    let meta = &cfg["metadata"][key];
    if meta.is_null() {
        &cfg[key]
    } else {
        meta
    }
}

/// Case `name`'s `case.json`.
fn case_of(name: &str) -> Value {
    let text = std::fs::read_to_string(cases().join(name).join("case.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Loads case `name`'s release through the stand-in serving its `repo/`, with
/// `replaced` files (path in the repository, source) served instead of the case's.
fn load_case(name: &str, replaced: &[(&str, PathBuf)]) -> hooklens_core::Result<Sae> {
    let dir = cases().join(name);
    let case = case_of(name);
    let (release, sae_id) = (case["release"].as_str().unwrap(), case["sae_id"].as_str().unwrap());
    let entry = releases::release(release).expect("a release of the shipped directory");
    assert_eq!(entry.repo_id, case["repo_id"].as_str().unwrap());
    let func = entry.conversion_func.as_deref().expect("a converted release");
    assert!(releases::format_supported(func), "{func}");

    let mut files = Vec::new();
    files_under(&dir.join("repo"), "", &mut files);
    for (path, source) in replaced {
        files.retain(|(p, _)| p != path);
        files.push((path.to_string(), source.clone()));
    }
    let tmp = TempDir::new(&format!("sae-format-{name}"));
    let server = StandIn::serve(files.clone());
    let extra: Map<String, Value> = case["extra_overrides"].as_object().cloned().unwrap_or_default();
    let got = Sae::from_release_with(
        release,
        sae_id,
        Some(&extra),
        &hub(&tmp.path("cache"), &server.endpoint),
        &Device::Cpu,
    );
    let asked = server.finish();
    let prefix = format!("/{}/resolve/main/", entry.repo_id);
    assert!(asked.iter().all(|p| p.starts_with(&prefix)), "{asked:?}");
    if got.is_ok() {
        // Every file read is one release_files names (what outputs must not replace).
        let offline = hub(&tmp.path("cache"), &server_gone()).offline(true);
        let listed = Sae::release_files(release, sae_id, &offline).unwrap();
        for (path, _) in files
            .iter()
            .filter(|(p, _)| asked.iter().any(|a| a.ends_with(&format!("/{p}"))))
        {
            assert!(
                listed
                    .iter()
                    .any(|l| l.to_string_lossy().ends_with(&format!("/{path}"))),
                "{name}: {path} read but not in release_files {listed:?}"
            );
        }
    }
    got
}

/// An endpoint nothing answers (release_files never downloads).
fn server_gone() -> String {
    hooklens_testutil::hub_standin::refused_endpoint()
}

/// Loads case `name` through the stand-in and checks it against SAELens's.
fn check(name: &str) {
    if skipped_for_proxy() {
        return;
    }
    let dir = cases().join(name);
    let case = case_of(name);
    let sae = load_case(name, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));

    // The config, as SAELens's SAE has it.
    let want = &case["sae_cfg"];
    let cfg = sae.cfg();
    assert_eq!(cfg.architecture_name, want["architecture"].as_str().unwrap(), "{name}");
    assert_eq!(cfg.d_in as u64, want["d_in"].as_u64().unwrap());
    assert_eq!(cfg.d_sae as u64, want["d_sae"].as_u64().unwrap());
    assert_eq!(cfg.d_out.map(|d| d as u64), want["d_out"].as_u64());
    assert_eq!(
        cfg.apply_b_dec_to_input,
        want["apply_b_dec_to_input"].as_bool().unwrap()
    );
    assert_eq!(want["normalize_activations"], "none", "SAELens's folds or has none");
    assert_eq!(cfg.normalize_activations, Normalization::None);
    assert_eq!(cfg.reshape_hook_z, want["reshape_activations"] == "hook_z");
    assert_eq!(cfg.hook_name, field(want, "hook_name").as_str().unwrap());
    assert_eq!(cfg.hook_name_out.as_deref(), field(want, "hook_name_out").as_str());
    assert_eq!(cfg.model_name.as_deref(), field(want, "model_name").as_str());
    assert_eq!(cfg.context_size.map(|c| c as u64), field(want, "context_size").as_u64());
    if let Architecture::TopK {
        k,
        rescale_acts_by_decoder_norm,
    } = cfg.architecture
    {
        assert_eq!(k as u64, want["k"].as_u64().unwrap());
        assert_eq!(
            rescale_acts_by_decoder_norm,
            want["rescale_acts_by_decoder_norm"] == true
        );
    }

    // The weights, after SAELens's renaming, transposes, sums and folds.
    let t = load_tensors(dir.join("expected.safetensors"));
    let w = sae.weights();
    let mut compared = vec![("W_enc", &w.w_enc), ("W_dec", &w.w_dec), ("b_dec", &w.b_dec)];
    compared.extend(w.b_enc.as_ref().map(|b| ("b_enc", b)));
    compared.extend(w.threshold.as_ref().map(|b| ("threshold", b)));
    compared.extend(w.w_skip.as_ref().map(|b| ("W_skip", b)));
    if let Some(g) = &w.gated {
        compared.extend([("b_gate", &g.b_gate), ("r_mag", &g.r_mag), ("b_mag", &g.b_mag)]);
    }
    let mut names: Vec<&str> = compared.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    let mut want_names: Vec<&str> = t
        .keys()
        .map(String::as_str)
        .filter(|k| !["x", "acts", "recons", "out"].contains(k))
        .collect();
    want_names.sort_unstable();
    assert_eq!(names, want_names, "{name}: the SAE's parameters");
    for (n, got) in compared {
        assert_close(&format!("{name} {n}"), got, &t[n], TOLERANCE);
    }

    // What it computes.
    let x: &Tensor = &t["x"];
    let (acts, norm) = sae.encode_with_norm(x).unwrap();
    assert_close(&format!("{name} encode"), &acts, &t["acts"], TOLERANCE);
    let recons = sae.decode_with_norm(&t["acts"], &norm).unwrap();
    assert_close(&format!("{name} decode"), &recons, &t["recons"], TOLERANCE);
    assert_close(
        &format!("{name} forward"),
        &sae.forward(x).unwrap(),
        &t["out"],
        TOLERANCE,
    );
}

/// Gemma Scope, residual stream (`gemma_2`: params.npz, sizes from the names).
#[test]
fn gemma_scope_res() {
    check("gemma_2");
}

/// Gemma Scope on `attn.hook_z`: the heads are flattened on the way in and back out.
#[test]
fn gemma_scope_attention_hook_z() {
    check("gemma_2_att");
}

/// Gemma Scope's embedding SAEs: sqrt(d_model) moved into the weights.
#[test]
fn gemma_scope_embedding() {
    check("gemma_2_embedding");
}

/// Gemma Scope's transcoders (`gemma_2_transcoder`).
#[test]
fn gemma_scope_transcoder() {
    check("gemma_2_transcoder");
}

/// Gemma Scope 2 with a config.json (`gemma_3`).
#[test]
fn gemma_scope_2_res() {
    check("gemma_3");
}

/// Gemma Scope 2's affine (skip) transcoders, without a config.json (inferred).
#[test]
fn gemma_scope_2_skip_transcoder() {
    check("gemma_3_transcoder_affine");
}

/// Llama Scope: bf16 linear layers, a scalar threshold, and the release's
/// norm_scaling_factor folded in.
#[test]
fn llama_scope_folds_the_norm_scaling_factor() {
    check("llama_scope");
}

/// dictionary_learning's `ae.pt`: AutoEncoderTopK.
#[test]
fn dictionary_learning_topk() {
    check("dictionary_learning_topk");
}

/// dictionary_learning's `ae.pt`: GatedAutoEncoder.
#[test]
fn dictionary_learning_gated() {
    check("dictionary_learning_gated");
}

/// dictionary_learning's `ae.pt`: MatryoshkaBatchTopKSAE, read as JumpReLU.
#[test]
fn dictionary_learning_matryoshka_batch_topk() {
    check("dictionary_learning_matryoshka");
}

/// dictionary_learning's `ae.pt`: the standard AutoEncoder.
#[test]
fn dictionary_learning_standard() {
    check("dictionary_learning_standard");
}

/// circuit-tracer's per-layer transcoders (`mwhanna_transcoder`, YAML configs).
#[test]
fn mwhanna_transcoder() {
    check("mwhanna_transcoder");
}

/// One layer of a cross-layer transcoder, decoders summed (`mntss_clt_layer_transcoder`).
#[test]
fn mntss_clt_layer_as_transcoder() {
    check("mntss_clt_layer_transcoder");
}

/// A release of a format hooklens does not read is an error naming its function.
#[test]
fn an_unread_format_names_its_conversion_function() {
    let unread = releases::all()
        .iter()
        .find(|r| {
            r.conversion_func
                .as_deref()
                .is_some_and(|f| !releases::format_supported(f))
        })
        .expect("the directory has releases in formats not read");
    let func = unread.conversion_func.as_deref().unwrap();
    let tmp = TempDir::new("sae-format-unread");
    let hub = HubOptions::from_env().cache_dir(tmp.path("cache")).offline(true);
    let err = Sae::from_release(&unread.name, &unread.saes[0].id, &hub, &Device::Cpu)
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains(&format!("`{func}`")) && err.contains(&unread.name),
        "{err}"
    );
}

/// Malformed files are errors naming the file and what is wrong with it.
#[test]
fn bad_files_are_errors_naming_the_file() {
    if skipped_for_proxy() {
        return;
    }
    let tmp = TempDir::new("sae-format-bad");
    let bad = cases().join("bad");
    let folder = |name: &str| case_of(name)["folder"].as_str().unwrap().to_string();
    let err = |name: &str, path: String, source: PathBuf| {
        load_case(name, &[(path.as_str(), source)])
            .expect_err("refused")
            .to_string()
    };

    // np.savez_compressed's deflated entries.
    let npz = format!("{}/params.npz", folder("gemma_2"));
    let e = err("gemma_2", npz, bad.join("compressed.npz"));
    assert!(
        e.contains("params.npz") && e.contains("W_enc.npy") && e.contains("compressed"),
        "{e}"
    );

    // Not a zip at all.
    let junk = tmp.path("junk");
    std::fs::write(&junk, b"not an archive").unwrap();
    let npz = format!("{}/params.npz", folder("gemma_2_transcoder"));
    let e = err("gemma_2_transcoder", npz, junk.clone());
    assert!(e.contains("params.npz") && e.contains("not a .npz"), "{e}");

    // A PyTorch file that is not one.
    let pt = format!("{}/ae.pt", folder("dictionary_learning_topk"));
    let e = err("dictionary_learning_topk", pt, junk);
    assert!(e.contains("ae.pt") && e.contains("PyTorch"), "{e}");

    // Llama Scope's hyperparameters without the threshold.
    let hyper = tmp.path("hyperparams.json");
    std::fs::write(&hyper, r#"{"d_model": 16, "d_sae": 32, "hook_point_in": "blocks.0.hook_resid_post", "dataset_average_activation_norm": {"in": 2.5}}"#).unwrap();
    let e = err(
        "llama_scope",
        format!("{}/hyperparams.json", folder("llama_scope")),
        hyper,
    );
    assert!(
        e.contains("hyperparams.json") && e.contains("jump_relu_threshold"),
        "{e}"
    );

    // wandb's config without d_feature.
    let wandb = tmp.path("wandb-config.yaml");
    std::fs::write(&wandb, "batch_size:\n  value: 8\nd_model:\n  value: 16\n").unwrap();
    let e = err("mwhanna_transcoder", "wandb-config.yaml".into(), wandb);
    assert!(e.contains("wandb-config.yaml") && e.contains("d_feature"), "{e}");

    // Gemma Scope 2 weights with a tensor missing.
    let params = tmp.path("params.safetensors");
    let mut t = load_tensors(cases().join("gemma_3/expected.safetensors"));
    t.retain(|k, _| ["W_enc", "W_dec", "b_enc", "b_dec"].contains(&k.as_str()));
    let lower: std::collections::HashMap<String, Tensor> = t.into_iter().map(|(k, v)| (k.to_lowercase(), v)).collect();
    candle_core::safetensors::save(&lower, &params).unwrap();
    let e = err("gemma_3", format!("{}/params.safetensors", folder("gemma_3")), params);
    assert!(
        e.contains("params.safetensors") && e.contains("no tensor `threshold`"),
        "{e}"
    );
}

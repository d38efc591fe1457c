//! `hooklens attribute --transcoders REPO[:FOLDER]`: circuit-tracer transcoders from the
//! Hugging Face hub, with no network: placed in a cache laid out as `huggingface_hub`
//! lays it out, or served by a stand-in for the hub on loopback (`HF_ENDPOINT`). The
//! graph must be the one the same transcoders give from a folder.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use hooklens_testutil::hub_standin::{cache_repo, files_of, StandIn, COMMIT, PROXY_VARS};

/// `hooklens attribute` on reference case `name` with `--transcoders transcoders`,
/// writing the graph file to `out`; the Hugging Face cache is `cache`, offline unless
/// `endpoint` is given (then downloading from it, past any proxy of the environment).
fn attribute(name: &str, transcoders: &str, out: &Path, cache: &Path, endpoint: Option<&str>) -> Output {
    let dir = circuit_case(name);
    let mut cmd = offline_command(&attribute_args(
        &dir,
        transcoders,
        &[
            "--max-n-logits".as_ref(),
            "5".as_ref(),
            "--slug".as_ref(),
            "hub".as_ref(),
            "--quiet".as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ],
    ));
    cmd.env("HF_HUB_CACHE", cache).env_remove("HF_TOKEN");
    if let Some(endpoint) = endpoint {
        cmd.env_remove("HF_HUB_OFFLINE").env("HF_ENDPOINT", endpoint);
        for k in PROXY_VARS {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("the hooklens binary runs")
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn transcoders_from_a_prepared_cache_give_the_folders_graph() {
    let tmp = TempDir::new("attribute-hub-cache");
    let cache = tmp.path("cache");
    cache_repo(&cache, "org/plt", &files_of(&circuit_case("circuits/transcoders"), ""));
    cache_repo(
        &cache,
        "org/many",
        &files_of(&circuit_case("circuits-clt/transcoders"), "sets/clt/"),
    );
    for (name, spec) in [("circuits", "org/plt"), ("circuits-clt", "org/many:sets/clt")] {
        let from_hub = tmp.path(&format!("{name}-hub.json"));
        let stdout = ok_stdout(attribute(name, spec, &from_hub, &cache, None));
        assert!(stdout.contains("5 logit targets"), "{spec}: {stdout}");
        let from_dir = tmp.path(&format!("{name}-dir.json"));
        let folder = circuit_case(name).join("transcoders");
        ok_stdout(attribute(name, folder.to_str().unwrap(), &from_dir, &cache, None));
        assert_eq!(json(&from_hub), json(&from_dir), "{spec}");
    }
    // Nothing cached, offline: an error naming the repository and why.
    let err = fails(
        attribute("circuits", "org/absent", &tmp.path("absent.json"), &cache, None),
        "`org/absent`",
    );
    assert!(err.contains("config.yaml") && err.contains("HF_HUB_OFFLINE"), "{err}");
    let err = fails(
        attribute("circuits", "org/plt:sub", &tmp.path("sub.json"), &cache, None),
        "sub/config.yaml",
    );
    assert!(err.contains("`org/plt`") && err.contains("HF_HUB_OFFLINE"), "{err}");
    assert!(!tmp.path("absent.json").exists() && !tmp.path("sub.json").exists());
}

#[test]
fn transcoders_download_from_the_hub_then_work_offline() {
    let tmp = TempDir::new("attribute-hub-download");
    let cache = tmp.path("cache");
    let server = StandIn::serve(files_of(&circuit_case("circuits/transcoders"), "tc/"));
    let out = tmp.path("hub.json");
    let got = attribute("circuits", "org/plt:tc", &out, &cache, Some(&server.endpoint));
    let asked = server.finish();
    let stdout = ok_stdout(got);
    assert!(stdout.contains("5 logit targets"), "{stdout}");
    // Metadata and body of config.yaml, layer_0 and layer_1; nothing else.
    assert_eq!(asked.len(), 6, "{asked:?}");
    assert!(
        asked.iter().all(|p| p.starts_with("/org/plt/resolve/main/tc/")),
        "{asked:?}"
    );
    let snap = cache.join("models--org--plt/snapshots").join(COMMIT).join("tc");
    assert!(snap.join("config.yaml").is_file() && snap.join("layer_1.safetensors").is_file());
    // Cached now: offline gives the same graph.
    let again = tmp.path("again.json");
    let stdout = ok_stdout(attribute("circuits", "org/plt:tc", &again, &cache, None));
    assert!(stdout.contains("5 logit targets"), "{stdout}");
    assert_eq!(json(&out), json(&again));
}

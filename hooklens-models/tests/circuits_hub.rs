//! `Transcoders::from_pretrained`: circuit-tracer transcoders from a Hugging Face
//! repository, with no network. A stand-in for the hub on loopback serves the reference
//! transcoders (`testdata/circuits*/transcoders`), or they are placed in a cache laid
//! out as `huggingface_hub` lays it out; either way the weights must be those
//! `Transcoders::from_dir` reads, the cache must then work offline, and what cannot be
//! had must be an error naming the repository.
#![cfg(feature = "hub")]

use std::path::{Path, PathBuf};

use hooklens_models::circuits::{TranscoderKind, Transcoders};
use hooklens_models::HubOptions;
use hooklens_testutil::hub_standin::{cache_repo, files_of, refused_endpoint, skipped_for_proxy, StandIn, COMMIT};
use hooklens_testutil::{testdata, TempDir};

/// The reference transcoder set (2 layers) and cross-layer transcoder (3 layers).
fn set_dir() -> PathBuf {
    testdata().join("circuits/transcoders")
}

fn clt_dir() -> PathBuf {
    testdata().join("circuits-clt/transcoders")
}

/// Hub options with `cache` as the cache, no token, no progress bar: offline when there
/// is no `endpoint`, else downloading from it.
fn hub(cache: &Path, endpoint: Option<&str>) -> HubOptions {
    let mut opts = HubOptions::from_env()
        .cache_dir(cache)
        .offline(endpoint.is_none())
        .progress(false)
        .revision("main");
    opts.endpoint = endpoint.map(str::to_string);
    opts.token = None;
    opts
}

/// The same transcoders: configuration, sizes, activation, and every weight that
/// decides a result (all decoder rows, and the encoders through their pre-activations).
fn assert_same(got: &Transcoders, want: &Transcoders, what: &str) {
    assert_eq!(got.kind(), want.kind(), "{what}");
    assert_eq!(got.config(), want.config(), "{what}");
    assert_eq!(
        (got.n_layers(), got.d_model(), got.d_transcoder()),
        (want.n_layers(), want.d_model(), want.d_transcoder()),
        "{what}"
    );
    assert_eq!(got.activation(), want.activation(), "{what}");
    let (d, f) = (want.d_model(), want.d_transcoder());
    let x: Vec<f32> = (0..3 * d).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
    let every: Vec<usize> = (0..f).collect();
    for layer in 0..want.n_layers() {
        assert_eq!(got.has_skip(layer), want.has_skip(layer), "{what}: layer {layer} skip");
        assert_eq!(got.n_out(layer), want.n_out(layer), "{what}: layer {layer}");
        let rows = got.decoder_rows(layer, &every).unwrap();
        assert_eq!(rows.len(), f * want.n_out(layer) * d, "{what}: layer {layer}");
        assert_eq!(
            rows,
            want.decoder_rows(layer, &every).unwrap(),
            "{what}: layer {layer} decoders"
        );
        assert_eq!(
            got.decoder_rows(layer, &[f - 1, 0, f / 2]).unwrap(),
            want.decoder_rows(layer, &[f - 1, 0, f / 2]).unwrap(),
            "{what}: layer {layer}"
        );
        assert_eq!(
            got.pre_activations(layer, &x),
            want.pre_activations(layer, &x),
            "{what}: layer {layer} encoder"
        );
    }
}

#[test]
fn a_transcoder_set_and_a_clt_download_then_load_offline() {
    if skipped_for_proxy() {
        return;
    }
    for (dir, repo, n_layers, kind) in [
        (set_dir(), "org/tiny-plt", 2, TranscoderKind::Set),
        (clt_dir(), "org/tiny-clt", 3, TranscoderKind::CrossLayer),
    ] {
        let tmp = TempDir::new("tc-hub");
        let cache = tmp.path("cache");
        let files = files_of(&dir, "");
        let server = StandIn::serve(files.clone());
        let got = Transcoders::from_pretrained(repo, "", n_layers, &hub(&cache, Some(&server.endpoint)));
        let asked = server.finish();
        let got = got.unwrap();
        let want = Transcoders::from_dir(&dir).unwrap();
        assert_eq!(got.kind(), kind);
        assert_same(&got, &want, repo);
        // Metadata and body of config.yaml and of each layer file, all of `repo`.
        assert_eq!(asked.len(), 2 * files.len(), "{asked:?}");
        let prefix = format!("/{repo}/resolve/main/");
        assert!(asked.iter().all(|p| p.starts_with(&prefix)), "{asked:?}");
        let snap = cache
            .join(format!("models--{}", repo.replace('/', "--")))
            .join("snapshots")
            .join(COMMIT);
        for (name, src) in &files {
            assert_eq!(
                std::fs::read(snap.join(name)).unwrap(),
                std::fs::read(src).unwrap(),
                "{name}"
            );
        }
        // In the cache now: offline, no network at all.
        let again = Transcoders::from_pretrained(repo, "", n_layers, &hub(&cache, None)).unwrap();
        assert_same(&again, &want, repo);
    }
}

#[test]
fn a_folder_of_the_repository_downloads_then_loads_offline() {
    if skipped_for_proxy() {
        return;
    }
    let tmp = TempDir::new("tc-hub-folder");
    let cache = tmp.path("cache");
    let mut files = files_of(&set_dir(), "sets/plt/");
    files.extend(files_of(&clt_dir(), "sets/clt/"));
    // Decoys at the root and in the parent folder: a folder must read its own files.
    files.extend(files_of(&clt_dir(), ""));
    files.extend(files_of(&clt_dir(), "sets/"));
    let server = StandIn::serve(files);
    let online = hub(&cache, Some(&server.endpoint));
    let set = Transcoders::from_pretrained("org/many", "sets/plt", 2, &online);
    let clt = Transcoders::from_pretrained("org/many", "/sets/clt/", 3, &online);
    let asked = server.finish();
    assert_same(&set.unwrap(), &Transcoders::from_dir(set_dir()).unwrap(), "sets/plt");
    assert_same(&clt.unwrap(), &Transcoders::from_dir(clt_dir()).unwrap(), "sets/clt");
    assert_eq!(asked.len(), 2 * (3 + 7), "{asked:?}");
    assert!(
        asked
            .iter()
            .all(|p| p.starts_with("/org/many/resolve/main/sets/plt/")
                || p.starts_with("/org/many/resolve/main/sets/clt/")),
        "{asked:?}"
    );
    let snap = cache.join("models--org--many/snapshots").join(COMMIT);
    assert!(snap.join("sets/plt/layer_1.safetensors").is_file());
    assert!(snap.join("sets/clt/W_dec_2.safetensors").is_file());

    // Offline from the cache; another folder offline is an error naming it.
    let offline = hub(&cache, None);
    let again = Transcoders::from_pretrained("org/many", "sets/plt/", 2, &offline).unwrap();
    assert_same(&again, &Transcoders::from_dir(set_dir()).unwrap(), "sets/plt offline");
    let err = Transcoders::from_pretrained("org/many", "sets/other", 2, &offline)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sets/other/config.yaml") && err.contains("`org/many`") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    // A folder that leaves the repository is refused before any look-up.
    for folder in ["../x", "sets/../../x", "a//b"] {
        let err = Transcoders::from_pretrained("org/many", folder, 2, &offline)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a path inside the repository `org/many`"),
            "{folder}: {err}"
        );
    }
}

#[test]
fn a_prepared_cache_is_read_with_no_network() {
    let tmp = TempDir::new("tc-hub-cache");
    let cache = tmp.path("cache");
    cache_repo(&cache, "org/plt", &files_of(&set_dir(), ""));
    cache_repo(&cache, "org/clt", &files_of(&clt_dir(), "a/b/"));
    let offline = hub(&cache, None);
    let set = Transcoders::from_pretrained("org/plt", "", 2, &offline).unwrap();
    assert_same(&set, &Transcoders::from_dir(set_dir()).unwrap(), "org/plt");
    let clt = Transcoders::from_pretrained("org/clt", "a/b", 3, &offline).unwrap();
    assert_same(&clt, &Transcoders::from_dir(clt_dir()).unwrap(), "org/clt:a/b");
    // A revision by commit hash reads the snapshot directly.
    let by_commit = Transcoders::from_pretrained("org/plt", "", 2, &offline.clone().revision(COMMIT)).unwrap();
    assert_same(&by_commit, &set, "org/plt@commit");
    // The model's depth says which files to read: a layer the repo lacks is an error
    // naming the file.
    let err = Transcoders::from_pretrained("org/plt", "", 3, &offline)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layer_2.safetensors") && err.contains("`org/plt`"),
        "{err}"
    );
}

#[test]
fn offline_with_nothing_cached_is_an_error_naming_the_repository() {
    let tmp = TempDir::new("tc-hub-offline");
    let cache = tmp.path("cache");
    let err = Transcoders::from_pretrained("org/absent", "", 2, &hub(&cache, None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("transcoders `org/absent`"), "{err}");
    assert!(err.contains("config.yaml") && err.contains("HF_HUB_OFFLINE"), "{err}");
    assert!(
        err.contains(&cache.join("models--org--absent").display().to_string()),
        "{err}"
    );
    assert!(!cache.join("models--org--absent").exists(), "nothing written");
    let err = Transcoders::from_pretrained("org/absent", "deep/folder", 2, &hub(&cache, None))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("deep/folder/config.yaml") && err.contains("`org/absent`"),
        "{err}"
    );

    // Only config.yaml cached: the missing layer files are named.
    cache_repo(
        &cache,
        "org/half",
        &[("config.yaml".to_string(), clt_dir().join("config.yaml"))],
    );
    let err = Transcoders::from_pretrained("org/half", "", 3, &hub(&cache, None))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("W_enc_0.safetensors") && err.contains("W_dec_2.safetensors") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

#[test]
fn no_network_says_which_repository_and_where() {
    if skipped_for_proxy() {
        return;
    }
    let tmp = TempDir::new("tc-hub-refused");
    let endpoint = refused_endpoint();
    let err = Transcoders::from_pretrained("org/tc", "sub", 2, &hub(&tmp, Some(&endpoint)))
        .unwrap_err()
        .to_string();
    let url = format!("{endpoint}/org/tc/resolve/main/sub/config.yaml");
    assert!(err.contains("transcoders `org/tc`"), "{err}");
    assert!(
        err.contains(&format!("downloading sub/config.yaml from {url} failed")),
        "{err}"
    );
}

/// A config.yaml (a set's, with a `transcoders:` list) placed in `cache` as `repo`'s
/// `config.yaml`, beside the reference layers as `weights/l{i}.safetensors`.
fn listed(cache: &Path, tmp: &TempDir, repo: &str, list: &[&str]) {
    let text = std::fs::read_to_string(set_dir().join("config.yaml")).unwrap();
    let items: String = list.iter().map(|p| format!("  - {p}\n")).collect();
    let cfg = tmp.path(&format!("{}.yaml", repo.replace('/', "_")));
    std::fs::write(&cfg, format!("{text}\ntranscoders:\n{items}")).unwrap();
    cache_repo(
        cache,
        repo,
        &[
            ("config.yaml".to_string(), cfg),
            (
                "weights/l0.safetensors".to_string(),
                set_dir().join("layer_0.safetensors"),
            ),
            (
                "weights/l1.safetensors".to_string(),
                set_dir().join("layer_1.safetensors"),
            ),
        ],
    );
}

#[test]
fn hf_paths_into_another_repository_are_refused() {
    let tmp = TempDir::new("tc-hub-list");
    let cache = tmp.path("cache");
    let offline = hub(&cache, None);
    for (repo, entry) in [
        ("org/tc", "hf://other/repo/weights/l1.safetensors"),
        ("org/tc2", "hf://org/tc2x/weights/l1.safetensors"),
        ("org/tc3", "hf://org/tc3"),
    ] {
        listed(
            &cache,
            &tmp,
            repo,
            &[&format!("hf://{repo}/weights/l0.safetensors"), entry],
        );
        let err = Transcoders::from_pretrained(repo, "", 2, &offline)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("`{entry}`")) && err.contains(&format!("`{repo}`")),
            "{entry}: {err}"
        );
        assert!(entry == "hf://org/tc3" || err.contains("another repository"), "{err}");
    }
    // The same list read as a folder: hub paths need from_pretrained.
    let snap = cache.join("models--org--tc/snapshots").join(COMMIT);
    let err = Transcoders::from_dir(&snap).unwrap_err().to_string();
    assert!(
        err.contains("hf://org/tc/weights/l0.safetensors") && err.contains("from_pretrained"),
        "{err}"
    );

    // Paths into the same repository (from its root) and plain names (beside
    // config.yaml) are read.
    listed(
        &cache,
        &tmp,
        "org/ok",
        &["hf://org/ok/weights/l0.safetensors", "weights/l1.safetensors"],
    );
    let got = Transcoders::from_pretrained("org/ok", "", 2, &offline).unwrap();
    let want = Transcoders::from_dir(set_dir()).unwrap();
    assert_eq!(
        got.config().transcoders,
        ["hf://org/ok/weights/l0.safetensors", "weights/l1.safetensors"]
    );
    assert_eq!((got.n_layers(), got.d_model(), got.d_transcoder()), (2, 64, 96));
    for layer in 0..2 {
        let every: Vec<usize> = (0..96).collect();
        assert_eq!(
            got.decoder_rows(layer, &every).unwrap(),
            want.decoder_rows(layer, &every).unwrap()
        );
    }
    // ... but not a same-repository path that climbs out of it.
    listed(
        &cache,
        &tmp,
        "org/climb",
        &["hf://org/climb/../x/l0.safetensors", "weights/l1.safetensors"],
    );
    let err = Transcoders::from_pretrained("org/climb", "", 2, &offline)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a path inside the repository `org/climb`"), "{err}");
}

/// circuit-tracer 0.5.0 has no cross-layer skip; hooklens reads `W_skip_{i}.safetensors`
/// beside the layer files in a folder (`from_dir`), and the hub must give the same.
#[test]
fn a_clt_with_skip_files_loads_them_from_the_hub_too() {
    let dir = testdata().join("circuits-extra/clt-skip/transcoders");
    if !dir.is_dir() {
        eprintln!("skipped: no {}", dir.display());
        return;
    }
    let tmp = TempDir::new("tc-hub-clt-skip");
    let cache = tmp.path("cache");
    cache_repo(&cache, "org/clt-skip", &files_of(&dir, ""));
    let want = Transcoders::from_dir(&dir).unwrap();
    assert!(want.has_skip(0));
    let got = Transcoders::from_pretrained("org/clt-skip", "", want.n_layers(), &hub(&cache, None)).unwrap();
    assert_same(&got, &want, "org/clt-skip");
}

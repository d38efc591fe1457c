//! `hooklens cache --sae` against SAELens's reference runs (`testdata/saes/`), SAEs of
//! other sizes and architectures on other families, and `hooklens features`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::*;
use hooklens_models::sae::Sae;
use hooklens_testutil::assert_close;
use serde_json::Value;

fn saes_root() -> PathBuf {
    root().join("testdata/saes")
}

fn hooklens_ok(args: &[String]) -> String {
    let o = offline_command(args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn hooklens_err(args: &[String]) -> String {
    let o = offline_command(args).output().unwrap();
    assert!(!o.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// How many entries of `t` are not zero.
fn nonzero(t: &Tensor) -> f32 {
    t.ne(0f32)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn cache_with_saes_matches_every_saelens_run() {
    let runs: Value = serde_json::from_str(&std::fs::read_to_string(saes_root().join("runs.json")).unwrap()).unwrap();
    let tmp = TempDir::new("sae-cache");
    let mut checked = 0;
    for run in runs["runs"].as_array().unwrap() {
        let what = run["name"].as_str().unwrap();
        let out = tmp.path(&format!("{what}.safetensors"));
        let mut a = args(&["cache", "--no-processing", "--model"]);
        a.push(tiny_model().display().to_string());
        a.extend(["--tokens".to_string(), tiny_tokens().display().to_string()]);
        a.extend(["--out".to_string(), out.display().to_string()]);
        for folder in run["saes"].as_array().unwrap() {
            a.extend([
                "--sae".to_string(),
                saes_root().join(folder.as_str().unwrap()).display().to_string(),
            ]);
        }
        if run["use_error_term"].as_bool().unwrap() {
            a.push("--sae-error-term".into());
        }
        hooklens_ok(&a);
        let got = load(&out);
        let want = load(saes_root().join(run["reference"].as_str().unwrap()));
        for (name, w) in &want {
            // SAELens's extra `mlp.hook_in` (the MLP's input) is a hooklens point too.
            let g = got
                .get(name)
                .unwrap_or_else(|| panic!("{what}: no `{name}` in the file"));
            assert_close(&format!("{what}: {name}"), g, w, 1e-4);
        }
        for name in run["cache_names"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            assert!(got.contains_key(name), "{what}: `{name}` cached");
        }
        checked += 1;
    }
    assert!(checked >= 16);
}

/// Writes an SAE folder with random weights: `cfg` is the SAELens 6 cfg.json.
fn write_sae(dir: &Path, cfg: &Value, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cfg.json"), cfg.to_string()).unwrap();
    let n = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let (d_in, d_sae) = (n("d_in"), n("d_sae"));
    let d_out = cfg.get("d_out").and_then(Value::as_u64).map_or(d_in, |v| v as usize);
    // The project's seeded generator (normal, the spread of a uniform in [-s, s)).
    let rng = std::cell::RefCell::new(hooklens_models::model::SeededRng::new(seed));
    let r = |shape: &[usize], s: f32| rng.borrow_mut().normal_tensor(shape, s as f64 / 3f64.sqrt()).unwrap();
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert("W_enc".into(), r(&[d_in, d_sae], 0.5));
    t.insert("W_dec".into(), r(&[d_sae, d_out], 0.3));
    t.insert("b_dec".into(), r(&[d_out], 0.1));
    match cfg["architecture"].as_str().unwrap() {
        "gated" => {
            for k in ["b_gate", "r_mag", "b_mag"] {
                t.insert(k.into(), r(&[d_sae], 0.2));
            }
        }
        arch => {
            t.insert("b_enc".into(), r(&[d_sae], 0.2));
            if arch.starts_with("jumprelu") {
                t.insert("threshold".into(), r(&[d_sae], 0.1).abs().unwrap());
            }
        }
    }
    candle_core::safetensors::save(&t, dir.join("sae_weights.safetensors")).unwrap();
}

#[test]
fn cache_with_saes_of_other_sizes_on_other_families() {
    let tmp = TempDir::new("sae-families");
    for (family, hook, arch, width_of) in [
        ("llama", "blocks.1.hook_resid_pre", "gated", "d_model"),
        ("qwen2", "blocks.0.attn.hook_z", "topk", "z"),
        ("gemma2", "blocks.1.hook_resid_post", "jumprelu", "d_model"),
        ("neox", "blocks.0.hook_resid_post", "standard", "d_model"),
        ("gemma3", "blocks.1.hook_resid_mid", "standard", "d_model"),
        ("olmo2", "blocks.0.attn.hook_z", "topk", "z"),
        ("mixtral", "blocks.1.hook_mlp_out", "jumprelu", "d_model"),
        ("qwen3_moe", "blocks.0.mlp.hook_in", "gated", "d_model"),
        ("olmoe", "blocks.1.hook_resid_post", "standard", "d_model"),
        ("gpt_oss", "blocks.0.attn.hook_z", "topk", "z"),
    ] {
        let what = format!("{family} {arch} at {hook}");
        let dir = root().join("testdata").join(family);
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("model/config.json")).unwrap()).unwrap();
        let d_model = config["hidden_size"].as_u64().unwrap();
        let heads = config["num_attention_heads"].as_u64().unwrap();
        let d_head = config
            .get("head_dim")
            .and_then(Value::as_u64)
            .unwrap_or(d_model / heads);
        let d_in = if width_of == "z" { heads * d_head } else { d_model };
        let mut cfg = serde_json::json!({
            "architecture": arch, "d_in": d_in, "d_sae": 96, "apply_b_dec_to_input": arch != "topk",
            "normalize_activations": "none", "reshape_activations": if width_of == "z" { "hook_z" } else { "none" },
            "metadata": {"sae_lens_version": "6.54.12", "hook_name": hook}
        });
        if arch == "topk" {
            cfg["k"] = 6.into();
            cfg["rescale_acts_by_decoder_norm"] = false.into();
        }
        let sae_dir = tmp.path(&format!("{family}-sae"));
        write_sae(&sae_dir, &cfg, d_in);
        let plain_out = tmp.path(&format!("{family}-plain.safetensors"));
        let spliced_out = tmp.path(&format!("{family}-sae.safetensors"));
        let base = |out: &Path| {
            let mut a = args(&["cache", "--no-processing", "--model"]);
            a.push(dir.join("model").display().to_string());
            a.extend([
                "--tokens".to_string(),
                dir.join("tokens.safetensors").display().to_string(),
            ]);
            a.extend(["--out".to_string(), out.display().to_string()]);
            a
        };
        hooklens_ok(&base(&plain_out));
        let mut a = base(&spliced_out);
        a.extend([
            "--sae".to_string(),
            sae_dir.display().to_string(),
            "--sae-error-term".to_string(),
        ]);
        hooklens_ok(&a);
        let (plain, spliced) = (load(&plain_out), load(&spliced_out));
        // The error term keeps the model's output; the SAE read the plain activation.
        assert_close(&format!("{what}: logits"), &spliced["logits"], &plain["logits"], 1e-5);
        assert!(!spliced.contains_key(hook), "{what}: the replaced point is not cached");
        let sae = Sae::from_dir(&sae_dir, &Device::Cpu).unwrap();
        let acts = sae.encode(&plain[hook]).unwrap();
        let name = format!("{hook}.hook_sae_acts_post");
        assert_close(&format!("{what}: acts"), &spliced[name.as_str()], &acts, 1e-4);
        let active = nonzero(&acts);
        assert!(active > 0.0, "{what}: some feature fires");
        let error = &spliced[format!("{hook}.hook_sae_error").as_str()];
        let recons = sae.forward(&plain[hook]).unwrap();
        assert_close(
            &format!("{what}: error"),
            error,
            &(&plain[hook] - recons).unwrap(),
            1e-4,
        );
        // `features` with the same SAE: a header and one line per token of the row. It
        // shows the tokens, so the model gets the tiny byte-level tokenizer (512 ids).
        let with_tok = tmp.path(&format!("{family}-model"));
        std::fs::create_dir_all(&with_tok).unwrap();
        for file in ["config.json", "model.safetensors"] {
            std::fs::copy(dir.join("model").join(file), with_tok.join(file)).unwrap();
        }
        std::fs::copy(
            root().join("testdata/tiny-tokenizer/tokenizer.json"),
            with_tok.join("tokenizer.json"),
        )
        .unwrap();
        let page = tmp.path(&format!("{family}-features.html"));
        let mut f = args(&["features", "--no-processing", "--model"]);
        f.push(with_tok.display().to_string());
        f.extend([
            "--tokens".to_string(),
            dir.join("tokens.safetensors").display().to_string(),
            "--row".into(),
            "1".into(),
            "--sae".into(),
            sae_dir.display().to_string(),
            "--top".into(),
            "3".into(),
            "--out".into(),
            page.display().to_string(),
        ]);
        let table = hooklens_ok(&f);
        let n_pos = plain["logits"].dim(1).unwrap();
        assert_eq!(table.lines().count(), n_pos + 1, "{what}: features\n{table}");
    }
}

#[test]
fn features_lists_the_top_features_of_each_token() {
    let tmp = TempDir::new("sae-features");
    let sae_dir = saes_root().join("saes/standard");
    let page = tmp.path("features.html");
    let mut a = args(&["features", "--no-processing", "--model"]);
    a.push(tiny_model().display().to_string());
    a.extend([
        "--tokens".to_string(),
        tiny_tokens().display().to_string(),
        "--row".into(),
        "1".into(),
    ]);
    a.extend([
        "--sae".to_string(),
        sae_dir.display().to_string(),
        "--top".into(),
        "3".into(),
    ]);
    a.extend(["--out".to_string(), page.display().to_string()]);
    let table = hooklens_ok(&a);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 11, "a header and one line per token:\n{table}");
    // The same features, computed with the library on the plain model's activation.
    let cache_out = tmp.path("plain.safetensors");
    let mut c = args(&[
        "cache",
        "--no-processing",
        "--names",
        "blocks.0.hook_resid_pre",
        "--model",
    ]);
    c.push(tiny_model().display().to_string());
    c.extend([
        "--tokens".to_string(),
        tiny_tokens().display().to_string(),
        "--out".into(),
        cache_out.display().to_string(),
    ]);
    hooklens_ok(&c);
    let resid = load(&cache_out)["blocks.0.hook_resid_pre"].get(1).unwrap();
    let sae = Sae::from_dir(&sae_dir, &Device::Cpu).unwrap();
    let acts = sae.encode(&resid).unwrap();
    for (p, line) in lines[1..].iter().enumerate() {
        let want: Vec<String> = Sae::top_features(&acts.get(p).unwrap(), 3)
            .unwrap()
            .iter()
            .map(|(f, a)| format!("{f}:{a:.3}"))
            .collect();
        assert!(line.trim_start().starts_with(&format!("{p} ")), "{line}");
        assert!(line.ends_with(&want.join("  ")), "position {p}: {line} vs {want:?}");
    }
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("features-data") && !html.contains("http://") && !html.contains("https://"));

    let err = hooklens_err(&[a[..a.len() - 2].to_vec(), args(&["--feature", "256"])].concat());
    assert!(err.contains("feature 256") && err.contains("d_sae = 256"), "{err}");
    let mut bad_row = a.clone();
    let i = bad_row.iter().position(|s| s == "--row").unwrap();
    bad_row[i + 1] = "2".into();
    let err = hooklens_err(&bad_row);
    assert!(err.contains("--row 2") && err.contains("2 row"), "{err}");
}

#[test]
fn bad_saes_are_clear_errors() {
    let tmp = TempDir::new("sae-bad");
    let base = || {
        let mut a = args(&["cache", "--no-processing", "--model"]);
        a.push(tiny_model().display().to_string());
        a.extend([
            "--tokens".to_string(),
            tiny_tokens().display().to_string(),
            "--out".into(),
            tmp.s("x.safetensors"),
        ]);
        a
    };
    let err = hooklens_err(&[base(), args(&["--sae", "no/such/dir"])].concat());
    assert!(
        err.contains("--sae no/such/dir") && err.contains("no such directory"),
        "{err}"
    );
    let err = hooklens_err(&[base(), args(&["--sae", "org/repo:blocks.0.hook_resid_pre"])].concat());
    assert!(err.contains("org/repo") && err.contains("HF_HUB_OFFLINE"), "{err}");
    // An SAE for a point of another width: the error names the point and both widths.
    let sae_dir = tmp.path("wide");
    let cfg = serde_json::json!({"architecture": "standard", "d_in": 48, "d_sae": 8, "apply_b_dec_to_input": true,
        "metadata": {"sae_lens_version": "6.54.12", "hook_name": "blocks.1.hook_resid_mid"}});
    write_sae(&sae_dir, &cfg, 5);
    let err = hooklens_err(&[base(), vec!["--sae".into(), sae_dir.display().to_string()]].concat());
    assert!(
        err.contains("blocks.1.hook_resid_mid") && err.contains("48") && err.contains("[2, 10, 64]"),
        "{err}"
    );
    assert!(!tmp.path("x.safetensors").exists(), "nothing written");
}

#[test]
fn harvest_with_an_sae_stores_its_top_features_per_token() {
    use hooklens_models::sae::{dense_from_sparse, sparse_top_k};
    let tmp = TempDir::new("sae-harvest");
    let corpus = tmp.path("corpus.txt");
    std::fs::write(
        &corpus,
        "the cat sat on the mat and the dog sat on the log\n".repeat(12),
    )
    .unwrap();
    let sae_dir = saes_root().join("saes/standard");
    let acts = "blocks.0.hook_resid_pre.hook_sae_acts_post";
    let mut a = args(&["harvest", "--no-processing", "--model"]);
    a.push(tiny_model().display().to_string());
    a.extend([
        "--input".to_string(),
        corpus.display().to_string(),
        "--out".into(),
        tmp.s("acts"),
    ]);
    a.extend([
        "--sae".to_string(),
        sae_dir.display().to_string(),
        "--sae-error-term".into(),
    ]);
    a.extend(args(&[
        "--sae-top-k",
        "5",
        "--context-size",
        "12",
        "--quiet",
        "--names",
        acts,
        "blocks.0.hook_resid_pre.hook_sae_input",
    ]));
    hooklens_ok(&a);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path("acts/00000-of-00001-manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["settings"]["sae_top_k"], 5);
    let shard = load(tmp.path(&format!("acts/{}", manifest["shards"][0]["file"].as_str().unwrap())));
    let (indices, values) = (
        &shard[format!("{acts}.indices").as_str()],
        &shard[format!("{acts}.values").as_str()],
    );
    let rows = shard["tokens"].dim(0).unwrap();
    assert_eq!(indices.dims(), [rows, 12, 5]);
    assert_eq!(indices.dtype(), DType::I64);
    assert!(!shard.contains_key(acts), "feature activations are not stored dense");
    // What the library computes on the same input: the SAE on the plain model's
    // activation (the SAE reads its input, which the file holds dense), top 5 kept.
    let input = &shard["blocks.0.hook_resid_pre.hook_sae_input"];
    let sae = Sae::from_dir(&sae_dir, &Device::Cpu).unwrap();
    let want = sae.encode(input).unwrap();
    let (wi, wv) = sparse_top_k(&want, 5).unwrap();
    assert_eq!(indices.to_vec3::<i64>().unwrap(), wi.to_vec3::<i64>().unwrap());
    assert_close("values", values, &wv, 1e-5);
    let dense = dense_from_sparse(indices, values, 256).unwrap();
    let kept = nonzero(&dense);
    assert!(kept > 0.0 && kept <= (rows * 12 * 5) as f32);

    let k = a.iter().position(|s| s == "--sae-top-k").unwrap();
    a[k + 1] = "0".into();
    let err = hooklens_err(&a);
    assert!(err.contains("--sae-top-k must be at least 1"), "{err}");
}

#[test]
fn cache_out_onto_an_sae_file_is_refused() {
    let tmp = TempDir::new("sae-out-input");
    let sae_dir = tmp.path("sae");
    std::fs::create_dir_all(&sae_dir).unwrap();
    for f in ["cfg.json", "sae_weights.safetensors"] {
        std::fs::copy(saes_root().join("saes/standard").join(f), sae_dir.join(f)).unwrap();
    }
    let weights = sae_dir.join("sae_weights.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let mut a = args(&["cache", "--no-processing", "--model"]);
    a.push(tiny_model().display().to_string());
    a.extend(["--tokens".to_string(), tiny_tokens().display().to_string()]);
    a.extend(["--sae".to_string(), sae_dir.display().to_string()]);
    a.extend(["--out".to_string(), weights.display().to_string()]);
    let err = hooklens_err(&a);
    assert!(err.contains("sae_weights.safetensors"), "{err}");
    assert_eq!(std::fs::read(&weights).unwrap(), before, "the SAE is untouched");
}

/// Issue 27, point 8: an SAE read from the Hugging Face cache is an input too: `--out`
/// onto its cached weights (a snapshot link to a blob, as the hub lays them out) is
/// refused before anything runs, and the file is intact.
#[test]
fn cache_out_onto_a_hub_sae_file_is_refused() {
    let tmp = TempDir::new("hub-sae-out-input");
    let hub = tmp.path("hub");
    let repo = hub.join("models--org--sae");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(commit).join("blocks.0");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for (i, f) in ["cfg.json", "sae_weights.safetensors"].into_iter().enumerate() {
        let blob = repo.join("blobs").join(format!("blob{i}"));
        std::fs::copy(saes_root().join("saes/standard").join(f), &blob).unwrap();
        std::os::unix::fs::symlink(&blob, snap.join(f)).unwrap();
    }
    let weights = snap.join("sae_weights.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let run = |out: &Path| {
        let mut a = args(&["cache", "--no-processing", "--model"]);
        a.push(tiny_model().display().to_string());
        a.extend(["--tokens".to_string(), tiny_tokens().display().to_string()]);
        a.extend(["--sae".to_string(), "org/sae:blocks.0".to_string()]);
        a.extend(["--out".to_string(), out.display().to_string()]);
        offline_command(&a).env("HF_HUB_CACHE", &hub).output().unwrap()
    };
    // The SAE loads from the cache: a run to another file works.
    let fine = run(&tmp.path("acts.safetensors"));
    assert!(fine.status.success(), "{}", String::from_utf8_lossy(&fine.stderr));
    for out in [weights.clone(), repo.join("blobs/blob1"), snap.join("cfg.json")] {
        let o = run(&out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "--out {} was written", out.display());
        assert!(err.contains("writing it would destroy the input"), "{err}");
    }
    assert_eq!(std::fs::read(&weights).unwrap(), before, "the cached SAE is untouched");
}

/// Writes a standard SAE (`d_in` 32, `d_sae` 24, at `blocks.0.hook_resid_pre`) whose
/// weights follow `seed`: `cfg.json` to `cfg`, `sae_weights.safetensors` to `weights`.
fn write_small_sae(cfg: &Path, weights: &Path, seed: f32) {
    let (d_in, d_sae) = (32, 24);
    std::fs::write(
        cfg,
        format!(
            r#"{{"architecture": "standard", "d_in": {d_in}, "d_sae": {d_sae}, "apply_b_dec_to_input": false,
                "metadata": {{"sae_lens_version": "6.54.12", "hook_name": "blocks.0.hook_resid_pre"}}}}"#
        ),
    )
    .unwrap();
    let wave = |n: usize, k: f32| {
        Tensor::from_vec(
            (0..n).map(|i| (i as f32 * k + seed).sin() * 0.3).collect::<Vec<f32>>(),
            n,
            &Device::Cpu,
        )
        .unwrap()
    };
    let mut t = HashMap::new();
    t.insert(
        "W_enc".to_string(),
        wave(d_in * d_sae, 0.7).reshape((d_in, d_sae)).unwrap(),
    );
    t.insert("b_enc".to_string(), wave(d_sae, 1.3).abs().unwrap());
    t.insert(
        "W_dec".to_string(),
        wave(d_sae * d_in, 0.9).reshape((d_sae, d_in)).unwrap(),
    );
    t.insert("b_dec".to_string(), wave(d_in, 0.4));
    candle_core::safetensors::save(&t, weights).unwrap();
}

/// Issue 27, point 19: a harvest's manifest fingerprints an SAE read from the Hugging
/// Face cache by its content, as it does a folder's: other weights under the same
/// `REPO:FOLDER` are refused on resume.
#[test]
fn harvest_resume_refuses_a_changed_hub_sae() {
    use hooklens_models::model::{random_weights, save_hf_checkpoint};
    let tmp = TempDir::new("harvest-hub-sae");
    let cfg = hooklens_models::TransformerConfig::new(2, 32, 4, 50257, 64);
    let model = tmp.path("model");
    save_hf_checkpoint(&model, &cfg, &random_weights(&cfg, 3).unwrap(), DType::F32).unwrap();
    let hub = tmp.path("hub");
    let repo = hub.join("models--org--sae");
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    let snap = repo.join("snapshots").join(commit).join("blocks.0");
    for d in [snap.clone(), repo.join("blobs"), repo.join("refs")] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let (cfg_blob, weights_blob) = (repo.join("blobs/cfg"), repo.join("blobs/weights"));
    write_small_sae(&cfg_blob, &weights_blob, 0.0);
    std::os::unix::fs::symlink(&cfg_blob, snap.join("cfg.json")).unwrap();
    std::os::unix::fs::symlink(&weights_blob, snap.join("sae_weights.safetensors")).unwrap();
    let corpus = tmp.path("corpus.txt");
    std::fs::write(
        &corpus,
        "the cat sat on the mat\nand the dog lay on the rug\n".repeat(8),
    )
    .unwrap();
    let mut a = args(&["harvest", "--model"]);
    a.push(model.display().to_string());
    a.extend(["--input".to_string(), corpus.display().to_string()]);
    a.extend(args(&[
        "--names",
        "blocks.0.hook_resid_post",
        "--context-size",
        "16",
        "--batch-size",
        "2",
    ]));
    a.extend(args(&["--sae", "org/sae:blocks.0", "--sae-top-k", "4", "--out"]));
    a.push(tmp.s("out"));
    let run = || offline_command(&a).env("HF_HUB_CACHE", &hub).output().unwrap();
    let first = run();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let again = run();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success() && err.contains("nothing to do"), "{err}");
    // The same repository and folder, other weights of the same shapes.
    write_small_sae(&cfg_blob, &weights_blob, 1.0);
    let changed = run();
    let err = String::from_utf8_lossy(&changed.stderr);
    assert!(!changed.status.success(), "a changed SAE was accepted: {err}");
    assert!(err.contains("sae_sha256"), "{err}");
}

/// Runs `hooklens` with `args`, killed after `secs` seconds: `None` when it had to be.
fn within(args: &[String], secs: u64) -> Option<std::process::Output> {
    use std::process::Stdio;
    let mut child = offline_command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(secs) {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    None
}

/// Issue 27, point 11: an SAE folder's files are regular files checked before they are
/// read (a FIFO cfg.json hung, a device was read until memory ran out, a FIFO weights
/// file was "no such file"), and cfg.json has a config's size.
#[test]
fn sae_files_must_be_regular_and_a_url_is_refused() {
    let tmp = TempDir::new("sae-kinds");
    let base = || {
        let mut a = args(&["cache", "--no-processing", "--model"]);
        a.push(tiny_model().display().to_string());
        a.extend([
            "--tokens".to_string(),
            tiny_tokens().display().to_string(),
            "--out".into(),
            tmp.s("x.safetensors"),
        ]);
        a
    };
    let standard = saes_root().join("saes/standard");
    // A folder with the standard SAE's files, `special` made by `make` in place of one.
    let folder = |name: &str, special: &str, make: &dyn Fn(&Path)| {
        let dir = tmp.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["cfg.json", "sae_weights.safetensors"] {
            if f != special {
                std::fs::copy(standard.join(f), dir.join(f)).unwrap();
            }
        }
        make(&dir.join(special));
        dir
    };
    let mkfifo = |p: &Path| {
        assert!(std::process::Command::new("mkfifo").arg(p).status().unwrap().success());
    };
    let zero = |p: &Path| std::os::unix::fs::symlink("/dev/zero", p).unwrap();
    let huge = |p: &Path| {
        std::fs::File::create(p).unwrap().set_len(100 << 20).unwrap();
    };
    // The FIFO first: before the fix it hangs, and is killed here.
    let cases: Vec<(PathBuf, &str, &str)> = vec![
        (folder("fifo-cfg", "cfg.json", &mkfifo), "cfg.json", "is a FIFO"),
        (
            folder("fifo-weights", "sae_weights.safetensors", &mkfifo),
            "sae_weights.safetensors",
            "is a FIFO",
        ),
        (folder("zero-cfg", "cfg.json", &zero), "cfg.json", "is a device"),
        (folder("huge-cfg", "cfg.json", &huge), "cfg.json", "more than the"),
    ];
    for (dir, file, needle) in &cases {
        let a = [base(), vec!["--sae".into(), dir.display().to_string()]].concat();
        let o = within(&a, 30).unwrap_or_else(|| panic!("--sae {}: still running after 30 s", dir.display()));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        let path = dir.join(file).display().to_string();
        assert!(err.contains(&format!("--sae {path}")) && err.contains(needle), "{err}");
    }
    assert!(!tmp.path("x.safetensors").exists(), "nothing written");
}

/// Issue 27: `--sae https://...` was read as the repository `https`; a URL is a clear
/// error saying what to give instead.
#[test]
fn an_sae_url_is_a_clear_error() {
    let tmp = TempDir::new("sae-url");
    let mut base = args(&["cache", "--no-processing", "--model"]);
    base.push(tiny_model().display().to_string());
    base.extend([
        "--tokens".to_string(),
        tiny_tokens().display().to_string(),
        "--out".into(),
        tmp.s("x.safetensors"),
    ]);
    let url = "https://huggingface.co/jbloom/GPT2-Small-SAEs-Reformatted";
    let err = hooklens_err(&[base, args(&["--sae", url])].concat());
    assert!(
        err.contains(&format!("--sae {url}")) && err.contains("URL") && err.contains("REPO_ID:FOLDER"),
        "{err}"
    );
    assert!(
        !err.contains("repository `https`") && !err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    assert!(!tmp.path("x.safetensors").exists(), "nothing written");
}

/// Issue 27, point 17: `--sae-top-k` above the SAE's d_sae (256 here) is refused before
/// anything runs, however large (2^62 and 2^64-1 panicked, 2^40 aborted, 257 was
/// padded silently).
#[test]
fn harvest_sae_top_k_above_d_sae_is_refused() {
    let tmp = TempDir::new("sae-top-k");
    let corpus = tmp.path("corpus.txt");
    std::fs::write(&corpus, "the cat sat on the mat\n".repeat(4)).unwrap();
    let sae_dir = saes_root().join("saes/standard");
    for k in ["257", "1099511627776", "4611686018427387904", "18446744073709551615"] {
        let mut a = args(&["harvest", "--no-processing", "--model"]);
        a.push(tiny_model().display().to_string());
        a.extend(["--input".to_string(), corpus.display().to_string()]);
        a.extend(["--out".to_string(), tmp.s(&format!("acts-{k}"))]);
        a.extend(["--sae".to_string(), sae_dir.display().to_string()]);
        a.extend(args(&["--sae-top-k", k, "--context-size", "6", "--quiet"]));
        a.extend(args(&["--names", "blocks.0.hook_resid_pre.hook_sae_acts_post"]));
        let o = offline_command(&a).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "--sae-top-k {k}: {err}");
        assert!(
            err.contains(&format!("--sae-top-k {k}")) && err.contains("256") && err.contains("d_sae"),
            "{err}"
        );
        assert!(
            std::fs::read_dir(tmp.path(&format!("acts-{k}"))).map_or(true, |mut d| d.next().is_none()),
            "--sae-top-k {k}: something was written"
        );
    }
}

//! `hooklens cache` on every family's TransformerLens reference (`testdata/<family>/`):
//! the file it writes holds every activation TransformerLens cached, under the same
//! name and shape, with the same values, unprocessed and processed, and every hook's
//! gradient with `--grads`. The families TransformerLens cannot load are compared the
//! same way with their Hugging Face reference (`hf_activations` / `hf_grads`).

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use common::*;
use hooklens_testutil::assert_close;

const FAMILIES: &[&str] = &[
    "neox", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt_neo", "opt", "phi", "gptj", "bloom",
    "mixtral",
];

/// The families with a Hugging Face reference instead (`hf_activations.safetensors`,
/// `hf_grads.safetensors`, the saved names in `hook_names.json`).
const HF_FAMILIES: &[&str] = &["gemma3", "olmo2", "qwen3_moe", "olmoe", "gpt_oss"];

fn run(family: &str, extra: &[&str], out: &Path) -> HashMap<String, Tensor> {
    let dir = root().join("testdata").join(family);
    let model = dir.join("model");
    let tokens = dir.join("tokens.safetensors");
    let mut args = vec![
        "cache".to_string(),
        "--model".into(),
        model.display().to_string(),
        "--tokens".into(),
        tokens.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let o = offline_command(&args).output().unwrap();
    assert!(o.status.success(), "{family}: {}", String::from_utf8_lossy(&o.stderr));
    load(out)
}

#[test]
fn cache_matches_transformer_lens_on_every_family() {
    let tmp = TempDir::new("families-cache");
    for family in FAMILIES {
        for (flag, reference) in [(Some("--no-processing"), "tl_unprocessed"), (None, "tl_processed")] {
            let out = tmp.path(&format!("{family}-{reference}.safetensors"));
            let got = run(family, flag.as_slice(), &out);
            let want = load(root().join(format!("testdata/{family}/{reference}.safetensors")));
            for (name, w) in &want {
                let g = got
                    .get(name)
                    .unwrap_or_else(|| panic!("{family} {reference}: no {name}"));
                assert_close(&format!("{family} {reference} {name}"), g, w, 1e-4);
            }
        }
    }
}

#[test]
fn cache_grads_match_transformer_lens_on_every_family() {
    let tmp = TempDir::new("families-grads");
    for family in FAMILIES {
        let out = tmp.path(&format!("{family}.safetensors"));
        let got = run(family, &["--no-processing", "--grads"], &out);
        let want = load(root().join(format!("testdata/{family}/tl_grads.safetensors")));
        for (name, w) in &want {
            let g = got.get(name).unwrap_or_else(|| panic!("{family}: no {name}"));
            // As in hooklens-models/tests/families.rs: a gradient that is a float
            // residue in TransformerLens itself (Qwen 3's ln1 scale) is compared at the
            // scale of the gradient flowing through its layer.
            let layer = name.strip_prefix("blocks.").and_then(|r| r.split('.').next());
            let floor = layer.map_or(0.0, |l| {
                let resid = &want[&format!("blocks.{l}.hook_resid_pre_grad")];
                1e-3 * max_abs_diff(resid, &resid.zeros_like().unwrap())
            });
            let d = max_abs_diff(g, w);
            let scale = max_abs_diff(w, &w.zeros_like().unwrap()).max(floor);
            assert!(d <= 1e-3 * scale, "{family} {name}: {d} > 1e-3 * {scale}");
        }
    }
}

#[test]
fn cache_matches_hugging_face_on_the_new_families() {
    let tmp = TempDir::new("families-cache-hf");
    for family in HF_FAMILIES {
        let dir = root().join("testdata").join(family);
        let out = tmp.path(&format!("{family}.safetensors"));
        let got = run(family, &["--no-processing", "--grads"], &out);
        let want = load(dir.join("hf_activations.safetensors"));
        let names: Vec<String> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("hook_names.json")).unwrap()).unwrap();
        assert!(!names.is_empty(), "{family}: no saved names");
        for name in &names {
            let g = got.get(name).unwrap_or_else(|| panic!("{family}: no {name}"));
            assert_close(&format!("{family} {name}"), g, &want[name], 1e-4);
        }
        let grads = load(dir.join("hf_grads.safetensors"));
        assert!(!grads.is_empty(), "{family}: no reference gradients");
        for (name, w) in &grads {
            let g = got.get(name).unwrap_or_else(|| panic!("{family}: no {name}"));
            let d = max_abs_diff(g, w);
            let scale = max_abs_diff(w, &w.zeros_like().unwrap());
            assert!(d <= 1e-3 * scale, "{family} {name}: {d} > 1e-3 * {scale}");
        }
    }
}

/// A family's model folder with the tiny byte-level tokenizer (512 ids) beside it.
fn with_tokenizer(tmp: &TempDir, family: &str) -> std::path::PathBuf {
    let dir = tmp.path(family);
    std::fs::create_dir_all(&dir).unwrap();
    let src = root().join("testdata").join(family).join("model");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(
        root().join("testdata/tiny-tokenizer/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    dir
}

#[test]
fn prompts_use_the_models_tokenizer_and_bos_convention() {
    let tmp = TempDir::new("families-text");
    for (family, bos) in [("llama", Some(496u32)), ("qwen3", None), ("gemma2", Some(2))] {
        let dir = with_tokenizer(&tmp, family);
        let out = tmp.path(&format!("{family}.safetensors"));
        let o = offline_command(&[
            "cache",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "hello world",
            "--names",
            "hook_embed",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
        assert!(o.status.success(), "{family}: {}", String::from_utf8_lossy(&o.stderr));
        let tokens = load(&out)["tokens"].to_vec2::<i64>().unwrap();
        match bos {
            // TransformerLens prepends the config's bos_token_id...
            Some(b) => assert_eq!(tokens[0][0], b as i64, "{family}: {tokens:?}"),
            // ... except for Qwen (default_prepend_bos false).
            None => assert_ne!(tokens[0][0], 510, "{family}: {tokens:?}"),
        }
    }
    // Without a tokenizer.json, a prompt is an error naming it (GPT-2's BPE would give
    // ids of another vocabulary).
    let model = root().join("testdata/llama/model");
    let o = offline_command(&["run", "--model", model.to_str().unwrap(), "--prompt", "hello"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("tokenizer.json"), "{err}");
}

#[test]
fn views_and_harvest_run_on_other_families() {
    let tmp = TempDir::new("families-views");
    for family in [
        "neox",
        "gemma2",
        "qwen3",
        "bloom",
        "gptj",
        "gemma3",
        "olmo2",
        "mixtral",
        "qwen3_moe",
        "olmoe",
        "gpt_oss",
    ] {
        let dir = with_tokenizer(&tmp, family);
        let model = dir.to_str().unwrap();
        let html = tmp.path(&format!("{family}-attn.html"));
        let o = offline_command(&[
            "attention",
            "--model",
            model,
            "--prompt",
            "the cat sat",
            "--out",
            html.to_str().unwrap(),
        ])
        .output()
        .unwrap();
        assert!(
            o.status.success(),
            "{family} attention: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(std::fs::read_to_string(&html).unwrap().contains("<script"), "{family}");
        let o = offline_command(&["logit-lens", "--model", model, "--prompt", "the cat sat"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{family} logit-lens: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let corpus = tmp.path(&format!("{family}-corpus.txt"));
        std::fs::write(&corpus, "the cat sat on the mat\na dog ran in the park\n".repeat(20)).unwrap();
        let out = tmp.path(&format!("{family}-acts"));
        let o = offline_command(&[
            "harvest",
            "--model",
            model,
            "--input",
            corpus.to_str().unwrap(),
            "--names",
            "blocks.1.hook_resid_post",
            "--context-size",
            "16",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
        assert!(
            o.status.success(),
            "{family} harvest: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let shard = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .unwrap_or_else(|| panic!("{family}: no shard"));
        let acts = load(&shard);
        let resid = &acts["blocks.1.hook_resid_post"];
        assert_eq!(resid.dims()[1..], [16, 64], "{family}");
        assert_eq!(acts["tokens"].dims()[0], resid.dims()[0], "{family}");
    }
}

#[test]
fn token_files_need_no_tokenizer() {
    let model = root().join("testdata/gemma2/model");
    let tokens = root().join("testdata/gemma2/tokens.safetensors");
    let o = offline_command(&["hooks", "--model", model.to_str().unwrap()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("blocks.1.ln2_post.hook_normalized") && out.contains("[1, 4, 64]"),
        "{out}"
    );
    let o = offline_command(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("loss:") && out.contains("no tokenizer"), "{out}");
}

/// Issue 27 (regression): `generate --tokens` on a checkpoint without tokenizer.json
/// takes ids in and gives ids out: it prints the ids instead of failing for want of a
/// tokenizer it does not need.
#[test]
fn generate_from_token_ids_needs_no_tokenizer() {
    let tmp = TempDir::new("families-generate-ids");
    let model = root().join("testdata/llama/model");
    assert!(!model.join("tokenizer.json").exists());
    let tokens = root().join("testdata/llama/tokens.safetensors");
    let out = tmp.path("gen.safetensors");
    let o = offline_command(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
        "--max-new-tokens",
        "3",
        "--greedy",
        "--out",
        out.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let written = load(&out);
    let rows = written["tokens"]
        .to_dtype(candle_core::DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap();
    // Each row's ids, printed as numbers, one row per block.
    let blocks: Vec<&str> = stdout.trim_end().split("\n---\n").collect();
    assert_eq!(blocks.len(), rows.len(), "{stdout}");
    for (block, row) in blocks.iter().zip(&rows) {
        let last = row.last().unwrap().to_string();
        assert!(block.contains(&last), "{block:?} lacks the id {last}: {stdout}");
    }
}

/// `hooks`, `run`, `generate` and `attribute` on the new families. `attribute` runs
/// with random per-layer transcoders between `mlp.hook_in` and `mlp.hook_out`, which
/// enclose a mixture of experts as they do a dense MLP (router and experts are then
/// replaced whole); its graph has transcoder features, errors, embeddings and logits.
#[test]
fn hooks_run_generate_and_attribute_on_the_new_families() {
    let tmp = TempDir::new("families-subcommands");
    for family in ["gemma3", "olmo2", "mixtral", "qwen3_moe", "olmoe", "gpt_oss"] {
        let dir = root().join("testdata").join(family);
        let model = dir.join("model");
        let m = model.to_str().unwrap();
        // One prompt: attribute explains a single row.
        let first = load(dir.join("tokens.safetensors"))["tokens"].narrow(0, 0, 1).unwrap();
        let n_pos = first.dim(1).unwrap();
        let tokens = tmp.path(&format!("{family}-tokens.safetensors"));
        candle_core::safetensors::save(&HashMap::from([("tokens".to_string(), first)]), &tokens).unwrap();
        let t = tokens.to_str().unwrap();

        let o = offline_command(&["hooks", "--model", m]).output().unwrap();
        let listed = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{family} hooks: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        for point in ["blocks.1.mlp.hook_in", "blocks.1.mlp.hook_out", "blocks.1.hook_mlp_out"] {
            assert!(listed.contains(point), "{family} hooks: no {point} in\n{listed}");
        }

        let o = offline_command(&["run", "--model", m, "--tokens", t]).output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{family} run: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.contains("loss:"), "{family} run: {out}");

        let gen = tmp.path(&format!("{family}-gen.safetensors"));
        let o = offline_command(&[
            "generate",
            "--model",
            m,
            "--tokens",
            t,
            "--max-new-tokens",
            "3",
            "--greedy",
            "--out",
            gen.to_str().unwrap(),
        ])
        .output()
        .unwrap();
        assert!(
            o.status.success(),
            "{family} generate: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(load(&gen)["tokens"].dims(), [1, n_pos + 3], "{family} generate");

        // Random transcoders in circuit-tracer's format (per layer W_enc, W_dec
        // `[F, d_model]`, b_enc `[F]`, b_dec `[d_model]`); ReLU with b_enc 0 keeps about
        // half the features of each position active.
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
        let d = config["hidden_size"].as_u64().unwrap() as usize;
        let n_layers = config["num_hidden_layers"].as_u64().unwrap() as usize;
        let tc = tmp.path(&format!("{family}-transcoders"));
        std::fs::create_dir_all(&tc).unwrap();
        std::fs::write(
            tc.join("config.yaml"),
            "model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\nfeature_output_hook: mlp.hook_out\n",
        )
        .unwrap();
        let cpu = candle_core::Device::Cpu;
        let f = 32;
        for l in 0..n_layers {
            let std = 1.0 / (d as f64).sqrt();
            let layer = HashMap::from([
                (
                    "W_enc".to_string(),
                    Tensor::randn(0f32, std as f32, (f, d), &cpu).unwrap(),
                ),
                ("W_dec".to_string(), Tensor::randn(0f32, 0.1, (f, d), &cpu).unwrap()),
                (
                    "b_enc".to_string(),
                    Tensor::zeros(f, candle_core::DType::F32, &cpu).unwrap(),
                ),
                (
                    "b_dec".to_string(),
                    Tensor::zeros(d, candle_core::DType::F32, &cpu).unwrap(),
                ),
            ]);
            candle_core::safetensors::save(&layer, tc.join(format!("layer_{l}.safetensors"))).unwrap();
        }
        let graph = tmp.path(&format!("{family}-graph.json"));
        let o = offline_command(&[
            "attribute",
            "--model",
            m,
            "--tokens",
            t,
            "--transcoders",
            tc.to_str().unwrap(),
            "--max-n-logits",
            "3",
            // Keep every node: random features may carry little of the influence.
            "--node-threshold",
            "1.0",
            "--edge-threshold",
            "1.0",
            "--quiet",
            "--out",
            graph.to_str().unwrap(),
        ])
        .output()
        .unwrap();
        assert!(
            o.status.success(),
            "{family} attribute: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&graph).unwrap()).unwrap();
        let kinds: Vec<&str> = g["nodes"]
            .as_array()
            .unwrap_or_else(|| panic!("{family}: no nodes in the graph"))
            .iter()
            .map(|n| n["feature_type"].as_str().unwrap())
            .collect();
        for kind in [
            "cross layer transcoder",
            "mlp reconstruction error",
            "embedding",
            "logit",
        ] {
            assert!(kinds.contains(&kind), "{family} attribute: no {kind} node in {kinds:?}");
        }
    }
}

//! The `hooklens` binary, run as a user would, on the tiny reference model.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Tensor};
use common::*;

/// Runs `hooklens` with `args` (paths as given), with a Hugging Face cache that is
/// empty and offline unless `env` says otherwise, so no test can reach the network.
fn hooklens_env(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = offline_command(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the hooklens binary runs")
}

fn hooklens(args: &[&str]) -> Output {
    hooklens_env(args, &[])
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed: {}", stderr(&o));
    stdout(&o)
}

/// A failure with a readable message: non-zero exit, the message on stderr, no panic
/// and no Debug dump.
fn fails(o: Output, needle: &str) -> String {
    let err = stderr(&o);
    assert!(!o.status.success(), "succeeded, stdout: {}", stdout(&o));
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
    assert!(!err.contains("Error {") && !err.contains("Invalid("), "{err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The largest difference relative to the largest magnitude of `want`.
fn rel_diff(got: &Tensor, want: &Tensor) -> f32 {
    max_abs_diff(got, want) / max_abs_diff(want, &want.zeros_like().unwrap()).max(1e-12)
}

/// A model directory with the tiny model and a byte-level BPE that fits it (512 ids).
fn tiny_with_tokenizer(tmp: &TempDir) -> PathBuf {
    let dir = tmp.path("model");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny_model().join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(
        root().join("testdata/tiny-tokenizer/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    dir
}

#[test]
fn cache_matches_transformer_lens_unprocessed_and_processed() {
    let tmp = TempDir::new("cache");
    let (model, tokens) = (tiny_model(), tiny_tokens());
    for (flag, reference) in [(Some("--no-processing"), "tl_unprocessed"), (None, "tl_processed")] {
        let out = tmp.path(&format!("{reference}.safetensors"));
        let mut args = vec!["cache", "--model", s(&model), "--tokens", s(&tokens), "--out", s(&out)];
        args.extend(flag);
        ok(hooklens(&args));
        let got = load(&out);
        let want = load(root().join(format!("testdata/tiny-gpt2/{reference}.safetensors")));
        for name in [
            "blocks.0.hook_resid_post",
            "blocks.1.attn.hook_z",
            "logits",
            "loss",
            "loss_per_token",
        ] {
            let d = rel_diff(&got[name], &want[name]);
            assert!(d < 1e-4, "{reference} {name}: {d}");
        }
        // Every activation TransformerLens cached, under the same name.
        for name in want.keys() {
            assert!(got.contains_key(name), "{reference}: no {name}");
        }
        assert_eq!(got["loss"].dims(), &[1]);
        assert_eq!(got["tokens"].dtype(), DType::I64);
        let tokens = load(tiny_tokens()).remove("tokens").unwrap();
        assert_eq!(rel_diff(&got["tokens"], &tokens), 0.0);
    }
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 2, "no temporary file left");
}

#[test]
fn cache_grads_match_transformer_lens() {
    let tmp = TempDir::new("cache-grads");
    let out = tmp.path("grads.safetensors");
    let (model, tokens) = (tiny_model(), tiny_tokens());
    let args = [
        "cache",
        "--model",
        s(&model),
        "--tokens",
        s(&tokens),
        "--no-processing",
        "--grads",
        "--out",
        s(&out),
    ];
    ok(hooklens(&args));
    let got = load(&out);
    let want = load(root().join("testdata/tiny-gpt2/tl_grads.safetensors"));
    assert_eq!(want.len(), 38);
    for (name, w) in &want {
        let g = got.get(name).unwrap_or_else(|| panic!("no {name}"));
        let d = rel_diff(g, w);
        assert!(d < 1e-3, "{name}: {d}");
    }
    let reference = load(root().join("testdata/tiny-gpt2/tl_unprocessed.safetensors"));
    assert!(rel_diff(&got["loss"], &reference["loss"]) < 1e-4);
    assert!(rel_diff(&got["blocks.0.hook_resid_post"], &reference["blocks.0.hook_resid_post"]) < 1e-4);
}

#[test]
fn cache_names_pos_slice_and_batch_dim() {
    let tmp = TempDir::new("cache-opts");
    let out = tmp.path("c.safetensors");
    ok(hooklens(&[
        "cache",
        "--model",
        s(&tiny_model()),
        "--tokens",
        s(&tiny_tokens()),
        "--names",
        "blocks.*.attn.hook_pattern",
        "--names",
        "hook_embed",
        "--pos-slice",
        "-1",
        "--out",
        s(&out),
    ]));
    let got = load(&out);
    let mut names: Vec<&str> = got.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "blocks.0.attn.hook_pattern",
            "blocks.1.attn.hook_pattern",
            "hook_embed",
            "logits",
            "loss",
            "loss_per_token",
            "tokens"
        ]
    );
    // The last query position of the pattern; logits keep every position.
    assert_eq!(got["blocks.0.attn.hook_pattern"].dims(), &[2, 4, 10]);
    assert_eq!(got["hook_embed"].dims(), &[2, 64]);
    assert_eq!(got["logits"].dims(), &[2, 10, 512]);

    // A batch of one, without its batch axis.
    let one = tmp.path("one.safetensors");
    let tokens = load(tiny_tokens()).remove("tokens").unwrap().narrow(0, 1, 1).unwrap();
    candle_core::safetensors::save(&HashMap::from([("tokens".to_string(), tokens)]), &one).unwrap();
    ok(hooklens(&[
        "cache",
        "--model",
        s(&tiny_model()),
        "--tokens",
        s(&one),
        "--remove-batch-dim",
        "--names",
        "blocks.1.hook_resid_post",
        "--out",
        s(&out),
    ]));
    let got = load(&out);
    assert_eq!(got["blocks.1.hook_resid_post"].dims(), &[10, 64]);
    let want = load(root().join("testdata/tiny-gpt2/tl_processed.safetensors"));
    let want = want["blocks.1.hook_resid_post"].get(1).unwrap();
    assert!(rel_diff(&got["blocks.1.hook_resid_post"], &want) < 1e-4);
}

#[test]
fn cache_with_text_prompts_pads_and_saves_the_mask() {
    let tmp = TempDir::new("cache-text");
    let model = tiny_with_tokenizer(&tmp);
    let out = tmp.path("c.safetensors");
    ok(hooklens(&[
        "cache",
        "--model",
        s(&model),
        "--prompt",
        "Hello world",
        "ma",
        "--names",
        "hook_embed",
        "--out",
        s(&out),
    ]));
    let got = load(&out);
    assert_eq!(
        got["tokens"].to_vec2::<i64>().unwrap()[0],
        [511, 39, 68, 75, 363, 338, 266, 75, 67]
    );
    assert_eq!(
        got["attention_mask"].to_vec2::<i64>().unwrap()[1],
        [1, 1, 0, 0, 0, 0, 0, 0, 0]
    );
    assert!(got["loss"].to_vec1::<f32>().unwrap()[0].is_finite());
}

#[test]
fn bad_flag_values_are_readable_errors() {
    let tmp = TempDir::new("bad");
    let out = tmp.path("c.safetensors");
    let (m, t, o) = (tiny_model(), tiny_tokens(), out.clone());
    let base = ["cache", "--model", s(&m), "--tokens", s(&t), "--out", s(&o)];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend(extra);
        hooklens(&a)
    };
    fails(with(&["--pos-slice", "1:x"]), "`x` is not an integer");
    fails(
        with(&["--names", "blocks.0.hook_resid_pr"]),
        "did you mean `blocks.0.hook_resid_pre`",
    );
    fails(with(&["--names", "blocks.*.hook_nothing"]), "matched no hook point");
    fails(with(&["--remove-batch-dim"]), "needs a batch of one");
    fails(with(&["--dtype", "f8"]), "invalid value 'f8'");
    fails(with(&["--device", "gpu"]), "expected cpu, cuda, cuda:N or metal");
    fails(
        hooklens(&[
            "cache",
            "--model",
            s(&m),
            "--tokens",
            "/nonexistent.safetensors",
            "--out",
            s(&o),
        ]),
        "/nonexistent.safetensors",
    );
    fails(
        hooklens(&[
            "cache",
            "--model",
            s(&m),
            "--tokens",
            s(&m.join("model.safetensors")),
            "--out",
            s(&o),
        ]),
        "no tensor named `tokens`",
    );
    fails(
        hooklens(&["cache", "--model", "./no/such/dir", "--tokens", s(&t), "--out", s(&o)]),
        "no such directory",
    );
    fails(hooklens(&["cache", "--model", s(&m), "--out", s(&o)]), "--prompt");
    // Without its tokenizer.json the tiny GPT-2 gets no GPT-2 BPE (ids past its 512):
    // the error names the file.
    let bare_tmp = TempDir::new("bare-tiny");
    let bare = bare_tmp.path("model");
    std::fs::create_dir_all(&bare).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(m.join(f), bare.join(f)).unwrap();
    }
    fails(
        hooklens(&["cache", "--model", s(&bare), "--prompt", "Hello world", "--out", s(&o)]),
        "no tokenizer.json",
    );
    fails(
        hooklens(&[
            "cache",
            "--model",
            s(&m),
            "--tokens",
            s(&t),
            "--out",
            "/nonexistent/dir/c.safetensors",
        ]),
        "/nonexistent/dir",
    );
    fails(
        hooklens(&["generate", "--model", s(&m), "--tokens", s(&t)]),
        "--max-new-tokens",
    );
    fails(
        hooklens(&[
            "generate",
            "--model",
            s(&m),
            "--tokens",
            s(&t),
            "--max-new-tokens",
            "2",
            "--top-p",
            "1.5",
        ]),
        "top_p",
    );
    fails(hooklens(&["hooks", "--model", s(&m), "--pos", "65"]), "n_ctx = 64");
    fails(hooklens(&["nonsense"]), "unrecognized subcommand");
    assert!(!out.exists());
}

#[test]
fn tokenize_prints_json() {
    // BOS first by default, as TransformerLens's `to_tokens` for GPT-2; --no-bos leaves it off.
    let ids: Vec<u32> = serde_json::from_str(&ok(hooklens(&["tokenize", "Hello world"]))).unwrap();
    assert_eq!(ids, [50256, 15496, 995]);
    let ids: Vec<u32> = serde_json::from_str(&ok(hooklens(&["tokenize", "--no-bos", "Hello world"]))).unwrap();
    assert_eq!(ids, [15496, 995]);
    let ids: Vec<u32> =
        serde_json::from_str(&ok(hooklens(&["tokenize", "--prepend-bos", "<|endoftext|> the"]))).unwrap();
    assert_eq!(ids, [50256, 50256, 262]);
    fails(
        hooklens(&["tokenize", "--prepend-bos", "--no-bos", "x"]),
        "cannot be used with",
    );
    let strs: Vec<String> =
        serde_json::from_str(&ok(hooklens(&["tokenize", "--no-bos", "--str-tokens", "I'm  here\n"]))).unwrap();
    assert_eq!(strs, ["I", "'m", " ", " here", "\n"]);

    let tmp = TempDir::new("tokenize");
    let model = tiny_with_tokenizer(&tmp);
    let ids: Vec<u32> = serde_json::from_str(&ok(hooklens(&[
        "tokenize",
        "--model",
        s(&model),
        "--prepend-bos",
        "Hello world",
    ])))
    .unwrap();
    assert_eq!(ids, [511, 39, 68, 75, 363, 338, 266, 75, 67]);
    // Qwen 3: TransformerLens puts no BOS by default; --prepend-bos puts the config's.
    let qwen = tmp.path("qwen3");
    std::fs::create_dir_all(&qwen).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(root().join("testdata/qwen3/model").join(f), qwen.join(f)).unwrap();
    }
    std::fs::copy(model.join("tokenizer.json"), qwen.join("tokenizer.json")).unwrap();
    let plain: Vec<u32> = serde_json::from_str(&ok(hooklens(&["tokenize", "--model", s(&qwen), "Hello"]))).unwrap();
    let bos: Vec<u32> = serde_json::from_str(&ok(hooklens(&[
        "tokenize",
        "--model",
        s(&qwen),
        "--prepend-bos",
        "Hello",
    ])))
    .unwrap();
    assert_eq!(bos[0], 510);
    assert_eq!(bos[1..], plain[..]);
    // The same two flags on a subcommand that runs the model: the losses differ.
    let loss = |extra: &str| -> String {
        let out = ok(hooklens(&[
            "run",
            "--model",
            s(&qwen),
            "--prompt",
            "Hello world",
            extra,
        ]));
        out.lines().find(|l| l.contains("loss")).unwrap().to_string()
    };
    assert_ne!(loss("--prepend-bos"), loss("--no-bos"));
    let bare = tmp.path("bare");
    std::fs::create_dir_all(&bare).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny_model().join(f), bare.join(f)).unwrap();
    }
    fails(
        hooklens(&["tokenize", "--model", s(&bare), "Hello"]),
        "no tokenizer.json",
    );
}

#[test]
fn generate_prints_text_and_writes_tokens() {
    let tmp = TempDir::new("generate");
    let out = tmp.path("g.safetensors");
    let (m, t) = (tiny_model(), tiny_tokens());
    let greedy = ok(hooklens(&[
        "generate",
        "--model",
        s(&m),
        "--tokens",
        s(&t),
        "--max-new-tokens",
        "5",
        "--greedy",
        "--out",
        s(&out),
    ]));
    assert_eq!(greedy.matches("\n---\n").count(), 1, "{greedy}");
    let got = load(&out).remove("tokens").unwrap();
    assert_eq!(got.dims(), &[2, 15]);
    let input = load(&t).remove("tokens").unwrap();
    assert_eq!(rel_diff(&got.narrow(1, 0, 10).unwrap(), &input), 0.0);

    let sample = |seed: &str| {
        ok(hooklens(&[
            "generate",
            "--model",
            s(&m),
            "--tokens",
            s(&t),
            "--max-new-tokens",
            "8",
            "--temperature",
            "1.5",
            "--top-k",
            "50",
            "--seed",
            seed,
        ]))
    };
    assert_eq!(sample("7"), sample("7"));

    let model = tiny_with_tokenizer(&tmp);
    let text = ok(hooklens(&[
        "generate",
        "--model",
        s(&model),
        "--prompt",
        "Hello world",
        "--max-new-tokens",
        "3",
        "--greedy",
    ]));
    assert!(text.starts_with("Hello world"), "{text}");
}

#[test]
fn hooks_lists_every_point_with_its_shape() {
    let out = ok(hooklens(&["hooks", "--model", s(&tiny_model()), "--no-processing"]));
    let lines: Vec<&str> = out.lines().collect();
    // TransformerLens's 38 points, and circuit-tracer's mlp.hook_in / hook_out in both
    // blocks (hook_in right before mlp.hook_pre, hook_out right after mlp.hook_post).
    assert_eq!(lines.len(), 38 + 2 * 2, "{out}");
    for l in 0..2 {
        let at = |name: &str| {
            lines
                .iter()
                .position(|line| line.starts_with(&format!("blocks.{l}.{name} ")))
                .unwrap_or_else(|| panic!("no blocks.{l}.{name}: {out}"))
        };
        assert_eq!(at("mlp.hook_in") + 1, at("mlp.hook_pre"), "{out}");
        assert_eq!(at("mlp.hook_out"), at("mlp.hook_post") + 1, "{out}");
        for name in ["mlp.hook_in", "mlp.hook_out"] {
            assert!(lines[at(name)].ends_with("[1, 4, 64]"), "{}", lines[at(name)]);
        }
    }
    assert!(lines[0].starts_with("hook_embed") && lines[0].ends_with("[1, 4, 64]"));
    let pattern = lines
        .iter()
        .find(|l| l.starts_with("blocks.1.attn.hook_pattern "))
        .unwrap();
    assert!(pattern.ends_with("[1, 4, 4, 4]"), "{pattern}");
    let out = ok(hooklens(&[
        "hooks",
        "--model",
        s(&tiny_model()),
        "--all-hooks",
        "--pos",
        "3",
    ]));
    let result = out
        .lines()
        .find(|l| l.starts_with("blocks.0.attn.hook_result "))
        .unwrap();
    assert!(result.ends_with("[1, 3, 4, 64]"), "{result}");
    assert!(out
        .lines()
        .any(|l| l.starts_with("hook_tokens ") && l.ends_with("[1, 3]")));
}

#[test]
fn run_prints_loss_and_top_tokens() {
    let out = ok(hooklens(&[
        "run",
        "--model",
        s(&tiny_model()),
        "--tokens",
        s(&tiny_tokens()),
        "--no-processing",
        "--top",
        "3",
    ]));
    // TransformerLens's loss on these tokens is 6.396185.
    assert!(out.contains("loss: 6.3962"), "{out}");
    assert_eq!(out.matches("top 3 next tokens").count(), 2, "{out}");
    let tmp = TempDir::new("run");
    let model = tiny_with_tokenizer(&tmp);
    let out = ok(hooklens(&["run", "--model", s(&model), "--prompt", "Hello world"]));
    assert!(out.contains("loss: ") && out.contains("top 10 next tokens"), "{out}");
}

#[test]
fn hugging_face_ids_resolve_offline_from_the_cache() {
    let tmp = TempDir::new("hub");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = tmp.path("hub/models--openai-community--gpt2");
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny_model().join(f), snap.join(f)).unwrap();
    }
    let hf_home = tmp.to_path_buf();
    // HF_HOME/hub is the cache when HF_HUB_CACHE is not set.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hooklens"));
    cmd.args(["hooks", "--model", "gpt2", "--pos", "2"])
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HUGGINGFACE_HUB_CACHE")
        .env("HF_HOME", &hf_home);
    let out = ok(cmd.output().unwrap());
    assert!(out.starts_with("hook_embed") && out.lines().next().unwrap().ends_with("[1, 2, 64]"));

    let cache = tmp.path("hub");
    let out = hooklens_env(&["hooks", "--model", "gpt2-medium"], &[("HF_HUB_CACHE", &cache)]);
    let err = fails(out, "model `gpt2-medium`");
    assert!(err.contains("HF_HUB_OFFLINE") && err.contains(s(&cache)), "{err}");
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["cache", "generate", "tokenize", "hooks", "run", "attribute"] {
        let out = ok(hooklens(&[sub, "--help"]));
        assert!(out.contains("Usage: hooklens"), "{sub}: {out}");
    }
    let out = ok(hooklens(&["--help"]));
    for sub in ["cache", "generate", "tokenize", "hooks", "run", "attribute"] {
        assert!(out.contains(sub), "{out}");
    }
}

/// A small random model with GPT-2's real vocabulary, so that text goes through
/// GPT-2's built-in BPE end to end.
fn small_gpt2_vocab(tmp: &TempDir) -> PathBuf {
    use hooklens_models::model::{random_weights, save_hf_checkpoint};
    let cfg = hooklens_models::TransformerConfig::new(1, 32, 2, 50257, 32);
    let dir = tmp.path("gpt2-vocab");
    save_hf_checkpoint(&dir, &cfg, &random_weights(&cfg, 1).unwrap(), DType::F32).unwrap();
    dir
}

#[test]
fn text_through_gpt2_bpe_end_to_end() {
    let tmp = TempDir::new("bpe");
    let dir = small_gpt2_vocab(&tmp);
    let m = s(&dir);
    let ids: Vec<u32> = serde_json::from_str(&ok(hooklens(&[
        "tokenize",
        "--model",
        m,
        "--prepend-bos",
        "Hello world",
    ])))
    .unwrap();
    assert_eq!(ids, [50256, 15496, 995]);

    let out = tmp.path("c.safetensors");
    ok(hooklens(&[
        "cache",
        "--model",
        m,
        "--prompt",
        "Hello world",
        "The end",
        "of it",
        "--names",
        "hook_embed",
        "--out",
        s(&out),
    ]));
    let got = load(&out);
    // Each prompt is two tokens after BOS, so nothing is padded.
    assert_eq!(
        got["tokens"].to_vec2::<i64>().unwrap(),
        [[50256, 15496, 995], [50256, 464, 886], [50256, 1659, 340]]
    );
    assert!(!got.contains_key("attention_mask"), "equal lengths need no mask");

    let text = ok(hooklens(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "Hello world",
        "--max-new-tokens",
        "4",
        "--greedy",
    ]));
    assert!(text.starts_with("Hello world"), "{text}");
    let text = ok(hooklens(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "Hi",
        "A longer prompt",
        "--max-new-tokens",
        "2",
        "--seed",
        "3",
    ]));
    let parts: Vec<&str> = text.split("\n---\n").collect();
    assert_eq!(parts.len(), 2, "{text}");
    assert!(
        parts[0].starts_with("Hi") && parts[1].starts_with("A longer prompt"),
        "{text}"
    );

    let out = ok(hooklens(&[
        "run",
        "--model",
        m,
        "--prompt",
        "Hello world",
        "--top",
        "2",
    ]));
    assert!(out.contains("loss: ") && out.contains("top 2 next tokens"), "{out}");
    let long = "word ".repeat(40);
    fails(hooklens(&["run", "--model", m, "--prompt", &long]), "n_ctx = 32");
}

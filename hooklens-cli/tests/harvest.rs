//! `hooklens harvest`, run as a user (or a job scheduler) would: killed in the middle
//! and restarted it ends with the same bytes as an uninterrupted run; workers split the
//! input; the shards hold what the model computes; bad input is a readable error.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, IndexOp};
use common::*;
use hooklens::{CacheOptions, HookedModel};

fn hooklens(args: &[&str]) -> Output {
    offline_command(args).output().expect("the hooklens binary runs")
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fails(o: Output, needle: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "succeeded: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A small random model with GPT-2's vocabulary (2 layers, d_model 64, n_ctx 64).
fn small_model(tmp: &TempDir) -> PathBuf {
    use hooklens_models::gpt2::{random_weights, save_hf_checkpoint};
    let cfg = hooklens_models::Gpt2Config::new(2, 64, 4, 50257, 64);
    let dir = tmp.path("model");
    save_hf_checkpoint(&dir, &cfg, &random_weights(&cfg, 5).unwrap(), DType::F32).unwrap();
    dir
}

/// `lines` lines of made-up text (some blank), as plain text and as JSON lines.
fn corpus(tmp: &TempDir, lines: usize) -> (PathBuf, PathBuf) {
    let words = [
        "the", "model", "reads", "a", "token", "and", "writes", "to", "residual", "stream", "every", "head", "attends",
        "back", "copying", "what", "came", "after", "it", "before",
    ];
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let mut text = String::new();
    let mut jsonl = String::new();
    for i in 0..lines {
        let line = if i % 50 == 7 {
            String::new()
        } else {
            let n = 3 + next() % 25;
            (0..n)
                .map(|_| words[next() % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        };
        text.push_str(&line);
        text.push('\n');
        jsonl.push_str(&serde_json::json!({ "id": i, "text": line }).to_string());
        jsonl.push('\n');
    }
    let (t, j) = (tmp.path("corpus.txt"), tmp.path("corpus.jsonl"));
    std::fs::write(&t, text).unwrap();
    std::fs::write(&j, jsonl).unwrap();
    (t, j)
}

/// Every file of `dir` by name, with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn manifest(dir: &Path, prefix: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join(format!("{prefix}-manifest.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn harvest_args<'a>(model: &'a str, input: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "harvest",
        "--model",
        model,
        "--input",
        input,
        "--names",
        "blocks.0.hook_resid_post",
        "blocks.*.attn.hook_z",
        "--context-size",
        "64",
        "--batch-size",
        "4",
        "--shard-size-mb",
        "0.5",
        "--out",
        out,
    ]
}

#[test]
fn killed_and_restarted_ends_with_the_same_shards() {
    let tmp = TempDir::new("resume");
    let model = small_model(&tmp);
    let (text, _) = corpus(&tmp, 3000);
    let (m, t) = (model.to_str().unwrap(), text.to_str().unwrap());
    let whole = tmp.path("whole");
    let w = whole.to_str().unwrap();
    ok(hooklens(&harvest_args(m, t, w)));
    let want = files(&whole);
    let done = manifest(&whole, "00000-of-00001");
    assert_eq!(done["complete"], true);
    let n_shards = done["shards"].as_array().unwrap().len();
    assert!(n_shards >= 5, "{n_shards} shards: too few to interrupt in the middle");
    assert_eq!(want.len(), n_shards + 1, "shards and the manifest, nothing else");

    // Interrupted: killed (SIGKILL, nothing cleaned up) once the first shard is there.
    let cut = tmp.path("cut");
    let c = cut.to_str().unwrap();
    let mut child = offline_command(&harvest_args(m, t, c))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = cut.join("00000-of-00001-shard-000000.safetensors");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !first.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "harvest ended before writing a shard"
        );
        assert!(Instant::now() < deadline, "no shard after 120 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The kill may land between the first shard's rename and its manifest entry.
    let partial = cut.join("00000-of-00001-manifest.json");
    let finished = if partial.exists() {
        let partial = manifest(&cut, "00000-of-00001");
        assert_eq!(partial["complete"], false, "the run finished before it was killed");
        partial["shards"].as_array().unwrap().len()
    } else {
        0
    };
    assert!(
        finished < n_shards,
        "the run finished before it was killed ({finished} of {n_shards} shards): the test needs more input"
    );

    let err = ok(hooklens(&harvest_args(m, t, c)));
    assert!(err.contains(&format!("wrote {n_shards} shards")), "{err}");
    let got = files(&cut);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "same files, no temporaries left"
    );
    for (name, bytes) in &want {
        assert!(got[name] == *bytes, "{name} differs after the restart");
    }
    // A finished harvest is left alone.
    let err = ok(hooklens(&harvest_args(m, t, c)));
    assert!(err.contains("nothing to do"), "{err}");
    assert_eq!(files(&cut), want);

    // Changed settings do not mix into a harvest.
    let mut args = harvest_args(m, t, c);
    args[9] = "32";
    fails(
        hooklens(&args),
        "was written with context_size = 64, this run has context_size = 32",
    );
}

#[test]
fn shards_hold_the_model_activations_and_workers_split_the_input() {
    let tmp = TempDir::new("split");
    let model_dir = small_model(&tmp);
    let (text, jsonl) = corpus(&tmp, 300);
    let (m, t, j) = (
        model_dir.to_str().unwrap(),
        text.to_str().unwrap(),
        jsonl.to_str().unwrap(),
    );
    let out = tmp.path("out");
    let o = out.to_str().unwrap();
    ok(hooklens(&harvest_args(m, t, o)));

    // What the shards hold: BOS-first sequences and the activations of those tokens.
    let model = hooklens_models::HookedGpt2::from_pretrained(m, &hooklens_models::LoadOptions::default()).unwrap();
    let shard = load(out.join("00000-of-00001-shard-000000.safetensors"));
    let tokens = &shard["tokens"];
    assert_eq!(tokens.dtype(), DType::I64);
    let (rows, ctx) = tokens.dims2().unwrap();
    assert_eq!(ctx, 64);
    let ids = tokens.to_vec2::<i64>().unwrap();
    assert!(ids.iter().all(|r| r[0] == 50256), "every sequence starts with BOS");
    // The second document follows the first after an end-of-text token.
    let corpus_text = std::fs::read_to_string(&text).unwrap();
    let first_line = corpus_text.lines().next().unwrap();
    let first_doc = model.tokenizer().unwrap().encode(first_line).unwrap();
    let want: Vec<i64> = first_doc.iter().map(|&i| i64::from(i)).collect();
    assert_eq!(&ids[0][1..1 + want.len()], want.as_slice());
    assert_eq!(ids[0][1 + want.len()], 50256);
    let row = tokens.i(rows - 1..rows).unwrap();
    let (_, cache) = model
        .run_with_cache(CacheOptions::new().names("blocks.*"), |m| m.forward(&row))
        .unwrap();
    for name in ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"] {
        let got = shard[name].i(rows - 1).unwrap();
        let want = cache.try_get(name).unwrap().i(0).unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "{name}: {diff}");
    }
    assert_eq!(shard.len(), 4, "tokens, resid_post and two hook_z: {:?}", shard.keys());

    // JSON lines with the same documents give the same bytes.
    let from_jsonl = tmp.path("jsonl");
    ok(hooklens(&harvest_args(m, j, from_jsonl.to_str().unwrap())));
    let a = files(&out);
    let b = files(&from_jsonl);
    for (name, bytes) in &a {
        if name.ends_with(".safetensors") {
            assert!(b[name] == *bytes, "{name} differs between text and JSON lines");
        }
    }

    // Two workers: disjoint lines (even and odd), their own files, in one directory.
    let split = tmp.path("two");
    for i in ["0", "1"] {
        let mut args = harvest_args(m, t, split.to_str().unwrap());
        args.extend(["--shard-index", i, "--num-shards", "2"]);
        ok(hooklens(&args));
    }
    let m0 = manifest(&split, "00000-of-00002");
    let m1 = manifest(&split, "00001-of-00002");
    assert_eq!(m0["complete"], true);
    assert_eq!(m1["complete"], true);
    let lines = |m: &serde_json::Value| m["totals"]["lines"].as_u64().unwrap();
    assert_eq!(lines(&m0), 300);
    let total = |m: &serde_json::Value| {
        m["totals"]["tokens"].as_u64().unwrap() + m["totals"]["dropped_tail_tokens"].as_u64().unwrap()
    };
    let whole = manifest(&out, "00000-of-00001");
    // Tokens of documents (+1 end-of-text each) plus one BOS per sequence, split two ways.
    let docs = |m: &serde_json::Value| total(m) - m["totals"]["sequences"].as_u64().unwrap();
    assert_eq!(docs(&m0) + docs(&m1), docs(&whole));
    let w0: Vec<_> = files(&split)
        .into_keys()
        .filter(|n| n.starts_with("00000-of-00002-shard-"))
        .collect();
    assert!(!w0.is_empty());
    let t0 = load(split.join(&w0[0]));
    let t1 = load(split.join(w0[0].replace("00000-of", "00001-of")));
    assert_ne!(
        t0["tokens"].to_vec2::<i64>().unwrap(),
        t1["tokens"].to_vec2::<i64>().unwrap()
    );
}

#[test]
fn bad_harvest_flags_are_readable_errors() {
    let tmp = TempDir::new("bad");
    let model = small_model(&tmp);
    let (text, jsonl) = corpus(&tmp, 20);
    let (m, t) = (model.to_str().unwrap(), text.to_str().unwrap());
    let o = tmp.path("out");
    let o = o.to_str().unwrap();
    let with = |extra: &[&str]| {
        let mut a = harvest_args(m, t, o);
        a.extend(extra);
        hooklens(&a)
    };
    fails(
        with(&["--shard-index", "2", "--num-shards", "2"]),
        "must be below --num-shards 2",
    );
    fails(with(&["--num-shards", "0"]), "--num-shards must be at least 1");
    // Replaces the value at `i` of the usual arguments.
    let set = |i: usize, v: &str| {
        let mut a = harvest_args(m, t, o);
        a[i] = v;
        hooklens(&a)
    };
    fails(set(11, "0"), "--batch-size must be at least 1");
    fails(set(13, "0"), "must be a positive number");
    fails(set(13, "-1"), "--shard-size-mb -1 must be a positive number");
    fails(set(9, "65"), "n_ctx = 64");
    let mut a = harvest_args(m, t, o);
    a[6] = "blocks.0.hook_resid_pots";
    fails(hooklens(&a), "did you mean `blocks.0.hook_resid_post`");
    fails(
        hooklens(&harvest_args(m, "/nonexistent/corpus.txt", o)),
        "/nonexistent/corpus.txt",
    );
    let bad = tmp.path("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"body\": \"no text\"}\n").unwrap();
    fails(
        hooklens(&harvest_args(m, bad.to_str().unwrap(), o)),
        "line 2: no field `text`",
    );
    let mut a = harvest_args(m, jsonl.to_str().unwrap(), o);
    a.extend(["--text-field", "id"]);
    fails(hooklens(&a), "field `id` is not a string but a number");
    fails(
        hooklens(&["harvest", "--model", m, "--input", t, "--out", o]),
        "--names",
    );
}

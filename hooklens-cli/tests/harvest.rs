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

/// A small random model with GPT-2's vocabulary (2 layers, d_model 64, n_ctx 64).
fn small_model(tmp: &TempDir) -> PathBuf {
    use hooklens_models::model::{random_weights, save_hf_checkpoint};
    let cfg = hooklens_models::TransformerConfig::new(2, 64, 4, 50257, 64);
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
    ok_stderr(hooklens(&harvest_args(m, t, w)));
    let want = files(&whole);
    let done = manifest(&whole, "00000-of-00001");
    assert_eq!(done["complete"], true);
    let n_shards = done["shards"].as_array().unwrap().len();
    assert!(n_shards >= 5, "{n_shards} shards: too few to interrupt in the middle");
    assert_eq!(
        want.len(),
        n_shards + 2,
        "shards, the manifest and the lock file, nothing else: {:?}",
        want.keys()
    );

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

    let err = ok_stderr(hooklens(&harvest_args(m, t, c)));
    assert!(err.contains(&format!("wrote {n_shards} shards")), "{err}");
    // The resumed run says where it picked up.
    if finished > 0 {
        assert!(
            err.contains("resuming") && err.contains(&format!("{finished} shards (")),
            "{err}"
        );
    } else {
        assert!(!err.contains("resuming"), "{err}");
    }
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
    let err = ok_stderr(hooklens(&harvest_args(m, t, c)));
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
    ok_stderr(hooklens(&harvest_args(m, t, o)));

    // What the shards hold: BOS-first sequences and the activations of those tokens.
    let model =
        hooklens_models::HookedTransformer::from_pretrained(m, &hooklens_models::LoadOptions::default()).unwrap();
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
    ok_stderr(hooklens(&harvest_args(m, j, from_jsonl.to_str().unwrap())));
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
        ok_stderr(hooklens(&args));
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

/// `harvest_args` with the working directory at `tmp`, so that relative paths work.
fn in_dir(tmp: &TempDir, args: &[&str]) -> Output {
    offline_command(args).current_dir(&tmp.0).output().unwrap()
}

#[test]
fn resume_proves_the_same_corpus_and_model_whatever_the_paths() {
    let tmp = TempDir::new("fingerprint");
    let model = small_model(&tmp);
    corpus(&tmp, 200);
    let m = model.to_str().unwrap();
    ok_stderr(in_dir(&tmp, &harvest_args(m, "corpus.txt", "out")));
    // `./corpus.txt`, an absolute path, a link: one input, nothing to do.
    let abs = tmp.s("corpus.txt");
    std::os::unix::fs::symlink(tmp.path("corpus.txt"), tmp.path("link.txt")).unwrap();
    for input in ["./corpus.txt", abs.as_str(), "link.txt"] {
        let err = ok_stderr(in_dir(&tmp, &harvest_args(m, input, "out")));
        assert!(err.contains("nothing to do"), "{input}: {err}");
    }
    // The same size, other text: refused, naming the input.
    let text = std::fs::read(tmp.path("corpus.txt")).unwrap();
    let mut edited = text.clone();
    let at = edited.iter().position(|&b| b == b'a').unwrap();
    edited[at] = b'o';
    std::fs::write(tmp.path("corpus.txt"), &edited).unwrap();
    fails(
        in_dir(&tmp, &harvest_args(m, "corpus.txt", "out")),
        "the --input file's content changed",
    );
    std::fs::write(tmp.path("corpus.txt"), &text).unwrap();
    // Other weights of the same shapes: refused, naming the model.
    {
        use hooklens_models::model::{random_weights, save_hf_checkpoint};
        let cfg = hooklens_models::TransformerConfig::new(2, 64, 4, 50257, 64);
        save_hf_checkpoint(&model, &cfg, &random_weights(&cfg, 6).unwrap(), DType::F32).unwrap();
    }
    fails(
        in_dir(&tmp, &harvest_args(m, "corpus.txt", "out")),
        "the model's files (checkpoint, config or tokenizer) changed",
    );
}

#[test]
fn one_worker_per_index_and_a_kill_mid_write_leaves_nothing_after_the_resume() {
    let tmp = TempDir::new("lock");
    let model = small_model(&tmp);
    let (text, _) = corpus(&tmp, 300);
    let (m, t) = (model.to_str().unwrap(), text.to_str().unwrap());
    // Worker 0 of 2: worker 1 of the same harvest runs beside it below (one --out holds
    // one harvest, so both split the input in two).
    let worker0 = |out: &str| {
        let mut a = harvest_args(m, t, out);
        a.extend(["--shard-index", "0", "--num-shards", "2"]);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let whole = tmp.path("whole");
    ok_stderr(hooklens(&worker0(whole.to_str().unwrap())));
    let out = tmp.path("out");
    let o = out.to_str().unwrap();
    // The first worker pauses halfway through writing its first shard.
    let mut first = spawn_paused_mid_write(&worker0(o));
    let deadline = Instant::now() + Duration::from_secs(120);
    // The output directory appears only once the worker has started.
    let temporaries = |dir: &Path| hidden_files(dir).unwrap_or_default();
    loop {
        let mid_write = temporaries(&out)
            .iter()
            .any(|n| std::fs::metadata(out.join(n)).is_ok_and(|m| m.len() > 0));
        if mid_write {
            break;
        }
        assert!(first.try_wait().unwrap().is_none(), "the first worker ended");
        assert!(Instant::now() < deadline, "no shard being written after 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A second worker with the same index is refused while the first lives...
    fails(
        hooklens(&worker0(o)),
        "another harvest is writing worker 00000-of-00002",
    );
    // ...another index is not.
    let mut other = harvest_args(m, t, o);
    other.extend(["--shard-index", "1", "--num-shards", "2"]);
    ok_stderr(hooklens(&other));
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(!out.join("00000-of-00002-shard-000000.safetensors").exists());
    assert!(!temporaries(&out).is_empty(), "the kill landed mid-write");
    // The dead worker's lock does not block the resume, which removes its temporary.
    ok_stderr(hooklens(&worker0(o)));
    assert!(temporaries(&out).is_empty(), "left behind: {:?}", temporaries(&out));
    let got = files(&out);
    for (name, bytes) in files(&whole) {
        assert!(got[&name] == bytes, "{name} differs from an uninterrupted run");
    }
}

#[test]
fn a_manifest_or_shard_that_lies_is_refused() {
    let tmp = TempDir::new("lies");
    let model = small_model(&tmp);
    let (text, _) = corpus(&tmp, 300);
    let (m, t) = (model.to_str().unwrap(), text.to_str().unwrap());
    let out = tmp.path("out");
    let o = out.to_str().unwrap();
    ok_stderr(hooklens(&harvest_args(m, t, o)));
    let path = out.join("00000-of-00001-manifest.json");
    let good = std::fs::read_to_string(&path).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        f(&mut v);
        std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
    };
    edit(&|v| v["shards"][0]["rows"] = 1000000.into());
    fails(hooklens(&harvest_args(m, t, o)), "shard entry 0 has rows = 1000000");
    edit(&|v| v["shards"][0]["file"] = "../../etc/passwd".into());
    fails(
        hooklens(&harvest_args(m, t, o)),
        "shard entry 0 names \"../../etc/passwd\"",
    );
    edit(&|v| v["shards"] = "all of them".into());
    fails(hooklens(&harvest_args(m, t, o)), "`shards` is not a list");
    std::fs::write(&path, &good).unwrap();
    // A shard's bytes changed in place (same size): its checksum says so.
    let shard = out.join("00000-of-00001-shard-000001.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(&shard, &bytes).unwrap();
    fails(hooklens(&harvest_args(m, t, o)), "(damaged on disk?)");
}

#[test]
fn input_lines_bom_surrogates_and_endless_lines() {
    let tmp = TempDir::new("lines");
    let model = small_model(&tmp);
    let (_, jsonl) = corpus(&tmp, 60);
    let m = model.to_str().unwrap();
    // A byte-order mark before the first line is not part of the document.
    let with_bom = tmp.path("bom.jsonl");
    let mut bytes = "\u{feff}".as_bytes().to_vec();
    bytes.extend(std::fs::read(&jsonl).unwrap());
    std::fs::write(&with_bom, bytes).unwrap();
    let (a, b) = (tmp.path("a"), tmp.path("b"));
    ok_stderr(hooklens(&harvest_args(m, jsonl.to_str().unwrap(), a.to_str().unwrap())));
    ok_stderr(hooklens(&harvest_args(
        m,
        with_bom.to_str().unwrap(),
        b.to_str().unwrap(),
    )));
    let shard = "00000-of-00001-shard-000000.safetensors";
    assert!(files(&a)[shard] == files(&b)[shard], "the BOM changed the tokens");
    // A lone surrogate: the file's line, and what is wrong with it.
    let lone = tmp.path("lone.jsonl");
    std::fs::write(&lone, "{\"text\": \"fine\"}\n{\"text\": \"bad \\ud800 here\"}\n").unwrap();
    let err = fails(
        hooklens(&harvest_args(m, lone.to_str().unwrap(), &tmp.s("c"))),
        "line 2: not valid JSON at column",
    );
    assert!(err.contains("lone UTF-16 surrogate"), "{err}");
    assert!(err.contains("column 15"), "{err}");
    assert!(!err.contains("at line 1"), "{err}");
    // A line with no end is bounded.
    let endless = tmp.path("endless.txt");
    std::fs::write(&endless, "word ".repeat(300_000)).unwrap();
    let d = tmp.s("d");
    let mut args = harvest_args(m, endless.to_str().unwrap(), &d);
    args.extend(["--max-line-mb", "1"]);
    fails(hooklens(&args), "line 1: longer than --max-line-mb 1 MiB");
}

#[test]
fn non_finite_weights_and_too_little_memory_are_errors() {
    let tmp = TempDir::new("nan");
    use hooklens_models::model::{random_weights, save_hf_checkpoint};
    let cfg = hooklens_models::TransformerConfig::new(2, 64, 4, 50257, 64);
    let mut w = random_weights(&cfg, 5).unwrap();
    // Layer 0's attention: every saved hook point after it is NaN.
    let fc = w.get_mut("h.0.attn.c_attn.weight").unwrap();
    *fc = (fc.clone() * f64::NAN).unwrap();
    let dir = tmp.path("model");
    save_hf_checkpoint(&dir, &cfg, &w, DType::F32).unwrap();
    let (text, _) = corpus(&tmp, 60);
    let (m, t) = (dir.to_str().unwrap(), text.to_str().unwrap());
    let err = fails(
        hooklens(&harvest_args(m, t, &tmp.s("out"))),
        "first non-finite activation at `blocks.0.attn.",
    );
    assert!(err.contains("nothing of this batch was written"), "{err}");
    assert!(!tmp.path("out").join("00000-of-00001-shard-000000.safetensors").exists());
    let o = hooklens(&["run", "--model", m, "--prompt", "the model reads"]);
    assert_ne!(o.status.code(), Some(0));
    fails(o, "first non-finite activation at `blocks.0.attn.");
    // `cache` too: an error naming the point, and no file.
    let cached = tmp.path("nan-cache.safetensors");
    let err = fails(
        hooklens(&[
            "cache",
            "--model",
            m,
            "--prompt",
            "the model reads",
            "--out",
            cached.to_str().unwrap(),
        ]),
        "first non-finite activation at `blocks.0.attn.",
    );
    assert!(err.contains("nothing written"), "{err}");
    assert!(!cached.exists(), "a cache of NaNs was written");

    let model = small_model(&tmp);
    // 20 MiB: the checkpoint (13 MiB) loads, a shard of 100 MiB does not fit.
    let small = tmp.s("small");
    let mut args = harvest_args(model.to_str().unwrap(), t, &small);
    args[13] = "100";
    let o = offline_command(&args)
        .env(hooklens::__internal::AVAILABLE_MEMORY_ENV, (20u64 << 20).to_string())
        .output()
        .unwrap();
    let err = fails(o, "is available: give a smaller --shard-size-mb or --batch-size");
    assert!(err.contains("about 20.0 MiB is available"), "{err}");
    assert!(!tmp.path("small").exists(), "nothing written");
}

/// A copy of the Llama fixture whose config claims `max_position_embeddings`
/// positions (as Llama 3.x's 131072 does).
fn long_context_llama(tmp: &TempDir, n_ctx: u64) -> PathBuf {
    let dir = tmp.path("long-llama");
    std::fs::create_dir_all(&dir).unwrap();
    let src = root().join("testdata/llama/model");
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["max_position_embeddings"] = n_ctx.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    dir
}

/// Issue 27, point 13: the probe that sizes the shards ran at the default context (the
/// model's n_ctx, 131072 for Llama 3.x) before the memory check, and aborted; `hooks
/// --pos 100000` likewise. Both are now the memory error, before anything runs.
#[test]
fn a_long_context_model_gets_the_memory_error_not_an_abort() {
    let tmp = TempDir::new("long-ctx");
    let model = long_context_llama(&tmp, 131072);
    let m = model.to_str().unwrap();
    let corpus = tmp.path("c.txt");
    std::fs::write(&corpus, "a b c\n").unwrap();
    let out = tmp.path("out");
    // Under an address-space limit of 2 GiB, so that the allocation the check must
    // prevent fails at once (an abort) rather than filling the machine's memory.
    let limited = |args: &[&str]| {
        let o = std::process::Command::new("sh")
            .args([
                "-c",
                "ulimit -v 2097152 && exec \"$0\" \"$@\"",
                env!("CARGO_BIN_EXE_hooklens"),
            ])
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HUB_CACHE", std::env::temp_dir().join("hooklens-cli-no-cache"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "not a clean error: {:?} {err}", o.status);
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let err = limited(&[
        "harvest",
        "--model",
        m,
        "--input",
        corpus.to_str().unwrap(),
        "--names",
        "blocks.0.hook_resid_post",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("131072 tokens") && err.contains("needs about"), "{err}");
    assert!(err.contains("a shorter --context-size"), "{err}");
    assert!(!out.exists(), "nothing written");

    let err = limited(&["hooks", "--model", m, "--pos", "100000"]);
    assert!(err.contains("needs about") && err.contains("a smaller --pos"), "{err}");
}

/// Issue 27, point 20: one --out took harvests with other splits, hook points or
/// context, which a reader of the directory then returned as one. A second harvest
/// whose settings differ is refused, naming the setting.
#[test]
fn one_out_holds_one_harvest() {
    let tmp = TempDir::new("one-harvest");
    let model = small_model(&tmp);
    let (text, _) = corpus(&tmp, 60);
    let (m, t) = (model.to_str().unwrap(), text.to_str().unwrap());
    let out = tmp.s("out");
    // `harvest_args` with `set` (index, value) replaced, and `extra` appended.
    let worker = |i: &str, k: &str, set: &[(usize, &str)], extra: &[&str]| {
        let mut a = harvest_args(m, t, &out);
        for &(at, v) in set {
            a[at] = v;
        }
        a.extend(["--shard-index", i, "--num-shards", k]);
        a.extend(extra);
        hooklens(&a)
    };
    ok_stderr(worker("0", "2", &[], &[]));
    // Worker, count, (index, value) replaced, flags added, and the setting named.
    type Case = (
        &'static str,
        &'static str,
        &'static [(usize, &'static str)],
        &'static [&'static str],
        &'static str,
    );
    let cases: [Case; 4] = [
        ("1", "2", &[(9, "32")], &[], "context_size"),
        ("1", "2", &[], &["--names", "blocks.1.hook_resid_post"], "names"),
        ("1", "3", &[], &[], "num_shards"),
        ("2", "3", &[], &["--input-format", "jsonl"], "input_format"),
    ];
    for (i, k, set, extra, setting) in cases {
        let err = fails(worker(i, k, set, extra), &format!("with {setting} = "));
        assert!(err.contains("00000-of-00002-manifest.json"), "{err}");
        assert!(err.contains("one --out holds one harvest"), "{err}");
    }
    assert!(
        !Path::new(&out).join("00001-of-00002-manifest.json").exists(),
        "a refused worker wrote its manifest"
    );
    // The other worker of the same harvest, with its own batch size: welcome.
    ok_stderr(worker("1", "2", &[(11, "2")], &[]));
    assert_eq!(manifest(Path::new(&out), "00001-of-00002")["complete"], true);
}

/// Issue 27, point 18: a corpus rewritten in place while a harvest read it ended
/// complete under the old file's fingerprint, its shards holding both corpora. What
/// is read is hashed as it is read, and a change is an error at the end.
#[test]
fn a_corpus_rewritten_during_the_harvest_is_an_error() {
    let tmp = TempDir::new("rewritten");
    let model = small_model(&tmp);
    let (text, _) = corpus(&tmp, 1000);
    let (m, t) = (model.to_str().unwrap(), text.to_str().unwrap());
    let out = tmp.path("out");
    let mut child = offline_command(&harvest_args(m, t, out.to_str().unwrap()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = out.join("00000-of-00001-shard-000000.safetensors");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !first.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "harvest ended before writing a shard"
        );
        assert!(Instant::now() < deadline, "no shard after 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // In place (the same file, truncated and written again), the same size, other words.
    let old = std::fs::read(&text).unwrap();
    let new: Vec<u8> = old.iter().map(|&b| if b == b'e' { b'o' } else { b }).collect();
    std::fs::write(&text, &new).unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("changed while it was read"), "{err}");
    assert_ne!(manifest(&out, "00000-of-00001")["complete"], true);
}

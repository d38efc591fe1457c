//! Every flag of every subcommand given a bad value (issue 6): the binary exits non-zero
//! with a message on stderr that names the flag or the value, never a panic, a Debug
//! dump or a half-written output file.
//!
//! `tests/cli.rs::bad_flag_values_are_readable_errors` covers a first set (a slice that
//! does not parse, unknown and empty --names, --remove-batch-dim on a batch, --dtype f8,
//! --device gpu, a missing or wrong --tokens file, a missing model directory, ids past
//! the vocabulary, an --out in a missing directory, --top-p 1.5, --pos 65); the cases
//! here are the rest, one table per subcommand.

mod common;

use std::process::Output;

use candle_core::{DType, Device, Tensor};
use common::*;

/// Runs `hooklens` offline with an empty Hugging Face cache.
fn hooklens(args: &[String]) -> Output {
    offline_command(args).output().expect("the hooklens binary runs")
}

/// Runs every case: `base` plus the case's arguments must fail with `needle` on stderr
/// (case-sensitive), exit code 1 (our errors) or 2 (clap's usage errors), no panic.
/// Numeric flags accept a leading `-` so that a negative value is reported as an invalid
/// value of its flag, not as an unknown argument `-0`.
fn all_fail(base: &[&str], cases: &[(&[&str], &str)]) {
    let mut problems = Vec::new();
    for (extra, needle) in cases {
        let args: Vec<String> = base.iter().chain(extra.iter()).map(|s| s.to_string()).collect();
        let out = hooklens(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        let readable = !err.contains("panicked") && !err.contains("RUST_BACKTRACE") && !err.contains("Error {");
        if !(matches!(code, Some(1) | Some(2)) && err.contains(needle) && readable) {
            problems.push(format!(
                "hooklens {}\n  exit {code:?}, wanted {needle:?}, stderr: {err}",
                args.join(" ")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} case(s) failed:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Token files that are not what `--tokens` needs, each named in its error.
fn bad_token_files(tmp: &TempDir) -> Vec<(String, &'static str)> {
    let save = |name: &str, t: Tensor| {
        candle_core::safetensors::save(&[("tokens", t)].into_iter().collect(), tmp.path(name)).unwrap();
        tmp.s(name)
    };
    let cpu = &Device::Cpu;
    vec![
        (
            save("float.safetensors", Tensor::zeros((1, 3), DType::F32, cpu).unwrap()),
            "integer",
        ),
        (
            save("rank3.safetensors", Tensor::zeros((1, 3, 1), DType::U32, cpu).unwrap()),
            "rank 3",
        ),
        (
            save("empty.safetensors", Tensor::zeros((1, 0), DType::U32, cpu).unwrap()),
            "empty",
        ),
        (
            save("negative.safetensors", Tensor::new(&[[1i64, -3]], cpu).unwrap()),
            "-3",
        ),
        (
            {
                std::fs::write(tmp.path("garbage.safetensors"), b"garbage").unwrap();
                tmp.s("garbage.safetensors")
            },
            "safetensors",
        ),
        (tmp.to_string_lossy().into_owned(), "--tokens"),
    ]
}

#[test]
fn model_and_input_flags_with_bad_values() {
    let tmp = TempDir::new("model-flags");
    let m = tiny_model().to_string_lossy().into_owned();
    let t = tiny_tokens().to_string_lossy().into_owned();
    // A model directory with nonsense in its config, and one whose weights are cut.
    let bad_cfg = tmp.path("bad-config");
    std::fs::create_dir_all(&bad_cfg).unwrap();
    std::fs::copy(
        tiny_model().join("model.safetensors"),
        bad_cfg.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        bad_cfg.join("config.json"),
        "{\"model_type\": \"gpt2\", \"n_layer\": -1}",
    )
    .unwrap();
    let cut = tmp.path("cut");
    std::fs::create_dir_all(&cut).unwrap();
    std::fs::copy(tiny_model().join("config.json"), cut.join("config.json")).unwrap();
    let bytes = std::fs::read(tiny_model().join("model.safetensors")).unwrap();
    std::fs::write(cut.join("model.safetensors"), &bytes[..1000]).unwrap();
    let (bad_cfg, cut) = (
        bad_cfg.to_string_lossy().into_owned(),
        cut.to_string_lossy().into_owned(),
    );
    let out = tmp.s("out.safetensors");
    for sub in ["cache", "run"] {
        let mut base = vec![sub, "--tokens", t.as_str()];
        if sub == "cache" {
            base.extend(["--out", out.as_str()]);
        }
        all_fail(
            &base,
            &[
                (&["--model", ""], "model"),
                (&["--model", "/nonexistent/model/dir"], "/nonexistent/model/dir"),
                (&["--model", &format!("{m}/config.json")], "config.json"),
                (&["--model", &bad_cfg], "n_layer"),
                (&["--model", &cut], "model.safetensors"),
                (&["--model", "not-a-cached-hf-model"], "not-a-cached-hf-model"),
                (&["--model", &m, "--dtype", "f64"], "invalid value 'f64'"),
                (&["--model", &m, "--dtype", ""], "--dtype"),
                (
                    &["--model", &m, "--device", "cuda:x"],
                    "expected cpu, cuda, cuda:N or metal",
                ),
                (
                    &["--model", &m, "--device", "cuda:-1"],
                    "expected cpu, cuda, cuda:N or metal",
                ),
                (&["--model", &m, "--device", "cuda"], "--device cuda:0"),
                (&["--model", &m, "--device", "metal"], "--device metal"),
                (&["--model", &m, "--device", ""], "--device"),
                (&["--model", &m, "--no-processing=yes"], "--no-processing"),
            ],
        );
    }
    // The input flags, on the two subcommands that read input with different padding,
    // with a model that has a tokenizer fitting its 512 ids.
    let tok_model = tmp.path("with-tokenizer");
    std::fs::create_dir_all(&tok_model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny_model().join(f), tok_model.join(f)).unwrap();
    }
    std::fs::copy(
        root().join("testdata/tiny-tokenizer/tokenizer.json"),
        tok_model.join("tokenizer.json"),
    )
    .unwrap();
    let tok_model = tok_model.to_string_lossy().into_owned();
    for sub in ["cache", "run"] {
        let mut base = vec![sub, "--model", tok_model.as_str()];
        if sub == "cache" {
            base.extend(["--out", out.as_str()]);
        }
        all_fail(
            &base,
            &[
                (&["--prompt", "", "--no-bos"], "empty prompt"),
                (&["--prompt", &"a".repeat(200)], "n_ctx"),
                (&["--prompt", "x", "--tokens", &t], "cannot be used with"),
                (&["--tokens"], "--tokens"),
                (&["--tokens", &t, "--no-bos=1"], "--no-bos"),
            ],
        );
        let files = bad_token_files(&tmp);
        let cases: Vec<(Vec<&str>, &str)> = files
            .iter()
            .map(|(f, needle)| (vec!["--tokens", f.as_str()], *needle))
            .collect();
        let cases: Vec<(&[&str], &str)> = cases.iter().map(|(a, n)| (a.as_slice(), *n)).collect();
        all_fail(&base, &cases);
    }
    assert!(!tmp.path("out.safetensors").exists(), "no failed run wrote its output");
}

#[test]
fn cache_flags_with_bad_values() {
    let tmp = TempDir::new("cache");
    let (m, t) = (tiny_model(), tiny_tokens());
    let (m, t) = (m.to_string_lossy(), t.to_string_lossy());
    let out = tmp.s("c.safetensors");
    std::fs::write(tmp.path("a-file"), b"x").unwrap();
    std::fs::create_dir_all(tmp.path("a-dir")).unwrap();
    let one_pos = {
        let p = tmp.path("one.safetensors");
        let t = Tensor::new(&[[5u32]], &Device::Cpu).unwrap();
        candle_core::safetensors::save(&[("tokens", t)].into_iter().collect(), &p).unwrap();
        p.to_string_lossy().into_owned()
    };
    let under_file = tmp.s("a-file/c.safetensors");
    let onto_dir = tmp.s("a-dir");
    let base = ["cache", "--model", &m, "--tokens", &t];
    let with_out = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(["--out".to_string(), out.clone()]);
        v
    };
    let cases_owned: Vec<(Vec<String>, &str)> = vec![
        (with_out(&["--names", ""]), "unknown hook point ``"),
        (
            with_out(&["--names", "blocks.9.hook_resid_pre"]),
            "blocks.9.hook_resid_pre",
        ),
        (
            with_out(&["--names", "hook_embed", "--names", "*.nothing"]),
            "`*.nothing`",
        ),
        (with_out(&["--names"]), "--names"),
        (with_out(&["--pos-slice", ""]), "empty slice"),
        (with_out(&["--pos-slice", "1:2:0"]), "step must be at least 1"),
        (with_out(&["--pos-slice", "1:2:3:4"]), "at most two"),
        (with_out(&["--pos-slice", "[1,2"]), "missing `]`"),
        // The option's error, before any hook runs (not "hook at `hook_embed` failed").
        (with_out(&["--pos-slice", "99"]), "--pos-slice: "),
        (with_out(&["--pos-slice", "-11"]), "(the input has 10 positions)"),
        (with_out(&["--pos-slice", "[0,10]"]), "out of range"),
        (with_out(&["--remove-batch-dim=no"]), "--remove-batch-dim"),
        (vec![], "--out"),
        (vec!["--out".into(), under_file.clone()], "a-file/c.safetensors"),
        (vec!["--out".into(), onto_dir.clone()], "a-dir"),
        (vec!["--out".into(), "".into()], "--out"),
        (vec!["--out".into(), "/".into()], "not a file path"),
    ];
    let cases: Vec<(Vec<&str>, &str)> = cases_owned
        .iter()
        .map(|(a, n)| (a.iter().map(String::as_str).collect(), *n))
        .collect();
    let cases: Vec<(&[&str], &str)> = cases.iter().map(|(a, n)| (a.as_slice(), *n)).collect();
    all_fail(&base, &cases);
    all_fail(
        &["cache", "--model", &m, "--out", &out],
        &[(&["--tokens", &one_pos], "at least 2")],
    );
    assert!(!tmp.path("c.safetensors").exists());
    assert_eq!(std::fs::read_dir(tmp.path("a-dir")).unwrap().count(), 0);
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn generate_flags_with_bad_values() {
    let tmp = TempDir::new("generate");
    let (m, t) = (tiny_model(), tiny_tokens());
    let (m, t) = (m.to_string_lossy(), t.to_string_lossy());
    std::fs::write(tmp.path("a-file"), b"x").unwrap();
    let under_file = tmp.s("a-file/g.safetensors");
    let base = ["generate", "--model", &m, "--tokens", &t];
    all_fail(
        &base,
        &[
            (&[], "--max-new-tokens"),
            (&["--max-new-tokens", "-1"], "invalid value '-1' for '--max-new-tokens"),
            (&["--max-new-tokens", "many"], "invalid digit"),
            (&["--max-new-tokens", "1000"], "give --max-new-tokens 55 or less"),
            (&["--max-new-tokens", "99999999999999999999999"], "--max-new-tokens"),
            (&["--max-new-tokens", "2", "--temperature", "-1"], "temperature"),
            (&["--max-new-tokens", "2", "--temperature", "NaN"], "temperature"),
            (&["--max-new-tokens", "2", "--temperature", "inf"], "temperature"),
            (&["--max-new-tokens", "2", "--temperature", "hot"], "--temperature"),
            (&["--max-new-tokens", "2", "--top-k", "0"], "top_k"),
            (
                &["--max-new-tokens", "2", "--top-k", "-5"],
                "invalid value '-5' for '--top-k",
            ),
            (&["--max-new-tokens", "2", "--top-p", "0"], "top_p"),
            (&["--max-new-tokens", "2", "--top-p", "-0.5"], "top_p -0.5"),
            (&["--max-new-tokens", "2", "--top-p", "NaN"], "top_p"),
            (&["--max-new-tokens", "2", "--freq-penalty", "NaN"], "freq"),
            (&["--max-new-tokens", "2", "--freq-penalty", "inf"], "freq"),
            (&["--max-new-tokens", "2", "--freq-penalty", "lots"], "--freq-penalty"),
            (
                &["--max-new-tokens", "2", "--seed", "-1"],
                "invalid value '-1' for '--seed",
            ),
            (&["--max-new-tokens", "2", "--seed", "18446744073709551616"], "--seed"),
            (
                &["--max-new-tokens", "2", "--greedy", "--temperature", "0.5"],
                "cannot be used with",
            ),
            (
                &["--max-new-tokens", "2", "--greedy", "--out", &under_file],
                "a-file/g.safetensors",
            ),
            (&["--max-new-tokens", "2", "--greedy", "--out", ""], "--out"),
        ],
    );
}

#[test]
fn tokenize_hooks_and_run_flags_with_bad_values() {
    let tmp = TempDir::new("small-commands");
    let m = tiny_model().to_string_lossy().into_owned();
    // A model directory whose tokenizer.json is broken.
    let broken = tmp.path("broken-tokenizer");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny_model().join(f), broken.join(f)).unwrap();
    }
    std::fs::write(broken.join("tokenizer.json"), "{\"model\": 3}").unwrap();
    let broken = broken.to_string_lossy().into_owned();
    let no_tokenizer = tmp.path("no-tokenizer");
    std::fs::create_dir_all(&no_tokenizer).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny_model().join(f), no_tokenizer.join(f)).unwrap();
    }
    let no_tokenizer = no_tokenizer.to_string_lossy().into_owned();
    all_fail(
        &["tokenize"],
        &[
            (&[], "<TEXT>"),
            (&["a", "b"], "unexpected argument"),
            (&["--model", "/nonexistent/dir", "x"], "/nonexistent/dir"),
            (&["--model", &broken, "x"], "tokenizer.json"),
            // Without its tokenizer.json, GPT-2's BPE does not fit 512 ids: named up front.
            (&["--model", &no_tokenizer, "Hello world"], "no tokenizer.json"),
            (&["--str-tokens=1", "x"], "--str-tokens"),
        ],
    );
    all_fail(
        &["hooks", "--model", &m],
        &[
            (&["--pos", "0"], "--pos 0"),
            (&["--pos", "-1"], "invalid value '-1' for '--pos"),
            (&["--pos", "four"], "invalid digit"),
            (&["--pos", "18446744073709551616"], "--pos"),
            (&["--all-hooks=2"], "--all-hooks"),
        ],
    );
    let t = tiny_tokens().to_string_lossy().into_owned();
    all_fail(
        &["run", "--model", &m, "--tokens", &t],
        &[
            (&["--top", "0"], "--top must be at least 1"),
            (&["--top", "-1"], "invalid value '-1' for '--top"),
            (&["--top", "ten"], "invalid digit"),
        ],
    );
    all_fail(
        &[],
        &[
            (&["--no-such-flag"], "--no-such-flag"),
            (&["cache", "--bogus"], "--bogus"),
        ],
    );
}

/// The later subcommands (demo, attention, logit-lens, harvest), on the tiny model.
#[test]
fn demo_attention_logit_lens_and_harvest_flags_with_bad_values() {
    let tmp = TempDir::new("views");
    let m = tiny_model().to_string_lossy().into_owned();
    let t = tiny_tokens().to_string_lossy().into_owned();
    std::fs::write(tmp.path("a-file"), b"x").unwrap();
    let one_row = {
        let p = tmp.path("one.safetensors");
        let ids = Tensor::new(&[[5u32, 6, 7]], &Device::Cpu).unwrap();
        candle_core::safetensors::save(&[("tokens", ids)].into_iter().collect(), &p).unwrap();
        p.to_string_lossy().into_owned()
    };
    let under_file = tmp.s("a-file/view.html");
    all_fail(
        &["demo", "--model", &m],
        &[
            (&["--half", "2"], "--half 2"),
            (&["--half", "40"], "--half 40"),
            (&["--half", "-1"], "invalid value '-1' for '--half"),
            (&["--half", "5", "--batch", "0"], "--batch must be at least 1"),
            (&["--seed", "x"], "--seed"),
        ],
    );
    all_fail(
        &["attention", "--model", &m],
        &[
            (
                &["--tokens", &t, "--row", "2", "--out", &tmp.s("a.html")],
                "--row 2: the input has 2 row(s)",
            ),
            (&["--tokens", &one_row, "--layers", "9", "--out", &tmp.s("a.html")], "9"),
            (
                &["--tokens", &one_row, "--layers", "-1", "--out", &tmp.s("a.html")],
                "invalid value '-1'",
            ),
            (
                &["--tokens", &one_row, "--layers", "0,x", "--out", &tmp.s("a.html")],
                "--layers",
            ),
            (&["--tokens", &one_row, "--out", &under_file], "a-file/view.html"),
            (&["--tokens", &one_row], "--out"),
        ],
    );
    all_fail(
        &["logit-lens", "--model", &m],
        &[
            (&["--tokens", &one_row, "--top", "0"], "--top must be at least 1"),
            (&["--tokens", &one_row, "--top", "-3"], "invalid value '-3'"),
            (&["--tokens", &t, "--row", "5"], "--row 5: the input has 2 row(s)"),
            (&["--tokens", &one_row, "--out", &under_file], "a-file/view.html"),
        ],
    );
    let corpus = tmp.path("corpus.txt");
    std::fs::write(&corpus, "one line\nanother line\n").unwrap();
    let corpus = corpus.to_string_lossy().into_owned();
    let out = tmp.s("shards");
    all_fail(
        &["harvest", "--model", &m, "--input", &corpus, "--out", &out],
        &[
            (&[], "--names"),
            (&["--names", "blocks.*.nothing"], "matched no hook point"),
            (&["--names", "hook_embd"], "hook_embed"),
            (
                &["--names", "hook_embed", "--num-shards", "0"],
                "--num-shards must be at least 1",
            ),
            (
                &["--names", "hook_embed", "--num-shards", "2", "--shard-index", "2"],
                "--shard-index 2",
            ),
            (
                &["--names", "hook_embed", "--batch-size", "0"],
                "--batch-size must be at least 1",
            ),
            (&["--names", "hook_embed", "--shard-size-mb", "0"], "--shard-size-mb 0"),
            (
                &["--names", "hook_embed", "--shard-size-mb", "NaN"],
                "--shard-size-mb NaN",
            ),
            (
                &["--names", "hook_embed", "--shard-size-mb", "-1"],
                "--shard-size-mb -1",
            ),
            (&["--names", "hook_embed", "--context-size", "1"], "--context-size 1"),
            (&["--names", "hook_embed", "--context-size", "65"], "--context-size 65"),
            (
                &["--names", "hook_embed", "--input-format", "xml"],
                "invalid value 'xml'",
            ),
        ],
    );
    all_fail(
        &["harvest", "--model", &m, "--names", "hook_embed"],
        &[
            (
                &["--input", "/nonexistent/corpus.txt", "--out", &out],
                "/nonexistent/corpus.txt",
            ),
            (&["--input", &corpus, "--out", &tmp.s("a-file/shards")], "a-file/shards"),
        ],
    );
    assert!(!tmp.path("a.html").exists());
}

/// Every numeric flag at the edges of its type (issue 18): no sum or product of
/// user-given numbers may wrap (a debug build panics on it, a release build computes
/// with the wrapped value), so each run ends with a result or a clean error, exit 0, 1
/// or 2, never a panic or an abort.
#[test]
fn numeric_flags_at_their_extremes_never_panic() {
    let tmp = TempDir::new("extremes");
    let (m, t) = (tiny_model(), tiny_tokens());
    let (m, t) = (m.to_string_lossy().into_owned(), t.to_string_lossy().into_owned());
    let corpus = tmp.path("c.txt");
    std::fs::write(&corpus, "a b c d e f g h\n".repeat(4)).unwrap();
    let c = corpus.to_string_lossy().into_owned();
    let out = tmp.s("out");
    let ints = ["0", "1", "4294967296", "9223372036854775808", "18446744073709551615"];
    let floats = ["0", "1e308", "-1e308", "inf", "NaN", "5e-324"];
    let gen = ["generate", "--model", &m, "--tokens", &t, "--greedy"];
    let samp = ["generate", "--model", &m, "--tokens", &t, "--max-new-tokens", "2"];
    let demo = ["demo", "--model", &m, "--out", &out];
    let run = ["run", "--model", &m, "--tokens", &t];
    let lens = ["logit-lens", "--model", &m, "--prompt", "a b"];
    let hooks = ["hooks", "--model", &m];
    let attention = ["attention", "--model", &m, "--prompt", "a b", "--out", &out];
    let harvest = [
        "harvest",
        "--model",
        &m,
        "--input",
        &c,
        "--names",
        "blocks.0.hook_resid_post",
        "--out",
        &out,
        "--quiet",
    ];
    // (base arguments, flag, values, what follows the flag to complete the command)
    type Case<'a> = (&'a [&'a str], &'a str, &'a [&'a str], &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (&gen, "--max-new-tokens", &ints, &[]),
        (&samp, "--top-k", &ints, &[]),
        (&samp, "--seed", &ints, &[]),
        (&samp, "--temperature", &floats, &[]),
        (&samp, "--top-p", &floats, &[]),
        (&samp, "--freq-penalty", &floats, &[]),
        (&run, "--top", &ints, &[]),
        (&lens, "--top", &ints, &[]),
        (&hooks, "--pos", &ints, &[]),
        (&attention, "--layers", &ints, &[]),
        (&demo, "--half", &ints, &[]),
        (&demo, "--batch", &ints, &["--half", "3"]),
        (&harvest, "--context-size", &ints, &[]),
        (&harvest, "--batch-size", &ints, &[]),
        (&harvest, "--num-shards", &ints, &[]),
        (
            &harvest,
            "--shard-index",
            &ints,
            &["--num-shards", "18446744073709551615"],
        ),
        (&harvest, "--shard-size-mb", &floats, &[]),
        (&harvest, "--max-line-mb", &ints, &[]),
    ];
    let mut problems = Vec::new();
    for (base, flag, values, rest) in cases {
        for v in values {
            let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
            args.extend([flag.to_string(), v.to_string()]);
            args.extend(rest.iter().map(|s| s.to_string()));
            let _ = std::fs::remove_dir_all(&out);
            let _ = std::fs::remove_file(&out);
            let o = hooklens(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            let clean = matches!(o.status.code(), Some(0..=2)) && !err.contains("panicked");
            if !clean {
                problems.push(format!("{flag} {v}: exit {:?}: {err}", o.status.code()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Model flags meeting a model that is not what it says (issue 18): a symbolic link
/// loop is not a Hugging Face id, a checkpoint with more layers than its config is not
/// cut silently, and a checkpoint or a run larger than memory is an error naming it.
#[test]
fn models_that_are_not_what_they_say() {
    let tmp = TempDir::new("models");
    let m = tiny_model();
    let loop_link = tmp.path("loop");
    std::os::unix::fs::symlink(&loop_link, &loop_link).unwrap();
    let l = loop_link.to_string_lossy().into_owned();
    let out = hooklens(&["run".into(), "--model".into(), l.clone(), "--prompt".into(), "a".into()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is a symbolic link that is not a model directory"),
        "{err}"
    );
    assert!(
        !err.contains("HF_HUB_OFFLINE") && !err.contains("cache"),
        "taken for a hub id: {err}"
    );

    // config.json with one layer fewer than the checkpoint.
    let dir = tmp.path("fewer");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&m).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let n = cfg["n_layer"].as_u64().unwrap();
    assert!(n >= 2, "the tiny model needs two layers for this test");
    cfg["n_layer"] = (n - 1).into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let d = dir.to_string_lossy().into_owned();
    let run = |extra: &[&str]| {
        let mut args: Vec<String> = ["run", "--model", &d, "--prompt", "a b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        hooklens(&args)
    };
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("tensors the model does not use"), "{err}");
    assert!(err.contains(&format!("h.{}.", n - 1)), "names the extra layer: {err}");
    let out = run(&["--allow-unused-tensors"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Memory: the checkpoint, and a cache whose logits alone exceed what is available.
    let mut over = offline_command(&["run", "--model", &m.to_string_lossy(), "--prompt", "a"]);
    let out = over.env("HOOKLENS_AVAILABLE_MEMORY", "1000").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("model.safetensors needs about"), "{err}");
    assert!(err.contains("is available: load it in half precision"), "{err}");
    let big = tmp.path("big-tokens.safetensors");
    Tensor::zeros((1000, 128), DType::I64, &Device::Cpu)
        .unwrap()
        .save_safetensors("tokens", &big)
        .unwrap();
    let out = offline_command(&[
        "cache",
        "--model",
        "builtin",
        "--tokens",
        &big.to_string_lossy(),
        "--out",
        &tmp.s("c.safetensors"),
    ])
    .env("HOOKLENS_AVAILABLE_MEMORY", (2u64 << 30).to_string())
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("caching tokens [1000, 128]"), "{err}");
    assert!(err.contains("cache fewer hook points (--names)"), "{err}");
    assert!(!tmp.path("c.safetensors").exists());
}

/// Runs `hooklens` with `args`, killed after `secs` seconds: `None` when it had to be
/// (it hung, or read on and on).
fn within(args: &[String], secs: u64) -> Option<Output> {
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

/// A safetensors file of `tensors` (name, dtype name, shape, bytes), written by hand so
/// that it may hold dtypes candle does not read.
fn raw_safetensors(path: &std::path::Path, tensors: &[(&str, &str, &[usize], Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.extend(data);
    std::fs::write(path, file).unwrap();
}

/// `run` of the tiny model on the tokens file `tokens`.
fn run_with(tokens: &str) -> Vec<String> {
    let m = tiny_model().to_string_lossy().into_owned();
    ["run", "--model", &m, "--tokens", tokens]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Issue 27, point 11: `--tokens` is a regular file, checked before it is opened (a
/// FIFO hung, /dev/zero was read until memory ran out).
#[test]
fn tokens_file_must_be_a_regular_file() {
    let tmp = TempDir::new("tokens-kinds");
    let fifo = tmp.path("fifo.safetensors");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // The FIFO first: before the fix it hangs, and is killed here.
    for (tokens, needle) in [
        (fifo.to_string_lossy().into_owned(), "is a FIFO"),
        ("/dev/zero".into(), "is a device"),
    ] {
        let out =
            within(&run_with(&tokens), 30).unwrap_or_else(|| panic!("--tokens {tokens}: still running after 30 s"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("--tokens {tokens}")) && err.contains(needle),
            "{err}"
        );
    }
}

/// Issue 27, point 16: only the `tokens` tensor of a `--tokens` file is read (every
/// tensor was, so one that candle cannot read failed the run).
#[test]
fn only_the_tokens_tensor_of_a_tokens_file_is_read() {
    let tmp = TempDir::new("tokens-only");
    // `tokens` beside a tensor of a dtype candle has no type for (BOOL): only
    // `tokens` is read, so the run works.
    let ids: Vec<u8> = [1i64, 2, 3, 4].iter().flat_map(|i| i.to_le_bytes()).collect();
    let mixed = tmp.path("mixed.safetensors");
    raw_safetensors(
        &mixed,
        &[
            ("mask", "BOOL", &[1, 4], vec![1u8; 4]),
            ("tokens", "I64", &[1, 4], ids.clone()),
        ],
    );
    let out = hooklens(&run_with(&mixed.to_string_lossy()));
    ok_stdout(out);
    // A `tokens` entry that does not fit the file, or whose bytes do not match its
    // shape, is an error naming the flag.
    let short = tmp.path("short.safetensors");
    raw_safetensors(&short, &[("tokens", "I64", &[1, 4], ids.clone())]);
    let len = std::fs::metadata(&short).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&short)
        .unwrap()
        .set_len(len - 8)
        .unwrap();
    let bad = tmp.path("lies.safetensors");
    raw_safetensors(&bad, &[("tokens", "I64", &[1, 4], ids[..24].to_vec())]);
    for f in [short, bad] {
        let out = hooklens(&run_with(&f.to_string_lossy()));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("--tokens") && err.contains("`tokens`"), "{err}");
    }
}

/// Issue 27: a shard that is a FIFO or a device is reported as what it is, not as
/// "no such file".
#[test]
fn a_fifo_or_device_shard_is_named_as_such() {
    let tmp = TempDir::new("shard-kinds");
    for (name, needle) in [("fifo", "a FIFO"), ("device", "a device")] {
        let dir = tmp.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(tiny_model().join("config.json"), dir.join("config.json")).unwrap();
        let shard = dir.join("model-00001-of-00001.safetensors");
        if name == "fifo" {
            assert!(std::process::Command::new("mkfifo")
                .arg(&shard)
                .status()
                .unwrap()
                .success());
        } else {
            std::os::unix::fs::symlink("/dev/zero", &shard).unwrap();
        }
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            r#"{"weight_map": {"wte.weight": "model-00001-of-00001.safetensors"}}"#,
        )
        .unwrap();
        let args = vec!["hooks".to_string(), "--model".into(), dir.display().to_string()];
        let out = within(&args, 30).unwrap_or_else(|| panic!("{name} shard: still running after 30 s"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("model-00001-of-00001.safetensors") && err.contains(needle) && !err.contains("no such file"),
            "{err}"
        );
    }
}

/// A copy of the Llama fixture (vocabulary 512) whose config claims `n_ctx` positions.
fn long_context_llama(tmp: &TempDir, n_ctx: u64) -> std::path::PathBuf {
    let dir = tmp.path("long-llama");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(root().join("testdata/llama/model")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["max_position_embeddings"] = n_ctx.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    dir
}

/// A tokens file of zeros, `[batch, pos]`.
fn zero_tokens(path: &std::path::Path, batch: usize, pos: usize) {
    Tensor::zeros((batch, pos), DType::I64, &Device::Cpu)
        .unwrap()
        .save_safetensors("tokens", path)
        .unwrap();
}

/// `hooklens` with `args` under `avail` bytes of available memory: a clean error
/// (exit 1, no panic, no abort) holding every one of `needles`.
fn fails_for_memory(args: &[String], avail: u64, needles: &[&str]) {
    let o = offline_command(args)
        .env(hooklens::__internal::AVAILABLE_MEMORY_ENV, avail.to_string())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: not a clean error: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: stderr lacks {n:?}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// Issue 27, point 14: `run` and `logit-lens` had no memory check (tokens [1, 40000]
/// aborted under 4 GB where `cache` said how much it needed): the same check now.
#[test]
fn run_and_logit_lens_check_memory_before_running() {
    let tmp = TempDir::new("run-memory");
    let model = long_context_llama(&tmp, 4096);
    let tokens = tmp.path("long.safetensors");
    zero_tokens(&tokens, 1, 2000);
    let (m, t) = (
        model.to_string_lossy().into_owned(),
        tokens.to_string_lossy().into_owned(),
    );
    // 50 MiB: the model loads; 2000 positions' attention does not fit.
    for cmd in ["run", "logit-lens"] {
        let args: Vec<String> = [cmd, "--model", &m, "--tokens", &t]
            .iter()
            .map(|s| s.to_string())
            .collect();
        fails_for_memory(
            &args,
            50 << 20,
            &[
                "tokens [1, 2000]",
                "needs about",
                "is available: give fewer or shorter prompts",
            ],
        );
    }
}

/// An SAE folder of zeros at `blocks.0.hook_resid_pre` of a d_model 64 model.
fn zero_sae(dir: &std::path::Path, d_sae: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("testdata/saes/saes/standard/cfg.json")).unwrap())
            .unwrap();
    cfg["d_sae"] = d_sae.into();
    std::fs::write(dir.join("cfg.json"), cfg.to_string()).unwrap();
    let z = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    let t = std::collections::HashMap::from([
        ("W_enc".to_string(), z(&[64, d_sae])),
        ("W_dec".to_string(), z(&[d_sae, 64])),
        ("b_enc".to_string(), z(&[d_sae])),
        ("b_dec".to_string(), z(&[64])),
    ]);
    candle_core::safetensors::save(&t, dir.join("sae_weights.safetensors")).unwrap();
}

/// Issue 27, point 15: the memory checks of `cache` and `harvest` left out a spliced
/// SAE's activations (d_sae 2^19 aborted): they count now. Here d_sae 16384 over 256
/// positions (about 16 MiB per activation) under 40 MiB.
#[test]
fn memory_checks_count_a_spliced_sae() {
    let tmp = TempDir::new("sae-memory");
    let sae = tmp.path("sae");
    zero_sae(&sae, 16384);
    let tokens = tmp.path("tokens.safetensors");
    zero_tokens(&tokens, 4, 64);
    let m = tiny_model().to_string_lossy().into_owned();
    let s = sae.to_string_lossy().into_owned();
    let args: Vec<String> = [
        "cache",
        "--model",
        &m,
        "--tokens",
        &tokens.to_string_lossy(),
        "--sae",
        &s,
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([tmp.s("c.safetensors")])
    .collect();
    fails_for_memory(&args, 40 << 20, &["caching tokens [4, 64]", "needs about", "1 SAE"]);
    assert!(!tmp.path("c.safetensors").exists());

    let corpus = tmp.path("corpus.txt");
    std::fs::write(
        &corpus,
        "the cat sat on the mat and the dog sat on the log\n".repeat(40),
    )
    .unwrap();
    let args: Vec<String> = [
        "harvest",
        "--model",
        &m,
        "--input",
        &corpus.to_string_lossy(),
        "--sae",
        &s,
        "--names",
        "blocks.0.hook_resid_pre.hook_sae_acts_post",
        "--context-size",
        "64",
        "--batch-size",
        "4",
        "--shard-size-mb",
        "1",
        "--quiet",
        "--out",
        &tmp.s("acts"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    fails_for_memory(&args, 40 << 20, &["needs about", "1 SAE"]);
    assert!(!tmp.path("acts").exists(), "nothing written");
}

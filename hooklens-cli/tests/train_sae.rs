//! `hooklens train-sae` as a user runs it: harvest activations of the built-in model,
//! train an SAE on them, resume a finished run, and use the SAE with `features`; bad settings are readable errors before any work.

mod common;

use std::path::Path;

use common::*;

/// Harvests `blocks.0.hook_resid_post`, `blocks.0.mlp.hook_in` and
/// `blocks.0.hook_mlp_out` of the built-in model on a small corpus into `tmp/acts`.
fn harvest(tmp: &TempDir) -> String {
    let words = [
        "when", "the", "cat", "sat", "on", "a", "mat", "it", "was", "happy", "and", "then", "left",
    ];
    let mut text = String::new();
    let mut state = 7u64;
    for _ in 0..60 {
        let line: Vec<&str> = (0..12)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                words[(state >> 33) as usize % words.len()]
            })
            .collect();
        text.push_str(&line.join(" "));
        text.push('\n');
    }
    std::fs::write(tmp.path("corpus.txt"), text).unwrap();
    let acts = tmp.s("acts");
    ok_stderr(hooklens(&[
        "harvest",
        "--input",
        &tmp.s("corpus.txt"),
        "--names",
        "blocks.0.hook_resid_post,blocks.0.mlp.hook_in,blocks.0.hook_mlp_out",
        "--context-size",
        "16",
        "--out",
        &acts,
        "--quiet",
    ]));
    acts
}

fn train_args<'a>(acts: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train-sae",
        "--activations",
        acts,
        "--hook",
        "blocks.0.hook_resid_post",
        "--d-sae",
        "64",
        "--training-tokens",
        "4096",
        "--batch-size",
        "256",
        "--metrics-every",
        "4",
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    args
}

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("sae_weights.safetensors")).unwrap()
}

#[test]
fn trains_an_sae_that_features_uses() {
    let tmp = TempDir::new("train-sae");
    let acts = harvest(&tmp);
    let out = tmp.s("sae");
    let err = ok_stderr(hooklens(&train_args(
        &acts,
        &out,
        &["--architecture", "topk", "--k", "8", "--lr", "1e-3"],
    )));
    assert!(
        err.contains("explained variance") && err.contains("wrote the SAE to"),
        "{err}"
    );
    let cfg = std::fs::read_to_string(tmp.path("sae").join("cfg.json")).unwrap();
    assert!(
        cfg.contains("\"architecture\": \"topk\"") && cfg.contains("\"k\": 8"),
        "{cfg}"
    );
    let metrics = std::fs::read_to_string(tmp.path("sae").join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4, "{metrics}");
    let first = weights(&tmp.path("sae"));

    // Rerun: resumes from the final checkpoint, trains nothing, writes the same SAE.
    let err = ok_stderr(hooklens(&train_args(
        &acts,
        &out,
        &["--architecture", "topk", "--k", "8", "--lr", "1e-3"],
    )));
    assert!(err.contains("resuming from"), "{err}");
    assert_eq!(weights(&tmp.path("sae")), first);
    // Changed settings are refused, naming them.
    fails(
        hooklens(&train_args(
            &acts,
            &out,
            &["--architecture", "topk", "--k", "8", "--lr", "1e-3", "--seed", "1"],
        )),
        "seed: checkpoint 42, now 1",
    );

    // At most k = 8 features fire per token; --top 10 shows them all.
    let table = ok_stdout(hooklens(&[
        "features",
        "--sae",
        &out,
        "--prompt",
        "the cat sat on the mat",
        "--top",
        "10",
    ]));
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert!(rows.len() >= 6, "{table}");
    for row in rows {
        let fired = row.split_whitespace().filter(|w| w.contains(':')).count();
        assert!((1..=8).contains(&fired), "{table}");
    }

    // A standard SAE, with the norm scaling folded in, loads as well.
    let std_out = tmp.s("sae-standard");
    ok_stderr(hooklens(&train_args(
        &acts,
        &std_out,
        &[
            "--architecture",
            "standard",
            "--l1-coefficient",
            "1e-3",
            "--normalize-activations",
            "expected_average_only_in",
        ],
    )));
    ok_stdout(hooklens(&["features", "--sae", &std_out, "--prompt", "the cat sat"]));

    // BatchTopK is saved as JumpReLU.
    let btk_out = tmp.s("sae-batchtopk");
    ok_stderr(hooklens(&train_args(
        &acts,
        &btk_out,
        &["--architecture", "batchtopk", "--k", "8", "--lr", "1e-3"],
    )));
    let cfg = std::fs::read_to_string(tmp.path("sae-batchtopk").join("cfg.json")).unwrap();
    assert!(cfg.contains("\"architecture\": \"jumprelu\""), "{cfg}");
    ok_stdout(hooklens(&["features", "--sae", &btk_out, "--prompt", "the cat sat"]));

    // JumpReLU, with its threshold saved and read back by `features`.
    let jr_out = tmp.s("sae-jumprelu");
    let err = ok_stderr(hooklens(&train_args(
        &acts,
        &jr_out,
        &[
            "--architecture",
            "jumprelu",
            "--lr",
            "1e-3",
            "--l0-coefficient",
            "1e-3",
            "--jumprelu-sparsity-loss-mode",
            "tanh",
            "--pre-act-loss-coefficient",
            "1e-4",
        ],
    )));
    assert!(err.contains("training a jumprelu SAE"), "{err}");
    let cfg = std::fs::read_to_string(tmp.path("sae-jumprelu").join("cfg.json")).unwrap();
    assert!(
        cfg.contains("\"architecture\": \"jumprelu\"") && cfg.contains("\"jumprelu_sparsity_loss_mode\": \"tanh\""),
        "{cfg}"
    );
    let st = std::fs::read(tmp.path("sae-jumprelu").join("sae_weights.safetensors")).unwrap();
    assert!(String::from_utf8_lossy(&st[..st.len().min(2000)]).contains("\"threshold\""));
    ok_stdout(hooklens(&["features", "--sae", &jr_out, "--prompt", "the cat sat"]));

    // Matryoshka BatchTopK, saved as JumpReLU.
    let mat_out = tmp.s("sae-matryoshka");
    ok_stderr(hooklens(&train_args(
        &acts,
        &mat_out,
        &[
            "--architecture",
            "matryoshka-batchtopk",
            "--k",
            "8",
            "--lr",
            "1e-3",
            "--matryoshka-widths",
            "8,32",
            "--use-matryoshka-aux-loss",
        ],
    )));
    let cfg = std::fs::read_to_string(tmp.path("sae-matryoshka").join("cfg.json")).unwrap();
    assert!(
        cfg.contains("\"architecture\": \"jumprelu\"")
            && cfg.contains("\"training_architecture\": \"matryoshka_batchtopk\""),
        "{cfg}"
    );
    ok_stdout(hooklens(&["features", "--sae", &mat_out, "--prompt", "the cat sat"]));

    // A JumpReLU transcoder from mlp.hook_in to hook_mlp_out of the same harvest.
    let tc_out = tmp.s("transcoder");
    let mut args = train_args(
        &acts,
        &tc_out,
        &[
            "--architecture",
            "jumprelu",
            "--lr",
            "1e-3",
            "--l0-coefficient",
            "1e-3",
            "--hook-out",
            "blocks.0.hook_mlp_out",
        ],
    );
    args[4] = "blocks.0.mlp.hook_in";
    let err = ok_stderr(hooklens(&args));
    assert!(
        err.contains("transcoder to `blocks.0.hook_mlp_out`") && err.contains("wrote the transcoder to"),
        "{err}"
    );
    let cfg = std::fs::read_to_string(tmp.path("transcoder").join("cfg.json")).unwrap();
    assert!(
        cfg.contains("\"architecture\": \"jumprelu_transcoder\"")
            && cfg.contains("\"hook_name_out\": \"blocks.0.hook_mlp_out\""),
        "{cfg}"
    );
    ok_stdout(hooklens(&["features", "--sae", &tc_out, "--prompt", "the cat sat"]));
}

#[test]
fn bad_settings_are_errors_before_any_work() {
    let tmp = TempDir::new("train-sae-bad");
    let acts = harvest(&tmp);
    let out = tmp.s("sae");
    let cases: &[(&[&str], &str)] = &[
        (&["--architecture", "topk", "--k", "65"], "k is 65"),
        (&["--architecture", "topk", "--k", "0"], "k is 0"),
        (&["--architecture", "topk", "--k", "8", "--lr", "0"], "lr is 0"),
        (&["--architecture", "topk", "--k", "8", "--lr", "-1"], "lr is -1"),
        (
            &[
                "--architecture",
                "topk",
                "--k",
                "8",
                "--lr-warm-up-steps",
                "18446744073709551615",
                "--lr-decay-steps",
                "9",
            ],
            "exceed the run's",
        ),
        (
            &["--architecture", "jumprelu", "--k", "8"],
            "--k is a setting of topk, batchtopk and matryoshka_batchtopk, not of --architecture jumprelu",
        ),
        (
            &["--architecture", "topk", "--k", "8", "--l0-coefficient", "1"],
            "--l0-coefficient is a setting of jumprelu, not of --architecture topk",
        ),
        (
            &["--architecture", "jumprelu", "--jumprelu-bandwidth", "0"],
            "jumprelu_bandwidth is 0",
        ),
        (
            &["--architecture", "jumprelu", "--l0-coefficient", "-1"],
            "l0_coefficient is -1",
        ),
        (
            &[
                "--architecture",
                "jumprelu",
                "--jumprelu-sparsity-loss-mode",
                "quadratic",
            ],
            "quadratic",
        ),
        (
            &["--architecture", "matryoshka-batchtopk", "--k", "8"],
            "matryoshka_widths must not be empty",
        ),
        (
            &[
                "--architecture",
                "matryoshka-batchtopk",
                "--k",
                "8",
                "--matryoshka-widths",
                "32,16",
            ],
            "strictly increasing",
        ),
        (
            &[
                "--architecture",
                "batchtopk",
                "--k",
                "8",
                "--matryoshka-widths",
                "16,32",
            ],
            "--matryoshka-widths is a setting of matryoshka_batchtopk, not of --architecture batchtopk",
        ),
        (
            &["--architecture", "gated"],
            "implemented: standard, topk, batchtopk, jumprelu",
        ),
        (
            &["--architecture", "topk", "--hook-out", "blocks.0.hook_mlp_out"],
            "transcoders are implemented for standard and jumprelu, not topk",
        ),
        (
            &["--architecture", "standard", "--hook-out", "blocks.0.hook_resid_pre"],
            "no activations for hook `blocks.0.hook_resid_pre`",
        ),
        (
            &[
                "--architecture",
                "standard",
                "--hook-out",
                "blocks.0.hook_mlp_out",
                "--normalize-activations",
                "expected_average_only_in",
            ],
            "--normalize-activations must be none for a transcoder",
        ),
    ];
    for (extra, needle) in cases {
        fails(hooklens(&train_args(&acts, &out, extra)), needle);
    }
    let mut args = train_args(&acts, &out, &["--architecture", "topk", "--k", "8", "--lr", "1e-3"]);
    args[4] = "blocks.1.hook_resid_post";
    fails(hooklens(&args), "no activations for hook `blocks.1.hook_resid_post`");
    let mut args = train_args(&acts, &out, &["--architecture", "topk", "--k", "8", "--lr", "1e-3"]);
    args[6] = "0";
    fails(hooklens(&args), "d_sae must be at least 1");
    args[6] = "18446744073709551615";
    fails(hooklens(&args), "too large");
    let mut args = train_args(&acts, &out, &["--architecture", "topk", "--k", "8"]);
    assert_eq!(args[9], "--batch-size");
    args[10] = "18446744073709551615";
    fails(hooklens(&args), "too large");
    assert!(!tmp.path("sae").exists());
    let help = ok_stdout(hooklens(&["train-sae", "--help"]));
    assert!(
        help.contains("[possible values: standard, topk, batchtopk, jumprelu, matryoshka_batchtopk]"),
        "{help}"
    );
}

/// `train_args` reading the built-in model's activations over `corpus` (sequences of
/// 16 tokens, as `harvest` cuts them) instead of a harvest.
fn model_args<'a>(corpus: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = train_args(corpus, out, extra);
    assert_eq!(args[1], "--activations");
    args[1] = "--input";
    args.extend_from_slice(&["--model", "builtin", "--context-size", "16"]);
    args
}

/// The points of the plot of `metric` in a metrics.html.
fn plot_points(html: &str, metric: &str) -> usize {
    let at = html
        .find(&format!("data-metric=\"{metric}\""))
        .unwrap_or_else(|| panic!("no plot of {metric}: {html}"));
    let rest = &html[at..];
    let start = rest.find("points=\"").unwrap() + 8;
    let end = start + rest[start..].find('"').unwrap();
    rest[start..end].split(' ').filter(|p| !p.is_empty()).count()
}

#[test]
fn trains_on_a_model_run_over_a_corpus_as_on_its_harvest() {
    let tmp = TempDir::new("train-sae-model");
    let acts = harvest(&tmp);
    let corpus = tmp.s("corpus.txt");
    let topk = ["--architecture", "topk", "--k", "8", "--lr", "1e-3"];
    let from_shards = tmp.s("from-shards");
    ok_stderr(hooklens(&train_args(&acts, &from_shards, &topk)));
    let from_model = tmp.s("from-model");
    let err = ok_stderr(hooklens(&model_args(&corpus, &from_model, &topk)));
    assert!(
        err.contains("computed by builtin over") && err.contains("in sequences of 16 tokens"),
        "{err}"
    );
    // The corpus holds fewer tokens than --training-tokens: said once.
    assert_eq!(err.matches("reading it again from the start").count(), 1, "{err}");
    assert!(err.contains("CE loss recovered"), "{err}");
    // The same rows in the same order as the harvest's shards: the same SAE.
    assert_eq!(
        weights(&tmp.path("from-model")),
        weights(&tmp.path("from-shards")),
        "the model source's SAE differs from the harvest's"
    );
    let metrics = std::fs::read_to_string(tmp.path("from-model").join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4, "{metrics}");
    for line in metrics.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let score = v["ce_loss_score"].as_f64().unwrap();
        assert!(score.is_finite(), "{line}");
        assert!(
            v["ce_loss_with_ablation"].as_f64().unwrap() > v["ce_loss_without_sae"].as_f64().unwrap(),
            "{line}"
        );
    }
    let shard_metrics = std::fs::read_to_string(tmp.path("from-shards").join("metrics.jsonl")).unwrap();
    assert!(!shard_metrics.contains("ce_loss"), "{shard_metrics}");

    // metrics.html: one plot per metric, a point per metrics step; CE only from a model.
    let html = std::fs::read_to_string(tmp.path("from-model").join("metrics.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 5);
    for m in ["mse_loss", "explained_variance", "l0", "dead_fraction", "ce_loss_score"] {
        assert_eq!(plot_points(&html, m), 4, "{m}");
    }
    assert!(!html.contains("<script") && !html.contains("http://fonts") && !html.contains("<link"));
    let html = std::fs::read_to_string(tmp.path("from-shards").join("metrics.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 4);

    // Rerun: resumes from the final checkpoint and writes the same SAE.
    let first = weights(&tmp.path("from-model"));
    let err = ok_stderr(hooklens(&model_args(&corpus, &from_model, &topk)));
    assert!(err.contains("resuming from"), "{err}");
    assert_eq!(weights(&tmp.path("from-model")), first);

    // A transcoder from the model, mlp.hook_in to hook_mlp_out.
    let tc = tmp.s("transcoder");
    let mut args = model_args(
        &corpus,
        &tc,
        &[
            "--architecture",
            "standard",
            "--l1-coefficient",
            "1e-3",
            "--hook-out",
            "blocks.0.hook_mlp_out",
        ],
    );
    args[4] = "blocks.0.hook_resid_mid";
    let err = ok_stderr(hooklens(&args));
    assert!(err.contains("wrote the transcoder to"), "{err}");
}

#[test]
fn bad_sources_are_errors_naming_the_flag() {
    let tmp = TempDir::new("train-sae-model-bad");
    std::fs::write(
        tmp.path("corpus.txt"),
        "the cat sat on the mat and then it left\n".repeat(20),
    )
    .unwrap();
    std::fs::write(tmp.path("short.txt"), "the cat\n").unwrap();
    let (corpus, short, out) = (tmp.s("corpus.txt"), tmp.s("short.txt"), tmp.s("sae"));
    let topk = ["--architecture", "topk", "--k", "8"];
    let mut both = model_args(&corpus, &out, &topk);
    both.extend_from_slice(&["--activations", &corpus]);
    fails(hooklens(&both), "--activations and --input: give one");
    let mut neither = model_args(&corpus, &out, &topk);
    neither.drain(1..3);
    fails(hooklens(&neither), "give --activations HARVEST_DIR");
    let mut ctx_with_shards = train_args(&corpus, &out, &topk);
    ctx_with_shards.extend_from_slice(&["--context-size", "16"]);
    fails(
        hooklens(&ctx_with_shards),
        "--context-size is a setting of the model run over --input, not of --activations",
    );
    let mut args = model_args(&corpus, &out, &topk);
    let n = args.len();
    args[n - 1] = "1";
    fails(
        hooklens(&args),
        "--context-size 1 must be between 2 and the model's n_ctx",
    );
    let mut args = model_args(&corpus, &out, &topk);
    args[4] = "blocks.0.hook_resid_pots";
    fails(
        hooklens(&args),
        "--hook `blocks.0.hook_resid_pots` is not a hook point of --model builtin (did you mean `blocks.0.hook_resid_post`",
    );
    fails(hooklens(&model_args(&short, &out, &topk)), "not one sequence of 16");
    let missing = tmp.s("missing.txt");
    fails(hooklens(&model_args(&missing, &out, &topk)), "--input");
    assert!(!tmp.path("sae").exists());
}

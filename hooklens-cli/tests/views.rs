//! `hooklens demo`, `attention` and `logit-lens` as a user runs them: on the built-in
//! model by default (offline), with readable errors. The pages' behaviour in a browser
//! is tested in `browser.rs`.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn small_model(dir: &Path) -> PathBuf {
    use hooklens_models::model::{random_weights, save_hf_checkpoint};
    let cfg = hooklens_models::TransformerConfig::new(2, 32, 4, 50257, 32);
    let path = dir.join("model");
    save_hf_checkpoint(&path, &cfg, &random_weights(&cfg, 9).unwrap(), candle_core::DType::F32).unwrap();
    path
}

/// On a model that does not copy (random weights), the demo says so rather than tell
/// the built-in model's story.
#[test]
fn demo_claims_only_what_its_numbers_show() {
    let tmp = TempDir::new("demo-random");
    let model = small_model(&tmp.0);
    let out = ok_stdout(hooklens(&[
        "demo",
        "--model",
        model.to_str().unwrap(),
        "--half",
        "10",
        "--batch",
        "4",
        "--phrase",
        " one two three four five six",
        "--out",
        tmp.s("demo.html").as_str(),
    ]));
    assert!(out.contains("not far below the first half"), "{out}");
    assert!(!out.contains("predicted by copying"), "{out}");
    assert!(
        !out.contains("auxiliary"),
        "only the built-in model was taught its heads: {out}"
    );
    assert!(!out.contains("the phrase is continued by copying"), "{out}");
    assert!(out.contains("no head has a clear induction stripe"), "{out}");
}

#[test]
fn demo_finds_breaks_and_draws_the_induction_heads_offline() {
    let tmp = TempDir::new("demo");
    let html = tmp.path("demo.html");
    // The built-in weights ship with the repository: a build without them fails here.
    let out = ok_stdout(hooklens(&["demo", "--out", html.to_str().unwrap()]));
    let loss = |label: &str| -> f32 {
        let line = out
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("{out}"));
        line[label.len()..].split_whitespace().next().unwrap().parse().unwrap()
    };
    let first = loss("loss on the first half:");
    let repeat = loss("loss on the repeat:");
    assert!(repeat < first / 2.0, "{out}");
    let best_line = out.lines().find(|l| l.starts_with("strongest induction head")).unwrap();
    let score: f32 = best_line
        .rsplit("score ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .parse()
        .unwrap();
    assert!(score >= 0.5, "{out}");
    let ablated = out
        .lines()
        .find(|l| l.starts_with("loss on the repeat with L"))
        .and_then(|l| l.split("ablated:").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse::<f32>().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        ablated > repeat + 0.5,
        "ablating the head should undo the copying: {out}"
    );
    assert!(out.contains("the phrase is continued by copying"), "{out}");
    // Three grids of the two layers: induction scores, previous-token scores, and the
    // loss with each head ablated (a model this small gets every head ablated).
    let grids: Vec<Vec<f32>> = out
        .lines()
        .filter(|l| l.starts_with("layer "))
        .map(|l| l.split_whitespace().skip(2).map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(grids.len(), 6, "{out}");
    assert!(grids.iter().all(|row| row.len() == 4), "{out}");
    // The circuit: a previous-token head in layer 0 feeds layer 1's induction heads,
    // so ablating it raises the loss on the repeat too.
    let (prev_l0, ablated_l0) = (&grids[2], &grids[4]);
    let h = (0..4).max_by(|&a, &b| prev_l0[a].total_cmp(&prev_l0[b])).unwrap();
    assert!(prev_l0[h] > 0.5, "a previous-token head in layer 0: {out}");
    assert!(ablated_l0[h] > repeat + 0.5, "it is part of the circuit: {out}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("id=\"attention-data\""));

    // The story follows the numbers: the heads named as hurting most are the largest
    // entries of the ablation grid, in order, each with the role its scores give it.
    let mut ablation: Vec<(usize, usize, f32)> = grids[4..6]
        .iter()
        .enumerate()
        .flat_map(|(l, row)| row.iter().enumerate().map(move |(h, &v)| (l, h, v)))
        .collect();
    ablation.sort_by(|a, b| b.2.total_cmp(&a.2));
    let named: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("the heads whose ablation hurts most"))
        .skip(1)
        .take_while(|l| l.starts_with("  L"))
        .collect();
    assert!(!named.is_empty(), "{out}");
    for ((l, h, v), line) in ablation.iter().zip(&named) {
        assert!(
            line.starts_with(&format!("  L{l}H{h}: {v:.3}")),
            "{line} vs L{l}H{h} {v}"
        );
        let role_ok = if grids[*l][*h] > 0.5 {
            line.contains("an induction head")
        } else if grids[2 + *l][*h] > 0.5 {
            line.contains("a previous-token head")
        } else {
            line.contains("neither")
        };
        assert!(role_ok, "{line}");
    }
    // The built-in model's previous-token heads were taught: the demo says so, and says
    // why a loss above a uniform guess is possible.
    assert!(out.contains("auxiliary") && out.contains("builtin/README.md"), "{out}");
    if first > (50257f32).ln() {
        assert!(out.contains("above ln(d_vocab)"), "{out}");
    }
    // The page opens on the head the title names.
    let best = best_line.split_whitespace().nth(3).unwrap();
    let (l, h) = best.trim_start_matches('L').split_once('H').unwrap();
    assert!(
        page.contains(&format!("\"selected\":[{l},{h}]")),
        "the page opens on {best}"
    );

    fails(
        hooklens(&["demo", "--half", "70"]),
        "--half 70 must be at least 3 and fit twice",
    );
    fails(
        hooklens(&["demo", "--phrase", "hi"]),
        "--phrase must be at least 4 tokens",
    );
}

#[test]
fn attention_and_logit_lens_write_pages_and_tables() {
    let tmp = TempDir::new("views");
    let model = small_model(&tmp);
    let m = model.to_str().unwrap();
    let page = tmp.path("a.html");
    let p = page.to_str().unwrap();
    ok_stdout(hooklens(&[
        "attention",
        "--model",
        m,
        "--prompt",
        "Hello world",
        "--out",
        p,
    ]));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("\"Hello\",\" world\""));
    fails(
        hooklens(&["attention", "--model", m, "--prompt", "a", "--layers", "2", "--out", p]),
        "layer 2 does not exist: the model has 2 layers",
    );
    fails(
        hooklens(&[
            "attention",
            "--model",
            m,
            "--prompt",
            "a",
            "b",
            "--row",
            "2",
            "--out",
            p,
        ]),
        "--row 2: the input has 2 row(s)",
    );
    fails(
        hooklens(&[
            "attention",
            "--model",
            m,
            "--prompt",
            "a",
            "--out",
            "/nonexistent/dir/a.html",
        ]),
        "/nonexistent/dir/a.html",
    );
    fails(hooklens(&["attention", "--model", m, "--prompt", "a"]), "--out");

    let table = ok_stdout(hooklens(&[
        "logit-lens",
        "--model",
        m,
        "--prompt",
        "Hello world",
        "--top",
        "3",
    ]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines.len(),
        4,
        "a header and one line per token (BOS, Hello, world): {table}"
    );
    assert!(lines[0].contains("0_pre") && lines[0].contains("1_pre") && lines[0].contains("final_post"));
    assert!(
        lines[2].contains("\" Hello\"") || lines[2].contains("\"Hello\""),
        "{table}"
    );
    let lens = tmp.path("lens.html");
    ok_stdout(hooklens(&[
        "logit-lens",
        "--model",
        m,
        "--prompt",
        "Hello",
        "--out",
        lens.to_str().unwrap(),
    ]));
    assert!(std::fs::read_to_string(&lens).unwrap().contains("id=\"lens-data\""));
    fails(
        hooklens(&["logit-lens", "--model", m, "--prompt", "a", "--top", "0"]),
        "--top must be at least 1",
    );
}

#[test]
fn every_new_subcommand_has_help() {
    for sub in ["demo", "attention", "logit-lens", "harvest"] {
        let out = ok_stdout(hooklens(&[sub, "--help"]));
        assert!(out.contains("Usage: hooklens"), "{sub}: {out}");
        assert!(
            out.contains("[default: builtin]"),
            "{sub}: the built-in model is the default: {out}"
        );
    }
    let out = ok_stdout(hooklens(&["--help"]));
    for sub in ["demo", "attention", "logit-lens", "harvest"] {
        assert!(out.contains(sub), "{out}");
    }
}

/// The reference fixture ships its tokenizer: every text subcommand works on it, and a
/// copy without one is refused up front, naming the file, by every text subcommand.
#[test]
fn text_subcommands_work_on_the_tiny_fixture_and_name_a_missing_tokenizer() {
    let tmp = TempDir::new("tiny-text");
    let m = tiny_model().to_string_lossy().into_owned();
    ok_stdout(hooklens(&["run", "--model", &m, "--prompt", "Hello world"]));
    ok_stdout(hooklens(&["tokenize", "--model", &m, "Hello world"]));
    ok_stdout(hooklens(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "3",
    ]));
    let bare = tmp.path("bare");
    std::fs::create_dir_all(&bare).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny_model().join(f), bare.join(f)).unwrap();
    }
    let bare = bare.to_string_lossy().into_owned();
    for args in [
        vec!["run", "--model", &bare, "--prompt", "Hello"],
        vec![
            "generate",
            "--model",
            &bare,
            "--prompt",
            "Hello",
            "--max-new-tokens",
            "2",
        ],
        vec!["tokenize", "--model", &bare, "Hello"],
    ] {
        fails(hooklens(&args), "no tokenizer.json");
    }
    // The demo refuses before printing anything.
    let o = hooklens(&[
        "demo",
        "--model",
        &bare,
        "--half",
        "5",
        "--out",
        tmp.s("d.html").as_str(),
    ]);
    fails(o.clone(), "no tokenizer.json");
    assert!(
        o.stdout.is_empty(),
        "printed before refusing: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(!tmp.path("d.html").exists());
}

/// `--row` picks one prompt of a batch for the one-prompt views: the page of row 1 of a
/// tokens file equals the page of that row alone, and padding of a shorter prompt is cut.
#[test]
fn views_show_the_row_asked_for() {
    let tmp = TempDir::new("rows");
    let m = tiny_model().to_string_lossy().into_owned();
    let t = tiny_tokens().to_string_lossy().into_owned();
    let row1 = tmp.path("row1.safetensors");
    let all = load(tiny_tokens())["tokens"].clone();
    candle_core::safetensors::save(&[("tokens", all.narrow(0, 1, 1).unwrap())].into_iter().collect(), &row1).unwrap();
    let row1 = row1.to_string_lossy().into_owned();
    let page = |args: &[&str], name: &str| {
        let out = tmp.s(name);
        let mut a = args.to_vec();
        a.extend(["--out", out.as_str()]);
        ok_stdout(hooklens(&a));
        std::fs::read_to_string(&out).unwrap()
    };
    let picked = page(&["attention", "--model", &m, "--tokens", &t, "--row", "1"], "a.html");
    let alone = page(&["attention", "--model", &m, "--tokens", &row1], "b.html");
    assert_eq!(picked, alone);
    let lens_picked = ok_stdout(hooklens(&["logit-lens", "--model", &m, "--tokens", &t, "--row", "1"]));
    let lens_alone = ok_stdout(hooklens(&["logit-lens", "--model", &m, "--tokens", &row1]));
    assert_eq!(lens_picked, lens_alone);
    // Prompts of different lengths: the shorter one's padding is not shown.
    let short = page(
        &[
            "attention",
            "--model",
            &m,
            "--prompt",
            "a long prompt of words here",
            "hi",
            "--row",
            "1",
        ],
        "c.html",
    );
    let only = page(&["attention", "--model", &m, "--prompt", "hi"], "d.html");
    assert_eq!(short, only);
}

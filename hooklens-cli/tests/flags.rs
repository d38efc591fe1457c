//! The command line speaks in its own flags: errors name the flag that fixes them,
//! `--names` has one syntax everywhere, BOS is chosen the same way by every subcommand
//! that reads text, and `logit-lens` prints probabilities and columns readably.

mod common;

use common::*;

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// A copy of the Qwen 3 reference model with no tokenizer.json.
fn no_tokenizer_model(tmp: &TempDir) -> std::path::PathBuf {
    let dir = tmp.path("qwen3-bare");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(root().join("testdata/qwen3/model").join(f), dir.join(f)).unwrap();
    }
    dir
}

#[test]
fn errors_name_the_flag_that_fixes_them() {
    let tmp = TempDir::new("flags-errors");
    let (m, t) = (tiny_model(), tiny_tokens());
    let out = tmp.path("c.safetensors");
    let cache = |extra: &[&str]| {
        let mut a = vec!["cache", "--model", s(&m), "--tokens", s(&t), "--out", s(&out)];
        a.extend_from_slice(extra);
        hooklens(&a)
    };
    // A point switched off by default: --all-hooks, not the config field.
    let err = fails(cache(&["--names", "blocks.0.attn.hook_result"]), "--all-hooks");
    assert!(!err.contains("in the model's config"), "{err}");
    ok_stdout(cache(&["--names", "blocks.0.attn.hook_result", "--all-hooks"]));
    // No tokenizer: --tokens FILE, not the library's with_tokenizer.
    let bare = no_tokenizer_model(&tmp);
    let err = fails(
        hooklens(&["run", "--model", s(&bare), "--prompt", "hi"]),
        "--tokens FILE",
    );
    assert!(!err.contains("with_tokenizer"), "{err}");
    // A context overflow: --max-new-tokens, with the largest that fits (64 - 10 + 1).
    let err = fails(
        hooklens(&[
            "generate",
            "--model",
            s(&m),
            "--tokens",
            s(&t),
            "--greedy",
            "--max-new-tokens",
            "100",
        ]),
        "--max-new-tokens 55 or less",
    );
    assert!(err.contains("context of 64"), "{err}");
    // The point a spliced SAE replaces: the SAE's own points are suggested.
    let sae = root().join("testdata/saes/saes/standard");
    let err = fails(
        cache(&["--sae", s(&sae), "--names", "blocks.0.hook_resid_pre"]),
        "blocks.0.hook_resid_pre.hook_sae_*",
    );
    assert!(err.contains("replaces it"), "{err}");
    ok_stdout(cache(&[
        "--sae",
        s(&sae),
        "--names",
        "blocks.0.hook_resid_pre.hook_sae_*",
    ]));
}

#[test]
fn names_are_repeatable_and_comma_separated_everywhere() {
    let tmp = TempDir::new("flags-names");
    let (m, t) = (tiny_model(), tiny_tokens());
    let mut keys = Vec::new();
    for (i, names) in [
        vec!["--names", "blocks.0.hook_resid_pre,blocks.1.attn.hook_z"],
        vec!["--names", "blocks.0.hook_resid_pre", "--names", "blocks.1.attn.hook_z"],
        vec!["--names", "blocks.0.hook_resid_pre", "blocks.1.attn.hook_z"],
    ]
    .into_iter()
    .enumerate()
    {
        let out = tmp.path(&format!("n{i}.safetensors"));
        let mut a = vec!["cache", "--model", s(&m), "--tokens", s(&t), "--out", s(&out)];
        a.extend(names);
        ok_stdout(hooklens(&a));
        let mut k: Vec<String> = load(&out).into_keys().collect();
        k.sort();
        keys.push(k);
    }
    assert!(keys[0].contains(&"blocks.1.attn.hook_z".to_string()), "{:?}", keys[0]);
    assert_eq!(keys[0], keys[1]);
    assert_eq!(keys[0], keys[2]);
    // harvest: the same syntax.
    let corpus = tmp.path("corpus.txt");
    std::fs::write(&corpus, "the cat sat on the mat\nand the dog sat too\n".repeat(8)).unwrap();
    let out = tmp.path("harvest");
    ok_stderr(hooklens(&[
        "harvest",
        "--model",
        s(&m),
        "--input",
        s(&corpus),
        "--names",
        "blocks.0.hook_resid_pre,blocks.1.attn.hook_z",
        "--context-size",
        "16",
        "--out",
        s(&out),
    ]));
    let manifest = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with("-manifest.json"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .expect("a manifest");
    assert!(
        manifest.contains("blocks.0.hook_resid_pre") && manifest.contains("blocks.1.attn.hook_z"),
        "{manifest}"
    );
}

#[test]
fn logit_lens_prints_small_probabilities_and_aligned_columns() {
    let m = tiny_model();
    let out = ok_stdout(hooklens(&[
        "logit-lens",
        "--model",
        s(&m),
        "--prompt",
        "日本  the\tcat é",
    ]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() > 5, "{out}");
    // A random tiny model spreads its probability: every top entry is below 10%, and
    // none of them prints as "0%".
    assert!(!out.contains(" 0%"), "{out}");
    // Each row's cells end at the same terminal column as the header's.
    let ends = |line: &str| -> Vec<usize> {
        let mut cols = Vec::new();
        let mut width = 0;
        for c in line.chars() {
            width += if ('\u{4E00}'..='\u{9FFF}').contains(&c) { 2 } else { 1 };
            if c == '%' {
                cols.push(width);
            }
        }
        cols
    };
    let first = ends(lines[1]);
    assert_eq!(first.len(), 3, "{}", lines[1]);
    for line in &lines[2..] {
        assert_eq!(ends(line), first, "{out}");
    }
}

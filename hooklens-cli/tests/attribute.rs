//! `hooklens attribute` on circuit-tracer's reference cases: the graph file equals what
//! its `create_graph_files` wrote, the saved graph its `Graph`, the viewer is written,
//! and bad input fails before any work.

mod common;

use common::*;
use hooklens_testutil::TempDir;

#[test]
fn attribute_writes_circuit_tracers_graph_file() {
    let tmp = TempDir::new("attribute");
    for name in ["circuits", "circuits-clt"] {
        let dir = circuit_case(name);
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("graph_meta.json")).unwrap()).unwrap();
        let slug = meta["case"].as_str().unwrap();
        let out = tmp.path(&format!("{name}.json"));
        let html = tmp.path(&format!("{name}.html"));
        let saved = tmp.path(&format!("{name}.safetensors"));
        let stdout = ok_stdout(hooklens(&attribute_args(
            &dir,
            dir.join("transcoders"),
            &[
                "--max-n-logits".as_ref(),
                "5".as_ref(),
                "--batch-size".as_ref(),
                "16".as_ref(),
                "--slug".as_ref(),
                slug.as_ref(),
                "--quiet".as_ref(),
                "--out".as_ref(),
                out.as_os_str(),
                "--html".as_ref(),
                html.as_os_str(),
                "--save-graph".as_ref(),
                saved.as_os_str(),
            ],
        )));
        assert!(
            stdout.contains(&format!("{} logit targets", meta["n_logits"])),
            "{stdout}"
        );
        let got: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        let want: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("graph_files").join(format!("{slug}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(got["metadata"], want["metadata"], "{name}");
        let ids = |v: &serde_json::Value, list: &str, key: &str| {
            v[list]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n[key].to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(&got, "nodes", "node_id"),
            ids(&want, "nodes", "node_id"),
            "{name}: nodes"
        );
        assert_eq!(
            ids(&got, "links", "source"),
            ids(&want, "links", "source"),
            "{name}: links"
        );
        assert_eq!(
            ids(&got, "links", "target"),
            ids(&want, "links", "target"),
            "{name}: links"
        );
        let page = std::fs::read_to_string(&html).unwrap();
        assert!(
            page.starts_with("<!DOCTYPE html>") && page.contains(slug),
            "{name}: viewer"
        );
        // The unpruned graph under circuit-tracer's field names.
        let g = hooklens_testutil::load_tensors(&saved);
        let w = hooklens_testutil::load_tensors(dir.join("graph.safetensors"));
        for key in [
            "active_features",
            "selected_features",
            "logit_tokens",
            "input_tokens",
            "vocab_size",
            "n_pos",
        ] {
            assert_eq!(g[key].dims(), w[key].dims(), "{name}: {key}");
            assert_eq!(g[key].dtype(), w[key].dtype(), "{name}: {key}");
            let v = |t: &hooklens::candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<i64>().unwrap();
            assert_eq!(v(&g[key]), v(&w[key]), "{name}: {key}");
        }
        hooklens_testutil::assert_close(name, &g["adjacency_matrix"], &w["adjacency_matrix"], 1e-4);
    }
}

#[test]
fn attribute_refuses_bad_input_before_any_work() {
    let dir = circuit_case("circuits");
    let model = dir.join("model");
    let tokens = dir.join("tokens.safetensors");
    let tc = dir.join("transcoders");
    let run = |transcoders: &std::path::Path, extra: &[&std::ffi::OsStr]| {
        hooklens(&attribute_args(
            &dir,
            transcoders,
            &[&["--quiet".as_ref()], extra].concat(),
        ))
    };
    // A folder that is not a transcoder set, a bad threshold, an output onto an input.
    fails(run(&model, &[]), "config.yaml");
    fails(
        run(&tc, &["--node-threshold".as_ref(), "1.5".as_ref()]),
        "--node-threshold",
    );
    fails(run(&tc, &["--out".as_ref(), tokens.as_os_str()]), "--out");
    fails(run(&tc, &["--target-id".as_ref(), "100000".as_ref()]), "100000");
}

/// Issue 27, point 8: the transcoders' files are inputs too: an output onto one of them
/// (`--out`, `--html` or `--save-graph`) is refused, and the file is intact.
#[test]
fn attribute_refuses_an_output_onto_a_transcoder_file() {
    let tmp = TempDir::new("attribute-out-transcoder");
    let dir = circuit_case("circuits");
    let tc = tmp.path("tc");
    std::fs::create_dir_all(&tc).unwrap();
    for f in ["config.yaml", "layer_0.safetensors", "layer_1.safetensors"] {
        std::fs::copy(dir.join("transcoders").join(f), tc.join(f)).unwrap();
    }
    for (flag, file) in [
        ("--out", "layer_1.safetensors"),
        ("--html", "config.yaml"),
        ("--save-graph", "layer_0.safetensors"),
    ] {
        let target = tc.join(file);
        let before = std::fs::read(&target).unwrap();
        let out = hooklens(&attribute_args(
            &dir,
            &tc,
            &["--quiet".as_ref(), flag.as_ref(), target.as_os_str()],
        ));
        fails(out, "writing it would destroy the input");
        assert_eq!(std::fs::read(&target).unwrap(), before, "{flag} {file} was written");
    }
}

#[test]
fn attribute_past_the_memory_budget_writes_the_same_graph() {
    let tmp = TempDir::new("attribute-spill");
    let dir = circuit_case("circuits-clt");
    let spill = tmp.path("spill");
    std::fs::create_dir_all(&spill).unwrap();
    let run = |out: &std::path::Path, extra: &[&std::ffi::OsStr]| {
        let base: [&std::ffi::OsStr; 7] = [
            "--max-n-logits".as_ref(),
            "5".as_ref(),
            "--quiet".as_ref(),
            "--slug".as_ref(),
            "same".as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ];
        ok_stdout(hooklens(&attribute_args(
            &dir,
            dir.join("transcoders"),
            &[&base[..], extra].concat(),
        )))
    };
    let (a, b) = (tmp.path("a.json"), tmp.path("b.json"));
    let mem = run(&a, &[]);
    assert!(mem.contains("held in memory"), "{mem}");
    let spilled = run(
        &b,
        &[
            "--memory-budget-mb".as_ref(),
            "0".as_ref(),
            "--spill-dir".as_ref(),
            spill.as_os_str(),
        ],
    );
    assert!(spilled.contains("held in temporary files"), "{spilled}");
    assert!(spilled.contains("peak resident memory"), "{spilled}");
    let text = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    assert!(text(&a) == text(&b), "the graph files differ");
    assert_eq!(
        std::fs::read_dir(&spill).unwrap().count(),
        0,
        "nothing left in the spill folder"
    );
    let bad = tmp.path("no-such-dir");
    let out = hooklens(&attribute_args(
        &dir,
        dir.join("transcoders"),
        &["--spill-dir".as_ref(), bad.as_os_str()],
    ));
    fails(out, "--spill-dir");
}

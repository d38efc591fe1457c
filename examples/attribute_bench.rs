//! Times one attribution graph, the Rust side of the comparison with circuit-tracer
//! (`scripts/circuit_tracer_bench.py` times circuit-tracer on the same files).
//!
//! ```sh
//! cargo run --release --example attribute_bench -- CASE_DIR [--batch-size N] [--max-feature-nodes N]
//!     [--max-n-logits N] [--desired-logit-prob P] [--vs circuit_tracer.json]
//! ```
//! `CASE_DIR` has the layout of `testdata/circuits` (model/, transcoders/,
//! tokens.safetensors; graph_meta.json's `attribute_call` gives the settings left out).
//! The benchmark case (12 layers, d_model 768, 4096 features per layer, 32 tokens; about
//! 1 GB, kept outside the repository) is made by `python scripts/circuit_cases.py --into
//! /work/bench-case bench` (see `scripts/circuit_tracer_bench.py`). Prints a table of wall
//! times and the peak resident memory, and with `--vs` the ratios to circuit-tracer's
//! times (the JSON line its script prints, saved to a file).

use std::path::PathBuf;
use std::time::Instant;

use hooklens::candle_core::DType;
use hooklens::models::circuits::{
    attribute_run, graph_file_from, prune, replacement_run, AttributionOptions, GraphFileOptions, Transcoders,
};
use hooklens::{HookedTransformer, LoadOptions};

/// The process's peak resident memory in MiB (`VmHWM`), where Linux reports it.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() -> hooklens::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut dir: Option<PathBuf> = None;
    let mut flags = std::collections::HashMap::new();
    while let Some(a) = args.next() {
        if let Some(flag) = a.strip_prefix("--") {
            flags.insert(flag.to_string(), args.next().unwrap_or_default());
        } else {
            dir = Some(PathBuf::from(a));
        }
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/circuits")));
    let meta: serde_json::Value = std::fs::read_to_string(dir.join("graph_meta.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    let call = &meta["attribute_call"];
    let num = |flag: &str, key: &str, default: f64| -> f64 {
        flags
            .get(flag)
            .and_then(|v| v.parse().ok())
            .or_else(|| call[key].as_f64())
            .unwrap_or(default)
    };
    let batch = num("batch-size", "batch_size", 512.0) as usize;
    let max_n_logits = num("max-n-logits", "max_n_logits", 10.0) as usize;
    let desired = num("desired-logit-prob", "desired_logit_prob", 0.95) as f32;
    let max_feat = flags
        .get("max-feature-nodes")
        .and_then(|v| v.parse::<usize>().ok())
        .or_else(|| call["max_feature_nodes"].as_u64().map(|v| v as usize));
    let threads = rayon_threads();

    let t0 = Instant::now();
    let model =
        HookedTransformer::from_pretrained(&dir.join("model").to_string_lossy(), &LoadOptions::no_processing())?;
    let transcoders = Transcoders::from_dir(dir.join("transcoders"))?;
    let tokens: Vec<u32> =
        hooklens::candle_core::safetensors::load(dir.join("tokens.safetensors"), &hooklens::candle_core::Device::Cpu)?
            .remove("tokens")
            .ok_or_else(|| hooklens::Error::invalid("tokens.safetensors has no `tokens`"))?
            .flatten_all()?
            .to_dtype(DType::U32)?
            .to_vec1()?;
    let load = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let run = replacement_run(&model, &transcoders, &tokens)?;
    let setup = t1.elapsed().as_secs_f64();
    let mut opts = AttributionOptions::new()
        .salient(max_n_logits, desired)
        .batch_size(batch);
    if let Some(m) = max_feat {
        opts = opts.max_feature_nodes(m);
    }
    let t2 = Instant::now();
    let graph = attribute_run(&model, &transcoders, &run, &opts)?;
    let rows = t2.elapsed().as_secs_f64();
    let attribute_total = setup + rows;

    let t3 = Instant::now();
    let pruned = prune(&graph, 0.8, 0.98)?;
    let text = |id: u32| model.to_single_str_token(id).unwrap_or_default();
    let mut gopts = GraphFileOptions::new("bench");
    gopts.scan = Some(graph.scan.clone().unwrap_or_else(|| "bench".into()));
    let file = graph_file_from(&graph, &pruned, &gopts, &text)?;
    let files = t3.elapsed().as_secs_f64();
    let rss = peak_rss_mib().unwrap_or(f64::NAN);

    println!(
        "case {} ({} layers, d_model {}, {} features per layer, {} tokens): {} active features, {} in the graph, {} logits; batch {batch}, {threads} threads",
        dir.display(),
        graph.n_layers,
        transcoders.d_model(),
        transcoders.d_transcoder(),
        graph.n_pos(),
        graph.active_features.len(),
        graph.n_features(),
        graph.logit_targets.len(),
    );
    println!("graph file: {} nodes, {} links", file.nodes.len(), file.links.len());
    let vs: Option<serde_json::Value> = flags
        .get("vs")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| t.lines().rev().find_map(|l| serde_json::from_str(l).ok()));
    let theirs = |key: &str| {
        let v = vs.as_ref()?;
        let secs = |k: &str| {
            v["seconds"][k]
                .as_f64()
                .or_else(|| v["attribute_split_seconds"][k].as_f64())
        };
        match key {
            // circuit-tracer's rows: everything in attribute() after the replacement run.
            "rows" => Some(secs("attribute")? - secs("setup_attribution")?),
            k => secs(k),
        }
    };
    println!(
        "{:<28} {:>12} {:>16} {:>8}",
        "step", "hooklens s", "circuit-tracer s", "ratio"
    );
    for (name, ours, key) in [
        ("load model + transcoders", load, "setup"),
        ("attribute (total)", attribute_total, "attribute"),
        ("  replacement run (setup)", setup, "setup_attribution"),
        ("  rows (forward+backward)", rows, "rows"),
        ("prune + graph file", files, "prune_and_graph_files"),
    ] {
        match theirs(key) {
            Some(t) => println!("{name:<28} {ours:>12.3} {t:>16.3} {:>8.3}", ours / t),
            None => println!("{name:<28} {ours:>12.3} {:>16} {:>8}", "-", "-"),
        }
    }
    match vs.as_ref().and_then(|v| v["peak_rss_mib"]["end"].as_f64()) {
        Some(t) => println!(
            "peak RSS: {rss:.0} MiB (circuit-tracer {t:.0} MiB, ratio {:.3})",
            rss / t
        ),
        None => println!("peak RSS: {rss:.0} MiB"),
    }
    // The same graph as the case's own (when it was made with these settings).
    let device = hooklens::candle_core::Device::Cpu;
    if let Ok(want) = hooklens::candle_core::safetensors::load(dir.join("graph.safetensors"), &device) {
        let ints = |k: &str| -> Vec<i64> {
            want.get(k)
                .and_then(|t| t.flatten_all().ok()?.to_vec1::<i64>().ok())
                .unwrap_or_default()
        };
        let sel: Vec<i64> = graph.selected_features.iter().map(|&i| i as i64).collect();
        let logits: Vec<i64> = graph.logit_targets.iter().map(|t| t.vocab_idx as i64).collect();
        let adj = want
            .get("adjacency_matrix")
            .and_then(|t| t.flatten_all().ok()?.to_vec1::<f32>().ok())
            .unwrap_or_default();
        let ours = graph.adjacency.to_vec()?;
        let (diff, max) = if adj.len() == ours.len() {
            adj.iter()
                .zip(&ours)
                .fold((0f32, 0f32), |(d, m), (a, b)| (d.max((a - b).abs()), m.max(a.abs())))
        } else {
            (f32::NAN, f32::NAN)
        };
        println!(
            "vs the case's graph.safetensors: same selected features {}, same logit tokens {}, \
             adjacency max abs diff {diff:.2e} (largest entry {max:.3})",
            sel == ints("selected_features"),
            logits == ints("logit_tokens"),
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "load": load, "attribute": attribute_total, "setup_attribution": setup, "rows": rows,
            "prune_and_graph_files": files, "peak_rss_mib": rss, "threads": threads,
            "n_active": graph.active_features.len(), "n_features": graph.n_features(),
        })
    );
    Ok(())
}

/// The threads rayon's pool runs (RAYON_NUM_THREADS, else the cores).
fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

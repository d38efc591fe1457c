//! An attribution graph whose dense adjacency matrix needs four times the memory budget,
//! built within the budget: the edge rows and the matrix go to temporary files, pruning
//! reads them row by row. Prints the matrix's size, the budget, and the process's peak
//! resident memory before and after.
//!
//! ```sh
//! cargo run --release --example attribute_memory [-- --budget-mib 256 --positions 128]
//! ```
//! The model is a random 2-layer Llama (d_model 64, the shape of
//! `testdata/circuits/model`) written to a temporary folder, with random transcoders of
//! 2048 features per layer whose biases make about 3% of them fire at each position, so
//! 128 positions give about 15.7k feature nodes (a 1 GiB matrix).

use std::collections::HashMap;
use std::time::Instant;

use hooklens::candle_core::{DType, Device, Tensor};
use hooklens::{CacheOptions, HookedModel, HookedTransformer, LoadOptions};
use hooklens_models::circuits::{attribute, graph_file_from, prune, AttributionOptions, GraphFileOptions, Transcoders};
use hooklens_models::convert::{synthetic_checkpoint, write_checkpoint};
use hooklens_models::model::SeededRng;

/// The process's peak and current resident memory in MiB (`VmHWM`, `VmRSS`).
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn main() -> hooklens::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let budget_mib = flag("--budget-mib", 256) as u64;
    let n_pos = flag("--positions", 128);
    let (features, frac) = (2048usize, 0.03f32);
    let root = std::env::temp_dir().join(format!("hooklens-attribute-memory-{}", std::process::id()));
    std::fs::create_dir_all(&root).map_err(|e| hooklens::Error::io(&root, e))?;

    // A random Llama of the reference's shape, with room for the positions.
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/circuits/model/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base).map_err(|e| hooklens::Error::io(base, e))?)
            .map_err(|e| hooklens::Error::invalid(e.to_string()))?;
    cfg["max_position_embeddings"] = (n_pos + 8).into();
    let cfg = cfg.to_string();
    write_checkpoint(root.join("model"), &cfg, &synthetic_checkpoint(&cfg, 7)?, DType::F32, 1)?;
    let model = HookedTransformer::from_dir(root.join("model"), &LoadOptions::no_processing())?;
    let (n_layers, d, vocab) = (model.cfg().n_layers, model.cfg().d_model, model.cfg().d_vocab);
    let tokens: Vec<u32> = (0..n_pos).map(|i| ((i * 7919 + 13) % vocab) as u32).collect();
    let t = Tensor::new(tokens.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let (_, cache) = model.run_with_cache(CacheOptions::new().names("blocks.*.mlp.hook_in"), |m| m.forward(&t))?;

    // Random transcoders whose biases put each feature's threshold at its (1 - frac)
    // quantile over the prompt's positions.
    let tc_dir = root.join("transcoders");
    std::fs::create_dir_all(&tc_dir).map_err(|e| hooklens::Error::io(&tc_dir, e))?;
    let mut rng = SeededRng::new(11);
    for l in 0..n_layers {
        let x: Vec<f32> = cache
            .try_get(&format!("blocks.{l}.mlp.hook_in"))?
            .flatten_all()?
            .to_vec1()?;
        let w_enc: Vec<f32> = (0..features * d)
            .map(|_| rng.normal() as f32 / (d as f32).sqrt())
            .collect();
        let w_dec: Vec<f32> = (0..features * d).map(|_| rng.normal() as f32 * 0.05).collect();
        let mut b_enc = vec![0f32; features];
        for (f, b) in b_enc.iter_mut().enumerate() {
            let mut pre: Vec<f32> = (0..n_pos)
                .map(|p| (0..d).map(|j| w_enc[f * d + j] * x[p * d + j]).sum())
                .collect();
            pre.sort_by(|a, b| a.total_cmp(b));
            let q = pre[((1.0 - frac) * n_pos as f32) as usize];
            *b = -q + 1e-4;
        }
        let ts: HashMap<String, Tensor> = [
            ("W_enc", Tensor::from_vec(w_enc, (features, d), &Device::Cpu)?),
            ("W_dec", Tensor::from_vec(w_dec, (features, d), &Device::Cpu)?),
            ("b_enc", Tensor::from_vec(b_enc, features, &Device::Cpu)?),
            ("b_dec", Tensor::zeros(d, DType::F32, &Device::Cpu)?),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        hooklens::candle_core::safetensors::save(&ts, tc_dir.join(format!("layer_{l}.safetensors")))?;
    }
    let yaml = "model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\nfeature_output_hook: mlp.hook_out\nscan: memory-bench\n";
    std::fs::write(tc_dir.join("config.yaml"), yaml).map_err(|e| hooklens::Error::io(&tc_dir, e))?;
    let transcoders = Transcoders::from_dir(&tc_dir)?;
    drop(cache);

    let (peak_before, rss_before) = rss_mib();
    let started = Instant::now();
    let opts = AttributionOptions::new()
        .salient(10, 0.95)
        .batch_size(256)
        .memory_budget(budget_mib << 20)
        .spill_dir(&root);
    let graph = attribute(&model, &transcoders, &tokens, &opts)?;
    let attributed = started.elapsed().as_secs_f64();
    let pruned = prune(&graph, 0.8, 0.98)?;
    let file = graph_file_from(&graph, &pruned, &GraphFileOptions::new("memory"), &|id| id.to_string())?;
    let total = started.elapsed().as_secs_f64();
    let (peak_after, _) = rss_mib();
    let n = graph.n_nodes() as f64;
    let dense_mib = n * n * 4.0 / (1u64 << 20) as f64;
    println!(
        "{} positions, {} feature nodes, {} nodes: the dense adjacency needs {dense_mib:.0} MiB ({:.1}x the {budget_mib} MiB budget); held in memory: {}",
        graph.n_pos(),
        graph.n_features(),
        graph.n_nodes(),
        dense_mib / budget_mib as f64,
        graph.adjacency.as_slice().is_some()
    );
    println!(
        "attribution {attributed:.1} s, with pruning and the graph file {total:.1} s; graph file: {} nodes, {} links",
        file.nodes.len(),
        file.links.len()
    );
    println!(
        "resident memory: {rss_before:.0} MiB before the attribution (model, transcoders), peak {peak_before:.0} MiB before and {peak_after:.0} MiB after: the attribution added at most {:.0} MiB",
        peak_after - rss_before
    );
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

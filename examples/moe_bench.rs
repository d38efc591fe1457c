//! A mixture of experts against the dense model with the same active parameters: a
//! Mixtral-shaped model (8 experts, 2 per token, expert width 3.5 x d_model, grouped
//! attention 4:1, vocabulary 32000) at reduced width and depth, against a Mistral of the
//! same attention whose dense MLP is two experts wide (`d_mlp = 2 * expert width`), so
//! that both do the same multiplications per token. Seeded random weights, written as
//! checkpoints and loaded with the default processing, as a user would.
//!
//! `cargo run --release --example moe_bench` (`-- --quick` for fewer rounds)
//!
//! Side by side with TransformerLens: `python scripts/tl_moe_bench.py --json tl.json` times
//! TransformerLens 2.16.1 on the same two shapes (its own random weights), then
//! `cargo run --release --example moe_bench -- --tl tl.json` adds its times and
//! hooklens / TransformerLens for each model and size. Run the two one after the other on
//! a quiet machine: they are two processes, not one run.
//!
//! Prints the forward (no hook attached) at batch 1 x 64 and 4 x 256 for both, and
//! their ratio (MoE / dense; the goal is at most 1.25): what the routing, the gather
//! of each expert's rows, the per-expert products and the scatter back cost beyond
//! the same products done densely. Then the memory floor of each: the seconds to read
//! every weight of a forward once (a forward at few tokens, when every expert gets
//! some, reads all experts: four times the dense MLP's bytes here).

use candle_core::{DType, Device, Tensor};
use hooklens::models::convert::{synthetic_checkpoint, write_checkpoint};
use hooklens::{HookedTransformer, LoadOptions};

#[path = "common/bench.rs"]
mod bench_common;
use bench_common::{median_f64, paired_ratio, stream_once, time_rounds};

/// Layers, d_model, heads, key/value heads, expert width, experts, experts per token,
/// vocabulary.
const LAYERS: usize = 4;
const D_MODEL: usize = 512;
const HEADS: usize = 8;
const KV_HEADS: usize = 2;
const EXPERT_WIDTH: usize = 1792;
const EXPERTS: usize = 8;
const TOP_K: usize = 2;
const VOCAB: usize = 32000;

/// The Hugging Face config: Mixtral with `experts`, else the dense Mistral of width `mlp`.
fn config_json(experts: Option<usize>, mlp: usize) -> String {
    let (arch, kind, moe) = match experts {
        Some(e) => (
            "MixtralForCausalLM",
            "mixtral",
            format!(r#""num_local_experts": {e}, "num_experts_per_tok": {TOP_K},"#),
        ),
        None => ("MistralForCausalLM", "mistral", String::new()),
    };
    format!(
        r#"{{"architectures": ["{arch}"], "model_type": "{kind}", {moe}
        "hidden_size": {D_MODEL}, "num_hidden_layers": {LAYERS}, "num_attention_heads": {HEADS},
        "num_key_value_heads": {KV_HEADS}, "intermediate_size": {mlp}, "vocab_size": {VOCAB},
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 1000000.0,
        "sliding_window": null, "hidden_act": "silu", "tie_word_embeddings": false,
        "bos_token_id": 1, "eos_token_id": 2}}"#
    )
}

fn main() -> hooklens::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let tl = match args.iter().position(|a| a == "--tl") {
        Some(i) => Some(read_tl(args.get(i + 1).ok_or_else(|| {
            hooklens::Error::invalid("--tl needs the JSON file scripts/tl_moe_bench.py wrote")
        })?)?),
        None => None,
    };
    let rounds = if quick { 3 } else { 11 };
    let tmp = std::env::temp_dir().join(format!("hooklens-moe-bench-{}", std::process::id()));
    let load = |name: &str, config: &str| -> hooklens::Result<HookedTransformer> {
        let dir = tmp.join(name);
        write_checkpoint(&dir, config, &synthetic_checkpoint(config, 0)?, DType::F32, 1)?;
        HookedTransformer::from_dir(&dir, &LoadOptions::default())
    };
    let moe = load("moe", &config_json(Some(EXPERTS), EXPERT_WIDTH))?;
    let dense = load("dense", &config_json(None, TOP_K * EXPERT_WIDTH))?;
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "MoE: {LAYERS} layers, d_model {D_MODEL}, {HEADS} heads / {KV_HEADS} kv, {EXPERTS} experts of width \
         {EXPERT_WIDTH}, top-{TOP_K}, vocabulary {VOCAB}; dense: d_mlp {}. {} threads, median of {rounds} rounds.",
        TOP_K * EXPERT_WIDTH,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    println!("| forward | dense | MoE | MoE / dense |");
    println!("|---|---|---|---|");
    let mut medians = Vec::new();
    for (b, p) in [(1, 64), (4, 256)] {
        let ids: Vec<u32> = (0..b * p).map(|i| ((i * 7919 + 13) % VOCAB) as u32).collect();
        let tokens = Tensor::from_vec(ids, (b, p), &Device::Cpu)?;
        let times = time_rounds(
            rounds,
            &mut [&mut || dense.forward(&tokens).map(drop), &mut || {
                moe.forward(&tokens).map(drop)
            }],
        )?;
        let (d, m) = (median_f64(times[0].clone()), median_f64(times[1].clone()));
        medians.push((format!("{b}x{p}"), d * 1e3, m * 1e3));
        println!(
            "| {b} x {p} | {:.1} ms | {:.1} ms | {:.2} |",
            d * 1e3,
            m * 1e3,
            paired_ratio(&times[0], &times[1])
        );
    }
    if let Some(tl) = &tl {
        println!();
        println!("| forward | model | hooklens | TransformerLens | hooklens / TL |");
        println!("|---|---|---|---|---|");
        for (shape, d, m) in &medians {
            for (model, ours) in [("dense", d), ("moe", m)] {
                match tl.iter().find(|(mm, s, _)| mm == model && s == shape) {
                    Some((_, _, theirs)) => println!(
                        "| {shape} | {model} | {ours:.1} ms | {theirs:.1} ms | {:.2} |",
                        ours / theirs
                    ),
                    None => println!("| {shape} | {model} | {ours:.1} ms | (not in the file) | |"),
                }
            }
        }
    }
    println!();
    println!("| read every weight once | dense | MoE | MoE / dense |");
    println!("|---|---|---|---|");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let weights = |m: &HookedTransformer| {
        let (layers, w_u) = m.product_weights();
        // Contiguous copies (the unembedding is held transposed): the same bytes.
        layers
            .into_iter()
            .flatten()
            .chain([w_u])
            .map(|t| t.contiguous())
            .collect::<candle_core::Result<Vec<Tensor>>>()
    };
    let (wd, wm) = (weights(&dense)?, weights(&moe)?);
    let bytes = |w: &[Tensor]| w.iter().map(|t| t.elem_count() * 4).sum::<usize>() as f64;
    let times = time_rounds(
        rounds,
        &mut [&mut || stream_once(&wd, threads).map(drop), &mut || {
            stream_once(&wm, threads).map(drop)
        }],
    )?;
    println!(
        "| {:.0} MB / {:.0} MB | {:.1} ms | {:.1} ms | {:.2} |",
        bytes(&wd) / 1e6,
        bytes(&wm) / 1e6,
        median_f64(times[0].clone()) * 1e3,
        median_f64(times[1].clone()) * 1e3,
        paired_ratio(&times[0], &times[1])
    );
    Ok(())
}

/// `(model, shape, median ms)` of each case in the JSON file `scripts/tl_moe_bench.py` wrote.
fn read_tl(path: &str) -> hooklens::Result<Vec<(String, String, f64)>> {
    let bad = |why: String| hooklens::Error::invalid(format!("--tl {path}: {why}"));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let cases = json["results"]
        .as_array()
        .ok_or_else(|| bad("no `results` list (not written by scripts/tl_moe_bench.py?)".into()))?;
    cases
        .iter()
        .map(
            |c| match (c["model"].as_str(), c["shape"].as_str(), c["median_ms"].as_f64()) {
                (Some(m), Some(s), Some(t)) => Ok((m.to_string(), s.to_string(), t)),
                _ => Err(bad(format!("a case without model, shape and median_ms: {c}"))),
            },
        )
        .collect()
}

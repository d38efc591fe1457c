//! The Llama-shaped tables of docs/performance.md: a Llama-3.2-1B-shaped
//! model (16 layers, d_model 2048, 32 heads over 8 key/value heads, d_mlp 8192,
//! vocabulary 128256, untied unembedding as TransformerLens keeps it) with seeded
//! random weights, written to disk as a checkpoint and loaded as a user would.
//!
//! `cargo run --release --example llama_bench` (`-- --quick` for one timed round,
//! `--rounds N`, `--no-load` to leave out the loading rows)
//!
//! In one run it measures:
//! 1. the forward (no hook attached) at batch 1 x 64 and 4 x 256 against its own
//!    matmul floor: the same products at the forward's shapes with the model's own
//!    weights, through the same kernels (`products::matmul`, `attention_scores`,
//!    `attention_z`), alone; and `run_with_cache` of every hook against the forward;
//! 2. greedy decoding with the KV cache (32 new tokens after 16): tokens per second
//!    against the bound memory bandwidth sets (a step reads every weight once; the
//!    bound is timed by reading the same bytes alone, in turn with decoding);
//! 3. the forward in bf16 at 1 x 64 and 4 x 256 (weights read from a bf16 checkpoint in
//!    bf16) against the f32 forward, bf16 decoding against f32 decoding, and how far
//!    the bf16 logits are from the f32 ones;
//! 4. loading the f32 and the bf16 checkpoints in a child process, without and with
//!    the default processing: time and peak resident memory against the parameters.
//!
//! `-- --load-8b` instead writes a Llama-3.1-8B-shaped bf16 checkpoint (16 GB, in
//! shards, one layer at a time) and loads it in bf16 in a child process: peak resident
//! memory against the parameters, on this 24 GB machine.
//!
//! TransformerLens on the same shape: `python scripts/tl_llama_bench.py`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use hooklens::models::convert::{synthetic_checkpoint, write_checkpoint};
use hooklens::models::model::{self as products, SeededRng};
use hooklens::{CacheOptions, GenerateOptions, HookedModel, HookedTransformer, LoadOptions};

#[path = "common/bench.rs"]
mod bench_common;
use bench_common::{median_f64, paired_ratio, stream_once, time_rounds};

/// The Hugging Face config of the benchmark's model.
fn config_json(layers: usize, d: usize, heads: usize, kv: usize, mlp: usize, vocab: usize) -> String {
    format!(
        r#"{{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": {d}, "num_hidden_layers": {layers}, "num_attention_heads": {heads},
        "num_key_value_heads": {kv}, "intermediate_size": {mlp}, "vocab_size": {vocab},
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "hidden_act": "silu", "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2}}"#
    )
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn err(e: std::io::Error) -> hooklens::Error {
    hooklens::Error::io("bench", e)
}

/// The products of one forward at batch `b` x `p` positions, with the model's weights.
struct Floor {
    x: Tensor,
    hid: Tensor,
    z: Tensor,
    q: Tensor,
    k: Tensor,
    pattern: Tensor,
    layers: Vec<Vec<Tensor>>,
    w_u: Tensor,
    scale: f32,
}

impl Floor {
    fn new(m: &HookedTransformer, b: usize, p: usize) -> hooklens::Result<Self> {
        let cfg = m.cfg();
        let (d, h, dh, mlp) = (cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp);
        let mut rng = SeededRng::new(5);
        let (layers, w_u) = m.product_weights();
        let dtype = m.dtype();
        let mut random =
            |shape: &[usize]| -> hooklens::Result<Tensor> { Ok(rng.normal_tensor(shape, 1.0)?.to_dtype(dtype)?) };
        // q, k and v as the model's products read them: views of one projection.
        let qkv = random(&[b, p, h + 2 * cfg.n_kv_heads(), dh])?;
        Ok(Floor {
            x: random(&[b * p, d])?,
            hid: random(&[b * p, mlp])?,
            z: random(&[b * p, h * dh])?,
            q: qkv.narrow(2, 0, h)?,
            k: random(&[b, p, h, dh])?,
            pattern: random(&[b, h, p, p])?,
            layers,
            w_u,
            scale: 1.0 / (dh as f32).sqrt(),
        })
    }

    fn run(&self) -> hooklens::Result<()> {
        for w in &self.layers {
            std::hint::black_box(products::matmul(&self.x, &w[0])?);
            std::hint::black_box(products::attention_scores(&self.q, &self.k, self.scale)?);
            std::hint::black_box(products::attention_z(&self.pattern, &self.k)?);
            std::hint::black_box(products::matmul(&self.z, &w[1])?);
            for m in &w[2..w.len() - 1] {
                std::hint::black_box(products::matmul(&self.x, m)?);
            }
            std::hint::black_box(products::matmul(&self.hid, &w[w.len() - 1])?);
        }
        std::hint::black_box(products::matmul(&self.x, &self.w_u)?);
        Ok(())
    }
}

/// Loads `dir` in a child process (bf16 with `bf16`); seconds and peak resident KiB.
fn child_load(dir: &Path, bf16: bool, processed: bool) -> hooklens::Result<(f64, f64)> {
    let mut extra = Vec::new();
    extra.extend(bf16.then_some("--bf16"));
    extra.extend(processed.then_some("--processed"));
    bench_common::child_load(dir, &extra)
}

/// Writes a Llama-3.1-8B-shaped bf16 checkpoint one layer at a time (a shard each),
/// so that the writer never holds more than a layer.
fn write_8b(dir: &Path) -> hooklens::Result<usize> {
    let (layers, d, heads, kv, mlp, vocab) = (32, 4096, 32, 8, 14336, 128256);
    let full = config_json(layers, d, heads, kv, mlp, vocab);
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut weight_map: Vec<String> = Vec::new();
    let mut n_params = 0;
    for i in 0..=layers {
        // Layer i's tensors from a one-layer model of the same width; the last shard
        // holds the embedding, the final norm and lm_head.
        let one = config_json(1, d, heads, kv, mlp, if i == layers { vocab } else { 8 });
        let tensors = synthetic_checkpoint(&one, i as u64)?;
        let keep: HashMap<String, Tensor> = tensors
            .into_iter()
            .filter(|(k, _)| (k.starts_with("model.layers.")) != (i == layers))
            .map(|(k, t)| (k.replacen("model.layers.0.", &format!("model.layers.{i}."), 1), t))
            .collect();
        n_params += keep.values().map(|t| t.elem_count()).sum::<usize>();
        let shard_dir = dir.join(format!("part-{i}"));
        write_checkpoint(&shard_dir, &one, &keep, DType::BF16, 1)?;
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, layers + 1);
        std::fs::rename(shard_dir.join("model.safetensors"), dir.join(&file)).map_err(err)?;
        std::fs::remove_dir_all(&shard_dir).map_err(err)?;
        for k in keep.keys() {
            weight_map.push(format!("{k:?}: {file:?}"));
        }
        eprint!("\rwrote shard {}/{}", i + 1, layers + 1);
    }
    eprintln!();
    let index = format!("{{\"metadata\": {{}}, \"weight_map\": {{{}}}}}", weight_map.join(", "));
    std::fs::write(dir.join("model.safetensors.index.json"), index).map_err(err)?;
    std::fs::write(dir.join("config.json"), full).map_err(err)?;
    Ok(n_params)
}

/// This process's minor page faults so far (`/proc/self/stat`, field 10; 0 where
/// there is no such file).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after
        .split_whitespace()
        .nth(7)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Seconds per greedy decoding step with the KV cache: 32 new tokens after `prompt`
/// less one new token (the prompt's own forward), over the 31 steps between.
fn decode_step(m: &HookedTransformer, prompt: &Tensor) -> hooklens::Result<f64> {
    let mut opts = GenerateOptions::greedy(32);
    opts.stop_at_eos = false;
    let t = Instant::now();
    m.generate(prompt, &opts)?;
    let total = t.elapsed().as_secs_f64();
    let mut one = GenerateOptions::greedy(1);
    one.stop_at_eos = false;
    let t = Instant::now();
    m.generate(prompt, &one)?;
    Ok((total - t.elapsed().as_secs_f64()) / 31.0)
}

/// The fraction of positions where `got` (any dtype) and `want` `[batch, pos, vocab]`
/// pick the same top token.
fn got_argmax_agreement(got: &Tensor, want: &Tensor) -> hooklens::Result<f64> {
    let a = got
        .to_dtype(DType::F32)?
        .argmax(candle_core::D::Minus1)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    let b = want.argmax(candle_core::D::Minus1)?.flatten_all()?.to_vec1::<u32>()?;
    Ok(a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64)
}

fn main() -> hooklens::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // A child measuring a load, before the allocator settings below, as it ran so far.
    if bench_common::load_child(&args)? {
        return Ok(());
    }
    hooklens::retain_freed_memory();
    let tmp = std::env::temp_dir().join(format!("hooklens-llama-bench-{}", std::process::id()));
    if args.iter().any(|a| a == "--load-8b") {
        let dir = tmp.join("llama-8b-bf16");
        let n = write_8b(&dir)?;
        let param_bytes = n as f64 * 2.0;
        println!("| load Llama-3.1-8B shape, bf16 | time | peak RSS | parameters | peak / parameters |");
        println!("|---|---|---|---|---|");
        for processed in [false, true] {
            let (secs, kib) = child_load(&dir, true, processed)?;
            println!(
                "| {} | {secs:.1} s | {:.2} GiB | {:.2} GiB | {:.3} |",
                if processed {
                    "default processing"
                } else {
                    "no processing"
                },
                kib / (1024.0 * 1024.0),
                param_bytes / (1024.0 * 1024.0 * 1024.0),
                kib * 1024.0 / param_bytes
            );
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(());
    }
    if let Some(i) = args.iter().position(|a| a == "--profile-cache") {
        // For a profiler: the forward and the cached forward at 4 x 256, alone, a few
        // times (`-- --profile-cache N_LAYERS [fwd|cached]`).
        let layers: usize = args.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(16);
        let config = config_json(layers, 2048, 32, 8, 8192, 128256);
        let dir = tmp.join("profile");
        write_checkpoint(&dir, &config, &synthetic_checkpoint(&config, 0)?, DType::F32, 1)?;
        let m = HookedTransformer::from_dir(&dir, &LoadOptions::default())?;
        let _ = std::fs::remove_dir_all(&tmp);
        let tokens = Tensor::zeros((4, 256), DType::U32, &Device::Cpu)?;
        // `-- --profile-cache N fwd` (or `cached`): that run alone, for `perf stat`.
        let only = args.get(i + 2).map(String::as_str);
        for _ in 0..3 {
            let (t, f0) = (Instant::now(), minor_faults());
            if only != Some("cached") {
                m.forward(&tokens)?;
            }
            let (fwd, f1) = (t.elapsed().as_secs_f64(), minor_faults());
            let t = Instant::now();
            if only != Some("fwd") {
                m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))?;
            }
            println!(
                "forward {fwd:.2} s ({} page faults), cached {:.2} s ({} page faults)",
                f1 - f0,
                t.elapsed().as_secs_f64(),
                minor_faults() - f1
            );
        }
        return Ok(());
    }
    let quick = args.iter().any(|a| a == "--quick");
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let rounds = flag("--rounds")
        .and_then(|r| r.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 });
    let loading = !args.iter().any(|a| a == "--no-load");
    let config = config_json(16, 2048, 32, 8, 8192, 128256);

    // The checkpoint, f32 and bf16, as a user would have it.
    let f32_dir = tmp.join("f32");
    let bf16_dir = tmp.join("bf16");
    let n_params;
    {
        let t = Instant::now();
        let weights = synthetic_checkpoint(&config, 0)?;
        n_params = weights.values().map(|t| t.elem_count()).sum::<usize>();
        write_checkpoint(&f32_dir, &config, &weights, DType::F32, 2)?;
        write_checkpoint(&bf16_dir, &config, &weights, DType::BF16, 2)?;
        eprintln!("checkpoints written in {:.0} s", t.elapsed().as_secs_f64());
    }
    println!(
        "Llama-3.2-1B shape: 16 layers, d_model 2048, 32 heads / 8 kv heads, d_mlp 8192, vocab 128256, {:.2} G parameters; {} thread(s); {} round(s)\n",
        n_params as f64 / 1e9,
        threads(),
        rounds
    );

    let m = HookedTransformer::from_dir(&f32_dir, &LoadOptions::default())?;
    let mut rng = SeededRng::new(1);
    let ids = |rng: &mut SeededRng, b: usize, p: usize| -> hooklens::Result<Tensor> {
        let v: Vec<u32> = (0..b * p).map(|_| rng.below(128256) as u32).collect();
        Ok(Tensor::from_vec(v, (b, p), &Device::Cpu)?)
    };
    println!("| f32, forward | forward | own matmul floor | forward / floor | run_with_cache (every hook) | cache / forward |");
    println!("|---|---|---|---|---|---|");
    // The f32 forward's medians and 1 x 64 logits, for the bf16 rows below.
    let mut f32_forward = Vec::new();
    let mut f32_logits = None;
    for (b, p) in [(1, 64), (4, 256)] {
        let tokens = ids(&mut rng, b, p)?;
        if b == 1 {
            f32_logits = Some((tokens.clone(), m.forward(&tokens)?));
        }
        let floor = Floor::new(&m, b, p)?;
        let mut fwd = || m.forward(&tokens).map(|_| ());
        let mut cached = || {
            m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))
                .map(|_| ())
        };
        let mut products = || floor.run();
        let t = time_rounds(rounds, &mut [&mut fwd, &mut cached, &mut products])?;
        f32_forward.push(median_f64(t[0].clone()));
        println!(
            "| {b} x {p} | {:.0} ms | {:.0} ms | {:.3} | {:.0} ms | {:.3} |",
            median_f64(t[0].clone()) * 1e3,
            median_f64(t[2].clone()) * 1e3,
            paired_ratio(&t[2], &t[0]),
            median_f64(t[1].clone()) * 1e3,
            paired_ratio(&t[0], &t[1]),
        );
    }

    // Decoding, in turn with reading every weight once.
    let (layers, w_u) = m.product_weights();
    let mut all: Vec<Tensor> = layers.into_iter().flatten().collect();
    all.push(w_u.t()?.contiguous()?);
    let weight_bytes: usize = all.iter().map(|t| t.elem_count() * 4).sum();
    let prompt = ids(&mut rng, 1, 16)?;
    let mut gen_times = Vec::new();
    let mut stream_times = Vec::new();
    for _ in 0..=rounds {
        gen_times.push(decode_step(&m, &prompt)?);
        stream_times.push(stream_once(&all, threads())?);
    }
    gen_times.remove(0);
    stream_times.remove(0);
    let step = median_f64(gen_times.clone());
    let bound = median_f64(stream_times.clone());
    println!(
        "\n| f32, decoding (KV cache, batch 1) | tokens/s | ms per step | one read of the {:.1} GB of weights | step / read | tokens/s / bound |",
        weight_bytes as f64 / 1e9
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| 32 new after 16 | {:.2} | {:.0} | {:.0} ms ({:.1} GB/s) | {:.3} | {:.3} |",
        1.0 / step,
        step * 1e3,
        bound * 1e3,
        weight_bytes as f64 / bound / 1e9,
        paired_ratio(&stream_times, &gen_times),
        paired_ratio(&gen_times, &stream_times),
    );
    drop(all);
    drop(m);

    let bf16 = HookedTransformer::from_dir(&bf16_dir, &LoadOptions::default().with_dtype(DType::BF16))?;
    println!("\n| bf16, forward | forward | own matmul floor (bf16 products) | forward / floor | bf16 / f32 forward |");
    println!("|---|---|---|---|---|");
    for (i, (b, p)) in [(1, 64), (4, 256)].into_iter().enumerate() {
        let tokens = ids(&mut rng, b, p)?;
        let floor = Floor::new(&bf16, b, p)?;
        let mut fwd = || bf16.forward(&tokens).map(|_| ());
        let mut products = || floor.run();
        let t = time_rounds(rounds, &mut [&mut fwd, &mut products])?;
        println!(
            "| {b} x {p} | {:.0} ms | {:.0} ms | {:.3} | {:.3} |",
            median_f64(t[0].clone()) * 1e3,
            median_f64(t[1].clone()) * 1e3,
            paired_ratio(&t[1], &t[0]),
            median_f64(t[0].clone()) / f32_forward[i],
        );
    }
    let mut bf16_steps = Vec::new();
    for _ in 0..=rounds {
        bf16_steps.push(decode_step(&bf16, &prompt)?);
    }
    bf16_steps.remove(0);
    let bf16_step = median_f64(bf16_steps);
    println!("\n| bf16, decoding (KV cache, batch 1, 32 new after 16) | tokens/s | f32 tokens/s | bf16 / f32 |");
    println!("|---|---|---|---|");
    println!(
        "| 32 new after 16 | {:.2} | {:.2} | {:.2} |",
        1.0 / bf16_step,
        1.0 / step,
        step / bf16_step
    );
    if let Some((tokens, want)) = f32_logits {
        let got = bf16.forward(&tokens)?.to_dtype(DType::F32)?;
        let diff = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
        let agree = got_argmax_agreement(&bf16.forward(&tokens)?, &want)?;
        println!(
            "\nbf16 logits against f32 at 1 x 64: largest difference {diff:.4} ({:.2}% of the largest logit {scale:.3}); top-1 token equal at {:.1}% of positions",
            100.0 * diff / scale,
            100.0 * agree
        );
    }
    drop(bf16);

    if !loading {
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(());
    }
    println!("\n| loading (child process) | time | peak RSS | parameters | peak / parameters |");
    println!("|---|---|---|---|---|");
    for (dir, dtype, bytes) in [(&f32_dir, "f32", 4.0), (&bf16_dir, "bf16", 2.0)] {
        for processed in [false, true] {
            let (secs, kib) = child_load(dir, dtype == "bf16", processed)?;
            let param_bytes = n_params as f64 * bytes;
            println!(
                "| {dtype}, {} | {:.1} s | {:.2} GiB | {:.2} GiB | {:.3} |",
                if processed {
                    "default processing"
                } else {
                    "no processing"
                },
                secs,
                kib / (1024.0 * 1024.0),
                param_bytes / (1024.0 * 1024.0 * 1024.0),
                kib * 1024.0 / param_bytes
            );
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

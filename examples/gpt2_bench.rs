//! The GPT-2 tables of docs/performance.md: a GPT-2-small-shaped model (12 layers, 768
//! wide, 12 heads, vocabulary 50257) with seeded random weights, built in process.
//!
//! `cargo run --release --example gpt2_bench` (add `-- --quick` for fewer repeats)
//!
//! In one run it measures:
//! 1. the matmul floor: the f32 matrix products at the forward's exact shapes, alone
//!    (the model's own weights, in its layouts), computed as the model computes them
//!    (`products::matmul`) and, for comparison, all with candle's `matmul`;
//! 2. the forward with no hook attached, batch 1 x 64 and 8 x 128, in ms and GFLOP/s;
//! 3. the same with `run_with_cache` of every hook, and with one patching hook;
//! 4. forward + backward with the gradient cached at every hook, against a plain
//!    forward + backward (the graph started at the embedding);
//! 5. greedy decoding with the KV cache: tokens per second, 32 new after 16, and the
//!    bound memory bandwidth sets on it (a step reads every weight once);
//! 6. loading a GPT-2-small-shaped checkpoint from disk (f32 safetensors), without and
//!    with the default weight processing: time and peak resident memory, in a child
//!    process so that nothing else counts.
//!
//! FLOP count of one forward (multiply-adds count 2), N = batch * pos:
//!   per layer: 2 N d (3d)  [qkv]  + 2 * 2 b h p^2 d_head  [scores, pattern . v]
//!            + 2 N d d     [W_O]  + 2 * 2 N d d_mlp       [MLP in, out]
//!   plus the unembedding 2 N d d_vocab.
//! Timings are medians; each figure's reference is measured in the same run, and the
//! forward table's five columns are timed in turn, round after round; its ratios are
//! the medians of each round's ratio.
//!
//! It keeps freed memory for reuse ([`hooklens::retain_freed_memory`]), as the
//! `hooklens` command does; `-- --default-malloc` measures with glibc's defaults.
//!
//! `-- --device cuda` (a build with `--features cuda`; `cuda:N`, or `metal` with
//! `--features metal`) measures the same model on that device instead: the forward,
//! `run_with_cache` of every hook, one patching hook, forward + backward with and without
//! every gradient cached, and greedy decoding. The CPU's matmul floor, memory bandwidth
//! and loading columns have no GPU counterpart here. Each timed call ends with the
//! device's `synchronize`, so a time covers the kernels it queued, not just their launch.

#[path = "common/bench.rs"]
mod bench_common;
use bench_common::{median_f64, paired_ratio, stream_once, time, time_interleaved, time_rounds};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use hooklens::models::model::{self as products, random_weights, save_hf_checkpoint, SeededRng};
use hooklens::ReturnType;
use hooklens::{
    CacheOptions, ForwardOptions, GenerateOptions, HookPoint, HookSet, HookedModel, HookedTransformer,
    TransformerConfig,
};

fn forward_flops(cfg: &TransformerConfig, b: usize, p: usize) -> f64 {
    let (n, d, h, dh, m, v) = (
        (b * p) as f64,
        cfg.d_model as f64,
        cfg.n_heads as f64,
        cfg.d_head as f64,
        cfg.d_mlp as f64,
        cfg.d_vocab as f64,
    );
    let per_layer =
        2.0 * n * d * 3.0 * d + 4.0 * b as f64 * h * (p * p) as f64 * dh + 2.0 * n * d * d + 4.0 * n * d * m;
    cfg.n_layers as f64 * per_layer + 2.0 * n * d * v
}

/// The matrix products of one forward, at its shapes, run alone (the "floor"): with
/// the model's own weights, in the model's layouts (`[in, out]`; the unembedding is
/// `W_E` transposed), so that the floor reads the same 12 layers of weights from
/// memory as the forward does, not one layer's over and over from cache.
struct Floor {
    x: Tensor,
    hid: Tensor,
    q: Tensor,
    kt: Tensor,
    pat: Tensor,
    v: Tensor,
    /// `[batch, pos, 3, head, d_head]`: the q|k|v projection the model's products read.
    qkv: Tensor,
    /// Per layer: `W_qkv`, `W_O`, `W_in`, `W_out`.
    layers: Vec<[Tensor; 4]>,
    w_u: Tensor,
}

impl Floor {
    fn new(
        cfg: &TransformerConfig,
        weights: &std::collections::HashMap<String, Tensor>,
        b: usize,
        p: usize,
    ) -> hooklens::Result<Self> {
        let mut rng = SeededRng::new(3);
        let n = b * p;
        let (d, h, dh, m) = (cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp);
        let w = |name: String| {
            weights
                .get(&name)
                .cloned()
                .ok_or_else(|| hooklens::Error::invalid(format!("no weight {name}")))
        };
        let layers = (0..cfg.n_layers)
            .map(|i| {
                Ok([
                    w(format!("h.{i}.attn.c_attn.weight"))?,
                    w(format!("h.{i}.attn.c_proj.weight"))?,
                    w(format!("h.{i}.mlp.c_fc.weight"))?,
                    w(format!("h.{i}.mlp.c_proj.weight"))?,
                ])
            })
            .collect::<hooklens::Result<_>>()?;
        Ok(Floor {
            x: rng.normal_tensor(&[n, d], 1.0)?,
            hid: rng.normal_tensor(&[n, m], 1.0)?,
            q: rng.normal_tensor(&[b, h, p, dh], 1.0)?,
            kt: rng.normal_tensor(&[b, h, dh, p], 1.0)?,
            pat: rng.normal_tensor(&[b, h, p, p], 1.0)?,
            v: rng.normal_tensor(&[b, h, p, dh], 1.0)?,
            qkv: rng.normal_tensor(&[b, p, 3, h, dh], 1.0)?,
            layers,
            w_u: w("wte.weight".into())?.t()?,
        })
    }

    /// Every product of one forward: per layer q|k|v, scores, pattern . v, W_O, MLP in
    /// and out; then the unembedding. `ours`: the weight products as the model computes
    /// them ([`hooklens::models::model::matmul`], and the attention's two products with
    /// [`products::attention_scores`] and [`products::attention_z`] on views of one q|k|v
    /// tensor), else all with candle's `matmul` on contiguous operands.
    fn run(&self, ours: bool) -> hooklens::Result<Tensor> {
        let mm = |x: &Tensor, w: &Tensor| -> hooklens::Result<Tensor> {
            Ok(if ours { products::matmul(x, w)? } else { x.matmul(w)? })
        };
        let part = |i: usize| self.qkv.narrow(2, i, 1).and_then(|t| t.squeeze(2));
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        for [w_qkv, w_o, w_in, w_out] in &self.layers {
            let _ = mm(&self.x, w_qkv)?;
            if ours {
                let _ = products::attention_scores(&q, &k, 0.125)?;
                let _ = products::attention_z(&self.pat, &v)?;
            } else {
                let _ = self.q.matmul(&self.kt)?;
                let _ = self.pat.matmul(&self.v)?;
            }
            let _ = mm(&self.x, w_o)?;
            let _ = mm(&self.x, w_in)?;
            let _ = mm(&self.hid, w_out)?;
        }
        mm(&self.x, &self.w_u)
    }
}

fn main() -> hooklens::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // As the `hooklens` command does; `--default-malloc` measures glibc's defaults.
    let default_malloc = args.iter().any(|a| a == "--default-malloc");
    let retained = !default_malloc && hooklens::retain_freed_memory();
    // Child mode: load a checkpoint and report time and peak memory.
    if bench_common::load_child(&args)? {
        return Ok(());
    }
    let quick = args.iter().any(|a| a == "--quick");
    let reps = |n: usize| if quick { n.div_ceil(3).max(1) } else { n };
    match device_arg(&args)? {
        Device::Cpu => {}
        device => return gpu_table(&device, reps),
    }

    let cfg = TransformerConfig::gpt2_small();
    let weights = random_weights(&cfg, 0)?;
    let n_params: usize = weights.values().map(|t| t.elem_count()).sum();
    let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
    let model = HookedTransformer::load(vb, &cfg)?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("GPT-2-small shape, seeded random weights, f32, CPU, {threads} threads, {n_params} parameters");
    println!(
        "freed memory kept for reuse (hooklens::retain_freed_memory): {}; ratios are medians of per-round ratios\n",
        if retained { "yes" } else { "no" }
    );
    println!(
        "| batch x pos | candle matmul floor | matmul floor | forward | fwd / floor | fwd / candle floor | GFLOP/s | run_with_cache (all) | cache / fwd | one patching hook | patch / fwd |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rng = SeededRng::new(1);
    for (b, p, n) in [(1usize, 64usize, 12usize), (8, 128, 8)] {
        let ids: Vec<u32> = (0..b * p).map(|_| rng.below(cfg.d_vocab as u64) as u32).collect();
        let tokens = Tensor::from_vec(ids, (b, p), &Device::Cpu)?;
        let floor_inputs = Floor::new(&cfg, &weights, b, p)?;
        let patch = HookSet::new().fwd("blocks.5.attn.hook_z", |x: &Tensor, _: &HookPoint| {
            Ok(Some(x.zeros_like()?))
        });
        let t = time_rounds(
            reps(n),
            &mut [
                &mut || floor_inputs.run(false).map(drop),
                &mut || floor_inputs.run(true).map(drop),
                &mut || model.forward(&tokens).map(drop),
                &mut || {
                    model
                        .run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))
                        .map(drop)
                },
                &mut || model.run_with_hooks(patch.clone(), |m| m.forward(&tokens)).map(drop),
            ],
        )?;
        let ratio = |a: usize, b: usize| paired_ratio(&t[a], &t[b]);
        let (fwd_floor, fwd_candle, cache_fwd, patch_fwd) = (ratio(1, 2), ratio(0, 2), ratio(2, 3), ratio(2, 4));
        let [candle_floor, floor, fwd, cached, patched] = [0, 1, 2, 3, 4].map(|i| median_f64(t[i].clone()));
        let gflops = forward_flops(&cfg, b, p) / fwd / 1e9;
        println!(
            "| {b} x {p} | {:.1} ms | {:.1} ms | {:.1} ms | {fwd_floor:.3} | {fwd_candle:.3} | {gflops:.1} | {:.1} ms | {cache_fwd:.3} | {:.1} ms | {patch_fwd:.3} |",
            candle_floor * 1e3,
            floor * 1e3,
            fwd * 1e3,
            cached * 1e3,
            patched * 1e3,
        );
    }

    // Gradients at 1 x 64.
    let ids: Vec<u32> = (0..64).map(|_| rng.below(cfg.d_vocab as u64) as u32).collect();
    let tokens = Tensor::from_vec(ids, (1, 64), &Device::Cpu)?;
    let loss_of = |m: &HookedTransformer| -> hooklens::Result<Tensor> {
        let out = m.forward_with(&tokens, &ForwardOptions::new().return_type(ReturnType::Loss))?;
        out.loss.ok_or_else(|| hooklens::Error::invalid("no loss"))
    };
    let plain_bwd = time(1, reps(5), || {
        // One backward hook at the embedding starts the graph there: a plain
        // forward + backward through the whole model.
        let start = HookSet::new().bwd("hook_embed", |_: &Tensor, _: &HookPoint| Ok(None));
        let loss = model.run_with_hooks(start, loss_of)?;
        Ok(loss.backward()?)
    })?;
    let all_grads = time(1, reps(5), || {
        model.run_with_cache_bwd(CacheOptions::new(), HookSet::new(), loss_of)
    })?;
    println!("\n| 1 x 64 | forward + backward | with every activation and gradient cached | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| | {:.1} ms | {:.1} ms | {:.3} |",
        plain_bwd * 1e3,
        all_grads * 1e3,
        all_grads / plain_bwd
    );

    // Decoding: 32 new tokens after 16, greedy, KV cache.
    let ids: Vec<u32> = (0..16).map(|_| rng.below(cfg.d_vocab as u64) as u32).collect();
    let prompt = Tensor::from_vec(ids, (1, 16), &Device::Cpu)?;
    let mut opts = GenerateOptions::greedy(32);
    opts.stop_at_eos = false;
    // A step reads every weight once (W_E as the unembedding; one row of it and of
    // W_pos as embeddings): its floor is the time to stream them from memory, timed
    // in turn with the decoding.
    let stream_bytes = ((n_params - cfg.n_ctx * cfg.d_model) * 4) as f64;
    let streamed: Vec<Tensor> = weights
        .iter()
        .filter(|(k, _)| !k.contains("wpe"))
        .map(|(_, t)| t.clone())
        .collect();
    let t = time_interleaved(
        reps(5),
        &mut [&mut || model.generate(&prompt, &opts).map(drop), &mut || {
            stream_once(&streamed, threads).map(drop)
        }],
    )?;
    let (gen, stream) = (t[0], t[1]);
    println!("\n| decoding (greedy, KV cache, 32 new after 16) | tokens/s | weights read per token | memory read bandwidth (all threads) | bandwidth bound |");
    println!("|---|---|---|---|---|");
    println!(
        "| | {:.1} | {:.0} MB | {:.1} GB/s | {:.1} tokens/s |",
        32.0 / gen,
        stream_bytes / 1e6,
        stream_bytes / stream / 1e9,
        1.0 / stream
    );

    // Loading from disk, in a child process.
    let dir = std::env::temp_dir().join(format!("hooklens-bench-gpt2-{}", std::process::id()));
    save_hf_checkpoint(&dir, &cfg, &weights, DType::F32)?;
    drop(weights);
    let param_bytes = (n_params * 4) as f64;
    println!("\n| loading (f32 safetensors) | time | peak RSS | parameters | peak / parameters |");
    println!("|---|---|---|---|---|");
    for (what, processed) in [("no processing", false), ("default processing", true)] {
        let mut extra = Vec::new();
        extra.extend(processed.then_some("--processed"));
        extra.extend(default_malloc.then_some("--default-malloc"));
        let (secs, kib) = bench_common::child_load(&dir, &extra)?;
        println!(
            "| {what} | {:.0} ms | {:.0} MiB | {:.0} MiB | {:.3} |",
            secs * 1e3,
            kib / 1024.0,
            param_bytes / (1024.0 * 1024.0),
            kib * 1024.0 / param_bytes
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The device `--device` names (`cpu` when absent).
fn device_arg(args: &[String]) -> hooklens::Result<Device> {
    let Some(i) = args.iter().position(|a| a == "--device") else {
        return Ok(Device::Cpu);
    };
    let name = args
        .get(i + 1)
        .ok_or_else(|| hooklens::Error::invalid("--device needs a value: cpu, cuda, cuda:N or metal"))?;
    Ok(match name.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        "metal" => Device::new_metal(0)?,
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::new_cuda(n)?,
            None => {
                return Err(hooklens::Error::invalid(format!(
                    "--device {other}: expected cpu, cuda, cuda:N or metal"
                )))
            }
        },
    })
}

/// The benchmark on a GPU: the same GPT-2-small-shaped model, f32, on `device`.
fn gpu_table(device: &Device, reps: impl Fn(usize) -> usize) -> hooklens::Result<()> {
    let cfg = TransformerConfig::gpt2_small();
    let weights = random_weights(&cfg, 0)?;
    let n_params: usize = weights.values().map(|t| t.elem_count()).sum();
    let vb = VarBuilder::from_tensors(weights, DType::F32, device);
    let model = HookedTransformer::load(vb, &cfg)?;
    // GPU calls return once their kernels are queued: waiting for the device inside the
    // timed call is what makes the time that of the work.
    let sync = || -> hooklens::Result<()> { Ok(device.synchronize()?) };
    println!("GPT-2-small shape, seeded random weights, f32, {device:?}, {n_params} parameters\n");
    println!(
        "| batch x pos | forward | GFLOP/s | run_with_cache (all) | cache / fwd | one patching hook | patch / fwd |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut rng = SeededRng::new(1);
    let mut random_tokens = |b: usize, p: usize| {
        let ids: Vec<u32> = (0..b * p).map(|_| rng.below(cfg.d_vocab as u64) as u32).collect();
        Tensor::from_vec(ids, (b, p), device)
    };
    for (b, p, n) in [(1usize, 64usize, 30usize), (8, 128, 20), (32, 512, 10)] {
        let tokens = random_tokens(b, p)?;
        let patch = HookSet::new().fwd("blocks.5.attn.hook_z", |x: &Tensor, _: &HookPoint| {
            Ok(Some(x.zeros_like()?))
        });
        let t = time_rounds(
            reps(n),
            &mut [
                &mut || {
                    model.forward(&tokens)?;
                    sync()
                },
                &mut || {
                    model.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))?;
                    sync()
                },
                &mut || {
                    model.run_with_hooks(patch.clone(), |m| m.forward(&tokens))?;
                    sync()
                },
            ],
        )?;
        let [fwd, cached, patched] = [0, 1, 2].map(|i| median_f64(t[i].clone()));
        println!(
            "| {b} x {p} | {:.2} ms | {:.0} | {:.2} ms | {:.3} | {:.2} ms | {:.3} |",
            fwd * 1e3,
            forward_flops(&cfg, b, p) / fwd / 1e9,
            cached * 1e3,
            paired_ratio(&t[0], &t[1]),
            patched * 1e3,
            paired_ratio(&t[0], &t[2]),
        );
    }

    let tokens = random_tokens(1, 64)?;
    let loss_of = |m: &HookedTransformer| -> hooklens::Result<Tensor> {
        let out = m.forward_with(&tokens, &ForwardOptions::new().return_type(ReturnType::Loss))?;
        out.loss.ok_or_else(|| hooklens::Error::invalid("no loss"))
    };
    let plain_bwd = time(1, reps(10), || {
        let start = HookSet::new().bwd("hook_embed", |_: &Tensor, _: &HookPoint| Ok(None));
        let loss = model.run_with_hooks(start, loss_of)?;
        loss.backward()?;
        sync()
    })?;
    let all_grads = time(1, reps(10), || {
        model.run_with_cache_bwd(CacheOptions::new(), HookSet::new(), loss_of)?;
        sync()
    })?;
    println!("\n| 1 x 64 | forward + backward | with every activation and gradient cached | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| | {:.2} ms | {:.2} ms | {:.3} |",
        plain_bwd * 1e3,
        all_grads * 1e3,
        all_grads / plain_bwd
    );

    let prompt = random_tokens(1, 16)?;
    let mut opts = GenerateOptions::greedy(32);
    opts.stop_at_eos = false;
    let gen = time(1, reps(5), || {
        model.generate(&prompt, &opts)?;
        sync()
    })?;
    println!("\n| decoding (greedy, KV cache, 32 new after 16) | tokens/s |");
    println!("|---|---|");
    println!("| | {:.1} |", 32.0 / gen);
    Ok(())
}

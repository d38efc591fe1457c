//! The weight products of a Llama-3.2-1B forward, in GFLOP/s, through each f32 kernel
//! hooklens can pick (`WeightGemm`: its packed and streamed AVX-512 kernels, the `gemm`
//! crate, `matrixmultiply`) and the one it picks, and its bf16 product, beside this machine's FMA peak (`examples/fma_peak.rs`) and torch's
//! rate on the same shapes (`scripts/torch_gemm_bench.py --json FILE`, passed as `--torch
//! FILE`).
//!
//! `cargo run --release -p hooklens-models --example gemm_bench [-- --torch torch.json]
//! [--rounds N] [--quick] [--cold] [--shapes "M,K,N M,K,N .."]` (`--cold`: every f32 call
//! reads a weight the caches do not hold; `--shapes`: these products instead of Llama's,
//! e.g. a mixture of experts' `"16,512,1792 16,1792,512"`)
//!
//! Shapes are `x [M, K] @ w [K, N]` with `w` row-major, as the model stores its weights:
//! the fused q|k|v projection (2048 -> 3072), the output projection (2048 -> 2048), gate
//! and up (2048 -> 8192), down (8192 -> 2048) and the unembedding (2048 -> 128256), at
//! M = 64, 256 and 1024 rows (1 x 64 and 4 x 256 tokens; 256 for one prompt of 256).
//! Implementations are timed in turn within each round; the table gives each one's
//! median, and the bf16 product (x and w in bf16, sums in f32) beside torch's.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use hooklens_models::model::{self, WeightGemm};

/// `(name, K, N)` of the forward's weight products.
const SHAPES: [(&str, usize, usize); 5] = [
    ("qkv", 2048, 3072),
    ("o", 2048, 2048),
    ("gate/up", 2048, 8192),
    ("down", 8192, 2048),
    ("unembed", 2048, 128256),
];

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let rounds: usize = flag("--rounds").and_then(|s| s.parse().ok()).unwrap_or(5);
    let quick = args.iter().any(|a| a == "--quick");
    let torch = flag("--torch").map(|p| read_torch(&p)).transpose()?;
    if let Some(shape) = flag("--profile") {
        return profile(&shape, rounds);
    }
    let rows: &[usize] = if quick { &[64, 1024] } else { &[64, 256, 1024] };
    let shapes: Vec<(usize, &str, usize, usize)> = match flag("--shapes") {
        Some(list) => list
            .split_whitespace()
            .map(|s| parse_shape(s).map(|(m, k, n)| (m, "-", k, n)))
            .collect::<candle_core::Result<_>>()?,
        None => rows
            .iter()
            .flat_map(|&m| SHAPES.iter().map(move |&(name, k, n)| (m, name, k, n)))
            .collect(),
    };
    let threads = rayon::current_num_threads();
    println!("weight products, {threads} threads, median of {rounds} rounds, GFLOP/s (FMA peak: examples/fma_peak.rs)");
    let names: Vec<String> = WeightGemm::ALL.iter().map(|k| format!("{k:?}")).collect();
    println!(
        "| M | product | K x N | hooklens (picked) | {} | torch | picked / torch | hooklens bf16 | torch bf16 | bf16 / torch bf16 |",
        names.join(" | ")
    );
    println!("|---|---|---|---|{}---|---|---|---|---|", "---|".repeat(names.len()));
    for (m, name, k, n) in shapes {
        // The unembedding at 1024 rows is half a TFLOP a call: fewer rounds.
        let r = if n > 100_000 && m > 256 { rounds.min(3) } else { rounds };
        let rates = time_shape(m, k, n, r)?;
        let (picked, kernels, bf16) = (rates[0], &rates[1..rates.len() - 1], rates[rates.len() - 1]);
        let t = torch
            .as_ref()
            .and_then(|t: &Vec<TorchRate>| t.iter().find(|e| e.0 == (m, k, n)));
        let cell = |v: f64| if v.is_finite() { format!("{v:.1}") } else { "-".into() };
        let ratio = |a: f64, b: Option<f64>| b.map_or("-".into(), |b| format!("{:.2}", a / b));
        println!(
            "| {m} | {name} | {k} x {n} | {picked:.1} | {} | {} | {} | {bf16:.1} | {} | {} |",
            kernels.iter().map(|&v| cell(v)).collect::<Vec<_>>().join(" | "),
            t.map_or("-".into(), |t| cell(t.1)),
            ratio(picked, t.map(|t| t.1)),
            t.map_or("-".into(), |t| cell(t.2)),
            ratio(bf16, t.map(|t| t.2)),
        );
    }
    Ok(())
}

/// `--profile M,K,N [--bf16]`: hooklens's product alone at one shape, `rounds` times, for
/// `perf stat` (FLOP per cycle counts only the cycles this process ran, so it holds on a
/// busy machine where wall-clock rates do not).
fn profile(shape: &str, rounds: usize) -> candle_core::Result<()> {
    let (m, k, n) = parse_shape(shape)?;
    let dtype = if std::env::args().any(|a| a == "--bf16") {
        DType::BF16
    } else {
        DType::F32
    };
    let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?.to_dtype(dtype)?;
    let w = Tensor::randn(0f32, 0.02, (k, n), &Device::Cpu)?.to_dtype(dtype)?;
    for _ in 0..rounds {
        std::hint::black_box(model::matmul(&x, &w)?);
    }
    println!("{} GFLOP", 2.0 * (m * k * n * rounds) as f64 / 1e9);
    Ok(())
}

/// `M,K,N` as the three sizes, or an error naming the text.
fn parse_shape(s: &str) -> candle_core::Result<(usize, usize, usize)> {
    match s
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<usize>, _>>()
        .as_deref()
    {
        Ok(&[m, k, n]) => Ok((m, k, n)),
        _ => candle_core::bail!("{s:?} is not M,K,N (three sizes, e.g. 64,2048,8192)"),
    }
}

/// Median GFLOP/s at `[m, k] @ [k, n]` of hooklens's `model::matmul` (the kernel it
/// picks), of each [`WeightGemm`] kernel (NaN where one cannot run on this CPU) and of
/// hooklens's bf16 product.
fn time_shape(m: usize, k: usize, n: usize, rounds: usize) -> candle_core::Result<Vec<f64>> {
    let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
    // `--cold`: several copies of the weight, 256 MB or more in all, taken in turn, so
    // that each call reads its weight from memory (as a forward does, whose weights
    // never fit the caches), not from the L3 cache the previous call filled.
    let copies = if std::env::args().any(|a| a == "--cold") {
        (256 << 20) / (k * n * 4) + 1
    } else {
        1
    };
    let ws: Vec<Tensor> = (0..copies)
        .map(|_| Tensor::randn(0f32, 0.02, (k, n), &Device::Cpu))
        .collect::<candle_core::Result<_>>()?;
    let w = &ws[0];
    let flops = 2.0 * (m * k * n) as f64;
    let (xb, wb) = (x.to_dtype(DType::BF16)?, w.to_dtype(DType::BF16)?);
    let runs = WeightGemm::ALL.map(|kernel| model::matmul_with(&x, w, kernel).is_ok());
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); WeightGemm::ALL.len() + 2];
    let mut turn = 0;
    let mut next = || {
        turn += 1;
        &ws[turn % ws.len()]
    };
    for round in 0..=rounds {
        let mut t = vec![{
            let w = next();
            timed(|| drop(model::matmul(&x, w).expect("matmul")))
        }];
        for (kernel, runs) in WeightGemm::ALL.into_iter().zip(runs) {
            let w = next();
            t.push(if runs {
                timed(|| drop(model::matmul_with(&x, w, kernel).expect("matmul")))
            } else {
                f64::NAN
            });
        }
        t.push(timed(|| drop(model::matmul(&xb, &wb).expect("bf16 matmul"))));
        // Round 0 warms caches and thread pools.
        if round > 0 {
            for (all, t) in times.iter_mut().zip(t) {
                all.push(t);
            }
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            flops / t[t.len() / 2] / 1e9
        })
        .collect())
}

fn timed(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

/// `((m, k, n), f32 GFLOP/s, bf16 GFLOP/s)` of one shape torch timed.
type TorchRate = ((usize, usize, usize), f64, f64);

/// The rates from the JSON `scripts/torch_gemm_bench.py` writes.
fn read_torch(path: &str) -> candle_core::Result<Vec<TorchRate>> {
    let text = std::fs::read_to_string(path).map_err(|e| candle_core::Error::Msg(format!("--torch {path}: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| candle_core::Error::Msg(format!("--torch {path}: {e}")))?;
    let rows = v["rows"]
        .as_array()
        .ok_or_else(|| candle_core::Error::Msg(format!("--torch {path}: no \"rows\"")))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let d = |key: &str| r[key].as_u64().map(|x| x as usize);
            Some((
                (d("m")?, d("k")?, d("n")?),
                r["gflops"].as_f64()?,
                r["gflops_bf16"].as_f64().unwrap_or(f64::NAN),
            ))
        })
        .collect())
}

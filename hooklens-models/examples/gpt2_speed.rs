//! The forward pass of a GPT-2-small-sized model (random weights) against the time of
//! its matmuls alone, the lower bound for a CPU forward.
//!
//! `cargo run --release -p hooklens-models --example gpt2_speed [-- BATCH POS LAYERS]`
//!
//! Both are timed in the same process, alternating, median of the runs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use hooklens_models::{HookedTransformer, ProcessingOptions, TransformerConfig};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> hooklens_core::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (batch, pos, layers) = (
        *args.first().unwrap_or(&8),
        *args.get(1).unwrap_or(&128),
        *args.get(2).unwrap_or(&12),
    );
    let mut cfg = TransformerConfig::gpt2_small();
    cfg.n_layers = layers;
    let (d, v, mlp, h) = (cfg.d_model, cfg.d_vocab, cfg.d_mlp, cfg.n_heads);
    let dev = Device::Cpu;
    let r = |shape: &[usize]| Tensor::randn(0f32, 0.02, shape, &dev);
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert("wte.weight".into(), r(&[v, d])?);
    t.insert("wpe.weight".into(), r(&[cfg.n_ctx, d])?);
    for i in 0..layers {
        for ln in ["ln_1", "ln_2"] {
            t.insert(format!("h.{i}.{ln}.weight"), (r(&[d])? + 1.0)?);
            t.insert(format!("h.{i}.{ln}.bias"), r(&[d])?);
        }
        t.insert(format!("h.{i}.attn.c_attn.weight"), r(&[d, 3 * d])?);
        t.insert(format!("h.{i}.attn.c_attn.bias"), r(&[3 * d])?);
        t.insert(format!("h.{i}.attn.c_proj.weight"), r(&[d, d])?);
        t.insert(format!("h.{i}.attn.c_proj.bias"), r(&[d])?);
        t.insert(format!("h.{i}.mlp.c_fc.weight"), r(&[d, mlp])?);
        t.insert(format!("h.{i}.mlp.c_fc.bias"), r(&[mlp])?);
        t.insert(format!("h.{i}.mlp.c_proj.weight"), r(&[mlp, d])?);
        t.insert(format!("h.{i}.mlp.c_proj.bias"), r(&[d])?);
    }
    t.insert("ln_f.weight".into(), (r(&[d])? + 1.0)?);
    t.insert("ln_f.bias".into(), r(&[d])?);
    let weights = t.clone();
    let vb = VarBuilder::from_tensors(t, DType::F32, &dev);
    let model = HookedTransformer::load_with(vb, &cfg, &ProcessingOptions::default())?;

    let tokens = Tensor::rand(0f32, (v - 1) as f32, (batch, pos), &dev)?.to_dtype(DType::U32)?;
    let n = batch * pos;
    let dh = d / h;
    let x = r(&[n, d])?;
    let w_u = weights["wte.weight"].t()?.contiguous()?;
    let matmuls_only = || -> candle_core::Result<Tensor> {
        let mut y = x.clone();
        for i in 0..layers {
            let qkv = x.matmul(&weights[&format!("h.{i}.attn.c_attn.weight")])?;
            let q = qkv
                .narrow(1, 0, d)?
                .reshape((batch, pos, h, dh))?
                .transpose(1, 2)?
                .contiguous()?;
            let k = qkv
                .narrow(1, d, d)?
                .reshape((batch, pos, h, dh))?
                .transpose(1, 2)?
                .contiguous()?;
            let s = q.matmul(&k.t()?)?;
            let z = s.matmul(&k)?;
            let _ = z;
            y = x.matmul(&weights[&format!("h.{i}.attn.c_proj.weight")])?;
            let hid = x.matmul(&weights[&format!("h.{i}.mlp.c_fc.weight")])?;
            y = (y + hid.matmul(&weights[&format!("h.{i}.mlp.c_proj.weight")])?)?;
        }
        y.matmul(&w_u)
    };
    // Warm up both.
    model.forward(&tokens)?;
    matmuls_only()?;
    let runs = 5;
    let (mut full, mut mm) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t0 = Instant::now();
        model.forward(&tokens)?;
        full.push(t0.elapsed());
        let t0 = Instant::now();
        matmuls_only()?;
        mm.push(t0.elapsed());
    }
    let (full, mm) = (median(full), median(mm));
    println!(
        "batch {batch} x pos {pos}, {layers} layers: forward {:.1} ms, matmuls alone {:.1} ms, ratio {:.3}",
        full.as_secs_f64() * 1e3,
        mm.as_secs_f64() * 1e3,
        full.as_secs_f64() / mm.as_secs_f64()
    );
    Ok(())
}

//! What splicing an SAE costs: a GPT-2-small-shaped model (seeded random weights) with
//! a standard SAE of 24576 features (random weights) at `blocks.6.hook_resid_pre`.
//!
//! `cargo run --release --example sae_bench` (add `-- --quick` for fewer rounds)
//!
//! In one run, at 1 x 64 and 8 x 128 tokens, timed in turn round after round: the plain
//! forward; the SAE alone on an activation of that shape (`Sae::forward`: its encoder
//! and decoder products and elementwise work); the forward with the SAE spliced in;
//! and spliced with the error term (SAELens recomputes the reconstruction without
//! hooks for it: two SAE passes). The aim: the splice costs at most the SAE's own
//! work over the plain forward, i.e. `(spliced - plain) / SAE alone` <= 1. Ratios are
//! medians of per-round ratios.

#[path = "common/bench.rs"]
mod bench_common;
use bench_common::{median_f64, time_rounds};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use hooklens::models::model::{random_weights, SeededRng};
use hooklens::models::sae::{Sae, SaeConfig, SaeModel, SaeSet, SaeWeights};
use hooklens::{HookedTransformer, TransformerConfig};

const D_SAE: usize = 24576;
const HOOK: &str = "blocks.6.hook_resid_pre";

fn random(rng: &mut SeededRng, shape: &[usize], scale: f32) -> hooklens::Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) as f32 * scale).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

fn main() -> hooklens::Result<()> {
    hooklens::retain_freed_memory();
    let quick = std::env::args().any(|a| a == "--quick");
    let cfg = TransformerConfig::gpt2_small();
    let vb = VarBuilder::from_tensors(random_weights(&cfg, 0)?, DType::F32, &Device::Cpu);
    let model = HookedTransformer::load(vb, &cfg)?;
    let d = cfg.d_model;
    let sae_cfg = SaeConfig::from_json_str(
        &format!(
            r#"{{"architecture": "standard", "d_in": {d}, "d_sae": {D_SAE}, "apply_b_dec_to_input": true,
                "metadata": {{"sae_lens_version": "6.54.12", "hook_name": "{HOOK}"}}}}"#
        ),
        std::path::Path::new("sae_bench/cfg.json"),
    )?;
    let mut rng = SeededRng::new(5);
    let w = SaeWeights {
        w_enc: random(&mut rng, &[d, D_SAE], 0.05)?,
        b_enc: Some(random(&mut rng, &[D_SAE], 0.05)?),
        w_dec: random(&mut rng, &[D_SAE, d], 0.05)?,
        b_dec: random(&mut rng, &[d], 0.05)?,
        threshold: None,
        gated: None,
        w_skip: None,
    };
    let sae = Sae::new(sae_cfg, w)?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("GPT-2-small shape + a standard SAE ({d} -> {D_SAE}) at {HOOK}, f32, CPU, {threads} threads\n");
    println!("| batch x pos | forward | SAE alone | spliced | spliced / fwd | (spliced - fwd) / SAE | spliced, error term | (err - fwd) / SAE |");
    println!("|---|---|---|---|---|---|---|---|");
    for (b, p, rounds) in [(1usize, 64usize, 10usize), (8, 128, 6)] {
        let rounds = if quick { rounds.div_ceil(3) } else { rounds };
        let ids: Vec<u32> = (0..b * p).map(|_| rng.below(cfg.d_vocab as u64) as u32).collect();
        let tokens = Tensor::from_vec(ids, (b, p), &Device::Cpu)?;
        let x = random(&mut rng, &[b, p, d], 1.0)?;
        let with_error = SaeSet::new().sae_with_error_term(&sae);
        let t = time_rounds(
            rounds,
            &mut [
                &mut || model.forward(&tokens).map(drop),
                &mut || sae.forward(&x).map(drop),
                &mut || model.run_with_saes(&sae, |m| m.forward(&tokens)).map(drop),
                &mut || {
                    model
                        .run_with_saes(with_error.clone(), |m| m.forward(&tokens))
                        .map(drop)
                },
            ],
        )?;
        let per_round = |f: &dyn Fn(usize) -> f64| median_f64((0..t[0].len()).map(f).collect());
        let spliced_fwd = per_round(&|r| t[2][r] / t[0][r]);
        let over = per_round(&|r| (t[2][r] - t[0][r]) / t[1][r]);
        let err_over = per_round(&|r| (t[3][r] - t[0][r]) / t[1][r]);
        let ms = |i: usize| median_f64(t[i].clone()) * 1e3;
        println!(
            "| {b} x {p} | {:.1} ms | {:.1} ms | {:.1} ms | {spliced_fwd:.3} | {over:.3} | {:.1} ms | {err_over:.3} |",
            ms(0),
            ms(1),
            ms(2),
            ms(3)
        );
    }
    Ok(())
}

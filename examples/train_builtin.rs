//! Trains the built-in model from a seed and writes it where hooklens-models ships it.
//!
//! `cargo run --release --example train_builtin [-- --steps N --seed S --out DIR --every K
//!  --previous-token-heads H]`
//! (`--every K`: score every head for induction each K steps; 0 turns it off)
//!
//! A two-layer GPT-2 (d_model 64, 4 heads, GPT-2's vocabulary) learns to continue
//! repeated random token sequences, the setting in which induction heads form. It
//! prints a progress bar while training, then the loss curve, the loss on the first
//! and repeated halves, and the induction score of every head, and saves the weights
//! in f16 (config.json + model.safetensors) to hooklens-models/builtin by default.

use std::io::Write;
use std::time::Instant;

use candle_core::DType;
use hooklens::models::builtin::{builtin_config, half_losses, induction_scores, repeated_tokens, train_induction};
use hooklens::models::builtin::{TrainOptions, TrainStep};
use hooklens::models::model::{save_hf_checkpoint, SeededRng};
use hooklens::{HookedTransformer, LoadOptions};

fn arg<T: std::str::FromStr>(args: &[String], flag: &str) -> hooklens::Result<Option<T>> {
    match args.iter().position(|a| a == flag) {
        None => Ok(None),
        Some(i) => {
            let v = args
                .get(i + 1)
                .ok_or_else(|| hooklens::Error::invalid(format!("{flag} needs a value")))?;
            v.parse()
                .map(Some)
                .map_err(|_| hooklens::Error::invalid(format!("{flag}: `{v}` is not valid")))
        }
    }
}

fn main() -> hooklens::Result<()> {
    // One thread unless told otherwise: float sums are reduced in another order with
    // another thread count, and training from the same seed then takes another path
    // (in our runs, whether induction heads formed at all). Set before candle reads it.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let args: Vec<String> = std::env::args().collect();
    let mut opts = TrainOptions::default();
    if let Some(s) = arg(&args, "--steps")? {
        opts.steps = s;
    }
    if let Some(s) = arg(&args, "--seed")? {
        opts.seed = s;
    }
    if let Some(h) = arg(&args, "--previous-token-heads")? {
        opts.previous_token_heads = h;
    }
    if let Some(n) = arg(&args, "--full-softmax-steps")? {
        opts.full_softmax_steps = n;
    }
    let out: String =
        arg(&args, "--out")?.unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/hooklens-models/builtin").into());

    let every: usize = arg(&args, "--every")?.unwrap_or(500);
    let cfg = builtin_config();
    let bos = cfg.bos_token_id.unwrap_or(50256);
    // A fixed batch to score the heads on while training: how far induction has formed.
    let probe_half = 20;
    let probe = repeated_tokens(&mut SeededRng::new(777), 8, probe_half, cfg.d_vocab, bos)?;

    let start = Instant::now();
    let mut curve: Vec<TrainStep> = Vec::new();
    let weights = train_induction(&opts, |s, model| {
        curve.push(*s);
        let total = opts.steps + opts.full_softmax_steps;
        let done = (s.step + 1) as f64 / total as f64;
        let filled = (done * 40.0) as usize;
        let elapsed = start.elapsed().as_secs_f64();
        let eta = elapsed / done - elapsed;
        let recent = &curve[curve.len().saturating_sub(20)..];
        let avg = recent.iter().map(|s| s.loss).sum::<f32>() / recent.len() as f32;
        eprint!(
            "\r[{}{}] {}/{} loss {avg:.3} lr {:.1e} {:.0}s elapsed, ETA {:.0}s ",
            "#".repeat(filled),
            " ".repeat(40 - filled),
            s.step + 1,
            total,
            s.lr,
            elapsed,
            eta
        );
        let _ = std::io::stderr().flush();
        if every > 0 && (s.step + 1) % every == 0 {
            let scores = induction_scores(model, &probe, probe_half)?.to_vec2::<f32>()?;
            let best: Vec<String> = scores
                .iter()
                .map(|row| format!("{:.2}", row.iter().cloned().fold(0.0, f32::max)))
                .collect();
            eprintln!(
                "\n  step {}: best induction score per layer: {}",
                s.step + 1,
                best.join(", ")
            );
        }
        Ok(())
    })?;
    eprintln!();
    println!(
        "trained {} steps in {:.0} s (seed {})",
        opts.steps + opts.full_softmax_steps,
        start.elapsed().as_secs_f64(),
        opts.seed
    );

    // The loss curve, as 12 averaged buckets.
    println!("\nloss curve (mean over each twelfth of training):");
    let bucket = curve.len().div_ceil(12).max(1);
    let means: Vec<f32> = curve
        .chunks(bucket)
        .map(|c| c.iter().map(|s| s.loss).sum::<f32>() / c.len() as f32)
        .collect();
    let top = means.iter().cloned().fold(f32::MIN, f32::max);
    for (i, m) in means.iter().enumerate() {
        let bar = ((m / top) * 50.0).round() as usize;
        println!(
            "  steps {:>5}-{:<5} {:>6.3} {}",
            i * bucket,
            ((i + 1) * bucket).min(curve.len()) - 1,
            m,
            "#".repeat(bar)
        );
    }

    save_hf_checkpoint(&out, &cfg, &weights, DType::F16)?;
    println!("\nsaved to {out}");

    // Check what was saved, as it will be loaded.
    let model = HookedTransformer::from_dir(&out, &LoadOptions::no_processing())?;
    let mut rng = SeededRng::new(12345);
    // Within the trained lengths (1 + prefix + window <= 57 positions).
    let half = 20;
    let tokens = repeated_tokens(&mut rng, 8, half, cfg.d_vocab, cfg.bos_token_id.unwrap_or(50256))?;
    let (first, second) = half_losses(&model, &tokens, half)?;
    println!("loss on repeated random tokens: first half {first:.3}, repeated half {second:.3}");
    let scores = induction_scores(&model, &tokens, half)?.to_vec2::<f32>()?;
    println!("induction scores (layer x head):");
    for (l, row) in scores.iter().enumerate() {
        println!(
            "  layer {l}: {}",
            row.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join("  ")
        );
    }
    Ok(())
}

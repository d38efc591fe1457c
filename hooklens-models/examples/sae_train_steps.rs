//! Runs the SAE trainer from given weights on given batches, for
//! `scripts/check_sae_training.py`, which does the same in SAELens and compares.
//!
//! `cargo run --release -p hooklens-models --example sae_train_steps -- DIR`
//!
//! Reads `DIR/init.safetensors` (`W_enc`, `b_enc`, `W_dec`, `b_dec`),
//! `DIR/batches.safetensors` (`x`, `[steps, batch, d_in]`) and `DIR/opts.json`
//! (SAELens's names: architecture, d_sae, k, lr, l1_coefficient, l1_warm_up_steps,
//! lr_warm_up_steps, lr_decay_steps, dead_feature_window, training_tokens); takes one
//! step per batch; writes the SAE folder to `DIR/hooklens/` and the encoding of the
//! first batch to `DIR/hooklens_encode.safetensors`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, IndexOp, Tensor};
use hooklens_core::{Error, Result};
use hooklens_models::sae::train::{SaeTrainer, TrainArchitecture, TrainOptions};
use hooklens_models::sae::SaeWeights;

fn main() -> Result<()> {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: sae_train_steps DIR");
        std::process::exit(2);
    };
    let dir = Path::new(&dir);
    let text = std::fs::read_to_string(dir.join("opts.json")).map_err(|e| Error::io(dir.join("opts.json"), e))?;
    let o: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::invalid(e.to_string()))?;
    let arch = TrainArchitecture::from_name(o["architecture"].as_str().unwrap_or(""))?;
    let num = |k: &str| {
        o[k].as_f64()
            .ok_or_else(|| Error::invalid(format!("opts.json: no number `{k}`")))
    };
    let opts = TrainOptions {
        k: num("k")? as usize,
        lr: num("lr")?,
        l1_coefficient: num("l1_coefficient")?,
        l1_warm_up_steps: num("l1_warm_up_steps")? as usize,
        lr_warm_up_steps: num("lr_warm_up_steps")? as usize,
        lr_decay_steps: num("lr_decay_steps")? as usize,
        dead_feature_window: num("dead_feature_window")? as usize,
        training_tokens: num("training_tokens")? as u64,
        train_batch_size_tokens: num("train_batch_size_tokens")? as usize,
        ..TrainOptions::new(arch, num("d_sae")? as usize)
    };
    let mut init = candle_core::safetensors::load(dir.join("init.safetensors"), &Device::Cpu)?;
    let mut take = |n: &str| {
        init.remove(n)
            .ok_or_else(|| Error::invalid(format!("init.safetensors: no `{n}`")))
    };
    let weights = SaeWeights {
        w_enc: take("W_enc")?,
        b_enc: Some(take("b_enc")?),
        w_dec: take("W_dec")?,
        b_dec: take("b_dec")?,
        threshold: None,
        gated: None,
        w_skip: None,
    };
    let mut trainer = SaeTrainer::from_weights(opts, &weights, "blocks.0.hook_resid_post")?;
    let batches = candle_core::safetensors::load(dir.join("batches.safetensors"), &Device::Cpu)?;
    let x = batches
        .get("x")
        .ok_or_else(|| Error::invalid("batches.safetensors: no `x`"))?;
    for s in 0..x.dim(0)? {
        if let Some(m) = trainer.step(&x.i(s)?)? {
            println!("{m}");
        }
    }
    trainer.save_sae(&dir.join("hooklens"))?;
    let acts: HashMap<String, Tensor> = [("acts".to_string(), trainer.encode(&x.i(0)?)?)].into();
    candle_core::safetensors::save(&acts, dir.join("hooklens_encode.safetensors"))?;
    Ok(())
}

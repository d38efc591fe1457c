//! Runs the SAE trainer from given weights on given batches, for
//! `scripts/check_sae_training.py`, which does the same in SAELens and compares.
//!
//! `cargo run --release -p hooklens-models --example sae_train_steps -- DIR`
//!
//! Reads `DIR/init.safetensors` (`W_enc`, `b_enc`, `W_dec`, `b_dec`),
//! `DIR/batches.safetensors` (`x`, `[steps, batch, d_in]`) and `DIR/opts.json`
//! (SAELens's names: architecture, d_sae, k, lr, l1_coefficient, l1_warm_up_steps,
//! lr_warm_up_steps, lr_decay_steps, dead_feature_window, training_tokens; for jumprelu
//! also l0_coefficient, l0_warm_up_steps, jumprelu_bandwidth, jumprelu_init_threshold,
//! jumprelu_sparsity_loss_mode, jumprelu_tanh_scale, jumprelu_ste_to_input,
//! pre_act_loss_coefficient, target_l0, and `threshold` in init.safetensors; for
//! matryoshka_batchtopk matryoshka_widths and use_matryoshka_aux_loss); takes one
//! step per batch; writes the SAE folder to `DIR/hooklens/` and, to
//! `DIR/hooklens_encode.safetensors`, the trainer's encoding of the first batch (`acts`)
//! and the saved folder's reconstruction of it as `Sae::from_dir` reads it
//! (`recons`: `decode(encode(x))`). With `hook_out` in opts.json and
//! `y` (`[steps, batch, d_out]`) in batches.safetensors it trains a transcoder from `x`
//! to `y`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, IndexOp, Tensor};
use hooklens_core::{Error, Result};
use hooklens_models::sae::train::{JumpReluSparsityLoss, SaeTrainer, TrainArchitecture, TrainOptions};
use hooklens_models::sae::{Sae, SaeWeights};

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
    let base = TrainOptions::new(arch, num("d_sae")? as usize);
    let opt_num = |k: &str, default: f64| o[k].as_f64().unwrap_or(default);
    let opts = TrainOptions {
        l0_coefficient: opt_num("l0_coefficient", base.l0_coefficient),
        l0_warm_up_steps: opt_num("l0_warm_up_steps", 0.0) as usize,
        jumprelu_bandwidth: opt_num("jumprelu_bandwidth", base.jumprelu_bandwidth),
        jumprelu_init_threshold: opt_num("jumprelu_init_threshold", base.jumprelu_init_threshold),
        jumprelu_tanh_scale: opt_num("jumprelu_tanh_scale", base.jumprelu_tanh_scale),
        jumprelu_sparsity_loss_mode: JumpReluSparsityLoss::from_name(
            o["jumprelu_sparsity_loss_mode"].as_str().unwrap_or("step"),
        )?,
        jumprelu_ste_to_input: o["jumprelu_ste_to_input"].as_bool().unwrap_or(false),
        pre_act_loss_coefficient: o["pre_act_loss_coefficient"].as_f64(),
        target_l0: o["target_l0"].as_f64(),
        matryoshka_widths: o["matryoshka_widths"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).map(|v| v as usize).collect())
            .unwrap_or_default(),
        use_matryoshka_aux_loss: o["use_matryoshka_aux_loss"].as_bool().unwrap_or(false),
        k: num("k")? as usize,
        lr: num("lr")?,
        l1_coefficient: num("l1_coefficient")?,
        l1_warm_up_steps: num("l1_warm_up_steps")? as usize,
        lr_warm_up_steps: num("lr_warm_up_steps")? as usize,
        lr_decay_steps: num("lr_decay_steps")? as usize,
        dead_feature_window: num("dead_feature_window")? as usize,
        training_tokens: num("training_tokens")? as u64,
        train_batch_size_tokens: num("train_batch_size_tokens")? as usize,
        ..base.clone()
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
        threshold: init.remove("threshold"),
        gated: None,
        w_skip: None,
    };
    let hook = "blocks.0.hook_resid_post";
    let mut trainer = match o["hook_out"].as_str() {
        Some(out) => SaeTrainer::transcoder_from_weights(opts, &weights, hook, out)?,
        None => SaeTrainer::from_weights(opts, &weights, hook)?,
    };
    let batches = candle_core::safetensors::load(dir.join("batches.safetensors"), &Device::Cpu)?;
    let x = batches
        .get("x")
        .ok_or_else(|| Error::invalid("batches.safetensors: no `x`"))?;
    for s in 0..x.dim(0)? {
        let m = match batches.get("y") {
            Some(y) => trainer.step_transcoder(&x.i(s)?, &y.i(s)?)?,
            None => trainer.step(&x.i(s)?)?,
        };
        if let Some(m) = m {
            println!("{m}");
        }
    }
    trainer.save_sae(&dir.join("hooklens"))?;
    let saved = Sae::from_dir(dir.join("hooklens"), &Device::Cpu)?;
    let recons = saved.decode(&saved.encode(&x.i(0)?)?)?;
    let acts: HashMap<String, Tensor> = [
        ("acts".to_string(), trainer.encode(&x.i(0)?)?),
        ("recons".to_string(), recons),
    ]
    .into();
    candle_core::safetensors::save(&acts, dir.join("hooklens_encode.safetensors"))?;
    Ok(())
}

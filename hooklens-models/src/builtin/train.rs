//! Training the built-in model: a small GPT-2 with GPT-2's vocabulary, trained from a
//! seed on repeated random tokens until it has induction heads.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder};
use hooklens_core::{with_grad_mode, Error, Result};

use super::induction::{repeated_tokens, repeated_tokens_from_pools};
use crate::gpt2::{cross_entropy_per_row, random_weights, ForwardOptions, Gpt2Config, HookedGpt2, SeededRng};

/// The built-in model's shape: two layers (the fewest that can form an induction
/// circuit: a previous-token head feeding an induction head), GPT-2's vocabulary,
/// small enough to ship in f16 under 8 MB.
pub fn builtin_config() -> Gpt2Config {
    Gpt2Config::new(2, 64, 4, 50257, 128)
}

/// How to train.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Seeds the initialisation and every batch.
    pub seed: u64,
    /// Optimiser steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Random tokens before the repeat: drawn per step in this range (inclusive).
    pub half_len: (usize, usize),
    /// Peak learning rate (AdamW), after a linear warm-up, then cosine decay.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Keep the token embeddings at their random initialisation.
    pub freeze_embeddings: bool,
    /// Each sequence draws from a pool of this many tokens (inclusive range, per
    /// sequence; see [`super::repeated_tokens_from_pools`]); `(0, 0)` draws from the
    /// whole vocabulary.
    pub pool: (usize, usize),
    /// Multiplies GPT-2's initial q/k/v weights (std 0.02).
    pub qkv_init_scale: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            seed: 0,
            steps: 6000,
            batch: 32,
            half_len: (8, 24),
            lr: 5e-3,
            warmup: 60,
            freeze_embeddings: true,
            pool: (0, 0),
            qkv_init_scale: 5.0,
        }
    }
}

/// One point of the loss curve.
#[derive(Clone, Copy, Debug)]
pub struct TrainStep {
    /// The step, from 0.
    pub step: usize,
    /// The mean next-token loss of this step's batch.
    pub loss: f32,
    /// The learning rate used.
    pub lr: f64,
}

/// Trains [`builtin_config`] from `opts.seed`, calling `progress` after every step
/// with the model as it is after that step (to print a loss curve, or score its heads
/// along the way), and returns the weights by Hugging Face name (f32).
pub fn train_induction(
    opts: &TrainOptions,
    mut progress: impl FnMut(&TrainStep, &HookedGpt2) -> Result<()>,
) -> Result<HashMap<String, Tensor>> {
    let cfg = builtin_config();
    if opts.half_len.0 < 2 || opts.half_len.0 > opts.half_len.1 || 1 + 2 * opts.half_len.1 > cfg.n_ctx {
        return Err(Error::invalid(format!(
            "half_len {:?} must be 2 <= min <= max and fit the context ({} positions)",
            opts.half_len, cfg.n_ctx
        )));
    }
    let mut init = random_weights(&cfg, opts.seed)?;
    // Larger than GPT-2's 0.02: a token's identity must stand out of the residual
    // stream's noise for copying to be learnable in few steps.
    let wte = (init["wte.weight"].clone() * 5.0)?;
    init.insert("wte.weight".to_string(), wte);
    // Larger attention weights than GPT-2's make the heads' patterns differ from the
    // first step (see `TrainOptions::qkv_init_scale`).
    for layer in 0..cfg.n_layers {
        let key = format!("h.{layer}.attn.c_attn.weight");
        let scaled = (init[&key].clone() * opts.qkv_init_scale)?;
        init.insert(key, scaled);
    }
    init.insert(
        "wpe.weight".to_string(),
        sinusoidal_positions(cfg.n_ctx, cfg.d_model, 0.1)?,
    );
    // Copying random tokens needs distinct embeddings, not learned ones: frozen, they
    // stay distinct, and a step skips the gradient and Adam update of the largest
    // matrix (50257 x 64), most of its cost.
    let frozen = |k: &str| opts.freeze_embeddings && k == "wte.weight";
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut vars: HashMap<String, Var> = HashMap::new();
    for (k, t) in init {
        if frozen(&k) {
            tensors.insert(k, t);
        } else {
            let v = Var::from_tensor(&t)?;
            tensors.insert(k.clone(), v.as_tensor().clone());
            vars.insert(k, v);
        }
    }
    let model = HookedGpt2::load(
        VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu),
        &cfg,
    )?;
    let params = ParamsAdamW {
        lr: opts.lr,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut optimizer = AdamW::new(vars.values().cloned().collect(), params)?;
    let mut rng = SeededRng::new(opts.seed.wrapping_add(1));
    let bos = cfg.bos_token_id.unwrap_or(cfg.d_vocab as u32 - 1);
    for step in 0..opts.steps {
        let lr = schedule(step, opts);
        optimizer.set_learning_rate(lr);
        let span = (opts.half_len.1 - opts.half_len.0 + 1) as u64;
        let half = opts.half_len.0 + rng.below(span) as usize;
        let tokens = if opts.pool.1 == 0 {
            repeated_tokens(&mut rng, opts.batch, half, cfg.d_vocab, bos)?
        } else {
            let pool = opts.pool.0 + rng.below((opts.pool.1 - opts.pool.0 + 1) as u64) as usize;
            repeated_tokens_from_pools(&mut rng, opts.batch, half, pool, cfg.d_vocab, bos)?
        };
        let loss = with_grad_mode(|| repeat_loss(&model, &tokens, half))?;
        optimizer.backward_step(&loss)?;
        let point = TrainStep {
            step,
            loss: loss.to_scalar::<f32>()?,
            lr,
        };
        progress(&point, &model)?;
    }
    Ok(tensors.into_iter().map(|(k, t)| (k, t.detach())).collect())
}

/// The mean next-token loss over the repeated half of `tokens` `[batch, 1 + 2*half]`,
/// the positions where induction can predict (the first half is unpredictable noise).
///
/// The softmax runs over the tokens present in the batch rather than all 50257
/// ("in-batch negatives", a sampled softmax). With tied embeddings and Adam, the full
/// softmax pushes every absent token's embedding along one shared direction each step,
/// which Adam's normalisation turns into full-size updates: after a few hundred steps
/// the embeddings of rarely seen tokens all look alike and copying cannot tell them
/// apart. Absent tokens here get no gradient and keep their distinct initial
/// embeddings; the trained model is still evaluated with the full softmax.
fn repeat_loss(model: &HookedGpt2, tokens: &Tensor, half: usize) -> Result<Tensor> {
    let b = tokens.dim(0)?;
    let out = model.forward_with(
        tokens,
        &ForwardOptions::new().stop_at_layer(model.cfg().n_layers as isize),
    )?;
    let resid = out.residual.ok_or_else(|| Error::invalid("no residual"))?;
    // Positions half+1 .. 2*half-1 predict the tokens after them, all of them repeats.
    let n = half - 1;
    let resid = resid.narrow(1, half + 1, n)?;
    let normalized = model.ln_final.forward(&resid)?;
    let d_model = normalized.dim(2)?;
    let ids: Vec<u32> = tokens.flatten_all()?.to_vec1()?;
    let mut candidates = ids.clone();
    candidates.sort_unstable();
    candidates.dedup();
    let column = |id: u32| candidates.binary_search(&id).unwrap_or(0) as u32;
    let targets: Vec<u32> = tokens.narrow(1, half + 2, n)?.contiguous()?.flatten_all()?.to_vec1()?;
    let targets: Vec<u32> = targets.into_iter().map(column).collect();
    let cand = Tensor::new(candidates.as_slice(), tokens.device())?;
    // W_U is W_E transposed (tied): the candidates' rows of W_E, `[C, d_model]`, transposed.
    let w_u = model.embed.w_e.index_select(&cand, 0)?.t()?;
    let logits = normalized.reshape((b * n, d_model))?.matmul(&w_u)?;
    let targets = Tensor::new(targets.as_slice(), tokens.device())?;
    Ok(cross_entropy_per_row(&logits, &targets)?.mean_all()?)
}

/// `[n_ctx, d_model]` sinusoidal position embeddings (Vaswani et al.) with amplitude
/// `scale`, as the starting point of the learned ones: relative offsets are then a
/// linear map of the embeddings, so the previous-token head that induction needs is
/// quick to learn, where random positions make it the slowest part of training.
fn sinusoidal_positions(n_ctx: usize, d_model: usize, scale: f64) -> Result<Tensor> {
    let mut v = Vec::with_capacity(n_ctx * d_model);
    for pos in 0..n_ctx {
        for i in 0..d_model {
            let freq = 1.0 / 10000f64.powf((i / 2 * 2) as f64 / d_model as f64);
            let angle = pos as f64 * freq;
            v.push((scale * if i % 2 == 0 { angle.sin() } else { angle.cos() }) as f32);
        }
    }
    Ok(Tensor::from_vec(v, (n_ctx, d_model), &Device::Cpu)?)
}

/// Linear warm-up to `lr`, then cosine decay to a tenth of it.
fn schedule(step: usize, opts: &TrainOptions) -> f64 {
    if step < opts.warmup {
        return opts.lr * (step + 1) as f64 / opts.warmup as f64;
    }
    let t = (step - opts.warmup) as f64 / (opts.steps - opts.warmup).max(1) as f64;
    let cos = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
    opts.lr * (0.1 + 0.9 * cos)
}

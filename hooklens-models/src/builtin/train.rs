//! Training the built-in model: a small GPT-2 with GPT-2's vocabulary, trained from a
//! seed on repeated random tokens until it has induction heads.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder};
use hooklens_core::{with_grad_mode, CacheOptions, Error, HookedModel, Result};

use super::induction::windowed_repeats;
use super::shape::builtin_config;
use crate::model::{cross_entropy_per_row, random_weights, ForwardOptions, HookedTransformer};
use crate::ops::kernels::matmul_constant_rhs;
use crate::ops::SeededRng;

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
    pub prefix_len: (usize, usize),
    /// Tokens of the prefix repeated (a window of it; see
    /// [`super::windowed_repeats`]): drawn per step in this range (inclusive).
    pub repeat_len: (usize, usize),
    /// Peak learning rate (AdamW), after a linear warm-up, then cosine decay.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Keep the token embeddings at their random initialisation.
    pub freeze_embeddings: bool,
    /// Multiplies GPT-2's initial q/k/v weights (std 0.02).
    pub qkv_init_scale: f64,
    /// How many of layer 0's heads are taught to attend to the previous token, by an
    /// auxiliary loss on their attention pattern (see [`train_induction`]).
    pub previous_token_heads: usize,
    /// The weight of that auxiliary loss against the next-token loss.
    pub previous_token_weight: f64,
    /// Steps after `steps`, at the schedule's final learning rate, in which the
    /// next-token softmax runs over the whole vocabulary instead of the batch's tokens.
    /// The in-batch softmax never pushes down the tokens absent from the batch, so a
    /// few of the 50257 (those whose frozen embeddings happen to lie along the
    /// residual's common direction) otherwise win greedy decoding wherever the copy is
    /// less than certain, and a copied phrase breaks off into them.
    pub full_softmax_steps: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            // The shipped model's seed (hooklens-models/builtin/README.md lists the
            // runs: not every seed forms induction heads).
            seed: 2,
            steps: 2400,
            batch: 32,
            prefix_len: (16, 40),
            repeat_len: (6, 16),
            lr: 5e-3,
            warmup: 60,
            freeze_embeddings: true,
            qkv_init_scale: 5.0,
            previous_token_heads: 2,
            previous_token_weight: 1.0,
            full_softmax_steps: 1600,
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
/// (`opts.steps + opts.full_softmax_steps` of them) with the model as it is after
/// that step (to print a loss curve, or score its heads along the way), and returns
/// the weights by Hugging Face name (f32). Deterministic for a seed, a thread count
/// and a CPU (see `examples/train_builtin.rs`).
///
/// Each step draws sequences of [`super::windowed_repeats`] and minimises the
/// next-token loss on the repeated window, plus an auxiliary loss that teaches the
/// first `previous_token_heads` heads of layer 0 to attend to the previous token.
/// An induction head needs a previous-token head to compose with, and on this budget
/// neither forms from the next-token loss alone: in our runs (2-layer, d_model 64,
/// 3000-8000 steps) layer 0 settled into spreading its attention over the earlier
/// tokens, which lowers the loss without any previous-token head. With the previous
/// token taught, layer 1's heads become induction heads by themselves. Taught on two
/// heads, not all four: with every head of layer 0 pinned, nothing learned in 2200
/// steps; with one, layer 1 learned a shifted variant (attending one token later and
/// copying the previous-token head's output) that the induction score does not see.
pub fn train_induction(
    opts: &TrainOptions,
    mut progress: impl FnMut(&TrainStep, &HookedTransformer) -> Result<()>,
) -> Result<HashMap<String, Tensor>> {
    let cfg = builtin_config();
    let (p, r) = (opts.prefix_len, opts.repeat_len);
    if r.0 < 2 || r.0 > r.1 || p.0 > p.1 || r.1 > p.0 || 1 + p.1 + r.1 > cfg.n_ctx {
        return Err(Error::invalid(format!(
            "prefix_len {p:?} and repeat_len {r:?} must be ranges with 2 <= repeat <= prefix, \
             and 1 + prefix + repeat must fit the context ({} positions)",
            cfg.n_ctx
        )));
    }
    if opts.previous_token_heads > cfg.n_heads {
        return Err(Error::invalid(format!(
            "previous_token_heads {} is more than the {} heads of a layer",
            opts.previous_token_heads, cfg.n_heads
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
    let model = HookedTransformer::load(
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
    for step in 0..opts.steps + opts.full_softmax_steps {
        let lr = schedule(step.min(opts.steps.saturating_sub(1)), opts);
        let full_softmax = step >= opts.steps;
        optimizer.set_learning_rate(lr);
        let prefix = p.0 + rng.below((p.1 - p.0 + 1) as u64) as usize;
        let window = r.0 + rng.below((r.1 - r.0 + 1) as u64) as usize;
        let tokens = windowed_repeats(&mut rng, opts.batch, prefix, window, cfg.d_vocab, bos)?;
        let loss = with_grad_mode(|| step_loss(&model, &tokens, 1 + prefix, window - 1, full_softmax, opts))?;
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

/// One step's loss on `tokens` `[batch, len]`: the next-token loss of the `n`
/// positions from `start` (the repeated window, where induction can predict; the
/// prefix is unpredictable noise), plus `previous_token_weight` times the mean
/// `-log` attention of the taught heads of layer 0 to the previous token.
fn step_loss(
    model: &HookedTransformer,
    tokens: &Tensor,
    start: usize,
    n: usize,
    full_softmax: bool,
    opts: &TrainOptions,
) -> Result<Tensor> {
    let heads = opts.previous_token_heads;
    if heads == 0 || opts.previous_token_weight == 0.0 {
        return repeat_loss(model, tokens, start, n, full_softmax);
    }
    let (next, cache) = model.run_with_cache(CacheOptions::new().names("blocks.0.attn.hook_pattern"), |m| {
        repeat_loss(m, tokens, start, n, full_softmax)
    })?;
    // [batch, head, query, key]: the taught heads' weight on key = query - 1.
    let pattern = cache.try_get("blocks.0.attn.hook_pattern")?.narrow(1, 0, heads)?;
    let len = tokens.dim(1)?;
    let mut previous = vec![0f32; len * len];
    for q in 1..len {
        previous[q * len + q - 1] = 1.0;
    }
    let previous = Tensor::from_vec(previous, (len, len), tokens.device())?;
    let on_previous = pattern.broadcast_mul(&previous)?.sum(3)?.narrow(2, 1, len - 1)?;
    let aux = ((on_previous + 1e-6)?.log()?.mean_all()? * (-opts.previous_token_weight))?;
    Ok((next + aux)?)
}

/// The mean next-token loss of the `n` positions from `start` of `tokens`
/// `[batch, len]`, each predicting the token after it.
///
/// Unless `full_softmax`, the softmax runs over the tokens present in the batch rather
/// than all 50257 ("in-batch negatives", a sampled softmax): a step then costs a few
/// hundred columns of logits, not 50257, and the trained model is still evaluated
/// with the full softmax.
fn repeat_loss(
    model: &HookedTransformer,
    tokens: &Tensor,
    start: usize,
    n: usize,
    full_softmax: bool,
) -> Result<Tensor> {
    let b = tokens.dim(0)?;
    // The final norm below runs outside `forward_with`: still this model's forward.
    let _forward = model.hook_embed.model_forward();
    let out = model.forward_with(
        tokens,
        &ForwardOptions::new().stop_at_layer(model.cfg().n_layers as isize),
    )?;
    let resid = out.residual.ok_or_else(|| Error::invalid("no residual"))?;
    let resid = resid.narrow(1, start, n)?;
    // The built-in model's config has a final norm; a model without one is not one
    // this trains.
    let ln_final = model.ln_final.as_ref().ok_or_else(|| {
        Error::invalid("training the built-in model: the model has no final norm (ln_final), not the built-in layout")
    })?;
    let normalized = ln_final.forward(&resid)?;
    let d_model = normalized.dim(2)?;
    if full_softmax {
        let targets = tokens.narrow(1, start + 1, n)?.contiguous()?.flatten_all()?;
        // The tied W_U, `[d_model, d_vocab]`; W_E is frozen, so only the residual
        // side of this product needs a gradient (and gets the only one computed).
        let logits = matmul_constant_rhs(&normalized.reshape((b * n, d_model))?, &model.embed.w_e.t()?)?;
        return Ok(cross_entropy_per_row(&logits, &targets)?.mean_all()?);
    }
    let mut candidates: Vec<u32> = tokens.flatten_all()?.to_vec1()?;
    candidates.sort_unstable();
    candidates.dedup();
    let column = |id: u32| candidates.binary_search(&id).unwrap_or(0) as u32;
    let targets: Vec<u32> = tokens.narrow(1, start + 1, n)?.contiguous()?.flatten_all()?.to_vec1()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::SeededRng;
    use candle_core::IndexOp;

    /// Mean attention of each head of layer 0 to the previous token, `[n_heads]`.
    fn previous_token_attention(model: &HookedTransformer, tokens: &Tensor) -> Vec<f32> {
        let (_, cache) = model
            .run_with_cache(CacheOptions::new().names("blocks.0.attn.hook_pattern"), |m| {
                m.forward(tokens)
            })
            .unwrap();
        let pattern = cache.try_get("blocks.0.attn.hook_pattern").unwrap().mean(0).unwrap();
        let len = tokens.dim(1).unwrap();
        (0..pattern.dim(0).unwrap())
            .map(|h| {
                let p = pattern.i(h).unwrap().to_vec2::<f32>().unwrap();
                (1..len).map(|q| p[q][q - 1]).sum::<f32>() / (len - 1) as f32
            })
            .collect()
    }

    #[test]
    fn the_auxiliary_loss_teaches_the_chosen_heads_the_previous_token() {
        let opts = TrainOptions {
            steps: 60,
            batch: 4,
            prefix_len: (8, 12),
            repeat_len: (4, 6),
            warmup: 5,
            lr: 1e-2,
            previous_token_heads: 2,
            full_softmax_steps: 5,
            ..TrainOptions::default()
        };
        let mut losses = Vec::new();
        let weights = train_induction(&opts, |s, _| {
            losses.push(s.loss);
            Ok(())
        })
        .unwrap();
        assert_eq!(losses.len(), 65);
        // The last five over the whole vocabulary: a harder softmax than the batch's.
        assert!(
            losses[60..].iter().all(|l| l.is_finite() && *l > losses[59]),
            "{losses:?}"
        );
        let vb = candle_nn::VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let model = HookedTransformer::load(vb, &builtin_config()).unwrap();
        let tokens = windowed_repeats(&mut SeededRng::new(9), 4, 12, 6, 50257, 50256).unwrap();
        let prev = previous_token_attention(&model, &tokens);
        assert!(prev[0] > 0.5 && prev[1] > 0.5, "taught heads: {prev:?}");
        assert!(prev[2] < 0.3 && prev[3] < 0.3, "untaught heads: {prev:?}");
    }

    #[test]
    fn bad_lengths_are_refused_before_training() {
        let opts = TrainOptions {
            repeat_len: (10, 20),
            prefix_len: (8, 12),
            ..TrainOptions::default()
        };
        let err = train_induction(&opts, |_, _| Ok(())).unwrap_err().to_string();
        assert!(err.contains("repeat_len"), "{err}");
        let opts = TrainOptions {
            previous_token_heads: 5,
            ..TrainOptions::default()
        };
        let err = train_induction(&opts, |_, _| Ok(())).unwrap_err().to_string();
        assert!(err.contains("previous_token_heads"), "{err}");
    }
}

//! Training sparse autoencoders on harvested activations, with SAELens's semantics and
//! setting names, written as a SAELens folder that [`Sae::from_dir`](crate::sae::Sae::from_dir)
//! (and SAELens's `SAE.load_from_disk`) loads.
//!
//! Implemented: the `standard` (L1), `topk`, `batchtopk`, `jumprelu` and
//! `matryoshka_batchtopk` architectures, as SAELens 6.54's `StandardTrainingSAE`,
//! `TopKTrainingSAE`, `BatchTopKTrainingSAE`, `JumpReLUTrainingSAE` and
//! `MatryoshkaBatchTopKTrainingSAE` train them (a (Matryoshka) BatchTopK SAE is saved as
//! JumpReLU, as SAELens saves it), and transcoders (standard and jumprelu, from one hook
//! of a harvest to another; SAELens 6.54 has no transcoder trainer, so the training is
//! this one with the output hook as the target, saved in SAELens's transcoder format):
//! - initialisation: kaiming-uniform `W_dec` with rows rescaled to
//!   `decoder_init_norm` (0.1), `W_enc = W_dec^T`, zero biases;
//! - losses: `sum((out - x)^2, -1).mean()`, plus for `standard` the L1 of the feature
//!   activations weighted by the decoder rows' norms (with its warm-up), for `topk` and
//!   `batchtopk` the auxiliary loss on the top `d_in / 2` dead features (and for
//!   `matryoshka_batchtopk` one MSE per inner level), for `jumprelu`
//!   the `step`, `tanh` or `quadratic` sparsity loss (with its warm-up) and optionally the
//!   pre-activation loss on dead features, its threshold (trained directly, as 6.54
//!   does, not as a log; clamped at 0 before each step) reached through the
//!   straight-through estimators with a rectangle kernel of width `jumprelu_bandwidth`;
//! - every step: gradients (written by hand, checked against autograd), gradient-norm
//!   clipping to 1, torch's Adam, SAELens's learning-rate schedule;
//! - dead features (`dead_feature_window`) and firing frequencies
//!   (`feature_sampling_window`, saved as `sparsity.safetensors`);
//! - `normalize_activations`: `none` or `expected_average_only_in` (folded into the
//!   saved weights).
//!
//! [`train`] runs over a harvest's shards ([`HarvestActivations`]) or a model's
//! activations computed on the fly over a corpus ([`ModelActivations`]), writes
//! checkpoints and resumes from the newest one in its output folder, ending with the
//! same weights as an uninterrupted run. [`SaeTrainer`] is the step-by-step interface underneath.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use hooklens_models::sae::train::{SaeTrainer, TrainArchitecture, TrainOptions};
//! # fn main() -> hooklens_core::Result<()> {
//! let opts = TrainOptions {
//!     k: 4,
//!     lr: 1e-3,
//!     train_batch_size_tokens: 64,
//!     training_tokens: 640,
//!     ..TrainOptions::new(TrainArchitecture::TopK, 32)
//! };
//! let mut trainer = SaeTrainer::new(opts, 16, "blocks.0.hook_resid_post")?;
//! let x = Tensor::randn(0f32, 1.0, (64, 16), &Device::Cpu)?;
//! for _ in 0..10 {
//!     trainer.step(&x)?;
//! }
//! let sae = trainer.to_sae()?; // or trainer.save_sae(dir) for a SAELens folder
//! assert_eq!(sae.encode(&x)?.dims(), &[64, 32]);
//! # Ok(()) }
//! ```

mod activations;
mod adam;
mod architecture;
mod batches;
mod checkpoint;
mod export;
mod metrics;
mod model_source;
mod options;
mod report;
mod rng;
mod schedule;
mod sparse_step;
mod step;
mod trainer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use hooklens_core::{Error, Result};

pub use activations::{harvest_shards, HarvestActivations};
pub use batches::ActivationSource;
pub use metrics::StepMetrics;
pub use model_source::{CeLoss, ModelActivations};
pub use options::{JumpReluSparsityLoss, NormalizeActivations, TrainArchitecture, TrainOptions};
pub use report::{metrics_html, METRICS_HTML_FILE};
pub use trainer::{SaeTrainer, SPARSITY_FILE};

/// The metrics file [`train`] appends to in its output folder.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// What [`train`] reports as it goes.
#[derive(Debug)]
pub enum TrainEvent<'a> {
    /// The run continues from a checkpoint holding this many tokens.
    Resumed {
        /// Tokens the checkpoint had trained on.
        tokens: u64,
        /// Its folder.
        checkpoint: &'a Path,
    },
    /// `expected_average_only_in`'s scale was estimated.
    ScalingFactor(f64),
    /// A step finished.
    Step {
        /// Tokens trained on so far.
        tokens: u64,
        /// Tokens the run trains on in all.
        total: u64,
    },
    /// A reporting step's metrics (also appended to [`METRICS_FILE`]).
    Metrics(&'a StepMetrics),
    /// A checkpoint was written.
    Checkpoint(&'a Path),
    /// A model's corpus was read to its end and is read again from its start (said
    /// once per run).
    CorpusRestarted {
        /// The tokens of one pass over the corpus.
        tokens_per_pass: u64,
    },
}

/// What a finished [`train`] did.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// Tokens trained on in all (a resumed run's included).
    pub tokens: u64,
    /// Steps in all.
    pub steps: usize,
    /// The tokens of the checkpoint the run resumed from, if it did.
    pub resumed_from: Option<u64>,
    /// The last reported metrics.
    pub last_metrics: Option<StepMetrics>,
    /// The folder the SAE was written to (the output folder).
    pub sae_dir: PathBuf,
}

/// Trains an SAE (a transcoder where `src` was opened with
/// [`HarvestActivations::open_transcoder`], or made with a `hook_out`) on `src` (a
/// harvest's shards, or a model run over a corpus: [`ModelActivations`]) with `opts` and
/// writes it to `out` as a SAELens folder (`cfg.json`, `sae_weights.safetensors`,
/// `sparsity.safetensors`), with checkpoints in `out/checkpoints/` (every
/// `checkpoint_every_tokens` and at the end), metrics in `out/metrics.jsonl` and their
/// plots in `out/metrics.html` (rewritten at each metrics step). With a model, each
/// metrics step also measures the cross-entropy loss recovered ([`CeLoss`]) when the
/// model is on the CPU.
///
/// When `out` already holds checkpoints, the newest is resumed: the batches it had
/// consumed are read (or, from a model, computed) again, not trained on, so the data
/// order continues exactly, and the run ends with the weights an uninterrupted run
/// would have. Settings that differ from the checkpoint's are an error naming them.
pub fn train<'a>(
    src: impl Into<ActivationSource<'a>>,
    opts: &TrainOptions,
    out: &Path,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<TrainReport> {
    let src: ActivationSource<'a> = src.into();
    opts.validate()?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let ckpt_root = out.join(checkpoint::CHECKPOINTS_DIR);
    checkpoint::remove_leftovers(&ckpt_root)?;
    let (mut trainer, resumed_from) = match checkpoint::newest(&ckpt_root)? {
        Some(dir) => {
            let t = checkpoint::load(&dir, opts, src.hook(), src.d_in(), src.hook_out())?;
            on_event(TrainEvent::Resumed {
                tokens: t.tokens(),
                checkpoint: &dir,
            });
            let tokens = t.tokens();
            (t, Some(tokens))
        }
        None => match src.hook_out() {
            Some((hook_out, d_out)) => (
                SaeTrainer::new_transcoder(opts.clone(), src.d_in(), src.hook(), d_out, hook_out)?,
                None,
            ),
            None => (SaeTrainer::new(opts.clone(), src.d_in(), src.hook())?, None),
        },
    };
    let batch = opts.train_batch_size_tokens;
    if opts.normalize_activations == NormalizeActivations::ExpectedAverageOnlyIn && trainer.scaling_factor().is_none() {
        // A stream of its own, so that estimating does not move the training data.
        let mut est = src.batches(batch, opts.n_batches_in_buffer, opts.seed.wrapping_add(1))?;
        let (mut sum, mut count) = (0f64, 0usize);
        for _ in 0..opts.n_batches_for_norm_estimate {
            let norms: Vec<f32> = est.next_batch()?.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
            sum += norms.iter().map(|&n| n as f64).sum::<f64>();
            count += norms.len();
        }
        let factor = (src.d_in() as f64).sqrt() / (sum / count as f64);
        trainer.set_scaling_factor(factor)?;
        on_event(TrainEvent::ScalingFactor(factor));
    }
    let mut batches = src.batches(batch, opts.n_batches_in_buffer, opts.seed)?;
    for _ in 0..trainer.steps() {
        batches.next_batch()?;
    }
    let mut said_restart = false;
    say_restart(&mut said_restart, &batches, on_event);
    let model = match src {
        ActivationSource::Model(m) if m.model().device().is_cpu() => Some(m),
        _ => None,
    };
    let metrics_path = out.join(METRICS_FILE);
    metrics::truncate_after(&metrics_path, trainer.steps())?;
    let mut last_metrics = None;
    let mut last_saved = resumed_from;
    while trainer.tokens() < opts.training_tokens {
        let before = trainer.tokens();
        let batch = batches.next_batch()?;
        say_restart(&mut said_restart, &batches, on_event);
        let metrics = match src.hook_out() {
            Some((_, d_out)) => {
                let d_in = src.d_in();
                trainer.step_transcoder(
                    &batch.narrow(1, 0, d_in)?.contiguous()?,
                    &batch.narrow(1, d_in, d_out)?.contiguous()?,
                )?
            }
            None => trainer.step(&batch)?,
        };
        on_event(TrainEvent::Step {
            tokens: trainer.tokens(),
            total: opts.training_tokens,
        });
        if let Some(mut m) = metrics {
            if let Some(model) = model {
                m.ce_loss = Some(model.ce_loss(&trainer.to_sae()?)?);
            }
            metrics::append_jsonl(&metrics_path, &m)?;
            report::write_metrics_html(out, src.hook())?;
            on_event(TrainEvent::Metrics(&m));
            last_metrics = Some(m);
        }
        if let Some(every) = opts.checkpoint_every_tokens {
            if trainer.tokens() / every > before / every && trainer.tokens() < opts.training_tokens {
                let dir = checkpoint::save(&trainer, &ckpt_root)?;
                last_saved = Some(trainer.tokens());
                on_event(TrainEvent::Checkpoint(&dir));
            }
        }
    }
    if last_saved != Some(trainer.tokens()) {
        let dir = checkpoint::save(&trainer, &ckpt_root)?;
        on_event(TrainEvent::Checkpoint(&dir));
    }
    trainer.save_sae(out)?;
    report::write_metrics_html(out, src.hook())?;
    Ok(TrainReport {
        tokens: trainer.tokens(),
        steps: trainer.steps(),
        resumed_from,
        last_metrics,
        sae_dir: out.to_path_buf(),
    })
}

/// Says once that a model's corpus is read again from its start.
fn say_restart(said: &mut bool, batches: &batches::Batches<'_>, on_event: &mut dyn FnMut(TrainEvent)) {
    if let (false, Some(tokens_per_pass)) = (*said, batches.tokens_per_pass()) {
        *said = true;
        on_event(TrainEvent::CorpusRestarted { tokens_per_pass });
    }
}

//! `SaeTrainer`: one SAE's parameters, Adam state and firing statistics, stepped as
//! SAELens's `SAETrainer._train_step` steps them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use hooklens_core::{Error, Result};

use super::adam::{adam_update, AdamState, AdamStep};
use super::architecture::{clip_grad_norm, explained_variance, l0, Forward, Grads, Objective, Params};
use super::export::{cfg_json, save_tensors_atomic, write_atomic};
use super::metrics::StepMetrics;
use super::options::{NormalizeActivations, TrainArchitecture, TrainOptions};
use super::rng::Rng;
use super::schedule::{l1_coefficient, lr_factor};
use super::step::loss_and_grads;
use crate::sae::{Sae, SaeConfig, SaeWeights, SAE_CFG_FILE, SAE_WEIGHTS_FILE};

/// SAELens's file of log10 feature firing frequencies.
pub const SPARSITY_FILE: &str = "sparsity.safetensors";

/// An SAE being trained. [`SaeTrainer::step`] takes one batch of activations; the
/// trained SAE is read with [`SaeTrainer::to_sae`] or written with
/// [`SaeTrainer::save_sae`]. [`train`](super::train) drives it over a harvest with
/// checkpoints.
#[derive(Clone, Debug)]
pub struct SaeTrainer {
    pub(crate) opts: TrainOptions,
    pub(crate) d_in: usize,
    pub(crate) hook: String,
    pub(crate) params: Params,
    /// W_enc, b_enc, W_dec, b_dec, and JumpReLU's threshold (as `Params::named`).
    pub(crate) adam: Vec<AdamState>,
    pub(crate) n_training_steps: usize,
    pub(crate) n_training_samples: u64,
    pub(crate) n_forward_passes_since_fired: Vec<f32>,
    pub(crate) act_freq_scores: Vec<f32>,
    pub(crate) n_frac_active_samples: u64,
    /// `expected_average_only_in`'s factor, once estimated.
    pub(crate) scaling_factor: Option<f64>,
    /// BatchTopK's threshold (in the scaled space), a double as SAELens keeps it.
    pub(crate) topk_threshold: f64,
    /// A transcoder's output hook point and width (`None`: an SAE).
    pub(crate) out: Option<(String, usize)>,
}

impl SaeTrainer {
    /// A fresh SAE for `d_in`-wide activations at `hook`, initialised from
    /// `opts.seed` as SAELens initialises it.
    pub fn new(opts: TrainOptions, d_in: usize, hook: &str) -> Result<Self> {
        Self::create(opts, d_in, hook, None)
    }

    /// A fresh transcoder reading `d_in`-wide activations at `hook` and reconstructing
    /// the `d_out`-wide ones at `hook_out` (SAELens's inference `transcoder`, or
    /// `jumprelu_transcoder` for JumpReLU; SAELens 6.54 has no transcoder trainer, so the
    /// training is this trainer's, the loss `sum((out - target)^2, -1).mean()` with the
    /// architecture's own terms). Implemented for `standard` and `jumprelu` (SAELens has
    /// no TopK transcoder format), without input normalisation.
    pub fn new_transcoder(opts: TrainOptions, d_in: usize, hook: &str, d_out: usize, hook_out: &str) -> Result<Self> {
        if !matches!(
            opts.architecture,
            TrainArchitecture::Standard | TrainArchitecture::JumpRelu
        ) {
            return Err(Error::invalid(format!(
                "transcoders are implemented for standard and jumprelu, not {} (SAELens has no {0} transcoder format)",
                opts.architecture.name()
            )));
        }
        if opts.normalize_activations != NormalizeActivations::None {
            return Err(Error::invalid(
                "normalize_activations must be none for a transcoder (scaling its input and target is not implemented)",
            ));
        }
        if d_out == 0 {
            return Err(Error::invalid("d_out must be at least 1"));
        }
        Self::create(opts, d_in, hook, Some((hook_out.to_string(), d_out)))
    }

    fn create(opts: TrainOptions, d_in: usize, hook: &str, out: Option<(String, usize)>) -> Result<Self> {
        opts.validate()?;
        if d_in == 0 {
            return Err(Error::invalid("d_in must be at least 1"));
        }
        let d_out = out.as_ref().map(|(_, d)| *d);
        let weights = d_in
            .max(d_out.unwrap_or(0))
            .checked_mul(opts.d_sae)
            .filter(|&n| n <= super::options::MAX_ELEMENTS);
        let batch = (d_in + d_out.unwrap_or(0))
            .checked_mul(opts.train_batch_size_tokens)
            .and_then(|n| n.checked_mul(opts.n_batches_in_buffer))
            .filter(|&n| n <= super::options::MAX_ELEMENTS);
        if weights.is_none() || batch.is_none() {
            return Err(Error::invalid(format!(
                "d_in {d_in} with d_sae {} and train_batch_size_tokens {} is too large to allocate",
                opts.d_sae, opts.train_batch_size_tokens
            )));
        }
        let mut rng = Rng::new(opts.seed);
        let params = Params::init(d_in, d_out, &opts, &mut rng)?;
        let d_sae = opts.d_sae;
        let adam = params
            .named()
            .iter()
            .map(|(_, t)| AdamState::zeros(t.elem_count()))
            .collect();
        Ok(SaeTrainer {
            opts,
            d_in,
            hook: hook.to_string(),
            params,
            adam,
            n_training_steps: 0,
            n_training_samples: 0,
            n_forward_passes_since_fired: vec![0.0; d_sae],
            act_freq_scores: vec![0.0; d_sae],
            n_frac_active_samples: 0,
            scaling_factor: None,
            topk_threshold: 0.0,
            out,
        })
    }

    /// A trainer starting from given parameters instead of a fresh initialisation (to
    /// continue training a saved SAE, or to start from the same weights as another
    /// implementation): `w_enc` `[d_in, d_sae]`, `b_enc` `[d_sae]`, `w_dec` `[d_sae,
    /// d_in]`, `b_dec` `[d_in]`, read as the training-time parameters (for TopK, not
    /// folded: ranked after scaling by the decoder norms); for JumpReLU `threshold`
    /// `[d_sae]` when given, else `jumprelu_init_threshold` everywhere.
    pub fn from_weights(opts: TrainOptions, weights: &SaeWeights, hook: &str) -> Result<Self> {
        Self::from_weights_to(opts, weights, hook, None)
    }

    /// [`SaeTrainer::from_weights`] for a transcoder to `hook_out`: `w_dec` `[d_sae,
    /// d_out]`, `b_dec` `[d_out]`.
    pub fn transcoder_from_weights(
        opts: TrainOptions,
        weights: &SaeWeights,
        hook: &str,
        hook_out: &str,
    ) -> Result<Self> {
        Self::from_weights_to(opts, weights, hook, Some(hook_out))
    }

    fn from_weights_to(opts: TrainOptions, weights: &SaeWeights, hook: &str, hook_out: Option<&str>) -> Result<Self> {
        let (d_in, d_sae) = weights.w_enc.dims2()?;
        let d_dec = match hook_out {
            Some(_) => weights.w_dec.dims2()?.1,
            None => d_in,
        };
        if d_sae != opts.d_sae {
            return Err(Error::invalid(format!(
                "the weights have {d_sae} features, the options d_sae = {}",
                opts.d_sae
            )));
        }
        let b_enc = weights
            .b_enc
            .clone()
            .ok_or_else(|| Error::invalid("the weights have no b_enc"))?;
        let f32 = |t: &Tensor| t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.contiguous();
        let threshold = match (opts.architecture, &weights.threshold) {
            (TrainArchitecture::JumpRelu, Some(t)) => Some(f32(t)?),
            (TrainArchitecture::JumpRelu, None) => {
                Some(Tensor::full(opts.jumprelu_init_threshold as f32, d_sae, &Device::Cpu)?)
            }
            _ => None,
        };
        let params = Params {
            w_enc: f32(&weights.w_enc)?,
            b_enc: f32(&b_enc)?,
            w_dec: f32(&weights.w_dec)?,
            b_dec: f32(&weights.b_dec)?,
            threshold,
        };
        let mut shapes = vec![
            (params.b_enc.dims(), vec![d_sae]),
            (params.w_dec.dims(), vec![d_sae, d_dec]),
            (params.b_dec.dims(), vec![d_dec]),
        ];
        if let Some(t) = &params.threshold {
            shapes.push((t.dims(), vec![d_sae]));
        }
        for (got, want) in shapes {
            if got != want.as_slice() {
                return Err(Error::invalid(format!(
                    "weights of shape {got:?} where {want:?} was expected (W_enc is [{d_in}, {d_sae}])"
                )));
            }
        }
        let mut t = match hook_out {
            Some(h) => SaeTrainer::new_transcoder(opts, d_in, hook, d_dec, h)?,
            None => SaeTrainer::new(opts, d_in, hook)?,
        };
        t.params = params;
        Ok(t)
    }

    /// The options.
    pub fn options(&self) -> &TrainOptions {
        &self.opts
    }

    /// Steps taken.
    pub fn steps(&self) -> usize {
        self.n_training_steps
    }

    /// Tokens trained on (SAELens's `n_training_samples`).
    pub fn tokens(&self) -> u64 {
        self.n_training_samples
    }

    /// `expected_average_only_in`'s input scale, once set.
    pub fn scaling_factor(&self) -> Option<f64> {
        self.scaling_factor
    }

    /// Sets the input scale (`sqrt(d_in) / mean ||x||`) applied to every batch and
    /// folded into the saved weights.
    pub fn set_scaling_factor(&mut self, factor: f64) -> Result<()> {
        if !(factor > 0.0 && factor.is_finite()) {
            return Err(Error::invalid(format!(
                "the activation scaling factor is {factor}: the activations' mean norm must be positive and finite"
            )));
        }
        self.scaling_factor = Some(factor);
        Ok(())
    }

    /// Which features are dead: not fired for more than `dead_feature_window` steps.
    pub fn dead_features(&self) -> Vec<bool> {
        let window = self.opts.dead_feature_window as f32;
        self.n_forward_passes_since_fired.iter().map(|&n| n > window).collect()
    }

    fn scaled(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        Ok(match self.scaling_factor {
            Some(s) => (x * s)?,
            None => x,
        })
    }

    /// One training step on `batch` `[batch, d_in]`: loss, hand-written gradients,
    /// gradient-norm clipping to 1, Adam. Returns the step's metrics when this step is
    /// one to report (every `metrics_every_steps` steps).
    pub fn step(&mut self, batch: &Tensor) -> Result<Option<StepMetrics>> {
        if self.out.is_some() {
            return Err(Error::invalid(
                "a transcoder trains on pairs: use step_transcoder(input, target)",
            ));
        }
        self.step_on(batch, None)
    }

    /// One training step of a transcoder on `input` `[batch, d_in]` and `target` `[batch,
    /// d_out]`, as [`SaeTrainer::step`].
    pub fn step_transcoder(&mut self, input: &Tensor, target: &Tensor) -> Result<Option<StepMetrics>> {
        let Some((_, d_out)) = self.out else {
            return Err(Error::invalid("step_transcoder on an SAE: use step(batch)"));
        };
        let (b, d) = target.dims2()?;
        if d != d_out || b != input.dim(0)? {
            return Err(Error::invalid(format!(
                "a transcoder's target must be [batch = {}, d_out = {d_out}], got {:?}",
                input.dim(0)?,
                target.dims()
            )));
        }
        self.step_on(input, Some(&target.to_dtype(DType::F32)?))
    }

    /// The transcoder's output hook point and width, if it is one.
    pub fn transcoder_out(&self) -> Option<(&str, usize)> {
        self.out.as_ref().map(|(h, d)| (h.as_str(), *d))
    }

    fn step_on(&mut self, batch: &Tensor, target: Option<&Tensor>) -> Result<Option<StepMetrics>> {
        let (b, d) = batch.dims2()?;
        if d != self.d_in || b == 0 {
            return Err(Error::invalid(format!(
                "a training batch must be [batch > 0, d_in = {}], got {:?}",
                self.d_in,
                batch.dims()
            )));
        }
        self.begin_step()?;
        let x = self.scaled(batch)?;
        let dead = self.dead_features();
        let (l1, l0_coef) = self.sparsity_coefficients();
        let inner_widths = match self.opts.matryoshka_levels().split_last() {
            Some((_, inner)) => inner.to_vec(),
            None => Vec::new(),
        };
        let obj = self.objective(l1, l0_coef, &dead, &inner_widths);
        let (fwd, grads) = loss_and_grads(&self.params, &x, target, &obj)?;
        if self.opts.architecture.is_batch_topk() {
            self.update_topk_threshold(&fwd.feature_acts)?;
        }
        self.record_firing(&fwd.feature_acts, b)?;

        let lr = self.apply_grads(grads)?;
        self.n_training_steps += 1;
        self.n_training_samples += b as u64;

        let report = self.n_training_steps.is_multiple_of(self.opts.metrics_every_steps)
            || self.n_training_samples >= self.opts.training_tokens;
        if !report {
            return Ok(None);
        }
        Ok(Some(self.step_metrics(&fwd, target.unwrap_or(&x), lr, l1, l0_coef)?))
    }

    /// `Ok` once the firing frequencies are reset at a sampling window's start and
    /// JumpReLU's threshold is clamped, as SAELens prepares each step.
    fn begin_step(&mut self) -> Result<()> {
        // SAELens resets the firing frequencies at the start of each sampling window.
        if self.n_training_steps > 0 && self.n_training_steps.is_multiple_of(self.opts.feature_sampling_window) {
            self.act_freq_scores.iter_mut().for_each(|v| *v = 0.0);
            self.n_frac_active_samples = 0;
        }
        if let Some(t) = &mut self.params.threshold {
            // JumpReLUTrainingSAE.training_forward_pass keeps the threshold non-negative
            // by clamping it before each step (not in the graph).
            *t = t.clamp(0f32, f32::INFINITY)?;
        }
        Ok(())
    }

    /// The L1 and L0 sparsity coefficients of this step, after their warm-ups.
    fn sparsity_coefficients(&self) -> (f64, f64) {
        let l1 = l1_coefficient(
            self.n_training_steps,
            self.opts.l1_coefficient,
            self.opts.l1_warm_up_steps,
        );
        let l0_coef = l1_coefficient(
            self.n_training_steps,
            self.opts.l0_coefficient,
            self.opts.l0_warm_up_steps,
        );
        (l1, l0_coef)
    }

    /// The architecture's loss terms for this step: the sparsity coefficients `l1` and
    /// `l0_coefficient` after their warm-ups, the `dead` features `[d_sae]` and
    /// Matryoshka's `inner_widths`.
    fn objective<'a>(
        &'a self,
        l1: f64,
        l0_coefficient: f64,
        dead: &'a [bool],
        inner_widths: &'a [usize],
    ) -> Objective<'a> {
        match self.opts.architecture {
            TrainArchitecture::Standard => Objective::Standard { l1_coefficient: l1 },
            TrainArchitecture::JumpRelu => Objective::JumpRelu {
                l0_coefficient,
                opts: &self.opts,
                dead: Some(dead),
            },
            TrainArchitecture::TopK | TrainArchitecture::BatchTopK | TrainArchitecture::MatryoshkaBatchTopK => {
                Objective::TopK {
                    k: self.opts.k,
                    batch: self.opts.architecture.is_batch_topk(),
                    aux_loss_coefficient: self.opts.aux_loss_coefficient,
                    dead: Some(dead),
                    inner_widths,
                    matryoshka_aux: self.opts.use_matryoshka_aux_loss,
                }
            }
        }
    }

    /// `Ok` once BatchTopK's threshold has moved towards the smallest activation kept in
    /// `feature_acts` `[batch, d_sae]`.
    fn update_topk_threshold(&mut self, feature_acts: &Tensor) -> Result<()> {
        // SAELens's update_topk_threshold: a moving average of the smallest
        // activation kept, computed in f64.
        let acts: Vec<f32> = feature_acts.flatten_all()?.to_vec1()?;
        let min_positive = acts.iter().copied().filter(|&a| a > 0.0).reduce(f32::min);
        if let Some(m) = min_positive {
            let lr = self.opts.topk_threshold_lr;
            self.topk_threshold = (1.0 - lr) * self.topk_threshold + lr * m as f64;
        }
        Ok(())
    }

    /// `Ok` once the dead-feature counters and firing frequencies count the features
    /// that fired in `feature_acts` `[batch, d_sae]`, a batch of `b` tokens.
    fn record_firing(&mut self, feature_acts: &Tensor, b: usize) -> Result<()> {
        let fired: Vec<f32> = feature_acts.ne(0.0)?.to_dtype(DType::F32)?.sum(0)?.to_vec1()?;
        for ((since, freq), f) in self
            .n_forward_passes_since_fired
            .iter_mut()
            .zip(self.act_freq_scores.iter_mut())
            .zip(&fired)
        {
            *since = if *f > 0.0 { 0.0 } else { *since + 1.0 };
            *freq += f;
        }
        self.n_frac_active_samples += b as u64;
        Ok(())
    }

    /// The step's learning rate, once `grads` (clipped to norm 1) have updated the
    /// parameters through Adam.
    fn apply_grads(&mut self, grads: Grads) -> Result<f64> {
        let grads = clip_grad_norm(grads, 1.0)?;
        let total = self.opts.total_training_steps();
        let lr = self.opts.lr
            * lr_factor(
                self.n_training_steps,
                total,
                self.opts.lr_warm_up_steps,
                self.opts.lr_decay_steps,
            );
        let adam = AdamStep {
            lr,
            beta1: self.opts.adam_beta1,
            beta2: self.opts.adam_beta2,
            step: self.n_training_steps as u64 + 1,
        };
        let grad_list: Vec<&Tensor> = grads.named().into_iter().map(|(_, g)| g).collect();
        let params = self.params.tensors_mut();
        if params.len() != grad_list.len() {
            return Err(Error::invalid("the gradients do not match the parameters"));
        }
        for ((param, grad), state) in params.into_iter().zip(grad_list).zip(self.adam.iter_mut()) {
            let shape = param.shape().clone();
            let mut v: Vec<f32> = param.flatten_all()?.to_vec1()?;
            let g: Vec<f32> = grad.flatten_all()?.to_vec1()?;
            adam_update(&mut v, &g, state, adam);
            *param = Tensor::from_vec(v, shape, &Device::Cpu)?;
        }
        Ok(lr)
    }

    /// The metrics of the step just taken, from its forward pass `fwd`, the
    /// reconstruction's `target` `[batch, d_out]`, and its learning rate and sparsity
    /// coefficients.
    fn step_metrics(&self, fwd: &Forward, target: &Tensor, lr: f64, l1: f64, l0_coef: f64) -> Result<StepMetrics> {
        let n_dead = self.dead_features().iter().filter(|&&d| d).count();
        Ok(StepMetrics {
            step: self.n_training_steps,
            tokens: self.n_training_samples,
            mse_loss: fwd.mse_loss as f64,
            aux_loss: fwd.aux_loss as f64,
            explained_variance: explained_variance(target, &fwd.sae_out)?,
            l0: l0(&fwd.feature_acts)?,
            dead_fraction: n_dead as f64 / self.opts.d_sae as f64,
            lr,
            l1_coefficient: (self.opts.architecture == TrainArchitecture::Standard).then_some(l1),
            l0_coefficient: (self.opts.architecture == TrainArchitecture::JumpRelu).then_some(l0_coef),
            ce_loss: None,
        })
    }

    /// Feature activations `[batch, d_sae]` of raw activations `x` `[batch, d_in]`, as
    /// the saved SAE computes them (the input scale and, for TopK, the decoder norms
    /// accounted for).
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let arch = self.opts.architecture;
        let acts = self.params.encode(
            arch,
            self.opts.k,
            self.topk_threshold,
            self.out.is_none(),
            &self.scaled(x)?,
        )?;
        Ok(match self.scaling_factor {
            // Folding the scale into a TopK SAE's decoder norms scales its activations.
            Some(s) if arch.uses_k() => (acts / s)?,
            _ => acts,
        })
    }

    /// Reconstruction `[batch, d_in]` (raw scale) of [`SaeTrainer::encode`]'s output
    /// `[batch, d_sae]`.
    pub fn decode(&self, acts: &Tensor) -> Result<Tensor> {
        let (acts, s) = match (self.opts.architecture, self.scaling_factor) {
            (TrainArchitecture::Standard | TrainArchitecture::JumpRelu, s) => (acts.clone(), s.unwrap_or(1.0)),
            (_, Some(s)) => ((acts * s)?, s),
            (_, None) => (acts.clone(), 1.0),
        };
        let out = self.params.decode(self.opts.architecture, &acts)?;
        Ok(if s == 1.0 { out } else { (out / s)? })
    }

    /// The inference weights: the input scale folded in (SAELens's
    /// `fold_activation_norm_scaling_factor`) and, for TopK, the decoder norms
    /// (`_fold_norm_topk`: unit decoder rows).
    fn inference_weights(&self) -> Result<SaeWeights> {
        let p = &self.params;
        let (mut w_enc, mut w_dec, mut b_dec) = (p.w_enc.clone(), p.w_dec.clone(), p.b_dec.clone());
        let mut b_enc = p.b_enc.clone();
        if let Some(s) = self.scaling_factor {
            w_enc = (w_enc * s)?;
            w_dec = (w_dec / s)?;
            b_dec = (b_dec / s)?;
        }
        if self.opts.architecture.uses_k() {
            let norms = w_dec.sqr()?.sum(1)?.sqrt()?;
            b_enc = (b_enc * &norms)?;
            w_dec = w_dec.broadcast_div(&norms.unsqueeze(1)?)?;
            w_enc = w_enc.broadcast_mul(&norms.unsqueeze(0)?)?;
        }
        // BatchTopK is saved as JumpReLU, its threshold for every feature (SAELens
        // divides it by the input scale when folding that in). JumpReLU's threshold
        // compares pre-activations, which folding the input scale leaves unchanged.
        let threshold = match self.opts.architecture {
            TrainArchitecture::BatchTopK | TrainArchitecture::MatryoshkaBatchTopK => {
                let t = self.topk_threshold / self.scaling_factor.unwrap_or(1.0);
                Some(Tensor::full(t as f32, self.opts.d_sae, &Device::Cpu)?)
            }
            TrainArchitecture::JumpRelu => Some(p.threshold()?.clone()),
            _ => None,
        };
        Ok(SaeWeights {
            w_enc,
            b_enc: Some(b_enc),
            w_dec,
            b_dec,
            threshold,
            gated: None,
            w_skip: None,
        })
    }

    /// SAELens 6's `cfg.json` for the trained SAE.
    pub fn cfg_json(&self) -> serde_json::Value {
        cfg_json(&self.opts, self.d_in, &self.hook, self.transcoder_out())
    }

    /// The trained SAE, as [`Sae::from_dir`] would load it from [`SaeTrainer::save_sae`].
    pub fn to_sae(&self) -> Result<Sae> {
        let cfg = SaeConfig::from_json_str(&self.cfg_json().to_string(), Path::new(SAE_CFG_FILE))?;
        Sae::new(cfg, self.inference_weights()?)
    }

    /// SAELens's `log10(firing frequency + 1e-10)` of each feature over the current
    /// sampling window `[d_sae]`.
    pub fn log_feature_sparsity(&self) -> Result<Tensor> {
        let n = self.n_frac_active_samples.max(1) as f32;
        let v: Vec<f32> = self.act_freq_scores.iter().map(|f| (f / n + 1e-10).log10()).collect();
        Ok(Tensor::new(v, &Device::Cpu)?)
    }

    /// Writes the SAE as a SAELens folder in `dir` (created if missing): `cfg.json`,
    /// `sae_weights.safetensors` and `sparsity.safetensors`, each atomically.
    pub fn save_sae(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let w = self.inference_weights()?;
        let mut tensors: HashMap<String, Tensor> = [
            ("W_enc".to_string(), w.w_enc),
            ("W_dec".to_string(), w.w_dec),
            ("b_dec".to_string(), w.b_dec),
        ]
        .into();
        if let Some(b) = w.b_enc {
            tensors.insert("b_enc".into(), b);
        }
        if let Some(t) = w.threshold {
            tensors.insert("threshold".into(), t);
        }
        save_tensors_atomic(&dir.join(SAE_WEIGHTS_FILE), &tensors)?;
        let sparsity: HashMap<String, Tensor> = [("sparsity".to_string(), self.log_feature_sparsity()?)].into();
        save_tensors_atomic(&dir.join(SPARSITY_FILE), &sparsity)?;
        let cfg = serde_json::to_string_pretty(&self.cfg_json()).map_err(|e| Error::invalid(e.to_string()))?;
        write_atomic(&dir.join(SAE_CFG_FILE), cfg.as_bytes())
    }
}

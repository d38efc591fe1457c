//! `TrainOptions`: the settings of one SAE training run, named as SAELens's
//! `LanguageModelSAERunnerConfig` (and its SAE configs) name them, with SAELens 6.54's
//! defaults.

use hooklens_core::{Error, Result};
use serde_json::{json, Value};

/// The SAE architectures the trainer implements (SAELens's `architecture` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainArchitecture {
    /// `relu(W_enc (x - b_dec) + b_enc)` with an L1 penalty on the feature activations
    /// weighted by the decoder rows' norms (SAELens's `StandardTrainingSAE`).
    Standard,
    /// The `k` largest pre-activations through relu, ranked after scaling by the decoder
    /// rows' norms, with the auxiliary loss on dead features (SAELens's
    /// `TopKTrainingSAE`, `rescale_acts_by_decoder_norm = true`).
    TopK,
    /// `k * batch` activations kept across the whole batch (so `k` per token on average)
    /// while training, with a threshold tracked as a moving average of the smallest kept
    /// activation; saved as a JumpReLU SAE with that threshold (SAELens's
    /// `BatchTopKTrainingSAE`).
    BatchTopK,
    /// `pre * (pre > threshold)` with a learnt per-feature threshold, trained through
    /// straight-through estimators with a rectangle kernel of width `jumprelu_bandwidth`,
    /// with an L0 sparsity loss (`step` or `tanh`) and optionally the pre-activation loss
    /// on dead features (SAELens 6.54's `JumpReLUTrainingSAE`).
    JumpRelu,
    /// BatchTopK with nested reconstruction losses: besides the whole SAE's, one per
    /// prefix of the features ending at each of `matryoshka_widths` but the last (SAELens
    /// 6.54's `MatryoshkaBatchTopKTrainingSAE`); saved as JumpReLU.
    MatryoshkaBatchTopK,
}

impl TrainArchitecture {
    /// The architectures the trainer implements.
    pub const ALL: [TrainArchitecture; 5] = [
        TrainArchitecture::Standard,
        TrainArchitecture::TopK,
        TrainArchitecture::BatchTopK,
        TrainArchitecture::JumpRelu,
        TrainArchitecture::MatryoshkaBatchTopK,
    ];

    /// SAELens's name for it (`standard`, `topk`, `batchtopk`, `jumprelu`).
    pub fn name(self) -> &'static str {
        match self {
            TrainArchitecture::Standard => "standard",
            TrainArchitecture::TopK => "topk",
            TrainArchitecture::BatchTopK => "batchtopk",
            TrainArchitecture::JumpRelu => "jumprelu",
            TrainArchitecture::MatryoshkaBatchTopK => "matryoshka_batchtopk",
        }
    }

    /// Whether `k` is one of its settings (TopK, BatchTopK, Matryoshka BatchTopK).
    pub fn uses_k(self) -> bool {
        matches!(
            self,
            TrainArchitecture::TopK | TrainArchitecture::BatchTopK | TrainArchitecture::MatryoshkaBatchTopK
        )
    }

    /// Whether it keeps the `k * batch` largest activations of a batch and is saved as
    /// JumpReLU with the learnt threshold (BatchTopK, Matryoshka BatchTopK).
    pub fn is_batch_topk(self) -> bool {
        matches!(
            self,
            TrainArchitecture::BatchTopK | TrainArchitecture::MatryoshkaBatchTopK
        )
    }

    /// Parses a SAELens architecture name; the ones SAELens has that the trainer does not
    /// implement yet are an error naming what is implemented.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "standard" => Ok(TrainArchitecture::Standard),
            "topk" => Ok(TrainArchitecture::TopK),
            "batchtopk" => Ok(TrainArchitecture::BatchTopK),
            "jumprelu" => Ok(TrainArchitecture::JumpRelu),
            "matryoshka-batchtopk" | "matryoshka_batchtopk" => Ok(TrainArchitecture::MatryoshkaBatchTopK),
            "gated" => Err(Error::invalid(format!(
                "architecture `{name}`: training is not implemented yet \
                 (implemented: standard, topk, batchtopk, jumprelu, matryoshka_batchtopk)"
            ))),
            other => Err(Error::invalid(format!(
                "unknown architecture `{other}` (implemented: standard, topk, batchtopk, jumprelu, matryoshka_batchtopk)"
            ))),
        }
    }
}

/// JumpReLU's sparsity loss (SAELens's `jumprelu_sparsity_loss_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JumpReluSparsityLoss {
    /// `l0_coefficient * mean_b sum_f step(pre - threshold)`, the step's gradient
    /// reaching the threshold through the straight-through estimator (DeepMind's L0;
    /// SAELens's default, `step`).
    Step,
    /// `l0_coefficient * mean_b sum_f tanh(jumprelu_tanh_scale * acts * ||W_dec[f]||)`
    /// (Anthropic's, `tanh`).
    Tanh,
    /// `l0_coefficient * mean_b 2 / target_l0 * (sum_f step(pre - threshold) -
    /// target_l0)^2`, a penalty around a target L0 through the same estimator (Gemma
    /// Scope 2's, `quadratic`; needs `target_l0`).
    Quadratic,
}

impl JumpReluSparsityLoss {
    /// SAELens's name for it.
    pub fn name(self) -> &'static str {
        match self {
            JumpReluSparsityLoss::Step => "step",
            JumpReluSparsityLoss::Tanh => "tanh",
            JumpReluSparsityLoss::Quadratic => "quadratic",
        }
    }

    /// Parses SAELens's name (`step`, `tanh`, `quadratic`).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "step" => Ok(JumpReluSparsityLoss::Step),
            "tanh" => Ok(JumpReluSparsityLoss::Tanh),
            "quadratic" => Ok(JumpReluSparsityLoss::Quadratic),
            other => Err(Error::invalid(format!(
                "jumprelu_sparsity_loss_mode `{other}` is not one of step, tanh, quadratic"
            ))),
        }
    }
}

/// How activations are scaled before training (SAELens's `normalize_activations`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormalizeActivations {
    /// As read (`none`).
    None,
    /// Multiplied by one constant, `sqrt(d_in) / mean ||x||` estimated over
    /// `n_batches_for_norm_estimate` batches, so that the mean norm is `sqrt(d_in)`; the
    /// constant is folded into the weights at the end, so the saved SAE reads raw
    /// activations (`expected_average_only_in`).
    ExpectedAverageOnlyIn,
}

impl NormalizeActivations {
    /// SAELens's name for it.
    pub fn name(self) -> &'static str {
        match self {
            NormalizeActivations::None => "none",
            NormalizeActivations::ExpectedAverageOnlyIn => "expected_average_only_in",
        }
    }

    /// Parses SAELens's name; the normalisations not implemented are an error.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "none" => Ok(NormalizeActivations::None),
            "expected_average_only_in" => Ok(NormalizeActivations::ExpectedAverageOnlyIn),
            other => Err(Error::invalid(format!(
                "normalize_activations `{other}` is not implemented (implemented: none, expected_average_only_in)"
            ))),
        }
    }
}

/// The most elements one tensor of the trainer may have (a batch's feature activations,
/// a weight matrix): 2^36, 256 GiB of f32, beyond any machine the trainer runs on.
pub(crate) const MAX_ELEMENTS: usize = 1 << 36;

/// The settings of a training run. Field names are SAELens's; defaults (from
/// [`TrainOptions::new`]) are SAELens 6.54's.
///
/// ```
/// use hooklens_models::sae::train::{TrainArchitecture, TrainOptions};
/// let opts = TrainOptions {
///     k: 32,
///     lr: 1e-3,
///     training_tokens: 1_000_000,
///     ..TrainOptions::new(TrainArchitecture::TopK, 4096)
/// };
/// assert!(opts.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// The architecture.
    pub architecture: TrainArchitecture,
    /// Number of features.
    pub d_sae: usize,
    /// TopK: features firing per token; BatchTopK: on average (SAELens's default 100;
    /// ignored by `standard`).
    pub k: usize,
    /// BatchTopK: the weight of each step's smallest kept activation in the threshold's
    /// moving average (0.01).
    pub topk_threshold_lr: f64,
    /// Adam's learning rate (3e-4).
    pub lr: f64,
    /// Adam's beta1 (0.9).
    pub adam_beta1: f64,
    /// Adam's beta2 (0.999).
    pub adam_beta2: f64,
    /// Steps of linear learning-rate warm-up from `lr / lr_warm_up_steps` (0).
    pub lr_warm_up_steps: usize,
    /// Final steps of linear decay to 0 (0).
    pub lr_decay_steps: usize,
    /// Standard: the L1 penalty's coefficient (1.0).
    pub l1_coefficient: f64,
    /// Standard: steps over which the L1 coefficient rises linearly from 0 (0).
    pub l1_warm_up_steps: usize,
    /// Standard: the p of the sparsity penalty's p-norm (1.0; only 1 is implemented).
    pub lp_norm: f64,
    /// TopK: the auxiliary (dead-feature) loss's coefficient (1.0).
    pub aux_loss_coefficient: f64,
    /// Matryoshka BatchTopK: the nested levels' widths, strictly increasing (SAELens's
    /// `matryoshka_widths`, which must not be empty); `d_sae` is added as the last level
    /// when it is not there, as SAELens adds it.
    pub matryoshka_widths: Vec<usize>,
    /// Matryoshka BatchTopK: one auxiliary loss per level, its dead features
    /// reconstructing the residual of the reconstruction up to it, instead of one over
    /// the whole SAE (false).
    pub use_matryoshka_aux_loss: bool,
    /// JumpReLU: every feature's threshold at initialisation (0.01).
    pub jumprelu_init_threshold: f64,
    /// JumpReLU: the width of the straight-through estimators' rectangle kernel (0.05).
    pub jumprelu_bandwidth: f64,
    /// JumpReLU: the sparsity loss (`step`).
    pub jumprelu_sparsity_loss_mode: JumpReluSparsityLoss,
    /// JumpReLU: the target L0 of the `quadratic` sparsity loss (required by it, in (0,
    /// d_sae]; ignored by the others).
    pub target_l0: Option<f64>,
    /// JumpReLU: the scale inside the `tanh` sparsity loss (4.0).
    pub jumprelu_tanh_scale: f64,
    /// JumpReLU: whether the straight-through estimators also pass their gradient to the
    /// pre-activations (and so the encoder), not only to the threshold (false, DeepMind's;
    /// true is Anthropic's).
    pub jumprelu_ste_to_input: bool,
    /// JumpReLU: the sparsity loss's coefficient (1.0).
    pub l0_coefficient: f64,
    /// JumpReLU: steps over which the sparsity coefficient rises linearly from 0 (0).
    pub l0_warm_up_steps: usize,
    /// JumpReLU: the coefficient of Anthropic's pre-activation loss on dead features,
    /// `mean_b sum_f relu(threshold - pre) * dead * ||W_dec[f]||` (`None`: off).
    pub pre_act_loss_coefficient: Option<f64>,
    /// The decoder rows' norm at initialisation (0.1, Anthropic's heuristic); `None`
    /// keeps kaiming-uniform rows.
    pub decoder_init_norm: Option<f64>,
    /// Tokens to train on (2,000,000); the run takes `training_tokens /
    /// train_batch_size_tokens` steps, rounded up.
    pub training_tokens: u64,
    /// Tokens per step (4096).
    pub train_batch_size_tokens: usize,
    /// Input scaling.
    pub normalize_activations: NormalizeActivations,
    /// Batches read to estimate the norm for `expected_average_only_in` (1000).
    pub n_batches_for_norm_estimate: usize,
    /// A feature that has not fired for more than this many steps is dead (1000).
    pub dead_feature_window: usize,
    /// Steps over which feature firing frequencies are accumulated before being reset
    /// (2000); the saved `sparsity.safetensors` holds the last window's.
    pub feature_sampling_window: usize,
    /// The shuffling buffer holds this many batches; half of it is served after each
    /// shuffle (20).
    pub n_batches_in_buffer: usize,
    /// Seeds the initialisation and the shuffling (42).
    pub seed: u64,
    /// Writes a checkpoint every this many tokens (`None`: at the end only).
    pub checkpoint_every_tokens: Option<u64>,
    /// Computes and reports metrics every this many steps (100).
    pub metrics_every_steps: usize,
}

impl TrainOptions {
    /// SAELens's defaults for `architecture` with `d_sae` features.
    pub fn new(architecture: TrainArchitecture, d_sae: usize) -> Self {
        TrainOptions {
            architecture,
            d_sae,
            k: 100,
            topk_threshold_lr: 0.01,
            lr: 3e-4,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            lr_warm_up_steps: 0,
            lr_decay_steps: 0,
            l1_coefficient: 1.0,
            l1_warm_up_steps: 0,
            lp_norm: 1.0,
            aux_loss_coefficient: 1.0,
            matryoshka_widths: Vec::new(),
            use_matryoshka_aux_loss: false,
            jumprelu_init_threshold: 0.01,
            jumprelu_bandwidth: 0.05,
            jumprelu_sparsity_loss_mode: JumpReluSparsityLoss::Step,
            jumprelu_tanh_scale: 4.0,
            target_l0: None,
            jumprelu_ste_to_input: false,
            l0_coefficient: 1.0,
            l0_warm_up_steps: 0,
            pre_act_loss_coefficient: None,
            decoder_init_norm: Some(0.1),
            training_tokens: 2_000_000,
            train_batch_size_tokens: 4096,
            normalize_activations: NormalizeActivations::None,
            n_batches_for_norm_estimate: 1000,
            dead_feature_window: 1000,
            feature_sampling_window: 2000,
            n_batches_in_buffer: 20,
            seed: 42,
            checkpoint_every_tokens: None,
            metrics_every_steps: 100,
        }
    }

    /// SAELens's `total_training_steps`: `training_tokens / train_batch_size_tokens`,
    /// what the learning-rate schedule spans.
    pub fn total_training_steps(&self) -> usize {
        (self.training_tokens / self.train_batch_size_tokens.max(1) as u64) as usize
    }

    /// Matryoshka BatchTopK's levels, `d_sae` last (added when missing, as SAELens adds
    /// it); empty for the other architectures.
    pub fn matryoshka_levels(&self) -> Vec<usize> {
        if self.architecture != TrainArchitecture::MatryoshkaBatchTopK {
            return Vec::new();
        }
        let mut w = self.matryoshka_widths.clone();
        if w.last() != Some(&self.d_sae) {
            w.push(self.d_sae);
        }
        w
    }

    /// Checks the settings, naming the first bad one; run before any work.
    pub fn validate(&self) -> Result<()> {
        self.validate_architecture()?;
        self.validate_optimizer()?;
        self.validate_losses()?;
        self.validate_sizes()?;
        self.validate_schedule()
    }

    /// `Ok` when `d_sae`, `k` and the Matryoshka widths fit the architecture; else the
    /// first that does not.
    fn validate_architecture(&self) -> Result<()> {
        if self.d_sae == 0 {
            return bad("d_sae must be at least 1".into());
        }
        if self.architecture.uses_k() && (self.k == 0 || self.k > self.d_sae) {
            return bad(format!(
                "k is {}: it must be between 1 and d_sae ({})",
                self.k, self.d_sae
            ));
        }
        if self.architecture == TrainArchitecture::MatryoshkaBatchTopK {
            let w = &self.matryoshka_widths;
            if w.is_empty() {
                return bad("matryoshka_widths must not be empty".into());
            }
            if w.contains(&0) || w.windows(2).any(|p| p[0] >= p[1]) || w.last().is_some_and(|&l| l > self.d_sae) {
                return bad(format!(
                    "matryoshka_widths are {w:?}: they must be positive, strictly increasing and at most d_sae ({})",
                    self.d_sae
                ));
            }
        } else if !self.matryoshka_widths.is_empty() || self.use_matryoshka_aux_loss {
            return bad(format!(
                "matryoshka_widths and use_matryoshka_aux_loss are settings of matryoshka_batchtopk, not of {}",
                self.architecture.name()
            ));
        }
        Ok(())
    }

    /// `Ok` when Adam's learning rate and betas are usable; else the first that is not.
    fn validate_optimizer(&self) -> Result<()> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("lr is {}: it must be a positive number", self.lr));
        }
        for (name, b) in [("adam_beta1", self.adam_beta1), ("adam_beta2", self.adam_beta2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(format!("{name} is {b}: it must be in [0, 1)"));
            }
        }
        Ok(())
    }

    /// `Ok` when the loss terms' coefficients, JumpReLU's and BatchTopK's settings and
    /// the decoder's initial norm are in range; else the first that is not.
    fn validate_losses(&self) -> Result<()> {
        if !(self.l1_coefficient >= 0.0 && self.l1_coefficient.is_finite()) {
            return bad(format!(
                "l1_coefficient is {}: it must be a non-negative number",
                self.l1_coefficient
            ));
        }
        if !(self.aux_loss_coefficient >= 0.0 && self.aux_loss_coefficient.is_finite()) {
            return bad(format!(
                "aux_loss_coefficient is {}: it must be a non-negative number",
                self.aux_loss_coefficient
            ));
        }
        let non_negative = [
            ("l0_coefficient", self.l0_coefficient),
            ("jumprelu_init_threshold", self.jumprelu_init_threshold),
            ("jumprelu_tanh_scale", self.jumprelu_tanh_scale),
            ("pre_act_loss_coefficient", self.pre_act_loss_coefficient.unwrap_or(0.0)),
        ];
        for (name, v) in non_negative {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(format!("{name} is {v}: it must be a non-negative number"));
            }
        }
        if self.architecture == TrainArchitecture::JumpRelu
            && self.jumprelu_sparsity_loss_mode == JumpReluSparsityLoss::Quadratic
        {
            match self.target_l0 {
                None => return bad("target_l0 must be set for the quadratic sparsity loss".into()),
                Some(t) if !(t > 0.0 && t <= self.d_sae as f64) => {
                    return bad(format!("target_l0 is {t}: it must be in (0, d_sae = {}]", self.d_sae))
                }
                Some(_) => {}
            }
        }
        if !(self.jumprelu_bandwidth > 0.0 && self.jumprelu_bandwidth.is_finite()) {
            return bad(format!(
                "jumprelu_bandwidth is {}: it must be a positive number",
                self.jumprelu_bandwidth
            ));
        }
        if self.lp_norm != 1.0 {
            return bad(format!("lp_norm is {}: only 1 is implemented", self.lp_norm));
        }
        if !(0.0..=1.0).contains(&self.topk_threshold_lr) {
            return bad(format!(
                "topk_threshold_lr is {}: it must be in [0, 1]",
                self.topk_threshold_lr
            ));
        }
        if let Some(n) = self.decoder_init_norm {
            if !(n > 0.0 && n.is_finite()) {
                return bad(format!("decoder_init_norm is {n}: it must be a positive number"));
            }
        }
        Ok(())
    }

    /// `Ok` when the batch and run sizes are positive and a step's tensors can be
    /// allocated; else the first size that is not.
    fn validate_sizes(&self) -> Result<()> {
        if self.train_batch_size_tokens == 0 {
            return bad("train_batch_size_tokens must be at least 1".into());
        }
        if self.training_tokens == 0 {
            return bad("training_tokens must be at least 1".into());
        }
        // The batch's activations and the shuffling buffer are allocated whole.
        let per_step = self
            .train_batch_size_tokens
            .checked_mul(self.d_sae.max(self.n_batches_in_buffer))
            .filter(|&n| n <= MAX_ELEMENTS);
        if per_step.is_none() {
            return bad(format!(
                "train_batch_size_tokens ({}) is too large for d_sae {} and n_batches_in_buffer {}",
                self.train_batch_size_tokens, self.d_sae, self.n_batches_in_buffer
            ));
        }
        Ok(())
    }

    /// `Ok` when the learning-rate schedule fits the run and the windows, buffer, norm
    /// estimate and checkpoint interval are usable; else the first that is not.
    fn validate_schedule(&self) -> Result<()> {
        let steps = self.total_training_steps();
        if self.lr_warm_up_steps.saturating_add(self.lr_decay_steps) > steps {
            return bad(format!(
                "lr_warm_up_steps ({}) + lr_decay_steps ({}) exceed the run's {steps} steps",
                self.lr_warm_up_steps, self.lr_decay_steps
            ));
        }
        if self.feature_sampling_window == 0 || self.metrics_every_steps == 0 || self.n_batches_in_buffer < 2 {
            return bad(
                "feature_sampling_window and metrics_every_steps must be at least 1, n_batches_in_buffer at least 2"
                    .into(),
            );
        }
        if self.normalize_activations == NormalizeActivations::ExpectedAverageOnlyIn
            && self.n_batches_for_norm_estimate == 0
        {
            return bad("n_batches_for_norm_estimate must be at least 1".into());
        }
        if self.checkpoint_every_tokens == Some(0) {
            return bad("checkpoint_every_tokens must be at least 1".into());
        }
        Ok(())
    }

    /// The settings that decide the trained weights, as JSON (SAELens's names): a
    /// checkpoint stores them and a resumed run must match them. How often checkpoints
    /// and metrics are written is left out: changing it does not change the weights.
    pub fn to_json(&self) -> Value {
        let jumprelu = self.architecture == TrainArchitecture::JumpRelu;
        json!({
            "architecture": self.architecture.name(),
            "d_sae": self.d_sae,
            "k": self.architecture.uses_k().then_some(self.k),
            "topk_threshold_lr": self.architecture.is_batch_topk().then_some(self.topk_threshold_lr),
            "matryoshka_widths": (self.architecture == TrainArchitecture::MatryoshkaBatchTopK).then(|| self.matryoshka_levels()),
            "use_matryoshka_aux_loss": (self.architecture == TrainArchitecture::MatryoshkaBatchTopK).then_some(self.use_matryoshka_aux_loss),
            "lr": self.lr,
            "adam_beta1": self.adam_beta1,
            "adam_beta2": self.adam_beta2,
            "lr_warm_up_steps": self.lr_warm_up_steps,
            "lr_decay_steps": self.lr_decay_steps,
            "l1_coefficient": self.l1_coefficient,
            "l1_warm_up_steps": self.l1_warm_up_steps,
            "lp_norm": self.lp_norm,
            "aux_loss_coefficient": self.aux_loss_coefficient,
            "decoder_init_norm": self.decoder_init_norm,
            // JumpReLU's settings only for it, so other checkpoints read as before.
            "jumprelu_init_threshold": jumprelu.then_some(self.jumprelu_init_threshold),
            "jumprelu_bandwidth": jumprelu.then_some(self.jumprelu_bandwidth),
            "jumprelu_sparsity_loss_mode": jumprelu.then_some(self.jumprelu_sparsity_loss_mode.name()),
            "jumprelu_tanh_scale": jumprelu.then_some(self.jumprelu_tanh_scale),
            "target_l0": jumprelu.then_some(self.target_l0).flatten(),
            "jumprelu_ste_to_input": jumprelu.then_some(self.jumprelu_ste_to_input),
            "l0_coefficient": jumprelu.then_some(self.l0_coefficient),
            "l0_warm_up_steps": jumprelu.then_some(self.l0_warm_up_steps),
            "pre_act_loss_coefficient": jumprelu.then_some(self.pre_act_loss_coefficient).flatten(),
            "training_tokens": self.training_tokens,
            "train_batch_size_tokens": self.train_batch_size_tokens,
            "normalize_activations": self.normalize_activations.name(),
            "n_batches_for_norm_estimate": self.n_batches_for_norm_estimate,
            "dead_feature_window": self.dead_feature_window,
            "feature_sampling_window": self.feature_sampling_window,
            "n_batches_in_buffer": self.n_batches_in_buffer,
            "seed": self.seed,
        })
    }
}

/// The error for a bad setting, described by `m`.
fn bad(m: String) -> Result<()> {
    Err(Error::invalid(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_named() {
        let topk = TrainOptions {
            k: 4,
            ..TrainOptions::new(TrainArchitecture::TopK, 16)
        };
        let cases = [
            (TrainOptions { k: 17, ..topk.clone() }, "k is 17"),
            (TrainOptions { k: 0, ..topk.clone() }, "k is 0"),
            (
                TrainOptions {
                    lr: 0.0,
                    ..topk.clone()
                },
                "lr is 0",
            ),
            (
                TrainOptions {
                    lr: -1.0,
                    ..topk.clone()
                },
                "lr is -1",
            ),
            (
                TrainOptions {
                    d_sae: 0,
                    ..topk.clone()
                },
                "d_sae must be",
            ),
        ];
        for (opts, want) in cases {
            let err = opts.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        let m = TrainOptions {
            matryoshka_widths: vec![8, 8],
            k: 4,
            ..TrainOptions::new(TrainArchitecture::MatryoshkaBatchTopK, 16)
        };
        assert!(m.validate().unwrap_err().to_string().contains("strictly increasing"));
        let m = TrainOptions {
            matryoshka_widths: vec![4, 8],
            ..m
        };
        assert_eq!(m.matryoshka_levels(), vec![4, 8, 16]);
        assert!(TrainArchitecture::from_name("gated")
            .unwrap_err()
            .to_string()
            .contains("not implemented"));
    }
}

//! What a run reports every `metrics_every_steps` steps, printed by the caller and
//! appended to `metrics.jsonl` in the output folder, with SAELens's metric names.

use std::io::Write;
use std::path::Path;

use hooklens_core::{Error, Result};
use serde_json::json;

use super::model_source::CeLoss;

/// One step's metrics (SAELens's `metrics/...` and `losses/...` of its training log).
#[derive(Clone, Debug, PartialEq)]
pub struct StepMetrics {
    /// Steps finished, this one included.
    pub step: usize,
    /// Tokens trained on so far (`n_training_samples`).
    pub tokens: u64,
    /// `sum((sae_out - x)^2, -1).mean()` on this step's batch (in the scaled space).
    pub mse_loss: f64,
    /// Standard: the weighted L1 term (`l1_loss`); TopK: the auxiliary loss
    /// (`auxiliary_reconstruction_loss`), plus for Matryoshka the inner levels' MSEs
    /// (`inner_mse_loss_W`); JumpReLU: the sparsity loss (`l0_loss`) plus
    /// the pre-activation loss (`pre_act_loss`) if on.
    pub aux_loss: f64,
    /// `1 - mean ||sae_out - x||^2 / mean ||x - mean(x)||^2` on this batch.
    pub explained_variance: f64,
    /// Mean number of features firing per token.
    pub l0: f64,
    /// Share of features that have not fired for more than `dead_feature_window` steps.
    pub dead_fraction: f64,
    /// The learning rate of this step.
    pub lr: f64,
    /// Standard: the L1 coefficient of this step (after its warm-up).
    pub l1_coefficient: Option<f64>,
    /// JumpReLU: the sparsity (`l0`) coefficient of this step (after its warm-up).
    pub l0_coefficient: Option<f64>,
    /// Training from a model: the cross-entropy losses with the SAE as trained so far
    /// spliced in, without it and with its point zeroed, on the evaluation sequences.
    pub ce_loss: Option<CeLoss>,
}

impl StepMetrics {
    /// One JSON line (the cross-entropy fields, SAELens's `ce_loss_score`,
    /// `ce_loss_with_sae`, `ce_loss_without_sae` and `ce_loss_with_ablation`, only when
    /// measured).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = json!({
            "step": self.step,
            "n_training_samples": self.tokens,
            "mse_loss": self.mse_loss,
            "aux_loss": self.aux_loss,
            "explained_variance": self.explained_variance,
            "l0": self.l0,
            "dead_fraction": self.dead_fraction,
            "lr": self.lr,
            "l1_coefficient": self.l1_coefficient,
            "l0_coefficient": self.l0_coefficient,
        });
        if let Some(ce) = &self.ce_loss {
            v["ce_loss_score"] = json!(ce.score());
            v["ce_loss_with_sae"] = json!(ce.with_sae);
            v["ce_loss_without_sae"] = json!(ce.clean);
            v["ce_loss_with_ablation"] = json!(ce.zero_ablation);
        }
        v
    }
}

impl std::fmt::Display for StepMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step {} ({} tokens): mse {:.5}, aux {:.5}, explained variance {:.4}, L0 {:.2}, dead {:.1}%, lr {:.3e}",
            self.step,
            self.tokens,
            self.mse_loss,
            self.aux_loss,
            self.explained_variance,
            self.l0,
            100.0 * self.dead_fraction,
            self.lr
        )?;
        if let Some(ce) = &self.ce_loss {
            write!(
                f,
                ", CE loss recovered {:.4} (CE {:.4} with the SAE, {:.4} clean, {:.4} zero-ablated)",
                ce.score(),
                ce.with_sae,
                ce.clean,
                ce.zero_ablation
            )?;
        }
        Ok(())
    }
}

/// Drops the lines of `path` after step `steps` (those of a run killed after its last
/// checkpoint, which the resumed run writes again), so that a resumed run's file is the
/// uninterrupted run's.
pub(crate) fn truncate_after(path: &Path, steps: usize) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= steps as u64)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if kept.len() != text.len() {
        super::export::write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}

/// Appends `m` as one line to `path`.
pub(crate) fn append_jsonl(path: &Path, m: &StepMetrics) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(f, "{}", m.to_json()).map_err(|e| Error::io(path, e))
}

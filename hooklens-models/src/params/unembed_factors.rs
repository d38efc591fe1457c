//! The factors that turn the unembedding's base matrix into `W_U`, part of a model's
//! weights (why the unembedding is held so: `model/unembed.rs`):
//!
//! `W_U[d, v] = gain[d] * (base[d, v] + base_shift[v]) - input_center[v] - vocab_center[d]`
//!
//! where `base` is the tied `W_E` transposed, `gain` the folded LayerNorm gain,
//! `base_shift` the mean that centring `W_E` in place took out of each of its rows,
//! `input_center` the mean over `d_model` that `fold_ln` removes, and `vocab_center`
//! the mean over the vocabulary that `center_unembed` removes.

use candle_core::{DType, Tensor};

/// The factors that turn the base matrix into `W_U` (see the module's documentation);
/// each is absent where the step that makes it was not applied.
#[derive(Clone, Debug, Default)]
pub(crate) struct UnembedFactors {
    /// `[d_model]`: the folded `ln_final` gain.
    pub(crate) gain: Option<Tensor>,
    /// `[d_vocab]`: added back to every column of the base.
    pub(crate) base_shift: Option<Tensor>,
    /// `[d_vocab]`: the per-token mean over `d_model` removed by `fold_ln`.
    pub(crate) input_center: Option<Tensor>,
    /// `[d_model]`: the per-row mean over the vocabulary removed by `center_unembed`.
    pub(crate) vocab_center: Option<Tensor>,
}

impl UnembedFactors {
    /// Whether `W_U` is the base itself.
    pub(crate) fn is_identity(&self) -> bool {
        self.gain.is_none() && self.base_shift.is_none() && self.input_center.is_none() && self.vocab_center.is_none()
    }

    /// Every factor converted to `dtype`.
    pub(crate) fn to_dtype(&self, dtype: DType) -> candle_core::Result<Self> {
        let c = |t: &Option<Tensor>| t.as_ref().map(|t| t.to_dtype(dtype)).transpose();
        Ok(UnembedFactors {
            gain: c(&self.gain)?,
            base_shift: c(&self.base_shift)?,
            input_center: c(&self.input_center)?,
            vocab_center: c(&self.vocab_center)?,
        })
    }

    /// `W_U`'s columns for the base's columns `cols` `[d_model, n]` (`ids` `[n]` u32
    /// their token ids) -> `[d_model, n]`.
    pub(crate) fn apply(&self, cols: &Tensor, ids: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let per_token = |t: &Tensor| -> candle_core::Result<Tensor> {
            match ids {
                Some(ids) => t.index_select(ids, 0)?.unsqueeze(0),
                None => t.unsqueeze(0),
            }
        };
        let mut w = cols.clone();
        if let Some(m) = &self.base_shift {
            w = w.broadcast_add(&per_token(m)?)?;
        }
        if let Some(g) = &self.gain {
            w = w.broadcast_mul(&g.unsqueeze(1)?)?;
        }
        if let Some(k) = &self.input_center {
            w = w.broadcast_sub(&per_token(k)?)?;
        }
        if let Some(c) = &self.vocab_center {
            w = w.broadcast_sub(&c.unsqueeze(1)?)?;
        }
        Ok(w)
    }
}

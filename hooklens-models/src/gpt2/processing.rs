//! Weight processing as TransformerLens's `load_and_process_state_dict` does it.
//!
//! Each step leaves the model's log-probabilities unchanged (up to float rounding):
//! - `fold_ln`: LayerNorm gains and biases are folded into the weights that read the
//!   normalised stream (`W_Q/K/V`, `W_in`, `W_U`), whose input dimension is then
//!   centred; the LayerNorms become `LNPre` (no parameters).
//! - `center_writing_weights`: every weight writing to the residual stream (`W_E`,
//!   `W_pos`, `W_O`, `b_O`, `W_out`, `b_out`) gets its `d_model` mean removed, since
//!   every reader goes through a LayerNorm that removes it anyway.
//! - `center_unembed`: `W_U` and `b_U` lose their mean over the vocabulary (softmax is
//!   shift-invariant).
//! - `fold_value_biases`: `b_V` is moved into `b_O` (patterns sum to 1).
//!
//! In the model's layout `W_Q/K/V` are the columns of `[d_model, 3*d_model]`, so a
//! mean over TransformerLens's `d_model` axis is a mean over rows here.

use candle_core::{Tensor, D};
use hooklens_core::Result;
use serde::{Deserialize, Serialize};

use super::checkpoint::Gpt2Weights;
use super::config::{Gpt2Config, NormalizationType};

/// Which processing steps to apply at load time (TransformerLens's `from_pretrained`
/// arguments). The default applies all four, as `from_pretrained` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessingOptions {
    /// Fold LayerNorm parameters into the following weights (LNs become LNPre).
    pub fold_ln: bool,
    /// Remove the `d_model` mean of the weights that write to the residual stream.
    pub center_writing_weights: bool,
    /// Remove the vocabulary mean of `W_U` and `b_U`.
    pub center_unembed: bool,
    /// Fold `b_V` into `b_O`.
    pub fold_value_biases: bool,
}

impl Default for ProcessingOptions {
    fn default() -> Self {
        ProcessingOptions {
            fold_ln: true,
            center_writing_weights: true,
            center_unembed: true,
            fold_value_biases: true,
        }
    }
}

impl ProcessingOptions {
    /// No processing: TransformerLens's `from_pretrained_no_processing`.
    pub fn none() -> Self {
        ProcessingOptions {
            fold_ln: false,
            center_writing_weights: false,
            center_unembed: false,
            fold_value_biases: false,
        }
    }
}

/// `bias + v @ w` for `v` `[in]`, `w` `[in, out]`, `bias` `[out]`.
fn add_vec_mat(bias: &Tensor, v: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    bias + v.unsqueeze(0)?.matmul(w)?.squeeze(0)?
}

/// `w * g[:, None]`, then the mean over rows removed: a weight `[in, out]` reading from
/// a LayerNorm with gain `g` `[in]`.
fn fold_gain_and_center(w: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
    let w = w.broadcast_mul(&g.unsqueeze(1)?)?;
    w.broadcast_sub(&w.mean_keepdim(0)?)
}

/// Removes the mean over the last axis.
fn center_last(w: &Tensor) -> candle_core::Result<Tensor> {
    w.broadcast_sub(&w.mean_keepdim(D::Minus1)?)
}

/// Applies `opts` to `w` in place, in TransformerLens's order, and updates `cfg`
/// (`normalization_type` becomes `LNPre` after `fold_ln`).
pub(crate) fn process(w: &mut Gpt2Weights, cfg: &mut Gpt2Config, opts: &ProcessingOptions) -> Result<()> {
    if opts.fold_ln && cfg.normalization_type == NormalizationType::LN {
        for l in &mut w.layers {
            if let Some((g, b)) = l.ln1.take() {
                // Biases first: they are folded through the unscaled weights.
                l.b_qkv = add_vec_mat(&l.b_qkv, &b, &l.w_qkv)?;
                l.w_qkv = fold_gain_and_center(&l.w_qkv, &g)?;
            }
            if let Some((g, b)) = l.ln2.take() {
                l.b_in = add_vec_mat(&l.b_in, &b, &l.w_in)?;
                l.w_in = fold_gain_and_center(&l.w_in, &g)?;
            }
        }
        if let Some((g, b)) = w.ln_final.take() {
            w.b_u = add_vec_mat(&w.b_u, &b, &w.w_u)?;
            w.w_u = fold_gain_and_center(&w.w_u, &g)?;
        }
        cfg.normalization_type = NormalizationType::LNPre;
    }
    if opts.center_writing_weights {
        w.w_e = center_last(&w.w_e)?;
        w.w_pos = center_last(&w.w_pos)?;
        for l in &mut w.layers {
            l.w_o = center_last(&l.w_o)?;
            l.b_o = center_last(&l.b_o)?;
            l.w_out = center_last(&l.w_out)?;
            l.b_out = center_last(&l.b_out)?;
        }
    }
    if opts.center_unembed {
        w.w_u = center_last(&w.w_u)?;
        w.b_u = center_last(&w.b_u)?;
    }
    if opts.fold_value_biases {
        let d = cfg.d_model;
        for l in &mut w.layers {
            let b_v = l.b_qkv.narrow(0, 2 * d, d)?;
            l.b_o = add_vec_mat(&l.b_o, &b_v, &l.w_o)?;
            l.b_qkv = Tensor::cat(&[&l.b_qkv.narrow(0, 0, 2 * d)?, &b_v.zeros_like()?], 0)?;
        }
    }
    Ok(())
}

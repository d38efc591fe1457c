//! The step of a TopK, BatchTopK or standard SAE computed from its active features
//! only: the same loss and gradients as the dense step in `architecture.rs`, with every
//! product but the encoder's taken over the non-zero feature activations
//! ([`SparseRows`]).
//!
//! A TopK SAE with `k = 64` of 4096 features leaves 1.6% of the activations non-zero;
//! the dense step spends five of its six `batch x d_sae x d_in` products multiplying
//! zeros. SAELens's training step is dense (`TopKTrainingSAE` with its default
//! `use_sparse_activations = False`).

use candle_core::{Device, Tensor};
use hooklens_core::Result;
use rayon::prelude::*;

use super::architecture::{b_dec_grad, batch_top_k_entries, top_k_entries, Forward, Grads, StepInputs};
use crate::ops::sparse_rows::SparseRows;

/// A standard SAE's step goes sparse when at most this fraction of its activations is
/// non-zero: above it the dense products (at several times the sparse ones' rate per
/// FLOP) are faster. Early in training about half the features fire on each token.
pub(crate) const STANDARD_SPARSE_BELOW: f64 = 0.1;

/// `t`'s values, row-major.
fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// `out = acts @ w_dec + b_dec` `[batch, d_out]` and `err = out - target`.
fn decode(acts: &SparseRows, w_dec: &[f32], b_dec: &[f32], target: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let d_out = b_dec.len();
    let mut out = acts.matmul(w_dec, d_out);
    out.par_chunks_mut(d_out).for_each(|row| {
        for (o, b) in row.iter_mut().zip(b_dec) {
            *o += b;
        }
    });
    let err = out.par_iter().zip(target).map(|(o, t)| o - t).collect();
    (out, err)
}

/// `sum(v^2)`, summed in f64.
fn sum_sq(v: &[f32]) -> f64 {
    v.par_iter().map(|&e| (e as f64) * (e as f64)).sum()
}

/// `v * s`.
fn scaled(v: &[f32], s: f64) -> Vec<f32> {
    let s = s as f32;
    v.par_iter().map(|&e| e * s).collect()
}

/// The entries of `acts` divided by their feature's decoder norm.
fn divided_by_norms(acts: &SparseRows, norms: &[f32]) -> SparseRows {
    let v = acts
        .columns()
        .iter()
        .zip(acts.values())
        .map(|(&c, &a)| a / norms[c as usize])
        .collect();
    acts.with_values(v)
}

/// The TopK (`per_batch`: BatchTopK) step, as the dense `architecture::matryoshka`
/// computes it without its levels: the MSE of the reconstruction from the top `k`
/// norm-scaled pre-activations, and the auxiliary loss of the top `d_in / 2` dead ones
/// on the residual.
pub(crate) fn topk(
    s: &StepInputs,
    k: usize,
    per_batch: bool,
    aux_loss_coefficient: f64,
    dead: Option<&[bool]>,
) -> Result<(Forward, Grads)> {
    let (batch, d_sae) = s.h0.dims2()?;
    let inv_b = 1.0 / batch as f64;
    let half = s.p.b_dec.dim(0)? / 2;
    let norms = values(s.norms)?;
    let hp = values(&s.h0.broadcast_mul(s.norms)?)?;
    let acts = if per_batch {
        batch_top_k_entries(&hp, batch, d_sae, k * batch)
    } else {
        top_k_entries(&hp, batch, d_sae, k, true, None)
    };
    // (acts / norms) is h0 at the kept entries: the decoder norms cancel, and so does
    // their gradient, which is why none flows into W_dec through them.
    let u = divided_by_norms(&acts, &norms);
    let (w_dec, b_dec) = (values(&s.p.w_dec)?, values(&s.p.b_dec)?);
    let d_out = b_dec.len();
    let (out, err) = decode(&u, &w_dec, &b_dec, &values(s.target)?);
    let mse = (sum_sq(&err) * inv_b) as f32;
    let g_out = scaled(&err, 2.0 * inv_b);
    let mut g_pre = u.with_values(u.sampled_dots(&g_out, &w_dec, d_out));
    let mut w_dec_grad = u.t_matmul(&g_out, d_out);
    let mut aux = 0f32;
    if let Some(dead) = dead {
        let n_dead = dead.iter().filter(|&&b| b).count();
        if n_dead > 0 && half > 0 {
            let scale = (n_dead as f64 / half as f64).min(1.0);
            let chosen = top_k_entries(&hp, batch, d_sae, half.min(n_dead), false, Some(dead));
            let v = divided_by_norms(&chosen, &norms);
            // The residual is detached in SAELens: x - sae_out, here `-err`.
            let mut diff = v.matmul(&w_dec, d_out);
            diff.par_iter_mut().zip(&err).for_each(|(d, e)| *d += e);
            let c = aux_loss_coefficient * scale;
            aux = (c * sum_sq(&diff) * inv_b) as f32;
            let g_rec = scaled(&diff, 2.0 * c * inv_b);
            for (w, g) in w_dec_grad.iter_mut().zip(v.t_matmul(&g_rec, d_out)) {
                *w += g;
            }
            g_pre = g_pre.concat_rows(&v.with_values(v.sampled_dots(&g_rec, &w_dec, d_out)));
        }
    }
    let grads = encoder_grads(s, &g_pre, &g_out, w_dec_grad)?;
    Ok((
        Forward {
            feature_acts: Tensor::from_vec(acts.to_dense(), (batch, d_sae), &Device::Cpu)?,
            sae_out: Tensor::from_vec(out, (batch, d_out), &Device::Cpu)?,
            mse_loss: mse,
            aux_loss: aux,
        },
        grads,
    ))
}

/// The standard SAE's step (`mse + l1 * mean_b sum_f acts[b, f] * ||W_dec[f]||`), or
/// `None` when more than [`STANDARD_SPARSE_BELOW`] of the activations are non-zero.
pub(crate) fn standard(s: &StepInputs, l1_coefficient: f64) -> Result<Option<(Forward, Grads)>> {
    let (batch, d_sae) = s.h0.dims2()?;
    let acts = SparseRows::positive_entries(&values(s.h0)?, batch, d_sae);
    if acts.nnz() as f64 > STANDARD_SPARSE_BELOW * (batch * d_sae) as f64 {
        return Ok(None);
    }
    let inv_b = 1.0 / batch as f64;
    let norms = values(s.norms)?;
    let (w_dec, b_dec) = (values(&s.p.w_dec)?, values(&s.p.b_dec)?);
    let d_out = b_dec.len();
    let (out, err) = decode(&acts, &w_dec, &b_dec, &values(s.target)?);
    let mse = (sum_sq(&err) * inv_b) as f32;
    let l1_sum: f64 = acts
        .columns()
        .iter()
        .zip(acts.values())
        .map(|(&c, &a)| a as f64 * norms[c as usize] as f64)
        .sum();
    let l1 = (l1_coefficient * l1_sum * inv_b) as f32;
    let g_out = scaled(&err, 2.0 * inv_b);
    let c = l1_coefficient * inv_b;
    // d(l1)/d(acts) = c * ||W_dec[f]|| where the relu lets a gradient through (the
    // entries), and d(l1)/d(||W_dec[f]||) = c * sum_b acts.
    let dots = acts.sampled_dots(&g_out, &w_dec, d_out);
    let g_acts = dots
        .iter()
        .zip(acts.columns())
        .map(|(&g, &f)| g + norms[f as usize] * c as f32)
        .collect();
    let g_pre = acts.with_values(g_acts);
    let mut w_dec_grad = acts.t_matmul(&g_out, d_out);
    let sums = acts.column_sums();
    w_dec_grad.par_chunks_mut(d_out).enumerate().for_each(|(f, row)| {
        let g_norm = sums[f] * c as f32;
        let scale = g_norm / norms[f];
        for (g, w) in row.iter_mut().zip(&w_dec[f * d_out..(f + 1) * d_out]) {
            *g += w * scale;
        }
    });
    let grads = encoder_grads(s, &g_pre, &g_out, w_dec_grad)?;
    Ok(Some((
        Forward {
            feature_acts: Tensor::from_vec(acts.to_dense(), (batch, d_sae), &Device::Cpu)?,
            sae_out: Tensor::from_vec(out, (batch, d_out), &Device::Cpu)?,
            mse_loss: mse,
            aux_loss: l1,
        },
        grads,
    )))
}

/// The gradients upstream of the pre-activations' gradient `g_pre` (sparse, `[batch,
/// d_sae]`), given the output's gradient `g_out` `[batch, d_out]` and `W_dec`'s:
/// `b_dec`'s as [`b_dec_grad`] gives it.
fn encoder_grads(s: &StepInputs, g_pre: &SparseRows, g_out: &[f32], w_dec_grad: Vec<f32>) -> Result<Grads> {
    let (batch, d_in) = s.xc.dims2()?;
    let (d_sae, d_out) = s.p.w_dec.dims2()?;
    let w_enc_t = g_pre.t_matmul(&values(s.xc)?, d_in);
    let w_enc = Tensor::from_vec(w_enc_t, (d_sae, d_in), &Device::Cpu)?
        .t()?
        .contiguous()?;
    let b_enc = Tensor::from_vec(g_pre.column_sums(), d_sae, &Device::Cpu)?;
    let out_sums = Tensor::from_slice(g_out, (batch, d_out), &Device::Cpu)?.sum(0)?;
    let b_dec = b_dec_grad(s.p, out_sums, &b_enc, s.apply_b_dec)?;
    Ok(Grads {
        w_enc,
        b_enc,
        w_dec: Tensor::from_vec(w_dec_grad, (d_sae, d_out), &Device::Cpu)?,
        b_dec,
        threshold: None,
    })
}

//! The trained SAEs' forward passes, losses and hand-written backward passes, as
//! SAELens's `StandardTrainingSAE`, `TopKTrainingSAE`, `BatchTopKTrainingSAE` and
//! `JumpReLUTrainingSAE` compute them.
//!
//! The gradients are written out rather than taken from candle's autograd: they are a
//! few matmuls, and building no graph saves its memory and bookkeeping on every step.
//! A test checks them against autograd.

use candle_core::{DType, Device, Tensor, D};
use hooklens_core::Result;
use rayon::prelude::*;

use super::options::{JumpReluSparsityLoss, TrainArchitecture, TrainOptions};
use super::rng::Rng;
use crate::ops::sparse_rows::SparseRows;

/// The parameters being trained (SAELens's names and `x @ W` layout), f32.
#[derive(Clone, Debug)]
pub(crate) struct Params {
    /// `[d_in, d_sae]`.
    pub(crate) w_enc: Tensor,
    /// `[d_sae]`.
    pub(crate) b_enc: Tensor,
    /// `[d_sae, d_in]`.
    pub(crate) w_dec: Tensor,
    /// `[d_in]`.
    pub(crate) b_dec: Tensor,
    /// JumpReLU: the thresholds `[d_sae]` (SAELens 6.54 trains the threshold itself,
    /// not its log); `None` for the other architectures.
    pub(crate) threshold: Option<Tensor>,
}

/// The gradients of the loss: one per parameter, shaped as it is.
pub(crate) type Grads = Params;

/// What one step's forward computed.
#[derive(Clone, Debug)]
pub(crate) struct Forward {
    /// `[batch, d_sae]`, what the saved SAE's `encode` returns.
    pub(crate) feature_acts: Tensor,
    /// `[batch, d_in]`.
    pub(crate) sae_out: Tensor,
    /// `sum((sae_out - x)^2, -1).mean()`.
    pub(crate) mse_loss: f32,
    /// Standard: the weighted L1 term; TopK: the auxiliary reconstruction loss.
    pub(crate) aux_loss: f32,
}

/// The per-step inputs of the loss besides the batch.
#[derive(Clone, Debug)]
pub(crate) enum Objective<'a> {
    /// The L1 coefficient this step (after its warm-up).
    Standard { l1_coefficient: f64 },
    /// JumpReLU: the sparsity coefficient this step (after its warm-up) and the dead
    /// features (`true` = dead), for the pre-activation loss.
    JumpRelu {
        l0_coefficient: f64,
        opts: &'a TrainOptions,
        dead: Option<&'a [bool]>,
    },
    /// `k`, the aux-k coefficient and the dead features (`true` = dead), if any;
    /// `batch`: BatchTopK (the `k * batch` largest over the batch, not `k` per token).
    ///
    /// `inner_widths`: Matryoshka's levels but the last (each adds the MSE of the
    /// reconstruction from the features before it); empty otherwise.
    /// `matryoshka_aux`: SAELens's `use_matryoshka_aux_loss`, one auxiliary loss per level.
    TopK {
        k: usize,
        batch: bool,
        aux_loss_coefficient: f64,
        dead: Option<&'a [bool]>,
        inner_widths: &'a [usize],
        matryoshka_aux: bool,
    },
}

impl Params {
    /// SAELens's `TrainingSAE.initialize_weights`: `W_dec` kaiming-uniform (bound
    /// `sqrt(6 / d_in)`, torch's default gain for `[d_sae, d_in]`), its rows rescaled to
    /// `decoder_init_norm`, `W_enc = W_dec^T`, biases zero. Seeded, so a seed gives the
    /// same weights everywhere (not torch's numbers: its generator differs).
    ///
    /// A transcoder (`d_out` given: `W_dec` is `[d_sae, d_out]`, `b_dec` `[d_out]`) cannot
    /// take `W_enc = W_dec^T`: its `W_enc` `[d_in, d_sae]` is kaiming-uniform on its own
    /// (bound `sqrt(6 / d_sae)`, as SAELens's `Transcoder.initialize_weights`), then each
    /// feature's column rescaled to `decoder_init_norm` as the transpose would have it.
    pub(crate) fn init(d_in: usize, d_out: Option<usize>, opts: &TrainOptions, rng: &mut Rng) -> Result<Self> {
        let d_sae = opts.d_sae;
        let d_dec = d_out.unwrap_or(d_in);
        let mut w = kaiming_uniform(d_sae, d_dec, rng);
        if let Some(norm) = opts.decoder_init_norm {
            rescale_rows(&mut w, d_dec, norm);
        }
        let w_dec = Tensor::from_vec(w, (d_sae, d_dec), &Device::Cpu)?;
        let w_enc = match d_out {
            None => w_dec.t()?.contiguous()?,
            Some(_) => {
                // Rows of W_enc^T [d_sae, d_in] are W_enc's columns.
                let mut w = kaiming_uniform(d_sae, d_in, rng);
                let bound = (6.0 / d_sae as f64).sqrt() / (6.0 / d_in as f64).sqrt();
                w.iter_mut().for_each(|v| *v *= bound as f32);
                if let Some(norm) = opts.decoder_init_norm {
                    rescale_rows(&mut w, d_in, norm);
                }
                Tensor::from_vec(w, (d_sae, d_in), &Device::Cpu)?.t()?.contiguous()?
            }
        };
        let threshold = match opts.architecture {
            TrainArchitecture::JumpRelu => {
                Some(Tensor::full(opts.jumprelu_init_threshold as f32, d_sae, &Device::Cpu)?)
            }
            _ => None,
        };
        Ok(Params {
            w_enc,
            b_enc: Tensor::zeros(d_sae, DType::F32, &Device::Cpu)?,
            w_dec,
            b_dec: Tensor::zeros(d_dec, DType::F32, &Device::Cpu)?,
            threshold,
        })
    }

    /// The decoder rows' L2 norms `[d_sae]`.
    pub(crate) fn dec_norms(&self) -> Result<Tensor> {
        Ok(self.w_dec.sqr()?.sum(1)?.sqrt()?)
    }

    /// Feature activations of `x` `[batch, d_in]`: `[batch, d_sae]`. BatchTopK encodes as
    /// the JumpReLU it is saved as: pre-activations above `threshold`; JumpReLU as its
    /// saved SAE does, `relu(pre) * (pre > threshold[f])`.
    /// A transcoder (`apply_b_dec` false) reads `x` as it is, not `x - b_dec`.
    pub(crate) fn encode(
        &self,
        arch: TrainArchitecture,
        k: usize,
        threshold: f64,
        apply_b_dec: bool,
        x: &Tensor,
    ) -> Result<Tensor> {
        let xc = if apply_b_dec {
            x.broadcast_sub(&self.b_dec)?
        } else {
            x.clone()
        };
        let h0 = crate::ops::matmul(&xc, &self.w_enc)?.broadcast_add(&self.b_enc)?;
        match arch {
            TrainArchitecture::Standard => Ok(h0.relu()?),
            TrainArchitecture::TopK => {
                let hp = h0.broadcast_mul(&self.dec_norms()?)?;
                let mask = top_k_mask(&hp, k, true, None)?;
                Ok((hp * mask)?)
            }
            TrainArchitecture::BatchTopK | TrainArchitecture::MatryoshkaBatchTopK => {
                let hp = h0.broadcast_mul(&self.dec_norms()?)?;
                let open = hp.gt(threshold)?.to_dtype(DType::F32)?;
                Ok((hp.relu()? * open)?)
            }
            TrainArchitecture::JumpRelu => {
                let t = self.threshold()?;
                let open = h0.broadcast_gt(t)?.to_dtype(DType::F32)?;
                Ok((h0.relu()? * open)?)
            }
        }
    }

    /// JumpReLU's thresholds `[d_sae]`; an error for the other architectures.
    pub(crate) fn threshold(&self) -> Result<&Tensor> {
        self.threshold
            .as_ref()
            .ok_or_else(|| hooklens_core::Error::invalid("a JumpReLU SAE being trained has no threshold"))
    }

    /// The parameters in SAELens's order with their names: `W_enc`, `b_enc`, `W_dec`,
    /// `b_dec`, then JumpReLU's `threshold`.
    pub(crate) fn named(&self) -> Vec<(&'static str, &Tensor)> {
        let mut v = vec![
            ("W_enc", &self.w_enc),
            ("b_enc", &self.b_enc),
            ("W_dec", &self.w_dec),
            ("b_dec", &self.b_dec),
        ];
        if let Some(t) = &self.threshold {
            v.push(("threshold", t));
        }
        v
    }

    /// [`Params::named`]'s tensors, mutable, in the same order.
    pub(crate) fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        let mut v = vec![&mut self.w_enc, &mut self.b_enc, &mut self.w_dec, &mut self.b_dec];
        if let Some(t) = &mut self.threshold {
            v.push(t);
        }
        v
    }

    /// Reconstruction `[batch, d_in]` of feature activations `[batch, d_sae]`.
    pub(crate) fn decode(&self, arch: TrainArchitecture, acts: &Tensor) -> Result<Tensor> {
        let acts = match arch {
            TrainArchitecture::Standard | TrainArchitecture::JumpRelu => acts.clone(),
            // TopK ranks and returns activations scaled by the decoder norms
            // (`rescale_acts_by_decoder_norm`); the decoder divides them back out.
            TrainArchitecture::TopK | TrainArchitecture::BatchTopK | TrainArchitecture::MatryoshkaBatchTopK => {
                acts.broadcast_div(&self.dec_norms()?)?
            }
        };
        Ok(mm(&acts, &self.w_dec)?.broadcast_add(&self.b_dec)?)
    }
}

/// `rows * cols` values uniform in `±sqrt(6 / cols)` (torch's `kaiming_uniform_` of a
/// `[rows, cols]` tensor), row after row.
fn kaiming_uniform(rows: usize, cols: usize, rng: &mut Rng) -> Vec<f32> {
    let bound = (6.0 / cols as f64).sqrt();
    (0..rows * cols)
        .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
        .collect()
}

/// Rescales each `cols`-long row of `w` to L2 norm `norm` (zero rows stay zero).
fn rescale_rows(w: &mut [f32], cols: usize, norm: f64) {
    for row in w.chunks_mut(cols) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            for v in row.iter_mut() {
                *v = *v / n * norm as f32;
            }
        }
    }
}

/// Each row's `k` largest entries of `values` `[rows, cols]` (only among the `allowed`
/// columns when given; only positive ones with `positive_only`, which is `relu` after
/// the top-k), holding their values, each row's in column order.
pub(crate) fn top_k_entries(
    values: &[f32],
    rows: usize,
    cols: usize,
    k: usize,
    positive_only: bool,
    allowed: Option<&[bool]>,
) -> SparseRows {
    let candidates: Vec<u32> = (0..cols as u32)
        .filter(|&c| allowed.is_none_or(|a| a[c as usize]))
        .collect();
    let k = k.min(candidates.len());
    let per_row = values
        .par_chunks(cols.max(1))
        .take(rows)
        .map(|row| {
            if k == 0 {
                return Vec::new();
            }
            let mut idx = candidates.clone();
            // Largest first; total_cmp so a NaN cannot make the selection panic.
            idx.select_nth_unstable_by(k - 1, |&a, &b| row[b as usize].total_cmp(&row[a as usize]));
            let mut kept: Vec<(u32, f32)> = idx[..k]
                .iter()
                .map(|&c| (c, row[c as usize]))
                .filter(|&(_, v)| !positive_only || v > 0.0)
                .collect();
            kept.sort_unstable_by_key(|e| e.0);
            kept
        })
        .collect();
    SparseRows::from_row_entries(per_row, cols)
}

/// The `n` largest positive entries of all of `values` `[rows, cols]` (BatchTopK's
/// `topk(relu(x).flatten(), n)`), holding their values.
pub(crate) fn batch_top_k_entries(values: &[f32], rows: usize, cols: usize, n: usize) -> SparseRows {
    let n = n.min(values.len());
    let mut per_row = vec![Vec::new(); rows];
    if n > 0 {
        let mut idx: Vec<usize> = (0..values.len()).collect();
        idx.select_nth_unstable_by(n - 1, |&a, &b| values[b].total_cmp(&values[a]));
        let mut kept: Vec<usize> = idx[..n].iter().copied().filter(|&i| values[i] > 0.0).collect();
        kept.sort_unstable();
        for i in kept {
            per_row[i / cols].push(((i % cols) as u32, values[i]));
        }
    }
    SparseRows::from_row_entries(per_row, cols)
}

/// A `[rows, cols]` 0/1 mask of each row's `k` largest entries of `values` (only among
/// `allowed` columns when given; only positive ones with `positive_only`, which is
/// `relu` after the top-k).
pub(crate) fn top_k_mask(values: &Tensor, k: usize, positive_only: bool, allowed: Option<&[bool]>) -> Result<Tensor> {
    let (rows, cols) = values.dims2()?;
    let v: Vec<f32> = values.flatten_all()?.to_vec1()?;
    ones_at(&top_k_entries(&v, rows, cols, k, positive_only, allowed))
}

/// A `[rows, cols]` 0/1 mask of the `n` largest positive entries of all of `values`
/// (BatchTopK's `topk(relu(x).flatten(), n)`).
pub(crate) fn batch_top_k_mask(values: &Tensor, n: usize) -> Result<Tensor> {
    let (rows, cols) = values.dims2()?;
    let v: Vec<f32> = values.flatten_all()?.to_vec1()?;
    ones_at(&batch_top_k_entries(&v, rows, cols, n))
}

/// 1 at the entries of `s`, 0 elsewhere.
fn ones_at(s: &SparseRows) -> Result<Tensor> {
    let (rows, cols) = s.dims();
    Ok(Tensor::from_vec(
        s.with_values(vec![1.0; s.nnz()]).to_dense(),
        (rows, cols),
        &Device::Cpu,
    )?)
}

/// The inputs of a step besides the objective's settings.
pub(crate) struct StepInputs<'a> {
    pub(crate) p: &'a Params,
    /// What the SAE reconstructs, `[batch, d_out]`.
    pub(crate) target: &'a Tensor,
    /// The encoder's input (`x - b_dec`, or `x` for a transcoder), `[batch, d_in]`.
    pub(crate) xc: &'a Tensor,
    /// The pre-activations `[batch, d_sae]`.
    pub(crate) h0: &'a Tensor,
    /// The decoder rows' norms `[d_sae]`.
    pub(crate) norms: &'a Tensor,
    /// Whether the encoder read `x - b_dec` (an SAE) rather than `x` (a transcoder).
    pub(crate) apply_b_dec: bool,
}

/// `sum(t^2) / batch`.
fn mean_sq(t: &Tensor, inv_b: f64) -> Result<f32> {
    Ok((t.sqr()?.sum_all()?.to_scalar::<f32>()? as f64 * inv_b) as f32)
}

/// The standard SAE's dense step: `mse + l1 * mean_b sum_f acts[b, f] * ||W_dec[f]||`.
pub(crate) fn standard(s: &StepInputs, l1_coefficient: f64) -> Result<(Forward, Grads)> {
    let (p, norms) = (s.p, s.norms);
    let inv_b = 1.0 / s.h0.dim(0)? as f64;
    let acts = s.h0.relu()?;
    let out = mm(&acts, &p.w_dec)?.broadcast_add(&p.b_dec)?;
    let err = (&out - s.target)?;
    let mse = mean_sq(&err, inv_b)?;
    let l1_sum = acts.broadcast_mul(norms)?.sum_all()?.to_scalar::<f32>()? as f64;
    let l1 = (l1_coefficient * l1_sum * inv_b) as f32;
    let g_out = (&err * (2.0 * inv_b))?;
    let c = l1_coefficient * inv_b;
    // d(l1)/d(acts) = c * ||W_dec[f]|| (acts >= 0, so |acts| is acts where the
    // relu lets a gradient through), and d(l1)/d(||W_dec[f]||) = c * sum_b acts.
    let g_acts = mm(&g_out, &p.w_dec.t()?)?.broadcast_add(&(norms * c)?)?;
    let g_pre = (g_acts * s.h0.gt(0.0)?.to_dtype(DType::F32)?)?;
    let g_norm = (acts.sum(0)? * c)?;
    let w_dec_grad = (mm(&acts.t()?, &g_out)? + p.w_dec.broadcast_mul(&(g_norm / norms)?.unsqueeze(1)?)?)?;
    let grads = encoder_grads(s, &g_pre, &g_out, w_dec_grad)?;
    let fwd = Forward {
        feature_acts: acts,
        sae_out: out,
        mse_loss: mse,
        aux_loss: l1,
    };
    Ok((fwd, grads))
}

/// Matryoshka's nested levels: the widths before the last (each adds the MSE of the
/// reconstruction from the features before it) and whether the auxiliary loss is
/// taken per level (SAELens's `use_matryoshka_aux_loss`).
pub(crate) struct Matryoshka<'a> {
    pub(crate) inner_widths: &'a [usize],
    pub(crate) aux_per_level: bool,
}

/// What the inner levels add to a Matryoshka step.
struct LevelTerms {
    /// The sum of the levels' MSEs.
    loss: f32,
    /// Their gradient with respect to `W_dec` `[d_sae, d_out]`, to the pre-activations
    /// `[batch, d_sae]` (at the kept features) and to `b_dec` (per token, `[batch, d_out]`).
    w_dec: Tensor,
    h0: Tensor,
    b_dec: Tensor,
    /// Each level's `decoded - x` `[batch, d_out]`.
    errors: Vec<Tensor>,
}

/// The TopK (`per_batch`: BatchTopK) step with Matryoshka levels: the MSE of the whole
/// reconstruction, one per inner level, and the auxiliary loss of the dead features.
pub(crate) fn matryoshka(
    s: &StepInputs,
    k: usize,
    per_batch: bool,
    aux_loss_coefficient: f64,
    dead: Option<&[bool]>,
    levels: &Matryoshka,
) -> Result<(Forward, Grads)> {
    let (p, norms) = (s.p, s.norms);
    let batch = s.h0.dim(0)?;
    let inv_b = 1.0 / batch as f64;
    let hp = s.h0.broadcast_mul(norms)?;
    let mask = if per_batch {
        batch_top_k_mask(&hp, k * batch)?
    } else {
        top_k_mask(&hp, k, true, None)?
    };
    let acts = (&hp * &mask)?;
    // (acts / norms) is h0 where the mask is set: the decoder norms cancel, and so does
    // their gradient, which is why none flows into W_dec through them.
    let u = acts.broadcast_div(norms)?;
    let out = mm(&u, &p.w_dec)?.broadcast_add(&p.b_dec)?;
    let err = (&out - s.target)?;
    let mse = mean_sq(&err, inv_b)?;
    let g_out = (&err * (2.0 * inv_b))?;
    let inner = inner_levels(s, &u, &mask, levels.inner_widths, inv_b)?;
    let mut g_h0 = ((mm(&g_out, &p.w_dec.t()?)? * &mask)? + inner.h0)?;
    let mut w_dec_grad = (mm(&u.t()?, &g_out)? + inner.w_dec)?;
    let mut aux = inner.loss;
    for (dead, level_err) in dead_groups(dead, levels, &inner.errors, &err, p.w_dec.dim(0)?) {
        if let Some((loss, w_grad, h_grad)) = dead_aux(s, &hp, &dead, level_err, aux_loss_coefficient, inv_b)? {
            aux += loss;
            w_dec_grad = (w_dec_grad + w_grad)?;
            g_h0 = (g_h0 + h_grad)?;
        }
    }
    let grads = encoder_grads(s, &g_h0, &(g_out + inner.b_dec)?, w_dec_grad)?;
    let fwd = Forward {
        feature_acts: acts,
        sae_out: out,
        mse_loss: mse,
        aux_loss: aux,
    };
    Ok((fwd, grads))
}

/// Each inner level's reconstruction from the features before its width, `sum((b_dec +
/// u[:, :w] @ W_dec[:w] - x)^2, -1).mean()`, built up block by block as SAELens's
/// `_iterable_decode` does; block j (features between two widths) takes the gradients
/// of every level from j on. `u` `[batch, d_sae]` (the kept pre-activations), `mask`
/// its 0/1 pattern.
fn inner_levels(s: &StepInputs, u: &Tensor, mask: &Tensor, inner_widths: &[usize], inv_b: f64) -> Result<LevelTerms> {
    let p = s.p;
    let (batch, d_sae) = u.dims2()?;
    let d_out = p.w_dec.dim(1)?;
    let mut bounds = vec![0];
    bounds.extend_from_slice(inner_widths);
    let levels = inner_widths.len();
    let block = |t: &Tensor, dim: usize, j: usize| -> Result<Tensor> {
        Ok(t.narrow(dim, bounds[j], bounds[j + 1] - bounds[j])?.contiguous()?)
    };
    let mut loss = 0f32;
    let mut running: Option<Tensor> = None;
    let mut level_grads = Vec::with_capacity(levels);
    let mut errors = Vec::with_capacity(levels);
    for j in 0..levels {
        let part = mm(&block(u, 1, j)?, &block(&p.w_dec, 0, j)?)?;
        let decoded = match running {
            None => part.broadcast_add(&p.b_dec)?,
            Some(r) => (r + part)?,
        };
        let e = (&decoded - s.target)?;
        loss += mean_sq(&e, inv_b)?;
        level_grads.push((&e * (2.0 * inv_b))?);
        errors.push(e);
        running = Some(decoded);
    }
    // suffix[j] = the sum of the gradients of levels j.. .
    let mut suffix: Vec<Tensor> = Vec::with_capacity(levels);
    for g in level_grads.iter().rev() {
        let next = match suffix.last() {
            Some(acc) => (acc + g)?,
            None => g.clone(),
        };
        suffix.push(next);
    }
    suffix.reverse();
    let mut w_parts = Vec::with_capacity(levels + 1);
    let mut h_parts = Vec::with_capacity(levels + 1);
    for (j, g) in suffix.iter().enumerate() {
        w_parts.push(mm(&block(u, 1, j)?.t()?, g)?);
        h_parts.push((mm(g, &block(&p.w_dec, 0, j)?.t()?)? * block(mask, 1, j)?)?);
    }
    // The outer block is in no inner level.
    let rest = d_sae - bounds[levels];
    w_parts.push(Tensor::zeros((rest, d_out), DType::F32, &Device::Cpu)?);
    h_parts.push(Tensor::zeros((batch, rest), DType::F32, &Device::Cpu)?);
    Ok(LevelTerms {
        loss,
        w_dec: Tensor::cat(&w_parts, 0)?,
        h0: Tensor::cat(&h_parts, 1)?,
        b_dec: suffix[0].clone(),
        errors,
    })
}

/// The dead features the auxiliary loss is taken over, each group with the error it
/// reconstructs: all of them with the whole reconstruction's `err`, or with the
/// per-level loss each level's dead features with that level's error (the outer
/// level's: `err`). None without dead-feature tracking.
fn dead_groups<'t>(
    dead: Option<&[bool]>,
    levels: &Matryoshka,
    level_errors: &'t [Tensor],
    err: &'t Tensor,
    d_sae: usize,
) -> Vec<(Vec<bool>, &'t Tensor)> {
    match dead {
        Some(dead) if levels.aux_per_level => {
            let mut bounds = vec![0];
            bounds.extend_from_slice(levels.inner_widths);
            bounds.push(d_sae);
            (0..bounds.len() - 1)
                .map(|j| {
                    let part = (0..d_sae)
                        .map(|f| dead[f] && (bounds[j]..bounds[j + 1]).contains(&f))
                        .collect();
                    (part, level_errors.get(j).unwrap_or(err))
                })
                .collect()
        }
        Some(dead) => vec![(dead.to_vec(), err)],
        None => Vec::new(),
    }
}

/// The auxiliary loss of one group of dead features (`true` = dead): the top `d_in /
/// 2` of their norm-scaled pre-activations `hp` reconstruct the detached residual
/// `-level_err`. Its value and gradients with respect to `W_dec` and the
/// pre-activations, or `None` when no feature of the group is dead.
fn dead_aux(
    s: &StepInputs,
    hp: &Tensor,
    dead: &[bool],
    level_err: &Tensor,
    aux_loss_coefficient: f64,
    inv_b: f64,
) -> Result<Option<(f32, Tensor, Tensor)>> {
    let half = s.p.b_dec.dim(0)? / 2;
    let n_dead = dead.iter().filter(|&&b| b).count();
    if n_dead == 0 || half == 0 {
        return Ok(None);
    }
    let scale = (n_dead as f64 / half as f64).min(1.0);
    let aux_mask = top_k_mask(hp, half.min(n_dead), false, Some(dead))?;
    let v = (hp * &aux_mask)?.broadcast_div(s.norms)?;
    // The residual is detached in SAELens: x - sae_out.
    let diff = (mm(&v, &s.p.w_dec)? + level_err)?;
    let c = aux_loss_coefficient * scale;
    let loss = (c * diff.sqr()?.sum_all()?.to_scalar::<f32>()? as f64 * inv_b) as f32;
    let g_rec = (&diff * (2.0 * c * inv_b))?;
    let w_grad = mm(&v.t()?, &g_rec)?;
    let h_grad = (mm(&g_rec, &s.p.w_dec.t()?)? * &aux_mask)?;
    Ok(Some((loss, w_grad, h_grad)))
}

/// `a @ b` through the model's products (`crate::ops::matmul`: AVX-512 kernels where
/// the CPU has them; candle's matmul, whose CPU gemm here uses AVX2 only, otherwise).
/// A transposed `b` (`W_dec^T`) is copied first: the copy costs a few percent of a
/// product by it, and the fast kernels read their weight row-major.
fn mm(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(crate::ops::matmul(a, &b.contiguous()?)?)
}

/// The rectangle kernel of SAELens's straight-through estimators at `(pre -
/// threshold) / bw`: 1 where it is in (-1/2, 1/2), else 0; `pre` `[batch, d_sae]`,
/// `threshold` `[d_sae]`, the result `[batch, d_sae]`.
fn rectangle(h0: &Tensor, threshold: &Tensor, bandwidth: f64) -> Result<Tensor> {
    let z = (h0.broadcast_sub(threshold)? / bandwidth)?;
    Ok((z.gt(-0.5)?.to_dtype(DType::F32)? * z.lt(0.5)?.to_dtype(DType::F32)?)?)
}

/// JumpReLU's loss and gradients (SAELens 6.54's `JumpReLUTrainingSAE`):
///
/// - `acts = pre * (pre > t)`; `JumpReLU.backward`: `pre` gets `(pre > t) * g`, `t` gets
///   `-sum_b (t / bw) * rect((pre - t) / bw) * g` (and `pre` that too with
///   `jumprelu_ste_to_input`);
/// - `step`: `l0 * mean_b sum_f step(pre - t)`, whose `Step.backward` gives `t`
///   `-sum_b (1 / bw) * rect(...) * g`; `quadratic`: `l0 * mean_b 2 / target_l0 * (sum_f
///   step(pre - t) - target_l0)^2`, through the same `Step.backward`; `tanh`: `l0 *
///   mean_b sum_f tanh(s * acts * ||W_dec[f]||)`, through `acts` and the norms;
/// - with `pre_act_loss_coefficient` c and dead features: `c * mean_b sum_f relu(t -
///   pre) * dead[f] * ||W_dec[f]||`.
pub(crate) fn jumprelu(
    s: &StepInputs,
    l0_coefficient: f64,
    opts: &TrainOptions,
    dead: Option<&[bool]>,
) -> Result<(Forward, Grads)> {
    let (p, h0) = (s.p, s.h0);
    let inv_b = 1.0 / h0.dim(0)? as f64;
    let bw = opts.jumprelu_bandwidth;
    let t = p.threshold()?;
    let open = h0.broadcast_gt(t)?.to_dtype(DType::F32)?;
    let acts = (h0 * &open)?;
    let out = mm(&acts, &p.w_dec)?.broadcast_add(&p.b_dec)?;
    let err = (&out - s.target)?;
    let mse = mean_sq(&err, inv_b)?;
    let g_out = (&err * (2.0 * inv_b))?;
    let rect = rectangle(h0, t, bw)?;
    let mut g_acts = mm(&g_out, &p.w_dec.t()?)?;
    let sp = sparsity_loss(s, &open, &acts, l0_coefficient * inv_b, opts)?;
    let mut sparsity = sp.loss;
    let mut g_norm = sp.norms;
    if let Some(g) = sp.acts {
        g_acts = (g_acts + g)?;
    }
    // JumpReLU.backward.
    let ste = (rect.broadcast_mul(&(t / bw)?)? * &g_acts)?;
    let mut g_t = ste.sum(0)?.neg()?;
    let mut g_h0 = (&g_acts * &open)?;
    if opts.jumprelu_ste_to_input {
        g_h0 = (g_h0 + &ste)?;
    }
    if let Some(g) = sp.step {
        // Step.backward with grad_output `g` (one value per token).
        let step_ste = (&rect * (1.0 / bw))?.broadcast_mul(&g)?;
        g_t = (g_t - step_ste.sum(0)?)?;
        if opts.jumprelu_ste_to_input {
            g_h0 = (g_h0 + step_ste)?;
        }
    }
    if let (Some(pc), Some(dead)) = (opts.pre_act_loss_coefficient, dead) {
        if let Some(pre) = pre_act_loss(s, dead, pc * inv_b)? {
            sparsity += pre.loss;
            g_t = (g_t + pre.threshold)?;
            g_h0 = (g_h0 - pre.h0)?;
            g_norm = Some(match g_norm {
                Some(n) => (n + pre.norms)?,
                None => pre.norms,
            });
        }
    }
    let mut w_dec_grad = mm(&acts.t()?, &g_out)?;
    if let Some(gn) = g_norm {
        w_dec_grad = (w_dec_grad + p.w_dec.broadcast_mul(&(gn / s.norms)?.unsqueeze(1)?)?)?;
    }
    let mut grads = encoder_grads(s, &g_h0, &g_out, w_dec_grad)?;
    grads.threshold = Some(g_t);
    let fwd = Forward {
        feature_acts: acts,
        sae_out: out,
        mse_loss: mse,
        aux_loss: sparsity,
    };
    Ok((fwd, grads))
}

/// JumpReLU's sparsity loss and where its gradient goes.
struct Sparsity {
    loss: f32,
    /// The gradient reaching the Step's output (`step`, `quadratic`), per token `[batch, 1]`.
    step: Option<Tensor>,
    /// The gradient reaching the activations `[batch, d_sae]` (`tanh`).
    acts: Option<Tensor>,
    /// The gradient reaching the decoder norms `[d_sae]` (`tanh`).
    norms: Option<Tensor>,
}

/// The sparsity loss of `opts.jumprelu_sparsity_loss_mode` with coefficient `c` (the
/// L0 coefficient over the batch size), from the open gates `open` and the
/// activations `acts` (both `[batch, d_sae]`).
fn sparsity_loss(s: &StepInputs, open: &Tensor, acts: &Tensor, c: f64, opts: &TrainOptions) -> Result<Sparsity> {
    let batch = open.dim(0)?;
    let none = |loss: f64, step: Tensor| Sparsity {
        loss: loss as f32,
        step: Some(step),
        acts: None,
        norms: None,
    };
    Ok(match opts.jumprelu_sparsity_loss_mode {
        JumpReluSparsityLoss::Step => {
            let l0_sum = open.sum_all()?.to_scalar::<f32>()? as f64;
            none(c * l0_sum, Tensor::full(c as f32, (batch, 1), &Device::Cpu)?)
        }
        JumpReluSparsityLoss::Quadratic => {
            // Gemma Scope 2: `2 / target * (l0 - target)^2` per token.
            let target = opts.target_l0.unwrap_or(1.0);
            let gap = (open.sum_keepdim(1)? - target)?;
            let total = gap.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            none(c * 2.0 / target * total, (gap * (c * 4.0 / target))?)
        }
        JumpReluSparsityLoss::Tanh => {
            let sc = opts.jumprelu_tanh_scale;
            let u = (acts.broadcast_mul(s.norms)? * sc)?;
            let th = u.tanh()?;
            let total = th.sum_all()?.to_scalar::<f32>()? as f64;
            // d tanh(u) = (1 - tanh(u)^2) du, du = s * (n d acts + acts d n).
            let d = ((1.0 - th.sqr()?)? * (c * sc))?;
            Sparsity {
                loss: (c * total) as f32,
                step: None,
                acts: Some(d.broadcast_mul(s.norms)?),
                norms: Some((&d * acts)?.sum(0)?),
            }
        }
    })
}

/// Anthropic's pre-activation loss on the dead features and its gradients.
struct PreActLoss {
    loss: f32,
    /// With respect to the threshold `[d_sae]`, the pre-activations (to subtract,
    /// `[batch, d_sae]`) and the decoder norms `[d_sae]`.
    threshold: Tensor,
    h0: Tensor,
    norms: Tensor,
}

/// `c * sum_b sum_f dead[f] * relu(threshold[f] - h0[b, f]) * ||W_dec[f]||` (`c`: the
/// coefficient over the batch size), or `None` when no feature is dead.
fn pre_act_loss(s: &StepInputs, dead: &[bool], c: f64) -> Result<Option<PreActLoss>> {
    if !dead.iter().any(|&b| b) {
        return Ok(None);
    }
    let dead_t = Tensor::from_vec(
        dead.iter().map(|&b| if b { 1f32 } else { 0.0 }).collect::<Vec<f32>>(),
        dead.len(),
        &Device::Cpu,
    )?;
    let gap = s.p.threshold()?.broadcast_sub(s.h0)?;
    let below = gap.gt(0.0)?.to_dtype(DType::F32)?.broadcast_mul(&dead_t)?;
    let relu_gap = (gap.relu()?.broadcast_mul(&dead_t))?;
    let loss = relu_gap.broadcast_mul(s.norms)?.sum_all()?.to_scalar::<f32>()? as f64;
    let g = (below.broadcast_mul(s.norms)? * c)?;
    Ok(Some(PreActLoss {
        loss: (c * loss) as f32,
        threshold: g.sum(0)?,
        h0: g,
        norms: (relu_gap.sum(0)? * c)?,
    }))
}

/// The gradients upstream of the pre-activations' gradient `g_pre` `[batch, d_sae]`:
/// `b_dec` gets the output's gradient `g_out` and (with `apply_b_dec`) minus what flows
/// into `x - b_dec`.
fn encoder_grads(s: &StepInputs, g_pre: &Tensor, g_out: &Tensor, w_dec: Tensor) -> Result<Grads> {
    let w_enc = mm(&s.xc.t()?, g_pre)?;
    let b_enc = g_pre.sum(0)?;
    let b_dec = b_dec_grad(s.p, g_out.sum(0)?, &b_enc, s.apply_b_dec)?;
    Ok(Grads {
        w_enc,
        b_enc,
        w_dec,
        b_dec,
        threshold: None,
    })
}

/// `b_dec`'s gradient from the output's (summed over the batch, `[d_out]`) and, with
/// `apply_b_dec`, minus what flows into `x - b_dec`: `sum_b (g_pre @ W_enc^T)[b]`,
/// which is `W_enc @ b_enc`'s gradient (`sum_b g_pre[b]`), one product by a vector.
pub(crate) fn b_dec_grad(p: &Params, g_out_sum: Tensor, b_enc_grad: &Tensor, apply_b_dec: bool) -> Result<Tensor> {
    if !apply_b_dec {
        return Ok(g_out_sum);
    }
    Ok((g_out_sum - p.w_enc.matmul(&b_enc_grad.unsqueeze(1)?)?.squeeze(1)?)?)
}

/// `torch.nn.utils.clip_grad_norm_(params, 1.0)`, as SAELens calls it every step: the
/// gradients scaled by `min(1, 1 / (total_norm + 1e-6))`.
pub(crate) fn clip_grad_norm(g: Grads, max_norm: f64) -> Result<Grads> {
    let sq = |t: &Tensor| -> Result<f64> { Ok(t.sqr()?.sum_all()?.to_scalar::<f32>()? as f64) };
    let mut total = sq(&g.w_enc)? + sq(&g.b_enc)? + sq(&g.w_dec)? + sq(&g.b_dec)?;
    if let Some(t) = &g.threshold {
        total += sq(t)?;
    }
    let total = total.sqrt();
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    if coef >= 1.0 {
        return Ok(g);
    }
    Ok(Grads {
        w_enc: (g.w_enc * coef)?,
        b_enc: (g.b_enc * coef)?,
        w_dec: (g.w_dec * coef)?,
        b_dec: (g.b_dec * coef)?,
        threshold: g.threshold.map(|t| t * coef).transpose()?,
    })
}

/// Per-token squared error and variance, for the explained variance SAELens logs:
/// `1 - mean_b ||out - x||^2 / mean_b ||x - mean(x)||^2`.
pub(crate) fn explained_variance(x: &Tensor, out: &Tensor) -> Result<f64> {
    let err = (out - x)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    let centred = x.broadcast_sub(&x.mean_keepdim(0)?)?;
    let var = centred.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    Ok(if var > 0.0 { 1.0 - err / var } else { f64::NAN })
}

/// Mean number of non-zero activations per token of `acts` `[batch, d_sae]`.
pub(crate) fn l0(acts: &Tensor) -> Result<f64> {
    let fired = acts.ne(0.0)?.to_dtype(DType::F32)?.sum(D::Minus1)?;
    Ok(fired.mean_all()?.to_scalar::<f32>()? as f64)
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use hooklens_testutil::max_abs_diff;

    use super::super::step::loss_and_grads;
    use super::*;

    fn random(rng: &mut Rng, shape: &[usize], scale: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| ((2.0 * rng.uniform() - 1.0) * scale) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn params(rng: &mut Rng, d_in: usize, d_sae: usize) -> Params {
        Params {
            w_enc: random(rng, &[d_in, d_sae], 0.5),
            b_enc: random(rng, &[d_sae], 0.1),
            w_dec: random(rng, &[d_sae, d_in], 0.5),
            b_dec: random(rng, &[d_in], 0.1),
            threshold: None,
        }
    }

    /// Builds SAELens's loss with autograd (the top-k masks, which have no gradient,
    /// taken from the hand-written forward) and compares every gradient.
    fn check(obj: Objective, dead: Option<&[bool]>) {
        check_with(obj, dead, 0.0)
    }

    /// [`check`] with `b_enc` lowered by `shift`, which makes fewer features fire.
    fn check_with(obj: Objective, dead: Option<&[bool]>, shift: f64) {
        let (batch, d_in, d_sae) = (7, 6, 12);
        let mut rng = Rng::new(3);
        let mut p = params(&mut rng, d_in, d_sae);
        p.b_enc = (p.b_enc - shift).unwrap();
        if matches!(obj, Objective::JumpRelu { .. }) {
            let t: Vec<f32> = (0..d_sae).map(|_| (rng.uniform() * 0.3) as f32).collect();
            p.threshold = Some(Tensor::new(t, &Device::Cpu).unwrap());
        }
        let x = random(&mut rng, &[batch, d_in], 1.0);
        let (fwd, g) = loss_and_grads(&p, &x, None, &obj).unwrap();

        let w_enc = Var::from_tensor(&p.w_enc).unwrap();
        let b_enc = Var::from_tensor(&p.b_enc).unwrap();
        let w_dec = Var::from_tensor(&p.w_dec).unwrap();
        let b_dec = Var::from_tensor(&p.b_dec).unwrap();
        let xc = x.broadcast_sub(b_dec.as_tensor()).unwrap();
        let pre = xc
            .matmul(w_enc.as_tensor())
            .unwrap()
            .broadcast_add(b_enc.as_tensor())
            .unwrap();
        let norms = w_dec.as_tensor().sqr().unwrap().sum(1).unwrap().sqrt().unwrap();
        let thr = Var::from_tensor(p.threshold.as_ref().unwrap_or(&p.b_enc)).unwrap();
        let loss = match obj {
            Objective::JumpRelu {
                l0_coefficient,
                opts,
                dead,
            } => {
                // The straight-through estimators as zero-valued terms whose gradients
                // are SAELens's `JumpReLU.backward` and `Step.backward`:
                // `k * (t - t.detach())` has value 0 and gradient `k` with respect to t.
                let t = thr.as_tensor();
                let bw = opts.jumprelu_bandwidth;
                let zero_t = (t - t.detach()).unwrap();
                let zero_h = (&pre - pre.detach()).unwrap();
                let rect = rectangle(&pre.detach(), &t.detach(), bw).unwrap();
                let open = pre
                    .detach()
                    .broadcast_gt(&t.detach())
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap();
                let jump_k = rect.broadcast_mul(&(t.detach() / bw).unwrap()).unwrap();
                let mut acts = ((&pre * &open).unwrap() - jump_k.broadcast_mul(&zero_t).unwrap()).unwrap();
                let step_k = (&rect * (1.0 / bw)).unwrap();
                let mut step = (open.clone() - step_k.broadcast_mul(&zero_t).unwrap()).unwrap();
                if opts.jumprelu_ste_to_input {
                    acts = (acts + (&jump_k * &zero_h).unwrap()).unwrap();
                    step = (step + (&step_k * &zero_h).unwrap()).unwrap();
                }
                let out = acts
                    .matmul(w_dec.as_tensor())
                    .unwrap()
                    .broadcast_add(b_dec.as_tensor())
                    .unwrap();
                let mse = (out - &x).unwrap().sqr().unwrap().sum(1).unwrap().mean_all().unwrap();
                let per_item = match opts.jumprelu_sparsity_loss_mode {
                    JumpReluSparsityLoss::Step => step.sum(1).unwrap(),
                    JumpReluSparsityLoss::Quadratic => {
                        let target = opts.target_l0.unwrap();
                        ((step.sum(1).unwrap() - target).unwrap().sqr().unwrap() * (2.0 / target)).unwrap()
                    }
                    JumpReluSparsityLoss::Tanh => ((acts.broadcast_mul(&norms).unwrap() * opts.jumprelu_tanh_scale)
                        .unwrap()
                        .tanh()
                        .unwrap())
                    .sum(1)
                    .unwrap(),
                };
                let mut loss = (mse + (per_item * l0_coefficient).unwrap().mean_all().unwrap()).unwrap();
                if let (Some(pc), Some(dead)) = (opts.pre_act_loss_coefficient, dead) {
                    let mask: Vec<f32> = dead.iter().map(|&d| if d { 1.0 } else { 0.0 }).collect();
                    let mask = Tensor::new(mask, &Device::Cpu).unwrap();
                    let pa = t
                        .broadcast_sub(&pre)
                        .unwrap()
                        .relu()
                        .unwrap()
                        .broadcast_mul(&mask)
                        .unwrap()
                        .broadcast_mul(&norms)
                        .unwrap()
                        .sum(1)
                        .unwrap()
                        .mean_all()
                        .unwrap();
                    loss = (loss + (pa * pc).unwrap()).unwrap();
                }
                let want = loss.to_scalar::<f32>().unwrap();
                assert!(
                    (want - fwd.mse_loss - fwd.aux_loss).abs() < 1e-4 * want.abs().max(1.0),
                    "loss {want} vs {} + {}",
                    fwd.mse_loss,
                    fwd.aux_loss
                );
                loss
            }
            Objective::Standard { l1_coefficient } => {
                let acts = pre.relu().unwrap();
                let out = acts
                    .matmul(w_dec.as_tensor())
                    .unwrap()
                    .broadcast_add(b_dec.as_tensor())
                    .unwrap();
                let mse = (out - &x).unwrap().sqr().unwrap().sum(1).unwrap().mean_all().unwrap();
                let l1 = (acts
                    .broadcast_mul(&norms)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .sum(1)
                    .unwrap()
                    .mean_all()
                    .unwrap()
                    * l1_coefficient)
                    .unwrap();
                (mse + l1).unwrap()
            }
            Objective::TopK {
                k,
                batch: per_batch,
                aux_loss_coefficient,
                inner_widths,
                matryoshka_aux,
                ..
            } => {
                let hp = pre.broadcast_mul(&norms).unwrap();
                let mask = if per_batch {
                    batch_top_k_mask(&hp.detach(), k * batch).unwrap()
                } else {
                    top_k_mask(&hp.detach(), k, false, None).unwrap()
                };
                let acts = (hp.relu().unwrap() * mask).unwrap();
                let out = acts
                    .broadcast_mul(&norms.recip().unwrap())
                    .unwrap()
                    .matmul(w_dec.as_tensor())
                    .unwrap()
                    .broadcast_add(b_dec.as_tensor())
                    .unwrap();
                let mse = (&out - &x).unwrap().sqr().unwrap().sum(1).unwrap().mean_all().unwrap();
                let dead = dead.unwrap();
                let half = d_in / 2;
                // One auxiliary term: `dead` features reconstruct the detached `residual`.
                let aux_term = |dead: &[bool], residual: &Tensor| -> Option<Tensor> {
                    let n_dead = dead.iter().filter(|&&d| d).count();
                    if n_dead == 0 {
                        return None;
                    }
                    let aux_mask = top_k_mask(&hp.detach(), half.min(n_dead), false, Some(dead)).unwrap();
                    let recons = (&hp * aux_mask)
                        .unwrap()
                        .broadcast_mul(&norms.recip().unwrap())
                        .unwrap()
                        .matmul(w_dec.as_tensor())
                        .unwrap();
                    let scale = (n_dead as f64 / half as f64).min(1.0);
                    Some(
                        ((recons - residual.detach())
                            .unwrap()
                            .sqr()
                            .unwrap()
                            .sum(1)
                            .unwrap()
                            .mean_all()
                            .unwrap()
                            * (aux_loss_coefficient * scale))
                            .unwrap(),
                    )
                };
                let u = acts.broadcast_mul(&norms.recip().unwrap()).unwrap();
                let inner: Vec<Tensor> = inner_widths
                    .iter()
                    .map(|&w| {
                        u.narrow(1, 0, w)
                            .unwrap()
                            .matmul(&w_dec.as_tensor().narrow(0, 0, w).unwrap())
                            .unwrap()
                            .broadcast_add(b_dec.as_tensor())
                            .unwrap()
                    })
                    .collect();
                let mut aux = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
                if matryoshka_aux {
                    let mut bounds = vec![0];
                    bounds.extend_from_slice(inner_widths);
                    bounds.push(dead.len());
                    for j in 0..bounds.len() - 1 {
                        let part: Vec<bool> = (0..dead.len())
                            .map(|f| dead[f] && (bounds[j]..bounds[j + 1]).contains(&f))
                            .collect();
                        let level_out = inner.get(j).unwrap_or(&out);
                        if let Some(t) = aux_term(&part, &(&x - level_out).unwrap()) {
                            aux = (aux + t).unwrap();
                        }
                    }
                } else if let Some(t) = aux_term(dead, &(&x - &out).unwrap()) {
                    aux = (aux + t).unwrap();
                }
                for level in &inner {
                    let l = (level - &x).unwrap().sqr().unwrap().sum(1).unwrap().mean_all().unwrap();
                    aux = (aux + l).unwrap();
                }
                assert!((aux.to_scalar::<f32>().unwrap() - fwd.aux_loss).abs() < 1e-4);
                (mse + aux).unwrap()
            }
        };
        let auto = loss.backward().unwrap();
        let mut want = vec![
            (&g.w_enc, &w_enc),
            (&g.b_enc, &b_enc),
            (&g.w_dec, &w_dec),
            (&g.b_dec, &b_dec),
        ];
        if let Some(t) = &g.threshold {
            want.push((t, &thr));
        }
        for (i, (hand, var)) in want.into_iter().enumerate() {
            let a = auto.get(var.as_tensor()).unwrap();
            let scale = a
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .max(1e-3);
            let d = max_abs_diff(hand, a);
            assert!(
                d / scale < 1e-4,
                "parameter {i}: hand vs autograd differ by {d} (scale {scale})"
            );
        }
        assert!(fwd.mse_loss > 0.0);
    }

    #[test]
    fn standard_gradients_match_autograd() {
        check(Objective::Standard { l1_coefficient: 0.7 }, None);
    }

    /// With few features firing the step goes through `sparse_step::standard`.
    #[test]
    fn sparse_standard_gradients_match_autograd() {
        let mut rng = Rng::new(3);
        let p = params(&mut rng, 6, 12);
        let x = random(&mut rng, &[7, 6], 1.0);
        let h0 = x
            .broadcast_sub(&p.b_dec)
            .unwrap()
            .matmul(&p.w_enc)
            .unwrap()
            .broadcast_add(&p.b_enc)
            .unwrap();
        let fired = (h0 - 0.6)
            .unwrap()
            .gt(0.0)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .mean_all()
            .unwrap();
        let fired = fired.to_scalar::<f32>().unwrap() as f64;
        assert!(
            fired > 0.0 && fired <= super::super::sparse_step::STANDARD_SPARSE_BELOW,
            "{fired} of the features fire"
        );
        check_with(Objective::Standard { l1_coefficient: 0.7 }, None, 0.6);
    }

    #[test]
    fn jumprelu_gradients_match_autograd_of_the_straight_through_estimators() {
        let dead: Vec<bool> = (0..12).map(|f| f % 3 == 1).collect();
        let modes = [
            JumpReluSparsityLoss::Step,
            JumpReluSparsityLoss::Tanh,
            JumpReluSparsityLoss::Quadratic,
        ];
        for mode in modes {
            for ste_to_input in [false, true] {
                for pre_act in [None, Some(0.3)] {
                    let opts = TrainOptions {
                        target_l0: Some(2.5),
                        jumprelu_bandwidth: 0.5,
                        jumprelu_sparsity_loss_mode: mode,
                        jumprelu_ste_to_input: ste_to_input,
                        pre_act_loss_coefficient: pre_act,
                        ..TrainOptions::new(TrainArchitecture::JumpRelu, 12)
                    };
                    let obj = Objective::JumpRelu {
                        l0_coefficient: 0.7,
                        opts: &opts,
                        dead: Some(&dead),
                    };
                    check(obj, Some(&dead));
                }
            }
        }
    }

    /// Away from the jumps the loss is smooth in the weights, so with the estimators
    /// off the encoder and decoder (`jumprelu_ste_to_input` false) the hand-written
    /// gradients of `W_dec` and `b_dec` are the finite differences of the loss.
    #[test]
    fn jumprelu_decoder_gradients_match_finite_differences() {
        let (batch, d_in, d_sae) = (5, 4, 6);
        let mut rng = Rng::new(11);
        let mut p = params(&mut rng, d_in, d_sae);
        p.threshold = Some(Tensor::full(0.1f32, d_sae, &Device::Cpu).unwrap());
        let x = random(&mut rng, &[batch, d_in], 1.0);
        let opts = TrainOptions {
            jumprelu_sparsity_loss_mode: JumpReluSparsityLoss::Tanh,
            ..TrainOptions::new(TrainArchitecture::JumpRelu, d_sae)
        };
        let obj = Objective::JumpRelu {
            l0_coefficient: 0.5,
            opts: &opts,
            dead: None,
        };
        let loss = |p: &Params| {
            let (f, _) = loss_and_grads(p, &x, None, &obj).unwrap();
            f.mse_loss as f64 + f.aux_loss as f64
        };
        let (_, g) = loss_and_grads(&p, &x, None, &obj).unwrap();
        let eps = 1e-2f32;
        let analytic: Vec<f32> = g.w_dec.flatten_all().unwrap().to_vec1().unwrap();
        let w: Vec<f32> = p.w_dec.flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..w.len() {
            let at = |d: f32| {
                let mut v = w.clone();
                v[i] += d;
                let q = Params {
                    w_dec: Tensor::from_vec(v, (d_sae, d_in), &Device::Cpu).unwrap(),
                    ..p.clone()
                };
                loss(&q)
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            assert!(
                (fd - analytic[i] as f64).abs() < 2e-3 * fd.abs().max(1.0),
                "W_dec[{i}]: finite difference {fd}, hand-written {}",
                analytic[i]
            );
        }
    }

    #[test]
    fn topk_gradients_match_autograd_with_aux_loss() {
        let dead: Vec<bool> = (0..12).map(|f| f % 3 != 0).collect();
        for batch in [false, true] {
            check(
                Objective::TopK {
                    k: 3,
                    batch,
                    aux_loss_coefficient: 0.5,
                    dead: Some(&dead),
                    inner_widths: &[],
                    matryoshka_aux: false,
                },
                Some(&dead),
            );
        }
    }

    #[test]
    fn matryoshka_gradients_match_autograd_with_inner_losses() {
        let dead: Vec<bool> = (0..12).map(|f| f % 4 == 1).collect();
        for matryoshka_aux in [false, true] {
            check(
                Objective::TopK {
                    k: 3,
                    batch: true,
                    aux_loss_coefficient: 0.5,
                    dead: Some(&dead),
                    inner_widths: &[2, 5, 9],
                    matryoshka_aux,
                },
                Some(&dead),
            );
        }
    }
}

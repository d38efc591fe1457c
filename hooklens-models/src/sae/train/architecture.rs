//! The trained SAEs' forward passes, losses and hand-written backward passes, as
//! SAELens's `StandardTrainingSAE`, `TopKTrainingSAE`, `BatchTopKTrainingSAE` and
//! `JumpReLUTrainingSAE` compute them.
//!
//! The gradients are written out rather than taken from candle's autograd: they are a
//! few matmuls, and building no graph saves its memory and bookkeeping on every step.
//! A test checks them against autograd.

use candle_core::{DType, Device, Tensor, D};
use hooklens_core::Result;

use super::options::{JumpReluSparsityLoss, TrainArchitecture, TrainOptions};
use super::rng::Rng;
use super::sparse_step::{self, StepInputs};
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

/// A `[rows, cols]` 0/1 mask of each row's `k` largest entries of `values` (only among
/// `allowed` columns when given; only positive ones with `positive_only`, which is
/// `relu` after the top-k).
pub(crate) fn top_k_mask(values: &Tensor, k: usize, positive_only: bool, allowed: Option<&[bool]>) -> Result<Tensor> {
    let (rows, cols) = values.dims2()?;
    let v: Vec<f32> = values.flatten_all()?.to_vec1()?;
    ones_at(&sparse_step::top_k_entries(&v, rows, cols, k, positive_only, allowed))
}

/// A `[rows, cols]` 0/1 mask of the `n` largest positive entries of all of `values`
/// (BatchTopK's `topk(relu(x).flatten(), n)`).
pub(crate) fn batch_top_k_mask(values: &Tensor, n: usize) -> Result<Tensor> {
    let (rows, cols) = values.dims2()?;
    let v: Vec<f32> = values.flatten_all()?.to_vec1()?;
    ones_at(&sparse_step::batch_top_k_entries(&v, rows, cols, n))
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

/// The loss of `x` `[batch, d_in]` and its gradients with respect to every parameter.
///
/// Standard: `mse + l1 * mean_b sum_f acts[b, f] * ||W_dec[f]||`. TopK: `mse +
/// aux_coef * scale * mean_b ||W_dec-reconstruction of the top dead pre-activations -
/// residual||^2` (SAELens's `calculate_topk_aux_loss`: `k_aux = min(d_in / 2,
/// n_dead)`, `scale = min(n_dead / (d_in / 2), 1)`, residual detached).
///
/// `target` `[batch, d_out]`: a transcoder's, which reconstructs it from `x` read as it
/// is (SAELens's transcoders have `apply_b_dec_to_input = false`); `None`: an SAE, which
/// reconstructs `x` from `x - b_dec`.
pub(crate) fn loss_and_grads(
    p: &Params,
    x: &Tensor,
    target: Option<&Tensor>,
    obj: &Objective,
) -> Result<(Forward, Grads)> {
    let (batch, _) = x.dims2()?;
    // The aux-k loss's `d_in / 2` is the reconstructed width (the SAE's d_in).
    let d_in = p.b_dec.dim(0)?;
    let inv_b = 1.0 / batch as f64;
    let apply_b_dec = target.is_none();
    let xc = if apply_b_dec {
        x.broadcast_sub(&p.b_dec)?
    } else {
        x.clone()
    };
    let x = target.unwrap_or(x);
    let h0 = crate::ops::matmul(&xc, &p.w_enc)?.broadcast_add(&p.b_enc)?;
    let norms = p.dec_norms()?;
    let inputs = StepInputs {
        p,
        target: x,
        xc: &xc,
        h0: &h0,
        norms: &norms,
        apply_b_dec,
    };
    match obj {
        Objective::Standard { l1_coefficient } => {
            if let Some(step) = sparse_step::standard(&inputs, *l1_coefficient)? {
                return Ok(step);
            }
            let acts = h0.relu()?;
            let out = mm(&acts, &p.w_dec)?.broadcast_add(&p.b_dec)?;
            let err = (&out - x)?;
            let mse = (err.sqr()?.sum_all()?.to_scalar::<f32>()? as f64 * inv_b) as f32;
            let l1_sum = acts.broadcast_mul(&norms)?.sum_all()?.to_scalar::<f32>()? as f64;
            let l1 = (l1_coefficient * l1_sum * inv_b) as f32;
            let g_out = (&err * (2.0 * inv_b))?;
            let c = l1_coefficient * inv_b;
            // d(l1)/d(acts) = c * ||W_dec[f]|| (acts >= 0, so |acts| is acts where the
            // relu lets a gradient through), and d(l1)/d(||W_dec[f]||) = c * sum_b acts.
            let g_acts = mm(&g_out, &p.w_dec.t()?)?.broadcast_add(&(&norms * c)?)?;
            let g_pre = (g_acts * h0.gt(0.0)?.to_dtype(DType::F32)?)?;
            let g_norm = (acts.sum(0)? * c)?;
            let w_dec_grad = (mm(&acts.t()?, &g_out)? + p.w_dec.broadcast_mul(&(g_norm / &norms)?.unsqueeze(1)?)?)?;
            let grads = encoder_grads(p, &xc, &g_pre, &g_out, w_dec_grad, apply_b_dec)?;
            Ok((
                Forward {
                    feature_acts: acts,
                    sae_out: out,
                    mse_loss: mse,
                    aux_loss: l1,
                },
                grads,
            ))
        }
        Objective::JumpRelu {
            l0_coefficient,
            opts,
            dead,
        } => jumprelu_loss_and_grads(p, x, &xc, &h0, &norms, *l0_coefficient, opts, *dead, apply_b_dec),
        Objective::TopK {
            k,
            batch: per_batch,
            aux_loss_coefficient,
            dead,
            inner_widths,
            matryoshka_aux,
        } => {
            if inner_widths.is_empty() {
                return sparse_step::topk(&inputs, *k, *per_batch, *aux_loss_coefficient, *dead);
            }
            let hp = h0.broadcast_mul(&norms)?;
            let mask = if *per_batch {
                batch_top_k_mask(&hp, k * batch)?
            } else {
                top_k_mask(&hp, *k, true, None)?
            };
            let acts = (&hp * &mask)?;
            // (acts / norms) is h0 where the mask is set: the decoder norms cancel, and
            // so does their gradient, which is why none flows into W_dec through them.
            let u = acts.broadcast_div(&norms)?;
            let out = mm(&u, &p.w_dec)?.broadcast_add(&p.b_dec)?;
            let err = (&out - x)?;
            let mse = (err.sqr()?.sum_all()?.to_scalar::<f32>()? as f64 * inv_b) as f32;
            let g_out = (&err * (2.0 * inv_b))?;
            let mut g_h0 = (mm(&g_out, &p.w_dec.t()?)? * &mask)?;
            let mut w_dec_grad = mm(&u.t()?, &g_out)?;
            let mut aux = 0f32;
            // Matryoshka: each inner level's reconstruction from the features before its
            // width, `sum((b_dec + u[:, :w] @ W_dec[:w] - x)^2, -1).mean()`, built up block
            // by block as SAELens's `_iterable_decode` does. Block j (features between
            // two widths) takes the gradients of every level from j on.
            let mut g_b_dec = g_out.clone();
            // Each inner level's `decoded - x`.
            let mut level_errors: Vec<Tensor> = Vec::new();
            if !inner_widths.is_empty() {
                let d_sae = p.w_dec.dim(0)?;
                let mut bounds = vec![0];
                bounds.extend_from_slice(inner_widths);
                let levels = inner_widths.len();
                let block = |t: &Tensor, dim: usize, j: usize| -> Result<Tensor> {
                    Ok(t.narrow(dim, bounds[j], bounds[j + 1] - bounds[j])?.contiguous()?)
                };
                let mut running: Option<Tensor> = None;
                let mut level_grads = Vec::with_capacity(levels);
                for j in 0..levels {
                    let part = mm(&block(&u, 1, j)?, &block(&p.w_dec, 0, j)?)?;
                    let decoded = match running {
                        None => part.broadcast_add(&p.b_dec)?,
                        Some(r) => (r + part)?,
                    };
                    let e = (&decoded - x)?;
                    aux += (e.sqr()?.sum_all()?.to_scalar::<f32>()? as f64 * inv_b) as f32;
                    level_grads.push((&e * (2.0 * inv_b))?);
                    level_errors.push(e);
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
                for (j, s) in suffix.iter().enumerate() {
                    w_parts.push(mm(&block(&u, 1, j)?.t()?, s)?);
                    h_parts.push((mm(s, &block(&p.w_dec, 0, j)?.t()?)? * block(&mask, 1, j)?)?);
                }
                // The outer block is in no inner level.
                let rest = d_sae - bounds[levels];
                w_parts.push(Tensor::zeros((rest, d_in), DType::F32, &Device::Cpu)?);
                h_parts.push(Tensor::zeros((batch, rest), DType::F32, &Device::Cpu)?);
                w_dec_grad = (w_dec_grad + Tensor::cat(&w_parts, 0)?)?;
                g_h0 = (g_h0 + Tensor::cat(&h_parts, 1)?)?;
                g_b_dec = (g_b_dec + &suffix[0])?;
            }
            // The auxiliary loss: the top `d_in / 2` dead pre-activations reconstruct the
            // detached residual `x - sae_out`; with `matryoshka_aux`, once per level, the
            // level's dead features and the residual of the reconstruction up to it.
            let d_sae = p.w_dec.dim(0)?;
            let half = d_in / 2;
            let groups: Vec<(Vec<bool>, &Tensor)> = match dead {
                Some(dead) if *matryoshka_aux && !inner_widths.is_empty() => {
                    let mut bounds = vec![0];
                    bounds.extend_from_slice(inner_widths);
                    bounds.push(d_sae);
                    (0..bounds.len() - 1)
                        .map(|j| {
                            let part = (0..d_sae)
                                .map(|f| dead[f] && (bounds[j]..bounds[j + 1]).contains(&f))
                                .collect();
                            (part, level_errors.get(j).unwrap_or(&err))
                        })
                        .collect()
                }
                Some(dead) => vec![(dead.to_vec(), &err)],
                None => Vec::new(),
            };
            for (dead, level_err) in &groups {
                let n_dead = dead.iter().filter(|&&b| b).count();
                if n_dead == 0 || half == 0 {
                    continue;
                }
                let scale = (n_dead as f64 / half as f64).min(1.0);
                let k_aux = half.min(n_dead);
                let aux_mask = top_k_mask(&hp, k_aux, false, Some(dead))?;
                let v = (&hp * &aux_mask)?.broadcast_div(&norms)?;
                let recons = mm(&v, &p.w_dec)?;
                // The residual is detached in SAELens: x - sae_out.
                let diff = (&recons + *level_err)?;
                let c = aux_loss_coefficient * scale;
                aux += (c * diff.sqr()?.sum_all()?.to_scalar::<f32>()? as f64 * inv_b) as f32;
                let g_rec = (&diff * (2.0 * c * inv_b))?;
                w_dec_grad = (w_dec_grad + mm(&v.t()?, &g_rec)?)?;
                g_h0 = (g_h0 + (mm(&g_rec, &p.w_dec.t()?)? * &aux_mask)?)?;
            }
            let grads = encoder_grads(p, &xc, &g_h0, &g_b_dec, w_dec_grad, apply_b_dec)?;
            Ok((
                Forward {
                    feature_acts: acts,
                    sae_out: out,
                    mse_loss: mse,
                    aux_loss: aux,
                },
                grads,
            ))
        }
    }
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

/// JumpReLU's loss and gradients (SAELens 6.54's `JumpReLUTrainingSAE`), `x` the
/// reconstruction's target `[batch, d_out]`, `xc` the encoder's input (`x - b_dec`, or a
/// transcoder's input `[batch, d_in]` with `apply_b_dec` false), `h0` the pre-activations `[batch, d_sae]`, `norms` the
/// decoder rows' norms `[d_sae]`:
///
/// - `acts = pre * (pre > t)`; `JumpReLU.backward`: `pre` gets `(pre > t) * g`, `t` gets
///   `-sum_b (t / bw) * rect((pre - t) / bw) * g` (and `pre` that too with
///   `jumprelu_ste_to_input`);
/// - `step`: `l0 * mean_b sum_f step(pre - t)`, whose `Step.backward` gives `t`
///   `-sum_b (1 / bw) * rect(...) * g`; `quadratic`: `l0 * mean_b 2 / target_l0 * (sum_f
///   step(pre - t) - target_l0)^2`, through the same `Step.backward`; `tanh`: `l0 * mean_b sum_f tanh(s * acts *
///   ||W_dec[f]||)`, through `acts` and the norms;
/// - with `pre_act_loss_coefficient` c and dead features: `c * mean_b sum_f relu(t -
///   pre) * dead[f] * ||W_dec[f]||`.
#[allow(clippy::too_many_arguments)]
fn jumprelu_loss_and_grads(
    p: &Params,
    x: &Tensor,
    xc: &Tensor,
    h0: &Tensor,
    norms: &Tensor,
    l0_coefficient: f64,
    opts: &TrainOptions,
    dead: Option<&[bool]>,
    apply_b_dec: bool,
) -> Result<(Forward, Grads)> {
    let batch = x.dim(0)?;
    let inv_b = 1.0 / batch as f64;
    let bw = opts.jumprelu_bandwidth;
    let t = p.threshold()?;
    let open = h0.broadcast_gt(t)?.to_dtype(DType::F32)?;
    let acts = (h0 * &open)?;
    let out = mm(&acts, &p.w_dec)?.broadcast_add(&p.b_dec)?;
    let err = (&out - x)?;
    let mse = (err.sqr()?.sum_all()?.to_scalar::<f32>()? as f64 * inv_b) as f32;
    let g_out = (&err * (2.0 * inv_b))?;
    let rect = rectangle(h0, t, bw)?;
    let c = l0_coefficient * inv_b;
    let mut g_acts = mm(&g_out, &p.w_dec.t()?)?;
    // The gradient reaching the decoder norms (from tanh and the pre-activation loss).
    let mut g_norm: Option<Tensor> = None;
    // What reaches the Step's output (`step`), per element.
    // The gradient reaching the Step's output (`step`, `quadratic`), per token `[batch, 1]`.
    let mut step_grad: Option<Tensor> = None;
    let mut sparsity = match opts.jumprelu_sparsity_loss_mode {
        JumpReluSparsityLoss::Step => {
            let l0_sum = open.sum_all()?.to_scalar::<f32>()? as f64;
            step_grad = Some(Tensor::full(c as f32, (batch, 1), &Device::Cpu)?);
            (c * l0_sum) as f32
        }
        JumpReluSparsityLoss::Quadratic => {
            // Gemma Scope 2: `2 / target * (l0 - target)^2` per token.
            let target = opts.target_l0.unwrap_or(1.0);
            let gap = (open.sum_keepdim(1)? - target)?;
            let total = gap.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            step_grad = Some((gap * (c * 4.0 / target))?);
            (c * 2.0 / target * total) as f32
        }
        JumpReluSparsityLoss::Tanh => {
            let s = opts.jumprelu_tanh_scale;
            let u = (acts.broadcast_mul(norms)? * s)?;
            let th = u.tanh()?;
            let total = th.sum_all()?.to_scalar::<f32>()? as f64;
            // d tanh(u) = (1 - tanh(u)^2) du, du = s * (n d acts + acts d n).
            let d = ((1.0 - th.sqr()?)? * (c * s))?;
            g_acts = (g_acts + d.broadcast_mul(norms)?)?;
            g_norm = Some((&d * &acts)?.sum(0)?);
            (c * total) as f32
        }
    };
    // JumpReLU.backward.
    let ste = (rect.broadcast_mul(&(t / bw)?)? * &g_acts)?;
    let mut g_t = ste.sum(0)?.neg()?;
    let mut g_h0 = (&g_acts * &open)?;
    if opts.jumprelu_ste_to_input {
        g_h0 = (g_h0 + &ste)?;
    }
    if let Some(g) = step_grad {
        // Step.backward with grad_output `g` (one value per token).
        let step_ste = (&rect * (1.0 / bw))?.broadcast_mul(&g)?;
        g_t = (g_t - step_ste.sum(0)?)?;
        if opts.jumprelu_ste_to_input {
            g_h0 = (g_h0 + step_ste)?;
        }
    }
    let n_dead = dead.map_or(0, |d| d.iter().filter(|&&b| b).count());
    if let (Some(pc), Some(dead), true) = (opts.pre_act_loss_coefficient, dead, n_dead > 0) {
        let dead_t = Tensor::from_vec(
            dead.iter().map(|&b| if b { 1f32 } else { 0.0 }).collect::<Vec<f32>>(),
            dead.len(),
            &Device::Cpu,
        )?;
        let gap = t.broadcast_sub(h0)?;
        let below = gap.gt(0.0)?.to_dtype(DType::F32)?.broadcast_mul(&dead_t)?;
        let relu_gap = (gap.relu()?.broadcast_mul(&dead_t))?;
        let loss = relu_gap.broadcast_mul(norms)?.sum_all()?.to_scalar::<f32>()? as f64;
        sparsity += (pc * inv_b * loss) as f32;
        let g = (below.broadcast_mul(norms)? * (pc * inv_b))?;
        g_t = (g_t + g.sum(0)?)?;
        g_h0 = (g_h0 - g)?;
        let gn = (relu_gap.sum(0)? * (pc * inv_b))?;
        g_norm = Some(match g_norm {
            Some(n) => (n + gn)?,
            None => gn,
        });
    }
    let mut w_dec_grad = mm(&acts.t()?, &g_out)?;
    if let Some(gn) = g_norm {
        w_dec_grad = (w_dec_grad + p.w_dec.broadcast_mul(&(gn / norms)?.unsqueeze(1)?)?)?;
    }
    let mut grads = encoder_grads(p, xc, &g_h0, &g_out, w_dec_grad, apply_b_dec)?;
    grads.threshold = Some(g_t);
    Ok((
        Forward {
            feature_acts: acts,
            sae_out: out,
            mse_loss: mse,
            aux_loss: sparsity,
        },
        grads,
    ))
}

/// The gradients upstream of the pre-activations' gradient `g_pre` `[batch, d_sae]`:
/// `b_dec` gets the output's gradient `g_out` and (with `apply_b_dec`) minus what flows
/// into `x - b_dec`.
fn encoder_grads(
    p: &Params,
    xc: &Tensor,
    g_pre: &Tensor,
    g_out: &Tensor,
    w_dec: Tensor,
    apply_b_dec: bool,
) -> Result<Grads> {
    let w_enc = mm(&xc.t()?, g_pre)?;
    let b_enc = g_pre.sum(0)?;
    let b_dec = b_dec_grad(p, g_out.sum(0)?, &b_enc, apply_b_dec)?;
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

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
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
            let d = max_diff(hand, a);
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
            fired > 0.0 && fired <= sparse_step::STANDARD_SPARSE_BELOW,
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

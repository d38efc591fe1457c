//! The unembedding, kept as factors of the matrix it starts from.
//!
//! GPT-2 ties its unembedding to the token embedding: `W_U` is `W_E` transposed. Weight
//! processing (folding `ln_final` into `W_U`, centring `W_E` and `W_U`) would make `W_U`
//! a `[d_model, d_vocab]` matrix of its own, 147 MiB for GPT-2 small, a third more
//! memory than the checkpoint. TransformerLens holds that matrix; we hold what it is
//! made of instead:
//!
//! `W_U[d, v] = gain[d] * (base[d, v] + base_shift[v]) - input_center[v] - vocab_center[d]`
//!
//! where `base` is the tied `W_E` transposed (a view: the same storage), `gain` the
//! folded LayerNorm gain, `base_shift` the mean that centring `W_E` in place took out of
//! each of its rows, `input_center` the mean over `d_model` that `fold_ln` removes, and
//! `vocab_center` the mean over the vocabulary that `center_unembed` removes. The
//! logits are then one product with `base` plus a few rank-one terms, which cost a
//! pass over the logits that adding `b_U` costs anyway.

use candle_core::{DType, Tensor, D};

use crate::ops::{kernels, matmul};
use crate::params::UnembedFactors;

/// The unembedding `W_U` `[d_model, d_vocab]` and `b_U` `[d_vocab]`, with `W_U` held as
/// factors of a base matrix (see the module's documentation).
#[derive(Debug)]
pub struct Unembed {
    /// `[d_model, d_vocab]`, often a transposed view of `W_E`.
    base: Tensor,
    factors: UnembedFactors,
    b_u: Tensor,
    /// The rank-one terms of the logits as one product `rows @ columns`: `columns`
    /// `[k, d_vocab]` stacks `b_U` (unless zero, as in unprocessed checkpoints),
    /// `base_shift`, `-input_center` and `-1`; `None` when there is no term at all.
    columns: Option<Tensor>,
    /// Whether `columns` starts with `b_U`.
    bias_term: bool,
}

impl Unembed {
    /// The unembedding with `w_u` `[d_model, d_vocab]` and `b_u` `[d_vocab]`.
    pub fn new(w_u: Tensor, b_u: Tensor) -> candle_core::Result<Self> {
        Self::factored(w_u, UnembedFactors::default(), b_u)
    }

    /// The unembedding `W_U` made of `base` `[d_model, d_vocab]` and `factors`.
    pub(crate) fn factored(base: Tensor, factors: UnembedFactors, b_u: Tensor) -> candle_core::Result<Self> {
        let bias_term = b_u.abs()?.max_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()? != 0.0;
        let mut rows = Vec::new();
        if bias_term {
            rows.push(b_u.clone());
        }
        if let Some(m) = &factors.base_shift {
            rows.push(m.clone());
        }
        if let Some(k) = &factors.input_center {
            rows.push(k.neg()?);
        }
        if factors.vocab_center.is_some() {
            rows.push(b_u.ones_like()?.neg()?);
        }
        let columns = if rows.is_empty() {
            None
        } else {
            Some(Tensor::stack(&rows, 0)?.contiguous()?)
        };
        Ok(Unembed {
            base,
            factors,
            b_u,
            columns,
            bias_term,
        })
    }

    /// The base matrix `[d_model, d_vocab]` the logits are a product with (often
    /// `W_E` transposed: a view).
    pub(crate) fn base(&self) -> &Tensor {
        &self.base
    }

    /// `[batch, pos, d_model]` -> logits `[batch, pos, d_vocab]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let (d_model, d_vocab) = self.base.dims2()?;
        let lead: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        let x2 = x.reshape((lead, d_model))?;
        let y = match &self.factors.gain {
            Some(g) => x2.broadcast_mul(g)?,
            None => x2.clone(),
        };
        let logits = match &self.columns {
            None => matmul(&y, &self.base)?,
            Some(columns) => {
                // One coefficient per row for each rank-one term, in `columns`' order.
                let mut coefs = Vec::with_capacity(4);
                if self.bias_term {
                    coefs.push(Tensor::ones((lead, 1), x.dtype(), x.device())?);
                }
                if self.factors.base_shift.is_some() {
                    coefs.push(y.sum_keepdim(1)?);
                }
                if self.factors.input_center.is_some() {
                    coefs.push(x2.sum_keepdim(1)?);
                }
                if let Some(c) = &self.factors.vocab_center {
                    coefs.push(x2.matmul(&c.unsqueeze(1)?)?);
                }
                let terms = matmul(&Tensor::cat(&coefs, 1)?, columns)?;
                match kernels::sgemm_accumulate(&terms, &y, &self.base) {
                    Some(logits) => logits?,
                    None => (matmul(&y, &self.base)? + terms)?,
                }
            }
        };
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = d_vocab;
        }
        logits.reshape(out_dims)
    }

    /// `W_U` `[d_model, d_vocab]`: the base itself when unprocessed, else computed from
    /// the factors on each call (a new matrix the model does not keep).
    pub fn w_u(&self) -> candle_core::Result<Tensor> {
        if self.factors.is_identity() {
            return Ok(self.base.clone());
        }
        self.factors.apply(&self.base, None)
    }

    /// `b_U` `[d_vocab]`.
    pub fn b_u(&self) -> &Tensor {
        &self.b_u
    }

    /// The columns of `W_U` for `ids` (u32 `[n]`), as rows: `[n, d_model]`, computed
    /// from the factors without the whole matrix.
    pub fn token_directions(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        // [d_model, n]; for a tied base, rows of the contiguous W_E (no copy of it).
        let cols = if self.base.is_contiguous() {
            self.base.index_select(ids, 1)?
        } else {
            self.base.t()?.contiguous()?.index_select(ids, 0)?.t()?
        };
        self.factors.apply(&cols, Some(ids))?.t()?.contiguous()
    }

    /// `d_vocab`.
    pub fn d_vocab(&self) -> candle_core::Result<usize> {
        self.base.dim(D::Minus1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{random_weights, ProcessingOptions, TransformerConfig};
    use crate::model::{HookedTransformer, LoadOptions};
    use candle_core::Device;
    use hooklens_testutil::max_abs_diff;

    fn fixture(opts: ProcessingOptions) -> HookedTransformer {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/tiny-gpt2/model");
        HookedTransformer::from_dir(dir, &LoadOptions::default().with_processing(opts)).unwrap()
    }

    /// TransformerLens's processed `W_U`, computed as it does, as a matrix: the
    /// `ln_final` gain folded in, the `d_model` mean removed, then the vocabulary mean.
    #[test]
    fn the_factors_make_transformer_lens_processed_w_u() {
        let raw = fixture(ProcessingOptions::none());
        let (g, _) = raw.ln_final.as_ref().unwrap().params().unwrap();
        let w = raw.w_u().unwrap().broadcast_mul(&g.unsqueeze(1).unwrap()).unwrap();
        let w = w.broadcast_sub(&w.mean_keepdim(0).unwrap()).unwrap();
        let want = w.broadcast_sub(&w.mean_keepdim(1).unwrap()).unwrap();
        let got = fixture(ProcessingOptions::default()).w_u().unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-6, "{}", max_abs_diff(&got, &want));
        // And a few tokens' columns alone are the same columns.
        let processed = fixture(ProcessingOptions::default());
        let ids = Tensor::new(&[7u32, 300, 7], &Device::Cpu).unwrap();
        let dirs = processed.unembed.token_directions(&ids).unwrap();
        let cols = want.index_select(&ids, 1).unwrap().t().unwrap();
        assert!(max_abs_diff(&dirs, &cols) < 1e-6);
    }

    /// The fast path (sgemm adding into the precomputed terms) and the differentiable
    /// one (candle ops, taken with gradients on) compute the same logits.
    #[test]
    fn the_fast_and_the_differentiable_path_agree() {
        let model = fixture(ProcessingOptions::default());
        let x = Tensor::randn(0f32, 1., (3, 7, 64), &Device::Cpu).unwrap();
        let fast = model.unembed.forward(&x).unwrap();
        let slow = hooklens_core::with_grad_mode(|| model.unembed.forward(&x)).unwrap();
        let dense = x
            .reshape((21, 64))
            .unwrap()
            .matmul(&model.w_u().unwrap())
            .unwrap()
            .broadcast_add(model.b_u())
            .unwrap()
            .reshape((3, 7, 512))
            .unwrap();
        assert!(max_abs_diff(&fast, &dense) < 1e-4, "{}", max_abs_diff(&fast, &dense));
        assert!(max_abs_diff(&slow, &dense) < 1e-4, "{}", max_abs_diff(&slow, &dense));
    }

    /// A checkpoint with an `lm_head` of its own: its `W_U` is processed as factors too,
    /// and processing still leaves the log-probabilities unchanged.
    #[test]
    fn an_untied_lm_head_is_processed_as_factors() {
        let cfg = TransformerConfig::new(2, 32, 4, 300, 16);
        let mut w = random_weights(&cfg, 3).unwrap();
        let head = Tensor::randn(0f32, 0.1, (300, 32), &Device::Cpu).unwrap();
        w.insert("lm_head.weight".to_string(), head.clone());
        let load = |opts: ProcessingOptions| {
            let vb = candle_nn::VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu);
            HookedTransformer::load_with(vb, &cfg, &opts).unwrap()
        };
        let raw = load(ProcessingOptions::none());
        let processed = load(ProcessingOptions::default());
        assert_eq!(max_abs_diff(&raw.w_u().unwrap(), &head.t().unwrap()), 0.0);
        let tokens = Tensor::new(&[[1u32, 20, 299, 5, 5, 100]], &Device::Cpu).unwrap();
        let lp = |m: &HookedTransformer| candle_nn::ops::log_softmax(&m.forward(&tokens).unwrap(), D::Minus1).unwrap();
        let d = max_abs_diff(&lp(&raw), &lp(&processed));
        assert!(d < 1e-4, "log-probs differ by {d}");
    }
}

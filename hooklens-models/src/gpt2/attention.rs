//! Multi-head causal self-attention with TransformerLens's hook points.

use candle_core::{DType, Tensor};
use hooklens_core::HookPoint;

use super::{attention_products, kernels, linear};

/// Causal self-attention. The weights are kept in the Hugging Face layout, which is
/// also the fastest one here: q, k and v come out of one `[d_model, 3*d_model]` matmul.
/// TransformerLens's per-head views are computed from them on demand (see `weights.rs`).
#[derive(Debug, hooklens_derive::Hooked)]
#[hooked(crate = "hooklens_core")]
pub struct Attention {
    /// `[d_model, 3*d_model]`: columns are q | k | v, each head-major (`head*d_head + i`).
    pub(crate) w_qkv: Tensor,
    /// `[3*d_model]`: `b_Q | b_K | b_V`.
    pub(crate) b_qkv: Tensor,
    /// `[n_heads*d_head, d_model]`: TransformerLens's `W_O` flattened over heads.
    pub(crate) w_o: Tensor,
    /// `[d_model]`.
    pub(crate) b_o: Tensor,
    pub(crate) n_heads: usize,
    pub(crate) d_head: usize,
    /// Keys `[batch, pos, head, d_head]`.
    pub hook_k: HookPoint,
    /// Queries `[batch, pos, head, d_head]`.
    pub hook_q: HookPoint,
    /// Values `[batch, pos, head, d_head]`.
    pub hook_v: HookPoint,
    /// Pattern-weighted values `[batch, pos, head, d_head]`.
    pub hook_z: HookPoint,
    /// Scores after `1/sqrt(d_head)` and the causal mask (`-inf`), `[batch, head, query, key]`.
    pub hook_attn_scores: HookPoint,
    /// Attention pattern after softmax, `[batch, head, query, key]`.
    pub hook_pattern: HookPoint,
    /// Per-head output `[batch, pos, head, d_model]`; only with `use_attn_result`.
    pub hook_result: Option<HookPoint>,
}

/// What the attention reads: one normalised residual for q, k and v (the fast path),
/// or per-head copies `[batch, pos, head, d_model]` for each (TransformerLens's
/// `use_split_qkv_input` / `use_attn_in`).
pub(crate) enum AttnInput<'a> {
    /// One `[batch, pos, d_model]` input for q, k and v: one fused matmul.
    Shared(&'a Tensor),
    /// Separate `[batch, pos, d_model]` inputs for q, k and v (the differentiable path,
    /// where ln1 runs once per input as in TransformerLens).
    Separate(Tensor, Tensor, Tensor),
    /// Per-head `[batch, pos, head, d_model]` inputs for q, k and v.
    PerHead(Tensor, Tensor, Tensor),
}

/// The additive mask for one forward pass: 0 where a query may attend a key, `-inf`
/// elsewhere; `[query, key]`, or `[batch, 1, query, key]` with padding.
pub(crate) struct AttnMask {
    pub(crate) additive: Tensor,
    /// With padding, a query row can have every key masked; softmax then gives NaN,
    /// which TransformerLens replaces by 0.
    pub(crate) may_have_empty_rows: bool,
}

/// Keys and values of earlier positions, `[batch, head, pos, d_head]` each.
pub(crate) type PastKv = (Tensor, Tensor);

impl Attention {
    /// Per-head weights `[n_heads, d_model, d_head]` of `which` (0 = Q, 1 = K, 2 = V).
    pub(crate) fn w_head(&self, which: usize) -> candle_core::Result<Tensor> {
        let d = self.n_heads * self.d_head;
        let d_model = self.w_qkv.dim(0)?;
        self.w_qkv
            .narrow(1, which * d, d)?
            .contiguous()?
            .reshape((d_model, self.n_heads, self.d_head))?
            .permute((1, 0, 2))?
            .contiguous()
    }

    /// Per-head biases `[n_heads, d_head]` of `which` (0 = Q, 1 = K, 2 = V).
    pub(crate) fn b_head(&self, which: usize) -> candle_core::Result<Tensor> {
        let d = self.n_heads * self.d_head;
        self.b_qkv.narrow(0, which * d, d)?.reshape((self.n_heads, self.d_head))
    }

    /// TransformerLens's `W_O` `[n_heads, d_head, d_model]`.
    pub(crate) fn w_o_heads(&self) -> candle_core::Result<Tensor> {
        let d_model = self.w_o.dim(1)?;
        self.w_o.reshape((self.n_heads, self.d_head, d_model))
    }

    /// Attention output `[batch, pos, d_model]`, and the keys and values of all
    /// positions so far (`past` followed by these) for a KV cache.
    pub(crate) fn forward(
        &self,
        input: AttnInput<'_>,
        mask: &AttnMask,
        past: Option<&PastKv>,
    ) -> candle_core::Result<(Tensor, PastKv)> {
        let (q, k, v) = match input {
            AttnInput::Shared(x) => {
                let (b, p, _) = x.dims3()?;
                let qkv = linear(x, &self.w_qkv, Some(&self.b_qkv))?.reshape((b, p, 3, self.n_heads, self.d_head))?;
                (
                    qkv.narrow(2, 0, 1)?.squeeze(2)?,
                    qkv.narrow(2, 1, 1)?.squeeze(2)?,
                    qkv.narrow(2, 2, 1)?.squeeze(2)?,
                )
            }
            AttnInput::Separate(qi, ki, vi) => {
                let (b, p, _) = qi.dims3()?;
                let d = self.n_heads * self.d_head;
                let one = |x: &Tensor, which: usize| -> candle_core::Result<Tensor> {
                    let w = self.w_qkv.narrow(1, which * d, d)?.contiguous()?;
                    let bias = self.b_qkv.narrow(0, which * d, d)?;
                    linear(x, &w, Some(&bias))?.reshape((b, p, self.n_heads, self.d_head))
                };
                (one(&qi, 0)?, one(&ki, 1)?, one(&vi, 2)?)
            }
            AttnInput::PerHead(qi, ki, vi) => (
                per_head_linear(&qi, &self.w_head(0)?, &self.b_head(0)?)?,
                per_head_linear(&ki, &self.w_head(1)?, &self.b_head(1)?)?,
                per_head_linear(&vi, &self.w_head(2)?, &self.b_head(2)?)?,
            ),
        };
        let q = self.hook_q.forward(&q)?;
        let k = self.hook_k.forward(&k)?;
        let v = self.hook_v.forward(&v)?;
        let (b, p, _, _) = q.dims4()?;
        let dtype = q.dtype();
        // TransformerLens computes scores in f32 for half-precision models.
        let score_dtype = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let scale = 1.0 / (self.d_head as f64).sqrt();
        // On the CPU in f32 without gradients, the two products read q, k and v where
        // they are and write z in its own layout (see `attention_products`).
        let strided =
            p > 1 && dtype == DType::F32 && kernels::fast_path(&q) && kernels::fast_path(&k) && kernels::fast_path(&v);
        let (k_, v_, raw_scores) = if strided {
            // [b, h, L, d_head] views, or copies after the cached keys and values.
            let (k_, v_) = match past {
                Some((pk, pv)) => (
                    Tensor::cat(&[pk, &k.transpose(1, 2)?], 2)?,
                    Tensor::cat(&[pv, &v.transpose(1, 2)?], 2)?,
                ),
                None => (k.transpose(1, 2)?, v.transpose(1, 2)?),
            };
            let scores = super::attention_scores(&q, &k_.transpose(1, 2)?, scale as f32)?;
            (k_, v_, scores)
        } else {
            // Scaling q rather than the scores is exact for GPT-2's d_head (a power of 4)
            // and turns the transpose into a contiguous copy for free.
            let q_ = (q.transpose(1, 2)?.to_dtype(score_dtype)? * scale)?;
            let k_ = k.transpose(1, 2)?.to_dtype(score_dtype)?.contiguous()?;
            let v_ = v.transpose(1, 2)?.contiguous()?;
            let (k_, v_) = match past {
                Some((pk, pv)) => (Tensor::cat(&[pk, &k_], 2)?, Tensor::cat(&[pv, &v_], 2)?),
                None => (k_, v_),
            };
            // One query per sequence (a decoding step): products and sums instead of two
            // batched matmuls, each of which costs candle more in setup (it re-reads the
            // CPU count) than the arithmetic; see `z` below.
            let raw_scores = if p == 1 && kernels::fast_path(&q_) && kernels::fast_path(&v_) {
                // [b, h, 1, dh] * [b, h, L, dh] summed over dh -> [b, h, L] -> [b, h, 1, L].
                let l = k_.dim(2)?;
                k_.broadcast_mul(&q_)?.sum(3)?.reshape((b, self.n_heads, 1, l))?
            } else {
                q_.matmul(&k_.t()?)?
            };
            (k_, v_, raw_scores)
        };
        let scores = kernels::add_mask_owned(raw_scores, &mask.additive.to_dtype(score_dtype)?)?;
        let pattern = if self.hook_attn_scores.is_idle() {
            // Nothing can have kept the fresh scores: the pattern overwrites them.
            kernels::softmax_last_dim_owned(scores, mask.may_have_empty_rows)?
        } else {
            let hooked_scores = self.hook_attn_scores.forward(&scores)?;
            // Rows whose keys are all masked (padding, or a hook's edit) give 0, not
            // NaN, as in TransformerLens.
            let may_have_empty_rows = mask.may_have_empty_rows || hooked_scores.id() != scores.id();
            kernels::softmax_last_dim(&hooked_scores, may_have_empty_rows)?
        };
        let pattern = self.hook_pattern.forward(&pattern)?.to_dtype(dtype)?;
        let z = match attention_products::pattern_times_v(&pattern, &v_.transpose(1, 2)?) {
            Some(z) => z?,
            None if p == 1 && kernels::fast_path(&v_) => {
                // [b, h, 1, L] -> [b, h, L, 1] times [b, h, L, dh], summed over L -> [b, 1, h, dh].
                let l = v_.dim(2)?;
                let weights = pattern.reshape((b, self.n_heads, l, 1))?;
                v_.broadcast_mul(&weights)?
                    .sum(2)?
                    .reshape((b, 1, self.n_heads, self.d_head))?
            }
            None => pattern
                .contiguous()?
                .matmul(&v_.contiguous()?)?
                .transpose(1, 2)?
                .contiguous()?,
        };
        let z = self.hook_z.forward(&z)?;
        let d_model = self.w_o.dim(1)?;
        let out = match &self.hook_result {
            Some(hook_result) => {
                let n = b * p;
                let zt = z
                    .permute((2, 0, 1, 3))?
                    .contiguous()?
                    .reshape((self.n_heads, n, self.d_head))?;
                let result = zt
                    .matmul(&self.w_o_heads()?)?
                    .reshape((self.n_heads, b, p, d_model))?
                    .permute((1, 2, 0, 3))?;
                let result = hook_result.forward(&result)?;
                result.sum(2)?.broadcast_add(&self.b_o)?
            }
            None => linear(
                &z.reshape((b, p, self.n_heads * self.d_head))?,
                &self.w_o,
                Some(&self.b_o),
            )?,
        };
        Ok((out, (k_, v_)))
    }
}

/// TransformerLens's `complex_attn_linear`: `x` `[batch, pos, head, d_model]`, `w`
/// `[head, d_model, d_head]`, `b` `[head, d_head]` -> `[batch, pos, head, d_head]`.
fn per_head_linear(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (batch, pos, heads, d_model) = x.dims4()?;
    let d_head = w.dim(2)?;
    x.permute((2, 0, 1, 3))?
        .contiguous()?
        .reshape((heads, batch * pos, d_model))?
        .matmul(w)?
        .reshape((heads, batch, pos, d_head))?
        .permute((1, 2, 0, 3))?
        .broadcast_add(b)
}

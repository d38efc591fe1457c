//! Causal self-attention with TransformerLens's hook points: multi-head, grouped-query
//! or multi-query, with rotary embeddings, sliding windows, soft-capped scores and
//! per-head q/k norms where the config asks for them.

use candle_core::{DType, Tensor};
use hooklens_core::HookPoint;

use super::norm::Norm;
use super::rotary::{Rotary, RotaryTables};
use crate::config::QkNormOver;
use crate::ops::{attention_products, kernels, linear};

/// Causal self-attention. The weights are kept in the layout that is fastest here:
/// q, k and v come out of one `[d_model, (n_heads + 2 n_kv) * d_head]` matmul.
/// TransformerLens's per-head views are computed from them on demand (see `weights.rs`).
/// Field order is TransformerLens's registration order.
#[derive(Debug, hooklens_derive::Hooked)]
#[hooked(crate = "hooklens_core")]
pub struct Attention {
    /// `[d_model, (n_heads + 2 n_kv) * d_head]`: columns are q | k | v, each head-major
    /// (`head*d_head + i`).
    pub(crate) w_qkv: Tensor,
    /// `[(n_heads + 2 n_kv) * d_head]`: `b_Q | b_K | b_V`.
    pub(crate) b_qkv: Tensor,
    /// `[n_heads*d_head, d_model]`: TransformerLens's `W_O` flattened over heads.
    pub(crate) w_o: Tensor,
    /// `[d_model]`.
    pub(crate) b_o: Tensor,
    /// Whether `b_qkv` / `b_o` are not all zeros (else their additions are skipped).
    pub(crate) biases_used: (bool, bool),
    pub(crate) n_heads: usize,
    /// Key/value heads: `n_heads` unless grouped-query.
    pub(crate) n_kv_heads: usize,
    pub(crate) d_head: usize,
    /// Scores are multiplied by this: `1 / attn_scale`.
    pub(crate) scale: f64,
    /// `cap * tanh(scores / cap)` before the mask.
    pub(crate) soft_cap: Option<f64>,
    /// The rotary embedding, for rotary models.
    pub(crate) rotary: Option<Rotary>,
    /// Whether `q_norm` / `k_norm` normalise each head or a position's whole projection.
    pub(crate) qk_norm_over: QkNormOver,
    /// RMSNorm over each query head (`use_qk_norm`); its hooks see
    /// `[batch*pos*n_heads, d_head]` rows, as TransformerLens's (over the whole
    /// projection, `qk_norm_over`: `[batch*pos, n_heads*d_head]`).
    pub q_norm: Option<Norm>,
    /// RMSNorm over each key head (`use_qk_norm`), `[batch*pos*n_kv_heads, d_head]` rows
    /// (over the whole projection: `[batch*pos, n_kv_heads*d_head]`).
    pub k_norm: Option<Norm>,
    /// Per-head sink logits `[n_heads]` (gpt-oss): each joins its head's softmax as an
    /// extra key column that is then dropped, so pattern rows sum to less than 1.
    pub(crate) sinks: Option<Tensor>,
    /// Keys `[batch, pos, kv_head, d_head]`.
    pub hook_k: HookPoint,
    /// Queries `[batch, pos, head, d_head]`.
    pub hook_q: HookPoint,
    /// Values `[batch, pos, kv_head, d_head]`.
    pub hook_v: HookPoint,
    /// Pattern-weighted values `[batch, pos, head, d_head]`.
    pub hook_z: HookPoint,
    /// Scores after the scale, any soft cap and the causal mask (`-inf`), `[batch, head, query, key]`.
    pub hook_attn_scores: HookPoint,
    /// Attention pattern after softmax, `[batch, head, query, key]`.
    pub hook_pattern: HookPoint,
    /// Per-head output `[batch, pos, head, d_model]`; only with `use_attn_result`.
    pub hook_result: Option<HookPoint>,
    /// Keys after rotary `[batch, key_pos, kv_head, d_head]` (every cached key too); rotary models only.
    pub hook_rot_k: Option<HookPoint>,
    /// Queries after rotary `[batch, pos, head, d_head]`; rotary models only.
    pub hook_rot_q: Option<HookPoint>,
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
/// elsewhere; `[query, key]`, or `[batch, 1, query, key]` with padding. ALiBi models
/// carry their biases in it instead of 0: `[1 or batch, head, query, key]`.
pub(crate) struct AttnMask {
    pub(crate) additive: Tensor,
    /// With padding, a query row can have every key masked; softmax then gives NaN,
    /// which TransformerLens replaces by 0.
    pub(crate) may_have_empty_rows: bool,
}

/// Keys (before rotary) and values of every position so far, `[batch, pos, kv_head,
/// d_head]` each, as TransformerLens's KV cache holds them.
pub(crate) type PastKv = (Tensor, Tensor);

/// What every layer's attention shares in one forward pass.
pub(crate) struct AttnContext<'a> {
    /// The mask of this layer (global, or its sliding window).
    pub(crate) mask: &'a AttnMask,
    /// Rotary tables for the new queries `[1|batch, pos, 1, rotary_dim]`.
    pub(crate) rot_q: Option<&'a RotaryTables>,
    /// Rotary tables for every key so far `[1|batch, keys, 1, rotary_dim]`.
    pub(crate) rot_k: Option<&'a RotaryTables>,
}

impl Attention {
    /// Heads of `which` (0 = Q, 1 = K, 2 = V): `n_heads` or `n_kv_heads`.
    fn heads_of(&self, which: usize) -> usize {
        if which == 0 {
            self.n_heads
        } else {
            self.n_kv_heads
        }
    }

    /// The column range of `which` in `w_qkv`.
    fn columns_of(&self, which: usize) -> (usize, usize) {
        let q = self.n_heads * self.d_head;
        let kv = self.n_kv_heads * self.d_head;
        match which {
            0 => (0, q),
            1 => (q, kv),
            _ => (q + kv, kv),
        }
    }

    /// Per-head weights of `which` (0 = Q, 1 = K, 2 = V) as stored:
    /// `[n_heads or n_kv_heads, d_model, d_head]` (TransformerLens's `_W_K` for GQA).
    pub(crate) fn w_head_stored(&self, which: usize) -> candle_core::Result<Tensor> {
        let (start, len) = self.columns_of(which);
        let d_model = self.w_qkv.dim(0)?;
        self.w_qkv
            .narrow(1, start, len)?
            .contiguous()?
            .reshape((d_model, self.heads_of(which), self.d_head))?
            .permute((1, 0, 2))?
            .contiguous()
    }

    /// Per-head biases of `which` as stored, `[n_heads or n_kv_heads, d_head]`.
    pub(crate) fn b_head_stored(&self, which: usize) -> candle_core::Result<Tensor> {
        let (start, len) = self.columns_of(which);
        self.b_qkv
            .narrow(0, start, len)?
            .reshape((self.heads_of(which), self.d_head))
    }

    /// Per-head weights `[n_heads, d_model, d_head]` of `which` (0 = Q, 1 = K, 2 = V):
    /// grouped key/value heads repeated for the query heads that read them, as
    /// TransformerLens's `W_K` / `W_V` properties.
    pub(crate) fn w_head(&self, which: usize) -> candle_core::Result<Tensor> {
        self.repeat_kv(self.w_head_stored(which)?, which)
    }

    /// Per-head biases `[n_heads, d_head]` of `which`, grouped heads repeated.
    pub(crate) fn b_head(&self, which: usize) -> candle_core::Result<Tensor> {
        self.repeat_kv(self.b_head_stored(which)?, which)
    }

    /// `t` `[kv_heads, ..]` -> `[n_heads, ..]` for keys and values (`which` 1 or 2);
    /// queries (`which` 0) as they are.
    fn repeat_kv(&self, t: Tensor, which: usize) -> candle_core::Result<Tensor> {
        if which == 0 {
            return Ok(t);
        }
        self.repeat_heads(t, 0)
    }

    /// `t` with its key/value head axis `axis` (`n_kv_heads` long) repeated for the
    /// query heads of each group (a copy, TransformerLens's `repeat_interleave`), or
    /// `t` itself without grouping.
    fn repeat_heads(&self, t: Tensor, axis: usize) -> candle_core::Result<Tensor> {
        let group = self.n_heads / self.n_kv_heads;
        if group == 1 {
            return Ok(t);
        }
        let mut dims = t.dims().to_vec();
        let mut expanded = dims.clone();
        expanded.insert(axis + 1, group);
        dims[axis] = self.n_heads;
        t.unsqueeze(axis + 1)?
            .broadcast_as(expanded)?
            .contiguous()?
            .reshape(dims)
    }

    /// TransformerLens's `W_O` `[n_heads, d_head, d_model]`.
    pub(crate) fn w_o_heads(&self) -> candle_core::Result<Tensor> {
        let d_model = self.w_o.dim(1)?;
        self.w_o.reshape((self.n_heads, self.d_head, d_model))
    }

    /// A q/k norm: `x` `[batch, pos, heads, d_head]` flattened to rows as
    /// TransformerLens does (one per head, or one per position over every head with
    /// `QkNormOver::Projection`), normalised, and shaped back.
    fn head_norm(&self, norm: &Norm, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let (rows, width) = match self.qk_norm_over {
            QkNormOver::Heads => (dims[0] * dims[1] * dims[2], dims[3]),
            QkNormOver::Projection => (dims[0] * dims[1], dims[2] * dims[3]),
        };
        norm.forward(&x.reshape((rows, width))?)?.reshape(dims)
    }

    /// Attention output `[batch, pos, d_model]`, and the keys (before rotary) and
    /// values of all positions so far (`past` followed by these) for a KV cache.
    pub(crate) fn forward(
        &self,
        input: AttnInput<'_>,
        ctx: &AttnContext<'_>,
        past: Option<&PastKv>,
    ) -> candle_core::Result<(Tensor, PastKv)> {
        let (q, k, v) = self.project(input)?;
        let q = self.hook_q.forward(&q)?;
        let k = self.hook_k.forward(&k)?;
        let v = self.hook_v.forward(&v)?;
        let (q, k) = match (&self.q_norm, &self.k_norm) {
            (Some(qn), Some(kn)) => (self.head_norm(qn, &q)?, self.head_norm(kn, &k)?),
            _ => (q, k),
        };
        let (b, p, _, _) = q.dims4()?;
        // The cache holds keys before rotary: every key is rotated again below, as
        // TransformerLens does (so `hook_rot_k` sees every key so far).
        let (k_all, v_all) = with_past(past, k, v)?;
        let new_past = (k_all.clone(), v_all.clone());
        let (q, k_all) = self.rotate(q, k_all, ctx)?;
        // [batch, keys, kv_head, d_head] -> [batch, keys, head, d_head].
        let k_all = self.repeat_heads(k_all, 2)?;
        let v_all = self.repeat_heads(v_all, 2)?;
        let dtype = q.dtype();
        // TransformerLens computes scores in f32 for half-precision models.
        let score_dtype = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let raw_scores = self.raw_scores(&q, &k_all, &v_all, score_dtype)?;
        let pattern = self.pattern(raw_scores, ctx.mask, score_dtype)?;
        let pattern = self.hook_pattern.forward(&pattern)?.to_dtype(dtype)?;
        let z = self.weigh_values(&pattern, &v_all, b, p)?;
        let z = self.hook_z.forward(&z)?;
        let out = self.output(&z, b, p)?;
        Ok((out, new_past))
    }

    /// Queries, keys and values `[batch, pos, heads, d_head]` of `input`.
    fn project(&self, input: AttnInput<'_>) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (h, kv, dh) = (self.n_heads, self.n_kv_heads, self.d_head);
        Ok(match input {
            AttnInput::Shared(x) => {
                let (b, p, _) = x.dims3()?;
                // One product; q, k and v are views of it.
                let b_qkv = self.biases_used.0.then_some(&self.b_qkv);
                let qkv = linear(x, &self.w_qkv, b_qkv)?.reshape((b, p, h + 2 * kv, dh))?;
                (qkv.narrow(2, 0, h)?, qkv.narrow(2, h, kv)?, qkv.narrow(2, h + kv, kv)?)
            }
            AttnInput::Separate(qi, ki, vi) => {
                let (b, p, _) = qi.dims3()?;
                let one = |x: &Tensor, which: usize| -> candle_core::Result<Tensor> {
                    let (start, len) = self.columns_of(which);
                    let w = self.w_qkv.narrow(1, start, len)?.contiguous()?;
                    let bias = self.b_qkv.narrow(0, start, len)?;
                    linear(x, &w, Some(&bias))?.reshape((b, p, self.heads_of(which), dh))
                };
                (one(&qi, 0)?, one(&ki, 1)?, one(&vi, 2)?)
            }
            AttnInput::PerHead(qi, ki, vi) => (
                per_head_linear(&qi, &self.w_head_stored(0)?, &self.b_head_stored(0)?)?,
                per_head_linear(&ki, &self.w_head_stored(1)?, &self.b_head_stored(1)?)?,
                per_head_linear(&vi, &self.w_head_stored(2)?, &self.b_head_stored(2)?)?,
            ),
        })
    }

    /// Queries and keys after rotary (and their hooks), for rotary models; else as they are.
    fn rotate(&self, q: Tensor, k_all: Tensor, ctx: &AttnContext<'_>) -> candle_core::Result<(Tensor, Tensor)> {
        Ok(match (&self.rotary, ctx.rot_q, ctx.rot_k) {
            (Some(rot), Some(tq), Some(tk)) => {
                let q = rot.apply(&q, tq)?;
                let k = rot.apply(&k_all, tk)?;
                let q = match &self.hook_rot_q {
                    Some(hp) => hp.forward(&q)?,
                    None => q,
                };
                let k = match &self.hook_rot_k {
                    Some(hp) => hp.forward(&k)?,
                    None => k,
                };
                (q, k)
            }
            _ => (q, k_all),
        })
    }

    /// Scaled (and soft-capped) scores `[batch, head, query, key]` in `score_dtype`,
    /// before the mask.
    fn raw_scores(
        &self,
        q: &Tensor,
        k_all: &Tensor,
        v_all: &Tensor,
        score_dtype: DType,
    ) -> candle_core::Result<Tensor> {
        let (b, p, _, _) = q.dims4()?;
        let h = self.n_heads;
        let scale = self.scale;
        // On the CPU in f32 without gradients, the two products read q, k and v where
        // they are and write z in its own layout (see `attention_products`).
        let strided = p > 1
            && q.dtype() == DType::F32
            && kernels::fast_path(q)
            && kernels::fast_path(k_all)
            && kernels::fast_path(v_all);
        let raw_scores = if strided {
            crate::ops::attention_scores(q, k_all, scale as f32)?
        } else {
            let q_ = (q.transpose(1, 2)?.to_dtype(score_dtype)? * scale)?;
            let k_ = k_all.transpose(1, 2)?.to_dtype(score_dtype)?.contiguous()?;
            // One query per sequence (a decoding step): products and sums instead of a
            // batched matmul, which costs candle more in setup than the arithmetic.
            if p == 1 && kernels::fast_path(&q_) && kernels::fast_path(&k_) {
                // [b, h, 1, dh] * [b, h, L, dh] summed over dh -> [b, h, L] -> [b, h, 1, L].
                let l = k_.dim(2)?;
                k_.broadcast_mul(&q_)?.sum(3)?.reshape((b, h, 1, l))?
            } else {
                q_.matmul(&k_.t()?)?
            }
        };
        Ok(match self.soft_cap {
            Some(cap) => ((raw_scores / cap)?.tanh()? * cap)?,
            None => raw_scores,
        })
    }

    /// The attention pattern of `raw_scores`: masked, through `hook_attn_scores`, and
    /// softmaxed with any sinks.
    fn pattern(&self, raw_scores: Tensor, mask: &AttnMask, score_dtype: DType) -> candle_core::Result<Tensor> {
        let scores = kernels::add_mask_owned(raw_scores, &mask.additive.to_dtype(score_dtype)?)?;
        if let Some(sinks) = &self.sinks {
            // `hook_attn_scores` has the real keys only; the sink column is added for
            // the softmax and dropped after it.
            let scores = self.hook_attn_scores.forward(&scores)?;
            let (b, h, q, k) = scores.dims4()?;
            let sink = sinks
                .to_dtype(scores.dtype())?
                .reshape((1, h, 1, 1))?
                .broadcast_as((b, h, q, 1))?;
            let with_sink = Tensor::cat(&[&scores, &sink.contiguous()?], 3)?;
            candle_nn::ops::softmax(&with_sink, candle_core::D::Minus1)?
                .narrow(3, 0, k)?
                .contiguous()
        } else if self.hook_attn_scores.is_idle() {
            // Nothing can have kept the fresh scores: the pattern overwrites them.
            kernels::softmax_last_dim_owned(scores, mask.may_have_empty_rows)
        } else {
            let hooked_scores = self.hook_attn_scores.forward(&scores)?;
            // Rows whose keys are all masked (padding, or a hook's edit) give 0, not
            // NaN, as in TransformerLens.
            let may_have_empty_rows = mask.may_have_empty_rows || hooked_scores.id() != scores.id();
            kernels::softmax_last_dim(&hooked_scores, may_have_empty_rows)
        }
    }

    /// `z` `[batch, pos, head, d_head]`: the values weighted by the pattern.
    fn weigh_values(&self, pattern: &Tensor, v_all: &Tensor, b: usize, p: usize) -> candle_core::Result<Tensor> {
        let (h, dh) = (self.n_heads, self.d_head);
        Ok(match attention_products::pattern_times_v(pattern, v_all) {
            Some(z) => z?,
            None if p == 1 && kernels::fast_path(v_all) => {
                // [b, h, 1, L] -> [b, h, L, 1] times [b, h, L, dh], summed over L -> [b, 1, h, dh].
                let v_ = v_all.transpose(1, 2)?.contiguous()?;
                let l = v_.dim(2)?;
                let weights = pattern.reshape((b, h, l, 1))?;
                v_.broadcast_mul(&weights)?.sum(2)?.reshape((b, 1, h, dh))?
            }
            None => pattern
                .contiguous()?
                .matmul(&v_all.transpose(1, 2)?.contiguous()?)?
                .transpose(1, 2)?
                .contiguous()?,
        })
    }

    /// The output `[batch, pos, d_model]` of `z`, through `hook_result` per head when
    /// it exists.
    fn output(&self, z: &Tensor, b: usize, p: usize) -> candle_core::Result<Tensor> {
        let (h, dh) = (self.n_heads, self.d_head);
        let d_model = self.w_o.dim(1)?;
        match &self.hook_result {
            Some(hook_result) => {
                let n = b * p;
                let zt = z.permute((2, 0, 1, 3))?.contiguous()?.reshape((h, n, dh))?;
                let result = zt
                    .matmul(&self.w_o_heads()?)?
                    .reshape((h, b, p, d_model))?
                    .permute((1, 2, 0, 3))?;
                let result = hook_result.forward(&result)?;
                result.sum(2)?.broadcast_add(&self.b_o)
            }
            None => linear(
                &z.reshape((b, p, h * dh))?,
                &self.w_o,
                self.biases_used.1.then_some(&self.b_o),
            ),
        }
    }
}

/// The keys and values of every position so far: `past`'s followed by `k` and `v`.
fn with_past(past: Option<&PastKv>, k: Tensor, v: Tensor) -> candle_core::Result<PastKv> {
    // Contiguous pieces: candle concatenates those with block copies, anything else
    // element by element into a transposed result that every later step copies again.
    Ok(match past {
        Some((pk, pv)) => (
            Tensor::cat(&[&pk.contiguous()?, &k.contiguous()?], 1)?,
            Tensor::cat(&[&pv.contiguous()?, &v.contiguous()?], 1)?,
        ),
        None => (k, v),
    })
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

//! The sparse mixture-of-experts MLP (Mixtral, Qwen3-MoE, OLMoE) with TransformerLens's
//! Mixtral hook points, switched on by `num_experts` in the config.
//!
//! Per token (rows `b * pos + p` of the MLP input flattened to `[batch*pos, d_model]`):
//! the router's logits `x @ W_router`, their softmax over **all** experts (in f32, as
//! TransformerLens and Hugging Face compute it), its `k` largest entries (largest first)
//! as the chosen experts, and those `k` probabilities as the mixing weights, divided by
//! their sum when `norm_topk_prob`. The output is `sum_j mix_j * expert_{idx_j}(x)`, each
//! expert a gated MLP `W_out · (act(x · W_gate) * (x · W_in))`.
//!
//! Each expert computes only the rows routed to it: they are gathered (`index_select`),
//! multiplied, scaled by their mixing weights and added back into their tokens' rows
//! (`index_add`), in one gather and one scatter for all experts together.

use candle_core::{DType, Tensor};
use hooklens_core::HookPoint;

use super::activation::activate;
use crate::config::{ActFn, ClampedSwiglu, TransformerConfig};
use crate::ops::kernels;
use crate::params::MoeWeights;

/// One expert: a gated MLP over the rows routed to it, with TransformerLens's Mixtral
/// hook points. Every point is `[n_e, d_mlp]`, `n_e` the number of (token, slot) pairs
/// routed to this expert: first the tokens that have it as their top-1 choice (in
/// ascending row order `b * pos + p`), then those that have it as their top-2, and so on
/// (`[0, d_mlp]` when no token chose it).
#[derive(Debug, hooklens_derive::Hooked)]
#[hooked(crate = "hooklens_core")]
pub struct Expert {
    /// `[d_model, d_mlp]`: the gate (Mixtral's `w1`, `gate_proj`).
    pub(crate) w_gate: Tensor,
    /// `[d_model, d_mlp]`: the up projection (Mixtral's `w3`, `up_proj`).
    pub(crate) w_in: Tensor,
    /// `[d_mlp, d_model]`: the down projection (Mixtral's `w2`, `down_proj`).
    pub(crate) w_out: Tensor,
    /// `[d_mlp]`, `[d_mlp]`, `[d_model]`: biases of the gate, up and down projections
    /// (gpt-oss).
    pub(crate) biases: Option<(Tensor, Tensor, Tensor)>,
    /// `x @ W_gate`, before the activation, `[n_e, d_mlp]` (with its bias where there
    /// is one).
    pub hook_gate: HookPoint,
    /// `x @ W_in`, the linear branch, `[n_e, d_mlp]` (the reverse of the dense gated MLP,
    /// where `hook_pre` is the gate: TransformerLens's Mixtral names).
    pub hook_pre: HookPoint,
    /// `act(gate) * pre`, `[n_e, d_mlp]`.
    pub hook_post: HookPoint,
}

/// A mixture of experts: the router and the experts of one block, reached as
/// `blocks.L.mlp.*` (see [`super::Mlp`], which holds it). Registration order:
/// `hook_router_logits`, `experts.{e}.hook_gate / hook_pre / hook_post` for each
/// expert, `hook_expert_weights`, `hook_expert_indices` (TransformerLens's Mixtral order
/// after the router logits, a point of ours).
///
/// Hooks steer the routing: what `hook_expert_weights` returns is what the top-k is
/// taken of (so a zeroed column ablates that expert: its tokens go to their next
/// choices), and what `hook_expert_indices` returns is where each token is sent, with
/// the mixing weights of the original choices' slots, as TransformerLens computes it.
/// With `moe_softmax_after_topk` (gpt-oss) `hook_expert_weights` holds the mixing
/// weights of the chosen experts themselves: zeroing one removes that expert's share
/// without sending the token elsewhere.
#[derive(Debug, hooklens_derive::Hooked)]
#[hooked(crate = "hooklens_core")]
pub struct Moe {
    /// `[d_model, n_experts]`.
    pub(crate) w_router: Tensor,
    /// `[n_experts]` (gpt-oss).
    pub(crate) b_router: Option<Tensor>,
    /// The top-k of the logits, then a softmax over those k (gpt-oss), instead of a
    /// softmax over all experts before the top-k.
    pub(crate) softmax_after_topk: bool,
    /// gpt-oss's clamped SwiGLU.
    pub(crate) swiglu: Option<ClampedSwiglu>,
    /// Experts per token.
    pub(crate) k: usize,
    /// Whether the top-k probabilities are divided by their sum.
    pub(crate) norm_topk_prob: bool,
    /// The experts' activation (applied to the gate).
    pub(crate) act_fn: ActFn,
    /// The router's output `x @ W_router`, `[batch*pos, n_experts]`. Not a
    /// TransformerLens point (its Mixtral hooks no logits).
    pub hook_router_logits: HookPoint,
    /// The experts, in index order.
    pub experts: Vec<Expert>,
    /// The router's softmax over all experts, f32, `[batch*pos, n_experts]`; with
    /// `moe_softmax_after_topk` (gpt-oss) its softmax over the k chosen logits, the
    /// mixing weights, `[batch*pos, k]`.
    pub hook_expert_weights: HookPoint,
    /// The chosen experts, largest probability first, int64 `[batch*pos, k]`.
    pub hook_expert_indices: HookPoint,
}

/// A hook point for rows flattened over batch and positions: `pos_slice` leaves it whole.
pub(crate) fn row_point() -> HookPoint {
    HookPoint::new().with_position_axis(None)
}

impl Expert {
    /// A new expert from its weights, hooks unnamed until the model names them.
    pub(crate) fn new(w_gate: Tensor, w_in: Tensor, w_out: Tensor, biases: Option<(Tensor, Tensor, Tensor)>) -> Self {
        Expert {
            w_gate,
            w_in,
            w_out,
            biases,
            hook_gate: row_point(),
            hook_pre: row_point(),
            hook_post: row_point(),
        }
    }

    /// The gate `W_gate` `[d_model, d_mlp]` (Mixtral's `w1` transposed).
    pub fn w_gate(&self) -> &Tensor {
        &self.w_gate
    }

    /// The up projection `W_in` `[d_model, d_mlp]` (Mixtral's `w3` transposed).
    pub fn w_in(&self) -> &Tensor {
        &self.w_in
    }

    /// The down projection `W_out` `[d_mlp, d_model]` (Mixtral's `w2` transposed).
    pub fn w_out(&self) -> &Tensor {
        &self.w_out
    }

    /// `[n, d_model]` -> `[n, d_model]`; `n` may be 0 (the hooks still fire, with
    /// `[0, d_mlp]`).
    fn forward(&self, x: &Tensor, act_fn: ActFn, swiglu: Option<ClampedSwiglu>) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        let d_mlp = self.w_in.dim(1)?;
        if n == 0 {
            let empty = Tensor::zeros((0, d_mlp), x.dtype(), x.device())?;
            self.hook_gate.forward(&empty)?;
            self.hook_pre.forward(&empty)?;
            self.hook_post.forward(&empty)?;
            return Tensor::zeros((0, self.w_out.dim(1)?), x.dtype(), x.device());
        }
        if let (Some(ClampedSwiglu { limit, alpha }), Some((b_gate, b_in, b_out))) = (swiglu, &self.biases) {
            // gpt-oss: `(clamp(up, -l, l) + 1) * g * sigmoid(alpha g)`, `g = min(gate, l)`.
            let gate = crate::ops::matmul(x, &self.w_gate)?.broadcast_add(b_gate)?;
            let gate = self.hook_gate.forward(&gate)?;
            let up = crate::ops::matmul(x, &self.w_in)?.broadcast_add(b_in)?;
            let up = self.hook_pre.forward(&up)?;
            let g = gate.minimum(limit)?;
            let glu = (&g * candle_nn::ops::sigmoid(&(&g * alpha)?)?)?;
            let post = ((up.clamp(-limit, limit)? + 1.0)? * glu)?;
            let post = self.hook_post.forward(&post)?;
            return crate::ops::matmul(&post, &self.w_out)?.broadcast_add(b_out);
        }
        let gate = self.hook_gate.forward(&crate::ops::matmul(x, &self.w_gate)?)?;
        let fresh = crate::ops::matmul(x, &self.w_in)?;
        let silu = match act_fn {
            ActFn::Silu => Some(true),
            ActFn::GeluNew => Some(false),
            _ => None,
        };
        // As the dense gated MLP: with nothing watching the up projection, the product
        // is written over it.
        let fused = silu
            .filter(|_| self.hook_pre.is_idle())
            .and_then(|silu| kernels::gated_product_owned(&gate, fresh.clone(), silu));
        let post = match fused {
            Some(p) => p?,
            None => {
                let pre = self.hook_pre.forward(&fresh)?;
                match silu.and_then(|silu| kernels::gated_product(&gate, &pre, silu)) {
                    Some(p) => p?,
                    None => (activate(act_fn, &gate)? * pre)?,
                }
            }
        };
        let post = self.hook_post.forward(&post)?;
        crate::ops::matmul(&post, &self.w_out)
    }
}

/// The `k` largest entries of each row of `probs` (`n_experts` per row), largest
/// first; ties go to the lower index.
fn top_k(probs: &[f32], n_experts: usize, k: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(probs.len() / n_experts.max(1) * k);
    let mut order: Vec<u32> = Vec::with_capacity(n_experts);
    for row in probs.chunks_exact(n_experts) {
        order.clear();
        order.extend(0..n_experts as u32);
        // Stable, descending; NaN (which no softmax of finite logits gives) sorts last.
        order.sort_by(|&a, &b| {
            let (x, y) = (row[a as usize], row[b as usize]);
            y.partial_cmp(&x).unwrap_or_else(|| x.is_nan().cmp(&y.is_nan()))
        });
        out.extend_from_slice(&order[..k]);
    }
    out
}

impl Moe {
    /// One `Some(Moe)` per layer from the converter's `weights` (empty: a dense model,
    /// `None` for each of `n_layers`), checked against `cfg`.
    pub(crate) fn from_weights(
        cfg: &TransformerConfig,
        weights: Vec<MoeWeights>,
        n_layers: usize,
    ) -> hooklens_core::Result<Vec<Option<Moe>>> {
        let (Some(n_experts), Some(k)) = (cfg.num_experts, cfg.experts_per_token) else {
            if !weights.is_empty() {
                return Err(hooklens_core::Error::invalid(
                    "weights: experts given for a config without num_experts",
                ));
            }
            return Ok((0..n_layers).map(|_| None).collect());
        };
        if weights.len() != n_layers {
            return Err(hooklens_core::Error::invalid(format!(
                "weights: {} mixture-of-experts layers for a model of {n_layers} layers (num_experts = {n_experts})",
                weights.len()
            )));
        }
        weights
            .into_iter()
            .map(|m| {
                if m.experts.len() != n_experts || m.w_router.dims() != [cfg.d_model, n_experts] {
                    return Err(hooklens_core::Error::invalid(format!(
                        "weights: {} experts and a router {:?} for num_experts = {n_experts}, d_model = {}",
                        m.experts.len(),
                        m.w_router.dims(),
                        cfg.d_model
                    )));
                }
                if cfg.moe_clamped_swiglu.is_some() && m.experts.iter().any(|e| e.b_gate.is_none()) {
                    return Err(hooklens_core::Error::invalid(
                        "weights: moe_clamped_swiglu (gpt-oss's experts) needs the experts' biases",
                    ));
                }
                Ok(Some(Moe {
                    w_router: m.w_router,
                    b_router: m.b_router,
                    softmax_after_topk: cfg.moe_softmax_after_topk,
                    swiglu: cfg.moe_clamped_swiglu,
                    k,
                    norm_topk_prob: cfg.norm_topk_prob,
                    act_fn: cfg.act_fn,
                    hook_router_logits: row_point(),
                    experts: m
                        .experts
                        .into_iter()
                        .map(|e| {
                            let biases = match (e.b_gate, e.b_in, e.b_out) {
                                (Some(g), Some(i), Some(o)) => Some((g, i, o)),
                                _ => None,
                            };
                            Expert::new(e.w_gate, e.w_in, e.w_out, biases)
                        })
                        .collect(),
                    hook_expert_weights: row_point(),
                    hook_expert_indices: row_point(),
                }))
            })
            .collect()
    }

    /// The router `[d_model, n_experts]`: `hook_router_logits` is `x @ w_router`.
    pub fn w_router(&self) -> &Tensor {
        &self.w_router
    }

    /// The number of experts.
    pub fn n_experts(&self) -> usize {
        self.experts.len()
    }

    /// Experts per token.
    pub fn experts_per_token(&self) -> usize {
        self.k
    }

    /// `[batch, pos, d_model]` -> `[batch, pos, d_model]`.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let d_model = *dims.last().unwrap_or(&0);
        let x = x.reshape(((), d_model))?;
        let n = x.dim(0)?;
        let (n_experts, k) = (self.experts.len(), self.k);
        let logits = crate::ops::matmul(&x, &self.w_router)?;
        let logits = match &self.b_router {
            Some(b) => logits.broadcast_add(b)?,
            None => logits,
        };
        let logits = self.hook_router_logits.forward(&logits)?;
        // The routing is in f32 whatever the model's dtype, as in TransformerLens and
        // Hugging Face (`softmax(.., dtype=torch.float)`).
        let (chosen, mix) = if self.softmax_after_topk {
            // gpt-oss: the k largest logits, and their softmax as the mixing weights.
            let logits = logits.to_dtype(DType::F32)?.contiguous()?;
            let chosen = top_k(&logits.flatten_all()?.to_vec1::<f32>()?, n_experts, k);
            let chosen_t = Tensor::from_slice(&chosen, (n, k), x.device())?;
            let top = logits.gather(&chosen_t, 1)?;
            let mix = self
                .hook_expert_weights
                .forward(&kernels::softmax_last_dim(&top, false)?)?;
            (chosen, mix)
        } else {
            let probs = kernels::softmax_last_dim(&logits.to_dtype(DType::F32)?, false)?;
            let probs = self.hook_expert_weights.forward(&probs)?;
            let host = probs.flatten_all()?.to_vec1::<f32>()?;
            let chosen = top_k(&host, n_experts, k);
            let chosen_t = Tensor::from_slice(&chosen, (n, k), x.device())?;
            // Mixing weights: the chosen probabilities, each in its slot.
            let mut mix = probs.contiguous()?.gather(&chosen_t, 1)?;
            if self.norm_topk_prob {
                mix = mix.broadcast_div(&mix.sum_keepdim(1)?)?;
            }
            (chosen, mix)
        };
        let chosen_t = Tensor::from_slice(&chosen, (n, k), x.device())?;
        let indices = self.hook_expert_indices.forward(&chosen_t.to_dtype(DType::I64)?)?;
        // Where tokens go: the chosen experts, or what a hook put in their place.
        let routed: Vec<u32> = if self.hook_expert_indices.is_idle() {
            chosen
        } else {
            indices
                .flatten_all()?
                .to_vec1::<i64>()?
                .into_iter()
                .map(|e| {
                    u32::try_from(e)
                        .ok()
                        .filter(|&e| (e as usize) < n_experts)
                        .ok_or_else(|| {
                            candle_core::Error::Msg(format!(
                                "{}: expert index {e} is out of range: the layer has {n_experts} experts",
                                self.hook_expert_indices.name()
                            ))
                        })
                })
                .collect::<candle_core::Result<_>>()?
        };
        // Each expert's (token, slot) pairs, slot-major then token order: a bucket
        // sort over slots then tokens keeps that order within each bucket.
        let mut buckets: Vec<Vec<u32>> = vec![Vec::new(); n_experts];
        for j in 0..k {
            for t in 0..n {
                buckets[routed[t * k + j] as usize].push((t * k + j) as u32);
            }
        }
        let slots: Vec<u32> = buckets.iter().flatten().copied().collect();
        let tokens: Vec<u32> = slots.iter().map(|s| s / k as u32).collect();
        let tokens_t = Tensor::from_slice(&tokens, tokens.len(), x.device())?;
        let slots_t = Tensor::from_slice(&slots, slots.len(), x.device())?;
        let gathered = x.contiguous()?.index_select(&tokens_t, 0)?;
        let mut outs = Vec::with_capacity(n_experts);
        let mut start = 0;
        for (expert, bucket) in self.experts.iter().zip(&buckets) {
            let rows = gathered.narrow(0, start, bucket.len())?;
            let out = expert.forward(&rows, self.act_fn, self.swiglu)?;
            if !bucket.is_empty() {
                outs.push(out);
            }
            start += bucket.len();
        }
        let outs = Tensor::cat(&outs, 0)?;
        let weights = mix.flatten_all()?.index_select(&slots_t, 0)?.to_dtype(outs.dtype())?;
        crate::ops::weighted_scatter_add(&outs, &weights, &tokens_t, n)?.reshape(dims)
    }
}

#[cfg(test)]
mod tests {
    use super::top_k;

    #[test]
    fn top_k_is_largest_first_and_stable() {
        let probs = [0.1, 0.4, 0.2, 0.3, 0.25, 0.25, 0.25, 0.25];
        assert_eq!(top_k(&probs, 4, 2), vec![1, 3, 0, 1]);
        assert_eq!(top_k(&probs, 4, 1), vec![1, 0]);
    }
}

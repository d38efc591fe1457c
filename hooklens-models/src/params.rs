//! The weights of a model in its own layout, before they are put into modules: what
//! a family's converter produces and weight processing edits.

use candle_core::{DType, Tensor};

mod unembed_factors;

pub(crate) use unembed_factors::UnembedFactors;

/// A norm's gain `[d_model]` and, for LayerNorm, its bias `[d_model]`.
pub(crate) type NormParams = (Tensor, Option<Tensor>);

/// The weights of one block. Products are `x @ w` with `w` `[in, out]`.
#[derive(Clone, Debug)]
pub(crate) struct LayerWeights {
    /// The norm before attention; `None` once folded (or for a `Pre` config).
    pub(crate) ln1: Option<NormParams>,
    /// The norm after attention (`use_normalization_before_and_after`).
    pub(crate) ln1_post: Option<NormParams>,
    /// The norm before the MLP.
    pub(crate) ln2: Option<NormParams>,
    /// The norm after the MLP (`use_normalization_before_and_after`).
    pub(crate) ln2_post: Option<NormParams>,
    /// `[d_model, (n_heads + 2 n_kv) * d_head]`: columns are q | k | v, each head-major
    /// (`head * d_head + i`).
    pub(crate) w_qkv: Tensor,
    /// `[(n_heads + 2 n_kv) * d_head]`: `b_Q | b_K | b_V` (zeros where the family has none).
    pub(crate) b_qkv: Tensor,
    /// Norm parameters `[d_head]` over each query and key head (`use_qk_norm`): an
    /// RMSNorm gain (Qwen 3) or a LayerNorm gain and bias (Phi), the model's kind of norm.
    pub(crate) q_norm: Option<NormParams>,
    /// See `q_norm`.
    pub(crate) k_norm: Option<NormParams>,
    /// `[n_heads * d_head, d_model]`: TransformerLens's `W_O` flattened over heads.
    pub(crate) w_o: Tensor,
    /// `[d_model]`.
    pub(crate) b_o: Tensor,
    /// `[d_model, d_mlp]`: the gate of a gated MLP (`W_gate`).
    pub(crate) w_gate: Option<Tensor>,
    /// `[d_model, d_mlp]` (`W_in`; a gated MLP's up projection).
    pub(crate) w_in: Tensor,
    /// `[d_mlp]`.
    pub(crate) b_in: Tensor,
    /// `[d_mlp, d_model]`.
    pub(crate) w_out: Tensor,
    /// `[d_model]`.
    pub(crate) b_out: Tensor,
}

/// The weights of one expert of a mixture-of-experts MLP: a gated MLP
/// `W_out · (act(x · W_gate) * (x · W_in))`, products `x @ w` with `w` `[in, out]`.
#[derive(Clone, Debug)]
pub(crate) struct ExpertWeights {
    /// `[d_model, d_mlp]`: the gate (Mixtral's `w1`, `gate_proj`).
    pub(crate) w_gate: Tensor,
    /// `[d_model, d_mlp]`: the up projection (Mixtral's `w3`, `up_proj`).
    pub(crate) w_in: Tensor,
    /// `[d_mlp, d_model]`: the down projection (Mixtral's `w2`, `down_proj`).
    pub(crate) w_out: Tensor,
    /// `[d_mlp]`: the gate's bias (gpt-oss).
    pub(crate) b_gate: Option<Tensor>,
    /// `[d_mlp]`: the up projection's bias (gpt-oss).
    pub(crate) b_in: Option<Tensor>,
    /// `[d_model]`: the down projection's bias (gpt-oss).
    pub(crate) b_out: Option<Tensor>,
}

/// The sparse MLP of one block (`num_experts`): a router and its experts.
#[derive(Clone, Debug)]
pub(crate) struct MoeWeights {
    /// `[d_model, n_experts]`: the router (`block_sparse_moe.gate`, `mlp.gate`).
    pub(crate) w_router: Tensor,
    /// `[n_experts]`: the router's bias (gpt-oss).
    pub(crate) b_router: Option<Tensor>,
    /// The experts, in index order.
    pub(crate) experts: Vec<ExpertWeights>,
}

impl MoeWeights {
    fn to_dtype(&self, dtype: DType) -> candle_core::Result<Self> {
        let o = |t: &Option<Tensor>| t.as_ref().map(|t| t.to_dtype(dtype)).transpose();
        Ok(MoeWeights {
            w_router: self.w_router.to_dtype(dtype)?,
            b_router: o(&self.b_router)?,
            experts: self
                .experts
                .iter()
                .map(|e| {
                    Ok(ExpertWeights {
                        w_gate: e.w_gate.to_dtype(dtype)?,
                        w_in: e.w_in.to_dtype(dtype)?,
                        w_out: e.w_out.to_dtype(dtype)?,
                        b_gate: o(&e.b_gate)?,
                        b_in: o(&e.b_in)?,
                        b_out: o(&e.b_out)?,
                    })
                })
                .collect::<candle_core::Result<_>>()?,
        })
    }
}

/// All weights of a model.
#[derive(Clone, Debug)]
pub(crate) struct TransformerWeights {
    /// `[d_vocab, d_model]`, as stored (Gemma's scale is applied by the embedding).
    pub(crate) w_e: Tensor,
    /// `[n_ctx, d_model]`, for learned positions only.
    pub(crate) w_pos: Option<Tensor>,
    /// The LayerNorm right after the embedding (`post_embedding_ln`, BLOOM); never folded.
    pub(crate) embed_ln: Option<NormParams>,
    pub(crate) layers: Vec<LayerWeights>,
    pub(crate) ln_final: Option<NormParams>,
    /// `[d_model, d_vocab]`: the base of `W_U` (see [`UnembedFactors`]); `W_E`
    /// transposed, a view of its storage, when `tied`.
    pub(crate) w_u: Tensor,
    /// What processing did to `W_U`, kept as factors rather than a new matrix.
    pub(crate) unembed_factors: UnembedFactors,
    /// Whether `w_u` is a view of `w_e`'s storage (no `lm_head` in the checkpoint).
    pub(crate) tied: bool,
    pub(crate) b_u: Tensor,
    /// Whether every tensor's storage belongs to these weights alone (read from a file
    /// into fresh buffers), so that processing may edit it in place instead of holding
    /// a second copy of the largest tensors. `w_u` may still be a view of `w_e`.
    pub(crate) exclusive: bool,
    /// Per layer, its mixture of experts: empty for a dense model, else one entry per
    /// layer. A sparse layer's dense MLP tensors in `layers` are empty (`d_mlp` 0
    /// columns): the experts replace them.
    pub(crate) moe: Vec<MoeWeights>,
    /// Per layer, the attention's sink logits `[n_heads]` (gpt-oss); empty: no sinks.
    pub(crate) attn_sinks: Vec<Tensor>,
}

fn norm_to(p: &Option<NormParams>, dtype: DType) -> candle_core::Result<Option<NormParams>> {
    p.as_ref()
        .map(|(w, b)| Ok((w.to_dtype(dtype)?, b.as_ref().map(|b| b.to_dtype(dtype)).transpose()?)))
        .transpose()
}

impl LayerWeights {
    fn to_dtype(&self, dtype: DType) -> candle_core::Result<Self> {
        let c = |t: &Tensor| t.to_dtype(dtype);
        let o = |t: &Option<Tensor>| t.as_ref().map(c).transpose();
        Ok(LayerWeights {
            ln1: norm_to(&self.ln1, dtype)?,
            ln1_post: norm_to(&self.ln1_post, dtype)?,
            ln2: norm_to(&self.ln2, dtype)?,
            ln2_post: norm_to(&self.ln2_post, dtype)?,
            w_qkv: c(&self.w_qkv)?,
            b_qkv: c(&self.b_qkv)?,
            q_norm: norm_to(&self.q_norm, dtype)?,
            k_norm: norm_to(&self.k_norm, dtype)?,
            w_o: c(&self.w_o)?,
            b_o: c(&self.b_o)?,
            w_gate: o(&self.w_gate)?,
            w_in: c(&self.w_in)?,
            b_in: c(&self.b_in)?,
            w_out: c(&self.w_out)?,
            b_out: c(&self.b_out)?,
        })
    }
}

impl TransformerWeights {
    /// Every tensor converted to `dtype`.
    pub(crate) fn to_dtype(&self, dtype: DType) -> candle_core::Result<Self> {
        let w_e = self.w_e.to_dtype(dtype)?;
        Ok(TransformerWeights {
            w_pos: self.w_pos.as_ref().map(|t| t.to_dtype(dtype)).transpose()?,
            embed_ln: norm_to(&self.embed_ln, dtype)?,
            layers: self
                .layers
                .iter()
                .map(|l| l.to_dtype(dtype))
                .collect::<candle_core::Result<_>>()?,
            ln_final: norm_to(&self.ln_final, dtype)?,
            // A tied base stays a view of the converted W_E, not a copy of its own.
            w_u: if self.tied { w_e.t()? } else { self.w_u.to_dtype(dtype)? },
            unembed_factors: self.unembed_factors.to_dtype(dtype)?,
            tied: self.tied,
            b_u: self.b_u.to_dtype(dtype)?,
            w_e,
            // A conversion to the same dtype shares storage.
            exclusive: false,
            moe: self
                .moe
                .iter()
                .map(|m| m.to_dtype(dtype))
                .collect::<candle_core::Result<_>>()?,
            attn_sinks: self
                .attn_sinks
                .iter()
                .map(|t| t.to_dtype(dtype))
                .collect::<candle_core::Result<_>>()?,
        })
    }
}

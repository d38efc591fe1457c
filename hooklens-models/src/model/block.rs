//! One transformer block with TransformerLens's hook points.

use candle_core::Tensor;
use hooklens_core::{Error, HookPoint};

use super::attention::{Attention, AttnContext, AttnInput, PastKv};
use super::mlp::Mlp;
use super::norm::Norm;

/// A transformer block. Sequential: `resid_mid = resid_pre + attn(ln1(resid_pre))`,
/// `resid_post = resid_mid + mlp(ln2(resid_mid))`; parallel (GPT-NeoX):
/// `resid_post = resid_pre + attn(ln1(resid_pre)) + mlp(ln2(resid_pre))`, with no
/// `hook_resid_mid`. With `ln1_post` / `ln2_post` (Gemma 2 / 3, OLMo 2) the attention
/// and MLP outputs are normalised again before their hooks; without `ln1` / `ln2`
/// (OLMo 2) attention and MLP read the residual stream itself. Field order is TransformerLens's
/// registration order, which the hook dictionary follows.
///
/// Post-LN (`normalization_after_residual`, OPT-350m; TransformerLens's `BertBlock`):
/// `resid_mid = resid_pre + attn(resid_pre)`, `normalized_mid = ln1(resid_mid)`,
/// `resid_post = normalized_mid + mlp(normalized_mid)`, and the block returns
/// `ln2(resid_post)` through `hook_normalized_resid_post`, so the next block's
/// `hook_resid_pre` is already normalised. The hooks fire in `BertBlock`'s order;
/// registered, `ln1` / `ln2` stay first (`BertBlock` registers them after `attn` and
/// `mlp`).
#[derive(Debug, hooklens_derive::Hooked)]
#[hooked(crate = "hooklens_core")]
pub struct Block {
    /// The norm before attention; none in a block that only normalises after
    /// (`use_normalization_before: false`, OLMo 2).
    pub ln1: Option<Norm>,
    /// The norm after attention (`use_normalization_before_and_after`).
    pub ln1_post: Option<Norm>,
    /// The norm before the MLP; none as for `ln1`.
    pub ln2: Option<Norm>,
    /// The norm after the MLP (`use_normalization_before_and_after`).
    pub ln2_post: Option<Norm>,
    /// Self-attention.
    pub attn: Attention,
    /// The MLP.
    pub mlp: Mlp,
    /// Per-head copies of the residual stream read by attention, `[batch, pos, head, d_model]`
    /// (`use_attn_in`).
    pub hook_attn_in: Option<HookPoint>,
    /// Per-head query input `[batch, pos, head, d_model]` (`use_split_qkv_input`).
    pub hook_q_input: Option<HookPoint>,
    /// Per-head key input `[batch, pos, head, d_model]` (`use_split_qkv_input`).
    pub hook_k_input: Option<HookPoint>,
    /// Per-head value input `[batch, pos, head, d_model]` (`use_split_qkv_input`).
    pub hook_v_input: Option<HookPoint>,
    /// The MLP's input, `[batch, pos, d_model]` (`use_hook_mlp_in`).
    pub hook_mlp_in: Option<HookPoint>,
    /// Attention output `[batch, pos, d_model]`.
    pub hook_attn_out: HookPoint,
    /// MLP output `[batch, pos, d_model]`.
    pub hook_mlp_out: HookPoint,
    /// The residual stream entering the block, `[batch, pos, d_model]`.
    pub hook_resid_pre: HookPoint,
    /// The residual stream after attention, `[batch, pos, d_model]`; not in a
    /// parallel block.
    pub hook_resid_mid: Option<HookPoint>,
    /// The residual stream after the MLP, `[batch, pos, d_model]`: what leaves the
    /// block, except in a post-LN block, which returns it through `ln2`.
    pub hook_resid_post: HookPoint,
    /// What a post-LN block returns, `ln2(resid_post)`, `[batch, pos, d_model]`
    /// (TransformerLens's `BertBlock`); only in post-LN blocks.
    pub hook_normalized_resid_post: Option<HookPoint>,
    /// Post-LN (`normalization_after_residual`): `ln1` and `ln2` normalise the residual
    /// stream after attention and after the MLP instead of the inputs of both.
    pub(crate) post_ln: bool,
}

impl Block {
    /// `x` through `ln1`, or `x` itself (a clone of the handle) without one or in a
    /// post-LN block (whose attention reads the residual stream as it is).
    fn pre_attn(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.ln1 {
            Some(n) if !self.post_ln => n.forward(x),
            _ => Ok(x.clone()),
        }
    }

    /// `x` through `norm`, or `x` itself without one.
    fn norm_or_same(norm: &Option<Norm>, x: &Tensor) -> candle_core::Result<Tensor> {
        match norm {
            Some(n) => n.forward(x),
            None => Ok(x.clone()),
        }
    }

    /// `[batch, pos, d_model]` -> `[batch, pos, d_model]`, plus the keys and values of
    /// every position so far (for a KV cache).
    pub(crate) fn forward(
        &self,
        resid_pre: &Tensor,
        ctx: &AttnContext<'_>,
        past: Option<&PastKv>,
    ) -> candle_core::Result<(Tensor, PastKv)> {
        let resid_pre = self.hook_resid_pre.forward(resid_pre)?;
        let per_head = self.hook_attn_in.is_some() || self.hook_q_input.is_some();
        let (attn_out, kv) = if per_head {
            let (b, p, d) = resid_pre.dims3()?;
            let (h, kv) = (self.attn.n_heads, self.attn.n_kv_heads);
            // Fresh copies, as TransformerLens's `repeat` and `clone`: an edit of one
            // input must not show up in another.
            let repeat = |n: usize| resid_pre.unsqueeze(2)?.broadcast_as((b, p, n, d))?.contiguous();
            let attn_in = match &self.hook_attn_in {
                Some(hp) => Some(hp.forward(&repeat(h)?)?),
                None => None,
            };
            let (qi, ki, vi) = match (&self.hook_q_input, &self.hook_k_input, &self.hook_v_input) {
                // As TransformerLens: the split inputs are copies of the residual (key and
                // value inputs with one copy per key/value head).
                (Some(hq), Some(hk), Some(hv)) => (
                    hq.forward(&repeat(h)?)?,
                    hk.forward(&repeat(kv)?)?,
                    hv.forward(&repeat(kv)?)?,
                ),
                _ => {
                    let attn_in = attn_in.ok_or_else(|| candle_core::Error::Msg("no attention input".into()))?;
                    if kv != h {
                        return Err(candle_core::Error::wrap(Error::invalid(
                            "use_attn_in without use_split_qkv_input needs as many key/value heads as query heads \
                             (TransformerLens cannot run it either): switch on use_split_qkv_input too",
                        )));
                    }
                    (attn_in.clone(), attn_in.clone(), attn_in)
                }
            };
            // TransformerLens normalises each of the three inputs separately, so ln1's
            // hooks fire three times here (also on the differentiable path below; once on the fast path).
            let input = AttnInput::PerHead(self.pre_attn(&qi)?, self.pre_attn(&ki)?, self.pre_attn(&vi)?);
            self.attn.forward(input, ctx, past)?
        } else if hooklens_core::grad_mode() {
            // As TransformerLens: ln1 runs once per input, so that each of its
            // gradients is the one TransformerLens reports.
            let input = AttnInput::Separate(
                self.pre_attn(&resid_pre)?,
                self.pre_attn(&resid_pre)?,
                self.pre_attn(&resid_pre)?,
            );
            self.attn.forward(input, ctx, past)?
        } else {
            let x = self.pre_attn(&resid_pre)?;
            self.attn.forward(AttnInput::Shared(&x), ctx, past)?
        };
        let attn_out = match &self.ln1_post {
            Some(n) => n.forward(&attn_out)?,
            None => attn_out,
        };
        let attn_out = self.hook_attn_out.forward(&attn_out)?;
        if self.post_ln {
            return Ok((self.post_ln_rest(&resid_pre, &attn_out)?, kv));
        }
        let resid_mid = match &self.hook_resid_mid {
            Some(hp) => Some(hp.forward(&(&resid_pre + &attn_out)?)?),
            None => None,
        };
        // A parallel block's MLP reads resid_pre, as its attention does.
        let mlp_base = resid_mid.as_ref().unwrap_or(&resid_pre);
        let mlp_in = match &self.hook_mlp_in {
            Some(hp) => hp.forward(&mlp_base.copy()?)?,
            None => mlp_base.clone(),
        };
        let mlp_out = match &self.ln2 {
            Some(n) => self.mlp.forward(&n.forward(&mlp_in)?)?,
            None => self.mlp.forward(&mlp_in)?,
        };
        let mlp_out = match &self.ln2_post {
            Some(n) => n.forward(&mlp_out)?,
            None => mlp_out,
        };
        let mlp_out = self.hook_mlp_out.forward(&mlp_out)?;
        let resid_post = match &resid_mid {
            Some(mid) => (mid + &mlp_out)?,
            None => ((&resid_pre + &attn_out)? + &mlp_out)?,
        };
        let resid_post = self.hook_resid_post.forward(&resid_post)?;
        Ok((resid_post, kv))
    }

    /// The rest of a post-LN block after its attention output (see [`Block`]), in
    /// `BertBlock`'s order: `hook_resid_mid`, `hook_mlp_in`, `ln1`, the MLP,
    /// `hook_mlp_out`, `hook_resid_post`, `ln2`, `hook_normalized_resid_post`.
    fn post_ln_rest(&self, resid_pre: &Tensor, attn_out: &Tensor) -> candle_core::Result<Tensor> {
        let resid_mid = (resid_pre + attn_out)?;
        let resid_mid = match &self.hook_resid_mid {
            Some(hp) => hp.forward(&resid_mid)?,
            None => resid_mid,
        };
        let mlp_in = match &self.hook_mlp_in {
            Some(hp) => hp.forward(&resid_mid.copy()?)?,
            None => resid_mid,
        };
        // The normalised stream is both the MLP's input and the residual it adds to.
        let normalized_mid = Self::norm_or_same(&self.ln1, &mlp_in)?;
        let mlp_out = self.mlp.forward(&normalized_mid)?;
        let mlp_out = self.hook_mlp_out.forward(&mlp_out)?;
        let resid_post = self.hook_resid_post.forward(&(&normalized_mid + &mlp_out)?)?;
        let out = Self::norm_or_same(&self.ln2, &resid_post)?;
        match &self.hook_normalized_resid_post {
            Some(hp) => hp.forward(&out),
            None => Ok(out),
        }
    }
}

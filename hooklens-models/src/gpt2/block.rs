//! One transformer block with TransformerLens's hook points.

use candle_core::Tensor;
use hooklens_core::HookPoint;

use super::attention::{Attention, AttnInput, AttnMask, PastKv};
use super::layer_norm::LayerNorm;
use super::mlp::Mlp;

/// A GPT-2 block: `resid_mid = resid_pre + attn(ln1(resid_pre))`,
/// `resid_post = resid_mid + mlp(ln2(resid_mid))`. Field order is TransformerLens's
/// registration order, which the hook dictionary follows.
#[derive(Debug, hooklens_derive::Hooked)]
#[hooked(crate = "hooklens_core")]
pub struct Block {
    /// The LayerNorm before attention.
    pub ln1: LayerNorm,
    /// The LayerNorm before the MLP.
    pub ln2: LayerNorm,
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
    /// The residual stream after attention, `[batch, pos, d_model]`.
    pub hook_resid_mid: HookPoint,
    /// The residual stream leaving the block, `[batch, pos, d_model]`.
    pub hook_resid_post: HookPoint,
}

impl Block {
    /// `[batch, pos, d_model]` -> `[batch, pos, d_model]`, plus the keys and values of
    /// every position so far (for a KV cache).
    pub(crate) fn forward(
        &self,
        resid_pre: &Tensor,
        mask: &AttnMask,
        past: Option<&PastKv>,
    ) -> candle_core::Result<(Tensor, PastKv)> {
        let resid_pre = self.hook_resid_pre.forward(resid_pre)?;
        let per_head = self.hook_attn_in.is_some() || self.hook_q_input.is_some();
        let (attn_out, kv) = if per_head {
            let (b, p, d) = resid_pre.dims3()?;
            let h = self.attn.n_heads;
            // Fresh copies, as TransformerLens's `repeat` and `clone`: an edit of one
            // input must not show up in another.
            let attn_in = resid_pre.unsqueeze(2)?.broadcast_as((b, p, h, d))?.contiguous()?;
            let attn_in = match &self.hook_attn_in {
                Some(hp) => hp.forward(&attn_in)?,
                None => attn_in,
            };
            let (qi, ki, vi) = match (&self.hook_q_input, &self.hook_k_input, &self.hook_v_input) {
                (Some(hq), Some(hk), Some(hv)) => (
                    hq.forward(&attn_in.copy()?)?,
                    hk.forward(&attn_in.copy()?)?,
                    hv.forward(&attn_in.copy()?)?,
                ),
                _ => (attn_in.clone(), attn_in.clone(), attn_in),
            };
            // TransformerLens normalises each of the three inputs separately, so ln1's
            // hooks fire three times here (also on the differentiable path below; once on the fast path).
            let input = AttnInput::PerHead(self.ln1.forward(&qi)?, self.ln1.forward(&ki)?, self.ln1.forward(&vi)?);
            self.attn.forward(input, mask, past)?
        } else if hooklens_core::grad_mode() {
            // As TransformerLens: ln1 runs once per input, so that each of its
            // gradients is the one TransformerLens reports.
            let input = AttnInput::Separate(
                self.ln1.forward(&resid_pre)?,
                self.ln1.forward(&resid_pre)?,
                self.ln1.forward(&resid_pre)?,
            );
            self.attn.forward(input, mask, past)?
        } else {
            let x = self.ln1.forward(&resid_pre)?;
            self.attn.forward(AttnInput::Shared(&x), mask, past)?
        };
        let attn_out = self.hook_attn_out.forward(&attn_out)?;
        let resid_mid = self.hook_resid_mid.forward(&(&resid_pre + &attn_out)?)?;
        let mlp_in = match &self.hook_mlp_in {
            Some(hp) => hp.forward(&resid_mid.copy()?)?,
            None => resid_mid.clone(),
        };
        let mlp_out = self
            .hook_mlp_out
            .forward(&self.mlp.forward(&self.ln2.forward(&mlp_in)?)?)?;
        let resid_post = self.hook_resid_post.forward(&(&resid_mid + &mlp_out)?)?;
        Ok((resid_post, kv))
    }
}

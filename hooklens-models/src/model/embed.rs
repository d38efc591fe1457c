//! Token and position embeddings.

use candle_core::{DType, Tensor};

use super::norm::Norm;

/// The token embedding `W_E` `[d_vocab, d_model]` (TransformerLens's `Embed`), times
/// `scale` where the family scales it (Gemma: `sqrt(d_model)`), then the LayerNorm
/// `ln` where the family has one (BLOOM's `word_embeddings_layernorm`: hooks
/// `embed.ln.hook_scale` / `embed.ln.hook_normalized`, before `hook_embed`).
#[derive(Debug, hooklens_derive::Hooked)]
#[hooked(crate = "hooklens_core")]
pub struct Embed {
    pub(crate) w_e: Tensor,
    pub(crate) scale: Option<f64>,
    /// The LayerNorm after the embedding (`post_embedding_ln`), with its parameters.
    pub ln: Option<Norm>,
}

impl Embed {
    /// `tokens` u32 `[batch, pos]` -> `[batch, pos, d_model]`, a fresh tensor (never a
    /// view of `W_E`, so nothing a hook does to it can reach the weights).
    pub fn forward(&self, tokens: &Tensor) -> candle_core::Result<Tensor> {
        let (b, p) = tokens.dims2()?;
        let d = self.w_e.dim(1)?;
        let e = self.w_e.index_select(&tokens.flatten_all()?, 0)?.reshape((b, p, d))?;
        let e = match self.scale {
            // In the activation dtype, as Hugging Face's Gemma does.
            Some(s) => (e * s)?,
            None => e,
        };
        match &self.ln {
            Some(ln) => ln.forward(&e),
            None => Ok(e),
        }
    }
}

/// The learned position embedding `W_pos` `[n_ctx, d_model]` (TransformerLens's `PosEmbed`).
#[derive(Debug)]
pub struct PosEmbed {
    pub(crate) w_pos: Tensor,
}

impl PosEmbed {
    /// Position embeddings `[batch, pos, d_model]` for positions `offset..offset+pos`,
    /// or, when `positions` `[batch, pos]` (u32) is given, for those positions, zeroed
    /// where `keep` `[batch, pos]` is 0 (padding), as TransformerLens does. Always a
    /// fresh contiguous tensor, so editing it never changes `W_pos`.
    pub fn forward(
        &self,
        batch: usize,
        pos: usize,
        offset: usize,
        positions: Option<(&Tensor, &Tensor)>,
    ) -> candle_core::Result<Tensor> {
        let d = self.w_pos.dim(1)?;
        match positions {
            None => self
                .w_pos
                .narrow(0, offset, pos)?
                .unsqueeze(0)?
                .broadcast_as((batch, pos, d))?
                .contiguous(),
            Some((ids, keep)) => {
                let emb = self
                    .w_pos
                    .index_select(&ids.flatten_all()?, 0)?
                    .reshape((batch, pos, d))?;
                emb.broadcast_mul(&keep.to_dtype(emb.dtype())?.unsqueeze(2)?)
            }
        }
    }
}

/// Token ids as u32 for `index_select`; accepts any integer dtype.
pub(crate) fn is_integer(dtype: DType) -> bool {
    matches!(dtype, DType::U8 | DType::U32 | DType::I64)
}

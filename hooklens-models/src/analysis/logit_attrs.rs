//! `logit_attrs`: direct logit attribution of residual components.

use candle_core::{Tensor, D};
use hooklens_core::{Error, Result, Slice};

use super::apply_ln::LnOptions;
use super::cache_view::Analysis;

/// Options of [`Analysis::logit_attrs`].
#[derive(Clone, Debug)]
pub struct LogitAttrs {
    /// Attribute the logit difference `tokens - incorrect_tokens` (same shape as
    /// `tokens`, or an error).
    pub incorrect_tokens: Option<Tensor>,
    /// The positions the stack holds (for the LayerNorm scale).
    pub pos_slice: Slice,
    /// A batch slice for the stack (when it has a batch axis) and the scale.
    pub batch_slice: Slice,
    /// Whether the stack has a batch axis (axis 1). Default `true`.
    pub has_batch_dim: bool,
}

impl Default for LogitAttrs {
    fn default() -> Self {
        LogitAttrs {
            incorrect_tokens: None,
            pos_slice: Slice::All,
            batch_slice: Slice::All,
            has_batch_dim: true,
        }
    }
}

impl LogitAttrs {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// These options attributing the difference with `incorrect` tokens.
    pub fn incorrect_tokens(mut self, incorrect: Tensor) -> Self {
        self.incorrect_tokens = Some(incorrect);
        self
    }

    /// These options with a position slice.
    pub fn pos_slice(mut self, s: impl Into<Slice>) -> Self {
        self.pos_slice = s.into();
        self
    }

    /// These options with a batch slice.
    pub fn batch_slice(mut self, s: impl Into<Slice>) -> Self {
        self.batch_slice = s.into();
        self
    }

    /// These options for a stack with (or without) a batch axis.
    pub fn has_batch_dim(mut self, yes: bool) -> Self {
        self.has_batch_dim = yes;
        self
    }
}

impl Analysis<'_> {
    /// TransformerLens's `logit_attrs`: how much each component of `residual_stack`
    /// `[components, ..., d_model]` contributes to the logit of `tokens` (a scalar,
    /// `[batch]` or `[batch, pos]` of ids), or to the logit difference with
    /// `incorrect_tokens`: the final LayerNorm's cached scaling is applied to the stack,
    /// which is then dotted with the tokens' unembedding directions. Returns
    /// `[components, ...]`. On a processed model (centred `W_U`), summing over the
    /// components of a full decomposition gives the logit difference itself (less `b_U`).
    /// Token and incorrect-token shapes that differ, or a stack that does not fit the
    /// directions, are errors. As in TransformerLens, only `ln_final`'s centring and scale
    /// are applied: use a processed model (`fold_ln`), where that is all `ln_final` does.
    /// A mixture-of-experts model keeps its norms' gains even when processed (as in
    /// TransformerLens, see `ProcessingOptions::fold_ln`): multiply the stack by
    /// `ln_final`'s gain (`model.ln_final.weight()`) first for attributions that sum to
    /// the logits. A model without a final norm (`final_norm: false`: post-LN OPT-350m,
    /// `_remove_final_layer_norm`) unembeds its last residual stream as it is: the stack
    /// is dotted with the directions unscaled, which sums to the logits for a stack that
    /// sums to that residual. In a post-LN model that is the last block's output
    /// (`hook_normalized_resid_post`), which the outputs of the earlier sublayers do not
    /// sum to (each block normalises the stream).
    pub fn logit_attrs(&self, residual_stack: &Tensor, tokens: &Tensor, opts: &LogitAttrs) -> Result<Tensor> {
        let mut directions = self.model.tokens_to_residual_directions(tokens)?;
        if let Some(incorrect) = &opts.incorrect_tokens {
            if incorrect.dims() != tokens.dims() {
                return Err(Error::invalid(format!(
                    "tokens and incorrect_tokens must have the same shape, got {:?} and {:?}",
                    tokens.dims(),
                    incorrect.dims()
                )));
            }
            directions = (directions - self.model.tokens_to_residual_directions(incorrect)?)?;
        }
        let ln = LnOptions {
            layer: None,
            mlp_input: false,
            pos_slice: opts.pos_slice.clone(),
            batch_slice: opts.batch_slice.clone(),
            has_batch_dim: opts.has_batch_dim,
            recompute_ln: false,
        };
        let scaled = if self.model.ln_final.is_none() {
            // Nothing between the residual stream and the unembedding: only the batch
            // slice applies.
            if residual_stack.rank() < 2 {
                return Err(Error::invalid(format!(
                    "logit_attrs needs [components, ..., d_model], got shape {:?}",
                    residual_stack.shape()
                )));
            }
            if opts.has_batch_dim {
                super::cache_view::apply_slice(&opts.batch_slice, residual_stack, 1)?
            } else {
                residual_stack.clone()
            }
        } else {
            self.apply_ln_to_stack(residual_stack, &ln)?
        };
        let directions = directions.to_dtype(scaled.dtype())?.to_device(scaled.device())?;
        let prod = scaled.broadcast_mul(&directions).map_err(|e| {
            Error::invalid(format!(
                "logit_attrs: a (scaled) stack of shape {:?} does not fit token directions of shape {:?} \
                 (tokens {:?}): {e}",
                scaled.shape(),
                directions.shape(),
                tokens.dims()
            ))
        })?;
        Ok(prod.sum(D::Minus1)?)
    }
}

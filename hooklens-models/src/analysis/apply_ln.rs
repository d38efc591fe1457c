//! `apply_ln_to_stack`: a LayerNorm's cached scaling applied to residual components.

use candle_core::{Tensor, D};
use hooklens_core::{Error, Result, Slice};

use super::cache_view::{apply_slice, Analysis};
use crate::model::{rms_scale_composite, scale_composite};

/// Options of [`Analysis::apply_ln_to_stack`] (TransformerLens's keyword arguments).
#[derive(Clone, Debug)]
pub struct LnOptions {
    /// The layer whose input the stack is: `0..n_layers` (that block's `ln1`, or `ln2`
    /// with `mlp_input`), or `None` / `-1` / `n_layers` for `ln_final` (the unembedding).
    pub layer: Option<isize>,
    /// Use the block's `ln2` (the MLP's input) rather than `ln1`; not with `ln_final`.
    pub mlp_input: bool,
    /// The positions the stack holds (already applied to it); applied to the scale.
    pub pos_slice: Slice,
    /// A batch slice, applied to the stack (when `has_batch_dim`) and to the scale.
    pub batch_slice: Slice,
    /// Whether the stack has a batch axis (axis 1). Default `true`.
    pub has_batch_dim: bool,
    /// Recompute the scale `sqrt(var + eps)` from the cached residual stream that the
    /// LayerNorm reads, instead of reading its cached `hook_scale` (for caches recorded
    /// without the scales).
    pub recompute_ln: bool,
}

impl Default for LnOptions {
    fn default() -> Self {
        LnOptions {
            layer: None,
            mlp_input: false,
            pos_slice: Slice::All,
            batch_slice: Slice::All,
            has_batch_dim: true,
            recompute_ln: false,
        }
    }
}

impl LnOptions {
    /// The final LayerNorm (the unembedding's input), everything else default.
    pub fn new() -> Self {
        Self::default()
    }

    /// These options for the input of `layer` (`None`/`-1`: the unembedding).
    pub fn layer(mut self, layer: Option<isize>) -> Self {
        self.layer = layer;
        self
    }

    /// These options for the MLP's input (`ln2`).
    pub fn mlp_input(mut self, yes: bool) -> Self {
        self.mlp_input = yes;
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

    /// These options recomputing the scale from the residual stream.
    pub fn recompute_ln(mut self, yes: bool) -> Self {
        self.recompute_ln = yes;
        self
    }
}

impl Analysis<'_> {
    /// Whether the model's norms are RMSNorms (which scale but do not centre).
    pub(crate) fn rms(&self) -> bool {
        self.model.cfg().normalization_type.is_rms()
    }

    /// Whether attention and MLP read the same residual (GPT-NeoX): no `resid_mid`.
    pub(crate) fn parallel(&self) -> bool {
        self.model.cfg().parallel_attn_mlp
    }

    /// `x` `[..., d_model]` minus its mean over `d_model` where the model's norm is a
    /// LayerNorm (its centring), `x` itself for RMSNorm. Projecting a centred vector
    /// onto `d` equals projecting the vector onto the centred `d`, so this also serves
    /// directions.
    pub(crate) fn centre_for_ln(&self, x: &Tensor) -> Result<Tensor> {
        if self.rms() {
            Ok(x.clone())
        } else {
            Ok(x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?)
        }
    }

    /// The scale `[..., pos, 1]` of the LayerNorm reading the input of `layer`
    /// (`0..=n_layers`), cached or recomputed from the residual stream.
    ///
    /// A post-LN model (`normalization_after_residual`, OPT-350m) is an error: its
    /// blocks normalise the residual stream itself, so the components of one residual
    /// stream are not what a later norm reads and no cached scale applies to them. So is
    /// the unembedding's input in a model without a final norm (`final_norm: false`),
    /// which the unembedding reads as it is.
    pub(crate) fn ln_scale(&self, layer: usize, mlp_input: bool, recompute: bool) -> Result<Tensor> {
        let n = self.n_layers();
        if layer == n && mlp_input {
            return Err(Error::invalid(
                "mlp_input with layer n_layers: the unembedding's input has no MLP (use mlp_input = false)",
            ));
        }
        let cfg = self.model.cfg();
        if cfg.normalization_after_residual {
            return Err(Error::invalid(format!(
                "apply_ln on a post-LN model ({}, normalization_after_residual: OPT-350m's layout) is not supported: \
                 its blocks normalise the residual stream itself (ln1 after attention, ln2 after the MLP), so \
                 residual components do not add up to what a later layer or the unembedding reads and no cached \
                 LayerNorm scale applies to them; leave apply_ln off",
                cfg.original_architecture
            )));
        }
        if layer == n && self.model.ln_final.is_none() {
            return Err(Error::invalid(format!(
                "apply_ln at the unembedding: this {} model has no final norm (final_norm: false, \
                 `_remove_final_layer_norm`), the unembedding reads the last residual stream as it is; \
                 leave apply_ln off",
                cfg.original_architecture
            )));
        }
        let (scale_name, resid) = if layer == n {
            ("ln_final.hook_scale".to_string(), ("resid_post", n - 1))
        } else if mlp_input {
            // A parallel block's MLP reads resid_pre, as its attention does.
            let input = if self.parallel() { "resid_pre" } else { "resid_mid" };
            (format!("blocks.{layer}.ln2.hook_scale"), (input, layer))
        } else {
            (format!("blocks.{layer}.ln1.hook_scale"), ("resid_pre", layer))
        };
        if layer < n && !self.model.cfg().use_normalization_before {
            // No norm before attention or the MLP (OLMo 2): the block reads the residual
            // stream as it is, a scale of 1.
            let x = self.at(resid.0, resid.1)?;
            return Ok(x.narrow(D::Minus1, 0, 1)?.ones_like()?);
        }
        if !recompute {
            return self.cache.try_get(&scale_name).cloned().map_err(|e| {
                Error::invalid(format!(
                    "{e} (recompute_ln computes it from the residual stream instead)"
                ))
            });
        }
        // The norm's own scale, as the forward computes it (f32 for half precision).
        let x = self.at(resid.0, resid.1)?;
        let eps = self.model.cfg().eps;
        Ok(if self.rms() {
            rms_scale_composite(x, eps)?
        } else {
            scale_composite(x, eps)?
        })
    }

    /// The LayerNorm scale for a stack as `opts` describes it, sliced: `[..., 1]`.
    pub(crate) fn sliced_scale(&self, opts: &LnOptions) -> Result<Tensor> {
        let layer = self.upto(opts.layer)?;
        let scale = self.ln_scale(layer, opts.mlp_input, opts.recompute_ln)?;
        let scale = apply_slice(&opts.pos_slice, &scale, -2)?;
        if self.cache.has_batch_dim() {
            apply_slice(&opts.batch_slice, &scale, 0)
        } else {
            Ok(scale)
        }
    }

    /// TransformerLens's `apply_ln_to_stack`: treats each component of `stack`
    /// `[components, ..., d_model]` as the input of a norm and applies that norm's
    /// scaling from the full forward pass: centre each component (LayerNorm models
    /// only: an RMSNorm does not centre), divide by the cached scale (global over the whole residual, which is why the cached one is
    /// used). Returns `[components, ..., d_model]` (batch-sliced if asked). A stack that
    /// does not broadcast against the scale is an error naming both shapes. A LayerNorm's
    /// gain and bias are not applied (TransformerLens's semantics): on a processed model
    /// (`fold_ln`) there are none.
    pub fn apply_ln_to_stack(&self, stack: &Tensor, opts: &LnOptions) -> Result<Tensor> {
        if stack.rank() < 2 {
            return Err(Error::invalid(format!(
                "apply_ln_to_stack needs [components, ..., d_model], got shape {:?}",
                stack.shape()
            )));
        }
        let stack = if opts.has_batch_dim {
            apply_slice(&opts.batch_slice, stack, 1)?
        } else {
            stack.clone()
        };
        let centred = self.centre_for_ln(&stack)?;
        let scale = self.sliced_scale(opts)?;
        centred.broadcast_div(&scale).map_err(|e| {
            Error::invalid(format!(
                "apply_ln_to_stack: a stack of shape {:?} does not fit the LayerNorm scale of shape {:?} \
                 (after pos_slice {} and batch_slice {}): {e}",
                stack.shape(),
                scale.shape(),
                opts.pos_slice,
                opts.batch_slice
            ))
        })
    }

    /// [`Analysis::apply_ln_to_stack`] for a stack already projected onto a direction
    /// (`[components, ...]`, computed with a centred direction): divides by the scale.
    pub(crate) fn apply_ln_to_projected(&self, projected: &Tensor, opts: &LnOptions) -> Result<Tensor> {
        let scale = self.sliced_scale(opts)?;
        let scale = scale.squeeze(scale.rank() - 1)?;
        projected.broadcast_div(&scale).map_err(|e| {
            Error::invalid(format!(
                "a projected stack of shape {:?} does not fit the LayerNorm scale of shape {:?}: {e}",
                projected.shape(),
                scale.shape()
            ))
        })
    }
}

//! Per-head results: what each attention head writes to the residual stream.

use candle_core::Tensor;
use hooklens_core::{Error, Result, Slice};

use super::apply_ln::LnOptions;
use super::cache_view::{apply_slice, axis_to_front, Analysis, LabeledStack};

/// Options of [`Analysis::stack_head_results`].
#[derive(Clone, Debug, Default)]
pub struct StackHeads {
    /// Heads of every layer before this one (`None` / `-1` / `n_layers`: all layers).
    pub layer: Option<isize>,
    /// Add a last component `"remainder"`: the rest of the residual stream entering
    /// `layer` (`resid_post` of `layer - 1` minus the heads).
    pub incl_remainder: bool,
    /// Positions to keep.
    pub pos_slice: Slice,
    /// Apply the cached LayerNorm scaling of `layer`'s input.
    pub apply_ln: bool,
}

impl Analysis<'_> {
    /// Head results of block `layer`, `[..., pos, n_heads, d_model]`: `attn.hook_result`
    /// if cached, else computed from `hook_z` and `W_O` (`attn_out` is their sum over heads
    /// plus `b_O`).
    pub fn head_results(&self, layer: usize) -> Result<Tensor> {
        let name = format!("blocks.{layer}.attn.hook_result");
        if let Some(t) = self.cache.get(&name) {
            return Ok(t.clone());
        }
        let z = self.at("z", layer)?;
        let w_o = self
            .model
            .blocks
            .get(layer)
            .ok_or_else(|| Error::invalid(format!("layer {layer} is out of range")))?
            .attn
            .w_o_heads()?; // [H, d_head, d_model]
        let dims = z.dims().to_vec();
        let r = dims.len();
        if r < 2 {
            return Err(Error::invalid(format!("`{name}`: hook_z has shape {dims:?}")));
        }
        let (h, dh) = (dims[r - 2], dims[r - 1]);
        let lead: usize = dims[..r - 2].iter().product();
        let d_model = w_o.dim(2)?;
        // [lead, H, dh] -> [H, lead, dh] @ [H, dh, d_model] -> [H, lead, d_model]: one
        // batched matmul, never the [.., H, d_head, d_model] broadcast product.
        let zt = z.reshape((lead, h, dh))?.transpose(0, 1)?.contiguous()?;
        let out = zt.matmul(&w_o.to_dtype(z.dtype())?)?.transpose(0, 1)?;
        let mut shape = dims[..r - 1].to_vec();
        shape.push(d_model);
        Ok(out.reshape(shape)?)
    }

    /// TransformerLens's `compute_head_results`: stores every layer's head results in the
    /// cache as `blocks.{l}.attn.hook_result` `[..., pos, n_heads, d_model]`. Layers that
    /// already have them are left alone (no recomputation).
    pub fn compute_head_results(&mut self) -> Result<()> {
        for l in 0..self.n_layers() {
            let name = format!("blocks.{l}.attn.hook_result");
            if !self.cache.contains(&name) {
                let r = self.head_results(l)?;
                self.cache.insert(name, r);
            }
        }
        Ok(())
    }

    /// TransformerLens's `stack_head_results`: every head's result of the layers before
    /// `layer`, labels `"L{l}H{h}"`, plus `"remainder"` with `incl_remainder`. Stack
    /// `[layer * n_heads (+1), ..., d_model]`; with the remainder it sums to the residual
    /// stream entering `layer` (`resid_post` of `layer - 1`; `resid_pre` of block 0 for
    /// `layer` 0, where TransformerLens's `layer - 1 = -1` takes the *last* block's
    /// `resid_post`). Head results are computed from `z` when not cached.
    pub fn stack_head_results(&self, opts: &StackHeads) -> Result<LabeledStack> {
        let layer = self.upto(opts.layer)?;
        let n_heads = self.model.cfg().n_heads;
        let mut parts = Vec::new();
        let mut labels = Vec::new();
        for l in 0..layer {
            parts.push(apply_slice(&opts.pos_slice, &self.head_results(l)?, -3)?);
            labels.extend((0..n_heads).map(|h| format!("L{l}H{h}")));
        }
        let mut stack = if parts.is_empty() {
            None
        } else {
            let cat = Tensor::cat(&parts, parts[0].rank() - 2)?; // [..., L*H, d_model]
            Some(axis_to_front(&cat, cat.rank() - 2)?.contiguous()?)
        };
        if opts.incl_remainder {
            let resid = apply_slice(&opts.pos_slice, &self.resid_entering(layer)?, -2)?;
            let remainder = match &stack {
                Some(s) => (resid - s.sum(0)?)?,
                None => resid,
            };
            let remainder = remainder.unsqueeze(0)?;
            stack = Some(match stack {
                Some(s) => Tensor::cat(&[&s, &remainder], 0)?,
                None => remainder,
            });
            labels.push("remainder".to_string());
        }
        let mut stack = match stack {
            Some(s) => s,
            None => self.empty_stack(&opts.pos_slice)?,
        };
        if opts.apply_ln {
            let ln = LnOptions {
                layer: Some(layer as isize),
                pos_slice: opts.pos_slice.clone(),
                ..LnOptions::default()
            };
            stack = self.apply_ln_to_stack(&stack, &ln)?;
        }
        Ok(LabeledStack { stack, labels })
    }
}

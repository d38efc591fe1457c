//! Per-neuron results: what each MLP neuron writes to the residual stream.

use candle_core::{Tensor, D};
use hooklens_core::{Error, Result, Slice};

use super::apply_ln::LnOptions;
use super::cache_view::{apply_slice, axis_to_front, Analysis, LabeledStack};

/// Options of [`Analysis::stack_neuron_results`].
#[derive(Clone, Debug, Default)]
pub struct StackNeurons {
    /// Neurons of every layer before this one (`None` / `-1` / `n_layers`: all layers).
    pub layer: Option<isize>,
    /// Positions to keep.
    pub pos_slice: Slice,
    /// Neurons to keep in each layer (an index keeps one neuron, still as an axis).
    pub neuron_slice: Slice,
    /// Add a last component `"remainder"`: the rest of the residual stream entering `layer`.
    pub incl_remainder: bool,
    /// Apply the cached LayerNorm scaling of `layer`'s input.
    pub apply_ln: bool,
    /// Project every component onto this direction (`[d_model]`, or `[..., d_model]`
    /// broadcasting against the sliced activations' `...`) instead of returning it: the
    /// stack is then `[components, ...]`, and the `[..., d_mlp, d_model]` tensor of all
    /// neuron outputs is never built.
    pub project_output_onto: Option<Tensor>,
}

/// A neuron slice that keeps the axis: an index becomes a one-element list.
fn keep_axis(s: &Slice) -> Slice {
    match s {
        Slice::Index(i) => Slice::Indices(vec![*i]),
        other => other.clone(),
    }
}

/// `x` `[..., d_model]` · `direction` (`[d_model]` or broadcasting `[..., d_model]`) -> `[...]`.
pub(crate) fn project(x: &Tensor, direction: &Tensor) -> Result<Tensor> {
    let prod = x.broadcast_mul(direction).map_err(|e| {
        Error::invalid(format!(
            "cannot project components of shape {:?} onto a direction of shape {:?}: {e}",
            x.shape(),
            direction.shape()
        ))
    })?;
    Ok(prod.sum(D::Minus1)?)
}

impl Analysis<'_> {
    fn neuron_parts(&self, layer: usize, neuron_slice: &Slice, pos_slice: &Slice) -> Result<(Tensor, Tensor)> {
        let block = self
            .model
            .blocks
            .get(layer)
            .ok_or_else(|| Error::invalid(format!("layer {layer} is out of range")))?;
        // A mixture of experts has no dense MLP whose neurons these would be: each
        // expert has its own (`mlp.experts.E.hook_post`), weighted per token by the router.
        if block.mlp.moe.is_some() {
            return Err(Error::invalid(format!(
                "neuron results: the MLP of layer {layer} of this {} model is a mixture of experts, with no \
                 dense mlp.hook_post / W_out: its neurons are per expert (blocks.{layer}.mlp.experts.E.hook_post), \
                 mixed by the router's weights; use each layer's hook_mlp_out instead (decompose_resid, or \
                 get_full_resid_decomposition with expand_neurons: false)",
                self.model.cfg().original_architecture
            )));
        }
        let acts = apply_slice(pos_slice, self.at("post", layer)?, -2)?;
        let acts = apply_slice(neuron_slice, &acts, -1)?;
        let w_out = apply_slice(neuron_slice, &block.mlp.w_out, 0)?.to_dtype(acts.dtype())?;
        Ok((acts, w_out))
    }

    /// TransformerLens's `get_neuron_results`: each selected neuron's output in block
    /// `layer`, `[..., neurons, d_model]` (`[..., d_model]` for an index `neuron_slice`).
    /// Large: `[batch, pos, d_mlp, d_model]` for all neurons; see
    /// [`Analysis::get_neuron_results_projected`].
    pub fn get_neuron_results(&self, layer: usize, neuron_slice: &Slice, pos_slice: &Slice) -> Result<Tensor> {
        let (acts, w_out) = self.neuron_parts(layer, neuron_slice, pos_slice)?;
        Ok(acts.unsqueeze(acts.rank())?.broadcast_mul(&w_out)?)
    }

    /// Each selected neuron's output in block `layer` projected onto `direction`
    /// (`[d_model]`, or `[..., d_model]` broadcasting against the sliced activations):
    /// `[..., neurons]`, computed as activation × (`W_out` · direction) without building
    /// the outputs. An index `neuron_slice` gives `[...]`.
    pub fn get_neuron_results_projected(
        &self,
        layer: usize,
        neuron_slice: &Slice,
        pos_slice: &Slice,
        direction: &Tensor,
    ) -> Result<Tensor> {
        let (acts, w_out) = self.neuron_parts(layer, neuron_slice, pos_slice)?;
        let direction = direction.to_dtype(acts.dtype())?;
        let w_dir = if w_out.rank() == 1 {
            // One neuron: its output direction · the direction, per position if the direction varies.
            project(&w_out, &direction)?
        } else if direction.rank() == 1 {
            w_out.matmul(&direction.unsqueeze(1)?)?.squeeze(1)?
        } else {
            direction.broadcast_matmul(&w_out.t()?)?
        };
        acts.broadcast_mul(&w_dir).map_err(|e| {
            Error::invalid(format!(
                "neuron activations of shape {:?} do not broadcast with the projected weights of shape {:?} \
                 (direction {:?}): {e}",
                acts.shape(),
                w_dir.shape(),
                direction.shape()
            ))
        })
    }

    /// TransformerLens's `stack_neuron_results`: every selected neuron's output in the
    /// layers before `layer`, labels `"L{l}N{n}"`, plus `"remainder"` with
    /// `incl_remainder` (summing with the neurons to the residual entering `layer`).
    /// Stack `[components, ..., d_model]`, or `[components, ...]` with
    /// `project_output_onto`.
    pub fn stack_neuron_results(&self, opts: &StackNeurons) -> Result<LabeledStack> {
        let layer = self.upto(opts.layer)?;
        let d_mlp = self.model.cfg().d_mlp;
        let neuron_slice = keep_axis(&opts.neuron_slice);
        let neuron_ids = neuron_slice.indices(d_mlp)?;
        // With LayerNorm, projections use the centred direction (see `centre`).
        let direction = match &opts.project_output_onto {
            Some(d) if opts.apply_ln => Some(self.centre_for_ln(d)?),
            Some(d) => Some(d.clone()),
            None => None,
        };
        let mut parts = Vec::new();
        let mut labels = Vec::new();
        for l in 0..layer {
            let part = match &direction {
                Some(d) => self.get_neuron_results_projected(l, &neuron_slice, &opts.pos_slice, d)?,
                None => self.get_neuron_results(l, &neuron_slice, &opts.pos_slice)?,
            };
            parts.push(part);
            labels.extend(neuron_ids.iter().map(|n| format!("L{l}N{n}")));
        }
        // The neuron axis: last when projected, second to last otherwise.
        let mut stack = if parts.is_empty() {
            None
        } else {
            let r = parts[0].rank();
            let axis = if direction.is_some() { r - 1 } else { r - 2 };
            let cat = Tensor::cat(&parts, axis)?;
            Some(axis_to_front(&cat, axis)?.contiguous()?)
        };
        if opts.incl_remainder {
            let resid = apply_slice(&opts.pos_slice, &self.resid_entering(layer)?, -2)?;
            let resid = match &direction {
                Some(d) => project(&resid, &d.to_dtype(resid.dtype())?)?,
                None => resid,
            };
            let remainder = match &stack {
                Some(s) => (resid - s.sum(0)?)?,
                None => resid,
            }
            .unsqueeze(0)?;
            stack = Some(match stack {
                Some(s) => Tensor::cat(&[&s, &remainder], 0)?,
                None => remainder,
            });
            labels.push("remainder".to_string());
        }
        let stack = match stack {
            Some(s) => s,
            None => {
                let empty = self.empty_stack(&opts.pos_slice)?;
                if direction.is_some() {
                    let mut shape = empty.dims().to_vec();
                    shape.pop();
                    Tensor::zeros(shape, empty.dtype(), empty.device())?
                } else {
                    empty
                }
            }
        };
        let stack = if opts.apply_ln {
            let ln = LnOptions {
                layer: Some(layer as isize),
                pos_slice: opts.pos_slice.clone(),
                ..LnOptions::default()
            };
            if direction.is_some() {
                self.apply_ln_to_projected(&stack, &ln)?
            } else {
                self.apply_ln_to_stack(&stack, &ln)?
            }
        } else {
            stack
        };
        Ok(LabeledStack { stack, labels })
    }
}

//! `get_full_resid_decomposition`: the residual stream as heads, neurons (or MLPs),
//! embeddings and biases.

use candle_core::Tensor;
use hooklens_core::{Result, Slice};

use super::apply_ln::LnOptions;
use super::cache_view::{apply_slice, Analysis, LabeledStack};
use super::head_results::StackHeads;
use super::neuron_results::{project, StackNeurons};
use super::resid::{DecomposeMode, DecomposeResid};

/// Options of [`Analysis::get_full_resid_decomposition`].
#[derive(Clone, Debug)]
pub struct FullDecomposition {
    /// The layer whose input is decomposed (`None` / `-1` / `n_layers`: the unembedding's).
    pub layer: Option<isize>,
    /// Decompose `layer`'s MLP input (its heads and attention bias included).
    pub mlp_input: bool,
    /// One component per MLP neuron (`"L{l}N{n}"`) rather than per MLP (`"{l}_mlp_out"`).
    /// Default `true`.
    pub expand_neurons: bool,
    /// Apply the cached LayerNorm scaling of `layer`'s input.
    pub apply_ln: bool,
    /// Positions to keep.
    pub pos_slice: Slice,
    /// Project every component onto this direction (`[d_model]` or `[..., d_model]`):
    /// the stack is then `[components, ...]` and no per-neuron `d_model` vector is built.
    pub project_output_onto: Option<Tensor>,
}

impl Default for FullDecomposition {
    fn default() -> Self {
        FullDecomposition {
            layer: None,
            mlp_input: false,
            expand_neurons: true,
            apply_ln: false,
            pos_slice: Slice::All,
            project_output_onto: None,
        }
    }
}

impl Analysis<'_> {
    /// TransformerLens's `get_full_resid_decomposition`: the residual stream entering
    /// `layer` as every earlier head (`"L{l}H{h}"`), every earlier neuron (`"L{l}N{n}"`,
    /// or `"{l}_mlp_out"` without `expand_neurons`), `"embed"`, `"pos_embed"` and
    /// `"bias"` (the accumulated output biases not already in the other components). The
    /// components sum to that residual exactly. Stack `[components, ..., d_model]`, or
    /// `[components, ...]` with `project_output_onto`.
    pub fn get_full_resid_decomposition(&self, opts: &FullDecomposition) -> Result<LabeledStack> {
        let layer = self.upto(opts.layer)?;
        let direction = match &opts.project_output_onto {
            Some(d) if opts.apply_ln => Some(self.centre_for_ln(d)?),
            Some(d) => Some(d.clone()),
            None => None,
        };
        let proj = |t: Tensor| -> Result<Tensor> {
            match &direction {
                Some(d) => project(&t, &d.to_dtype(t.dtype())?),
                None => Ok(t),
            }
        };
        let heads = self.stack_head_results(&StackHeads {
            layer: Some((layer + usize::from(opts.mlp_input)) as isize),
            pos_slice: opts.pos_slice.clone(),
            ..StackHeads::default()
        })?;
        let rest_shape = heads.stack.dims()[1..].to_vec(); // [..., d_model]
        let mut labels = heads.labels;
        let mut parts = vec![proj(heads.stack)?];
        if layer > 0 {
            let mlps = if opts.expand_neurons {
                self.stack_neuron_results(&StackNeurons {
                    layer: Some(layer as isize),
                    pos_slice: opts.pos_slice.clone(),
                    project_output_onto: direction.clone(),
                    ..StackNeurons::default()
                })?
            } else {
                let s = self.decompose_resid(&DecomposeResid {
                    layer: Some(layer as isize),
                    mlp_input: opts.mlp_input,
                    mode: DecomposeMode::Mlp,
                    pos_slice: opts.pos_slice.clone(),
                    incl_embeds: false,
                    ..DecomposeResid::default()
                })?;
                LabeledStack {
                    stack: proj(s.stack)?,
                    labels: s.labels,
                }
            };
            labels.extend(mlps.labels);
            parts.push(mlps.stack);
        }
        for (name, label) in [("hook_embed", "embed"), ("hook_pos_embed", "pos_embed")] {
            if let Some(t) = self.cache.get(name) {
                parts.push(proj(apply_slice(&opts.pos_slice, t, -2)?.unsqueeze(0)?)?);
                labels.push(label.to_string());
            }
        }
        let bias = self
            .model
            .accumulated_bias(layer, opts.mlp_input, opts.expand_neurons)?
            .to_dtype(parts[0].dtype())?;
        let mut bias_shape = vec![1];
        bias_shape.extend_from_slice(&rest_shape);
        parts.push(proj(bias.broadcast_as(bias_shape)?.contiguous()?)?);
        labels.push("bias".to_string());
        let stack = Tensor::cat(&parts, 0)?;
        let stack = if opts.apply_ln {
            let ln = LnOptions {
                layer: Some(layer as isize),
                mlp_input: opts.mlp_input,
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

//! `accumulated_resid` and `decompose_resid`: the residual stream layer by layer, and
//! split into what each sublayer wrote.

use candle_core::Tensor;
use hooklens_core::{Error, Result, Slice};

use super::apply_ln::LnOptions;
use super::cache_view::{apply_slice, Analysis, LabeledStack};

/// Options of [`Analysis::accumulated_resid`].
#[derive(Clone, Debug, Default)]
pub struct AccumulatedResid {
    /// Up to the input of this layer (`None` / `-1` / `n_layers`: every layer and the
    /// final residual).
    pub layer: Option<isize>,
    /// Also each earlier layer's `resid_mid`.
    pub incl_mid: bool,
    /// Apply the cached LayerNorm scaling of the layer the stack feeds.
    pub apply_ln: bool,
    /// Positions to keep (an index removes the axis).
    pub pos_slice: Slice,
    /// Also `layer`'s own `resid_mid` (the MLP's input rather than attention's).
    pub mlp_input: bool,
}

/// Which sublayers [`Analysis::decompose_resid`] returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecomposeMode {
    /// Attention and MLP outputs.
    #[default]
    All,
    /// MLP outputs only.
    Mlp,
    /// Attention outputs only.
    Attn,
}

/// Options of [`Analysis::decompose_resid`].
#[derive(Clone, Debug)]
pub struct DecomposeResid {
    /// Up to the input of this layer (`None` / `-1` / `n_layers`: everything).
    pub layer: Option<isize>,
    /// Also `layer`'s own attention output (the MLP's input).
    pub mlp_input: bool,
    /// Which sublayers.
    pub mode: DecomposeMode,
    /// Apply the cached LayerNorm scaling of the layer the stack feeds.
    pub apply_ln: bool,
    /// Positions to keep.
    pub pos_slice: Slice,
    /// Include `embed` and `pos_embed` first. Default `true`.
    pub incl_embeds: bool,
}

impl Default for DecomposeResid {
    fn default() -> Self {
        DecomposeResid {
            layer: None,
            mlp_input: false,
            mode: DecomposeMode::All,
            apply_ln: false,
            pos_slice: Slice::All,
            incl_embeds: true,
        }
    }
}

impl Analysis<'_> {
    /// TransformerLens's `accumulated_resid`: the residual stream entering each layer up
    /// to `layer` (labels `"{l}_pre"`, with `"{l}_mid"` after each earlier layer's if
    /// `incl_mid`, `layer`'s own `"{layer}_mid"` if `mlp_input`), and `"final_post"` (the
    /// last block's `resid_post`) when `layer` is `n_layers`. Stack
    /// `[components, ..., d_model]` -- the logit lens.
    ///
    /// In a parallel block (GPT-NeoX) there is no `resid_mid`: `incl_mid` is an error,
    /// and with `mlp_input` the MLP's input is the block's `resid_pre`.
    pub fn accumulated_resid(&self, opts: &AccumulatedResid) -> Result<LabeledStack> {
        let layer = self.upto(opts.layer)?;
        if opts.incl_mid && self.parallel() {
            return Err(Error::invalid(
                "accumulated_resid with incl_mid: this model's attention and MLP run in parallel \
                 (parallel_attn_mlp), so there is no resid_mid",
            ));
        }
        let n = self.n_layers();
        let mut parts = Vec::new();
        let mut labels = Vec::new();
        for l in 0..=layer {
            if l == n {
                parts.push(self.at("resid_post", n - 1)?.clone());
                labels.push("final_post".to_string());
                continue;
            }
            parts.push(self.at("resid_pre", l)?.clone());
            labels.push(format!("{l}_pre"));
            if (opts.incl_mid && l < layer) || (opts.mlp_input && l == layer && !self.parallel()) {
                parts.push(self.at("resid_mid", l)?.clone());
                labels.push(format!("{l}_mid"));
            }
        }
        let parts = parts
            .iter()
            .map(|c| apply_slice(&opts.pos_slice, c, -2))
            .collect::<Result<Vec<_>>>()?;
        let mut stack = Tensor::stack(&parts, 0)?;
        if opts.apply_ln {
            let ln = LnOptions {
                layer: Some(layer as isize),
                mlp_input: opts.mlp_input,
                pos_slice: opts.pos_slice.clone(),
                ..LnOptions::default()
            };
            stack = self.apply_ln_to_stack(&stack, &ln)?;
        }
        Ok(LabeledStack { stack, labels })
    }

    /// TransformerLens's `decompose_resid`: the residual stream entering `layer` split
    /// into `"embed"`, `"pos_embed"` (with `incl_embeds`) and each earlier layer's
    /// `"{l}_attn_out"` / `"{l}_mlp_out"` (as `mode` selects), plus `"{layer}_attn_out"`
    /// with `mlp_input` (except in a parallel block, whose MLP reads `resid_pre`). Stack `[components, ..., d_model]`; with mode `All` and the
    /// embeddings it sums to the residual it decomposes (sublayer outputs include their
    /// biases).
    pub fn decompose_resid(&self, opts: &DecomposeResid) -> Result<LabeledStack> {
        let layer = self.upto(opts.layer)?;
        let incl_attn = opts.mode != DecomposeMode::Mlp;
        let incl_mlp = opts.mode != DecomposeMode::Attn;
        let mut parts = Vec::new();
        let mut labels = Vec::new();
        if opts.incl_embeds {
            if let Some(t) = self.cache.get("hook_embed") {
                parts.push(t.clone());
                labels.push("embed".to_string());
            }
            if let Some(t) = self.cache.get("hook_pos_embed") {
                parts.push(t.clone());
                labels.push("pos_embed".to_string());
            }
        }
        for l in 0..layer {
            if incl_attn {
                parts.push(self.at("attn_out", l)?.clone());
                labels.push(format!("{l}_attn_out"));
            }
            if incl_mlp {
                parts.push(self.at("mlp_out", l)?.clone());
                labels.push(format!("{l}_mlp_out"));
            }
        }
        // A parallel block's MLP reads resid_pre: its own attention is not an input.
        if opts.mlp_input && incl_attn && !self.parallel() {
            if layer == self.n_layers() {
                return Err(Error::invalid(
                    "decompose_resid with mlp_input needs a layer below n_layers (the unembedding has no MLP)",
                ));
            }
            parts.push(self.at("attn_out", layer)?.clone());
            labels.push(format!("{layer}_attn_out"));
        }
        if parts.is_empty() {
            return Ok(LabeledStack {
                stack: self.empty_stack(&opts.pos_slice)?,
                labels,
            });
        }
        let parts = parts
            .iter()
            .map(|c| apply_slice(&opts.pos_slice, c, -2))
            .collect::<Result<Vec<_>>>()?;
        let mut stack = Tensor::stack(&parts, 0)?;
        if opts.apply_ln {
            let ln = LnOptions {
                layer: Some(layer as isize),
                mlp_input: opts.mlp_input,
                pos_slice: opts.pos_slice.clone(),
                ..LnOptions::default()
            };
            stack = self.apply_ln_to_stack(&stack, &ln)?;
        }
        Ok(LabeledStack { stack, labels })
    }
}

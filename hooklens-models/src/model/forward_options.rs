//! Options and output of `HookedTransformer::forward_with`, after TransformerLens's `forward`.

use candle_core::Tensor;

/// What `forward_with` computes (TransformerLens's `return_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReturnType {
    /// Logits `[batch, pos, d_vocab]`.
    #[default]
    Logits,
    /// The next-token cross-entropy loss only.
    Loss,
    /// Logits and loss.
    Both,
    /// Nothing (run for the hooks' sake): the unembedding is skipped.
    None,
}

/// The options of [`crate::model::HookedTransformer::forward_with`].
#[derive(Clone, Debug, Default)]
pub struct ForwardOptions {
    /// What to return.
    pub return_type: ReturnType,
    /// Return the loss per token `[batch, pos-1]` instead of its mean (a scalar).
    pub loss_per_token: bool,
    /// `[batch, pos]`, 1 for real tokens and 0 for padding (left or right). Padded
    /// keys are never attended, positions count real tokens only, and padding gets a
    /// zero position embedding, as in TransformerLens. Any integer or float dtype.
    pub attention_mask: Option<Tensor>,
    /// Start at this block: the input is then a residual stream `[batch, pos, d_model]`
    /// (the `resid_pre` of that block), not tokens. Negative values count from the end.
    pub start_at_layer: Option<isize>,
    /// Stop before this block and return its `resid_pre` `[batch, pos, d_model]` as
    /// `ForwardOutput::residual`. Negative values count from the end.
    pub stop_at_layer: Option<isize>,
    /// The tokens `[batch, pos]` for the loss when the input is a residual stream.
    pub tokens: Option<Tensor>,
}

impl ForwardOptions {
    /// Logits only, no mask: the plain forward.
    pub fn new() -> Self {
        Self::default()
    }

    /// These options with `return_type`.
    pub fn return_type(mut self, return_type: ReturnType) -> Self {
        self.return_type = return_type;
        self
    }

    /// These options with the per-token loss switched on or off.
    pub fn loss_per_token(mut self, yes: bool) -> Self {
        self.loss_per_token = yes;
        self
    }

    /// These options with an attention mask `[batch, pos]` (1 keep, 0 pad).
    pub fn attention_mask(mut self, mask: Tensor) -> Self {
        self.attention_mask = Some(mask);
        self
    }

    /// These options starting at block `layer` (the input is a residual stream).
    pub fn start_at_layer(mut self, layer: isize) -> Self {
        self.start_at_layer = Some(layer);
        self
    }

    /// These options stopping before block `layer` (the output is a residual stream).
    pub fn stop_at_layer(mut self, layer: isize) -> Self {
        self.stop_at_layer = Some(layer);
        self
    }

    /// These options with the tokens `[batch, pos]` used for the loss.
    pub fn tokens(mut self, tokens: Tensor) -> Self {
        self.tokens = Some(tokens);
        self
    }
}

/// What `forward_with` returns; which fields are set depends on the options.
#[derive(Clone, Debug, Default)]
pub struct ForwardOutput {
    /// Logits `[batch, pos, d_vocab]` (return type `Logits` or `Both`).
    pub logits: Option<Tensor>,
    /// The mean next-token loss, a scalar, or per token `[batch, pos-1]` (return type
    /// `Loss` or `Both`).
    pub loss: Option<Tensor>,
    /// The residual stream `[batch, pos, d_model]` when `stop_at_layer` was given.
    pub residual: Option<Tensor>,
}

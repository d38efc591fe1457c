//! hooklens: mechanistic interpretability on candle.
//!
//! Every activation of a model gets a name, hooks read or replace it, and caches
//! collect it, as in TransformerLens. `#[derive(Hooked)]` puts this on any candle model.

pub use hooklens_core::*;
pub use hooklens_derive::Hooked;

/// Hooked models: GPT-2 with TransformerLens's hook names, loading, text and generation.
pub use hooklens_models as models;
pub use hooklens_models::{
    ForwardOptions, GenerateOptions, Gpt2Config, HookedGpt2, HookedTransformer, LoadOptions, ReturnType, Tokenizer,
    TransformerConfig,
};

/// What `#[derive(Hooked)]` expands to refers to these. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use hooklens_core::__private::*;
}

//! hooklens: mechanistic interpretability on candle.
//!
//! Every activation of a model gets a name, hooks read or replace it, and caches
//! collect it, as in TransformerLens. `#[derive(Hooked)]` puts this on any candle model.

pub use hooklens_core::*;
pub use hooklens_derive::Hooked;

/// Hooked models (the `models` feature, on by default): one `HookedTransformer` for every bundled family (GPT-2, GPT-NeoX,
/// Llama, Mistral, Qwen 2 / 3, Gemma 1 / 2, Phi-3) with TransformerLens's hook names,
/// loading, text and generation.
#[cfg(feature = "models")]
pub use hooklens_models as models;

/// The candle this version of hooklens is built on, so that a user's tensors are the
/// very type hooklens takes without pinning candle's version by hand:
///
/// ```
/// use hooklens::candle_core::{Device, Tensor};
/// use hooklens::{HookPoint, HookSet};
///
/// let x = Tensor::ones((1, 3, 4), hooklens::candle_core::DType::F32, &Device::Cpu)?;
/// let hooks = HookSet::new().fwd("hook_x", |x: &Tensor, _: &HookPoint| Ok(Some(x.zeros_like()?)));
/// # let _ = (x, hooks);
/// # Ok::<(), hooklens::Error>(())
/// ```
pub use candle_core;
/// candle's neural-network crate, as [`candle_core`] (with the `models` feature).
#[cfg(feature = "models")]
pub use candle_nn;
/// Sparse autoencoders and transcoders in SAELens's format (see [`models::sae`]).
#[cfg(feature = "models")]
pub use hooklens_models::sae::{Sae, SaeModel, SaeSet};
/// The model types most programs start from (with the `models` feature).
#[cfg(feature = "models")]
pub use hooklens_models::{
    ForwardOptions, GenerateOptions, Gpt2Config, HookedGpt2, HookedTransformer, LoadOptions, ReturnType, Tokenizer,
    TransformerConfig,
};

/// What `#[derive(Hooked)]` expands to refers to these. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use hooklens_core::__private::*;
}

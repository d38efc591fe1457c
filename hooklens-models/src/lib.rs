//! Hooked transformer models for hooklens: one config-driven [`HookedTransformer`]
//! for every bundled family (GPT-2, GPT-NeoX / Pythia, Llama, Mistral, Qwen 2 and 3,
//! Gemma 1, 2 and 3, Phi-3, OLMo 2, GPT-Neo, OPT, Phi 1 / 1.5 / 2, GPT-J, BLOOM, and the
//! mixtures of experts Mixtral, Qwen3-MoE, OLMoE and gpt-oss), hooked exactly as TransformerLens's `HookedTransformer`:
//! same hook names, shapes, order and values, from Hugging Face checkpoints.

pub mod analysis;
pub mod builtin;
pub mod circuits;
pub mod config;
pub mod convert;
pub mod corpus;
pub(crate) mod html;
pub mod loading;
pub mod model;
pub(crate) mod ops;
pub(crate) mod params;
mod pretrained;
pub mod sae;
pub mod tokenizer;
#[cfg(feature = "viz")]
pub mod viz;

/// The GPT-2 names of the model's items (`gpt2::HookedGpt2`, ...): the same types as
/// [`model`], kept (deprecated) so that code written for the GPT-2-only releases still
/// compiles; new code uses [`model`] and [`HookedTransformer`].
#[deprecated(since = "0.2.0", note = "use `hooklens_models::model` (the same items)")]
pub mod gpt2 {
    pub use crate::model::*;
}

#[allow(deprecated)]
pub use config::Gpt2Config;
pub use config::TransformerConfig;
pub use convert::{config_from_hf_json, supported_architectures};
pub use loading::hub;
pub use loading::hub::{HubOptions, ModelFiles, ModelSource, TextFiles};
#[allow(deprecated)]
pub use model::HookedGpt2;
pub use model::{
    ForwardOptions, ForwardOutput, GenerateOptions, HookedTransformer, KvCache, LoadOptions, ProcessingOptions,
    ReturnType,
};
pub use tokenizer::Tokenizer;

//! Hooked transformer models for hooklens. GPT-2 ([`gpt2::HookedGpt2`]) is hooked
//! exactly as TransformerLens's `HookedTransformer`: same hook names, shapes, order and
//! values, from Hugging Face checkpoints.

pub mod analysis;
pub mod builtin;
pub mod gpt2;
pub mod hub;
#[cfg(test)]
mod tensor_diff;
pub mod tokenizer;
pub mod viz;

pub use gpt2::{
    ForwardOptions, ForwardOutput, GenerateOptions, Gpt2Config, HookedGpt2, KvCache, LoadOptions, ProcessingOptions,
    ReturnType,
};
pub use hub::{HubOptions, ModelFiles, ModelSource, TextFiles};
pub use tokenizer::Tokenizer;

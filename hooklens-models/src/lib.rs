//! Hooked transformer models.

pub mod hub;
pub mod tokenizer;

pub use hub::{HubOptions, ModelFiles, ModelSource};
pub use tokenizer::Tokenizer;

//! Hooked transformer models.

pub mod tokenizer;

pub use tokenizer::Tokenizer;

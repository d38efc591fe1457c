//! The subcommands, one per file, and what they share.

pub mod attention;
pub mod attribute;
pub mod cache;
pub mod common;
pub mod demo;
pub mod features;
pub mod generate;
pub mod harvest;
pub mod hooks;
pub mod logit_lens;
pub mod run;
pub mod sae_args;
pub mod saes;
pub mod tokenize;
pub mod train_sae;

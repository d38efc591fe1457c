//! The subcommands, one per file, and what they share.

pub mod cache;
pub mod common;
pub mod generate;
pub mod hooks;
pub mod run;
pub mod tokenize;

//! The built-in model's shape, which the library needs (to tokenize without the
//! weights) and its training starts from.

use crate::config::TransformerConfig;

/// The built-in model's shape: two layers (the fewest that can form an induction
/// circuit: a previous-token head feeding an induction head), GPT-2's vocabulary,
/// small enough to ship in f16 under 8 MB.
pub fn builtin_config() -> TransformerConfig {
    TransformerConfig::new(2, 64, 4, 50257, 57)
}

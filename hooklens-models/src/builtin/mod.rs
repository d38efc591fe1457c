//! The built-in model: a two-layer GPT-2 with GPT-2's vocabulary and tokenizer,
//! trained in this repository from a seed to have induction heads.

#[cfg_attr(not(feature = "bench-internals"), allow(dead_code))]
mod induction;
mod shape;
#[cfg_attr(not(feature = "bench-internals"), allow(dead_code))]
mod train;
mod weights;

pub use crate::loading::hub::builtin_name::{is_builtin, BUILTIN};
pub use induction::{induction_scores, previous_token_scores};
pub use shape::builtin_config;
pub use weights::{builtin_files, builtin_stored_config};
/// Random induction data and the training that made the built-in weights, for the
/// command line's demo and `examples/train_builtin.rs` (feature `bench-internals`; not API).
#[cfg(feature = "bench-internals")]
pub use {
    induction::{half_losses, random_token, repeated_tokens, windowed_repeats},
    train::{train_induction, TrainOptions, TrainStep},
};
#[cfg(not(feature = "bench-internals"))]
#[allow(unused_imports)]
pub(crate) use {
    induction::{half_losses, random_token, repeated_tokens, windowed_repeats},
    train::{train_induction, TrainOptions, TrainStep},
};

//! The built-in model: a two-layer GPT-2 with GPT-2's vocabulary and tokenizer,
//! trained in this repository from a seed to have induction heads.

mod induction;
mod train;
mod weights;

pub use induction::{
    half_losses, induction_scores, previous_token_scores, random_token, repeated_tokens, windowed_repeats,
};
pub use train::{builtin_config, train_induction, TrainOptions, TrainStep};
pub use weights::{builtin_files, builtin_stored_config, is_builtin, BUILTIN};

//! The GPT-2-era names are deprecated aliases of the one model and config: code written
//! for the GPT-2-only releases still compiles (with a warning) and means the same types.
#![allow(deprecated)]

use hooklens_models::{Gpt2Config, HookedGpt2, HookedTransformer, TransformerConfig};

#[test]
fn gpt2_names_are_the_same_types() {
    // Each binding only type-checks if the alias is the very type.
    let cfg: Gpt2Config = TransformerConfig::gpt2_small();
    let same: &TransformerConfig = &cfg;
    assert_eq!(same.d_model, 768);
    let as_new: fn(&HookedGpt2) -> &HookedTransformer = |m| m;
    let as_old: fn(&HookedTransformer) -> &HookedGpt2 = |m| m;
    let _ = (as_new, as_old);
    // The old module path names the same items as `model`.
    let _: fn(&hooklens_models::gpt2::HookedTransformer) -> &hooklens_models::model::HookedTransformer = |m| m;
    let _: hooklens_models::gpt2::PaddingSide = hooklens_models::model::PaddingSide::Left;
}

//! The one hooked transformer, [`HookedTransformer`], for every bundled family: embed,
//! blocks (sequential or parallel attention and MLP, norms before and optionally
//! after), attention (MHA / GQA / MQA, rotary, sliding windows, soft caps, sinks, q/k
//! norms), MLP (plain, gated, or a sparse mixture of gated experts), unembed, KV
//! cache, forward options, generation,
//! text, weight views and processing. What a family changes is its config
//! ([`crate::config::TransformerConfig`]) and its converter (`crate::convert`).

mod activation;
mod alibi;
mod attention;
mod block;
mod embed;
mod forward_options;
mod generate;
mod kv_cache;
mod load_options;
mod mlp;
#[allow(clippy::module_inception)]
mod model;
mod moe;
mod norm;
mod processing;
#[cfg_attr(not(feature = "bench-internals"), allow(dead_code))]
mod random_init;
mod rotary;
mod text;
mod unembed;
mod weights;

#[allow(deprecated)]
pub use crate::config::Gpt2Config;
pub use crate::config::{
    ActFn, AttnType, NormalizationType, NtkByPartsRope, PositionalEmbeddingType, TransformerConfig,
};
pub use crate::ops::cross_entropy_per_row;
/// The attention and weight products on their own, for the benchmarks (feature
/// `bench-internals`; not API).
#[cfg(feature = "bench-internals")]
pub use crate::ops::{attention_scores, attention_z, matmul, matmul_with, WeightGemm};
pub use attention::Attention;
pub use block::Block;
pub use embed::{Embed, PosEmbed};
pub use forward_options::{ForwardOptions, ForwardOutput, ReturnType};
pub use generate::GenerateOptions;
pub use kv_cache::KvCache;
pub use load_options::LoadOptions;
pub use mlp::Mlp;
#[allow(deprecated)]
pub use model::HookedGpt2;
pub use model::HookedTransformer;
pub use moe::{Expert, Moe};
#[allow(unused_imports)]
pub(crate) use norm::{normalize_composite, rms_scale_composite, scale_composite};
pub use norm::{LayerNorm, Norm, NormKind};
pub use processing::ProcessingOptions;
#[cfg(not(feature = "bench-internals"))]
#[allow(unused_imports)]
pub(crate) use random_init::{hf_config_json, random_weights, save_hf_checkpoint};
pub use text::{Occurrence, PaddingSide, Prompts, SingleToken, TextOrTokens};
pub use unembed::Unembed;
/// Seeded random weights and checkpoints, for the tests, benchmarks and the command
/// line's demo (feature `bench-internals`; not API).
#[cfg(feature = "bench-internals")]
pub use {
    crate::ops::SeededRng,
    random_init::{hf_config_json, random_weights, save_hf_checkpoint},
};

//! Sparse autoencoders and transcoders in SAELens's format, spliced into any hook point
//! of any hooked model as SAELens's `HookedSAETransformer` does.
//!
//! - [`Sae`] loads a SAELens folder (`cfg.json` + `sae_weights.safetensors`; SAELens 6
//!   configs and the flat ones of older versions) for the architectures SAELens ships:
//!   standard, gated, JumpReLU (and BatchTopK, saved as JumpReLU), top-k, transcoders
//!   and skip transcoders; `encode`, `decode` and `forward` compute exactly what
//!   SAELens computes, firing its hook points.
//! - [`SaeModel`] splices SAEs into a model per run, for a scope or as model state, with
//!   or without the error term ([`SaeSet`]).
//! - [`releases`] is SAELens's directory of named releases ([`Sae::from_release`]),
//!   read in SAELens's format or, for Gemma Scope 1 and 2, Llama Scope,
//!   dictionary_learning and circuit-tracer's transcoders, converted from their own
//!   files as SAELens converts them.
//! - [`features`] has the interventions (zero, clamp, steer) and feature attribution.
//! - [`train`] trains standard, TopK and BatchTopK SAEs on harvested activations, as
//!   SAELens does.

mod autoencoder;
mod config;
pub mod features;
#[cfg(feature = "hub")]
mod formats;
#[cfg(feature = "hub")]
mod hub;
pub mod releases;
mod sparse;
mod splice;
pub mod train;

pub use autoencoder::{GatedWeights, InputNorm, Sae, SaeWeights, SAE_CFG_FILE, SAE_WEIGHTS_FILE};
pub use config::{Architecture, Normalization, SaeConfig};
pub use sparse::{dense_from_sparse, sparse_top_k};
pub use splice::{SaeModel, SaeSet};

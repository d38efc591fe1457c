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
//! - [`features`] has the interventions (zero, clamp, steer) and feature attribution.

mod config;
pub mod features;
// Named after the type it holds; renaming the file is a change of its own.
#[allow(clippy::module_inception)]
mod sae;
mod splice;

pub use config::{Architecture, Normalization, SaeConfig};
pub use sae::{GatedWeights, InputNorm, Sae, SaeWeights, SAE_CFG_FILE, SAE_WEIGHTS_FILE};
pub use splice::{SaeModel, SaeSet};

//! The hook engine of hooklens: [`HookPoint`], the [`Hooked`] trait that
//! `#[derive(Hooked)]` implements, TransformerLens's hook API on every hooked model
//! ([`HookedModel`]), context scopes ([`HookScope`]), per-run hooks and caching, and
//! [`ActivationCache`].

mod activation_cache;
mod atomic_file;
mod cache_options;
mod error;
mod file_kind;
mod freed_memory;
mod grad_hook_op;
mod hook;
mod hook_dict;
mod hook_options;
mod hook_point;
mod hook_scope;
mod hook_set;
mod hooked;
mod hooked_forward;
mod hooked_model;
pub mod interventions;
mod keys;
mod memory;
mod names_filter;
mod non_finite;
mod run_frame;
mod safetensors_writer;
mod slice;
mod splice;

pub use activation_cache::ActivationCache;
pub use cache_options::{position_axis, CacheOptions};
pub use error::{Error, Result};
pub use freed_memory::retain_freed_memory;
pub use grad_hook_op::{grad_mode, with_grad_mode};
pub use hook::{Direction, Hook, HookFnDyn, HookInfo};
pub use hook_dict::HookDict;
pub use hook_options::{HookOptions, RemoveOptions, ResetOptions, SpliceOptions};
pub use hook_point::{layer_of, HookPoint, ModelForward};
pub use hook_scope::HookScope;
pub use hook_set::HookSet;
pub use hooked::{HookPath, Hooked};
pub use hooked_forward::HookedForward;
pub use hooked_model::HookedModel;
pub use keys::Keys;
pub use names_filter::NamesFilter;
pub use non_finite::{first_non_finite, NonFinite};
pub use slice::Slice;
pub use splice::Splice;

/// What the other hooklens crates (models, the command line, the fuzz targets) share with
/// the core without it being API: the atomic file writer, the memory checks, name
/// matching. Not public API: it may change in any release.
#[doc(hidden)]
pub mod __internal {
    pub use crate::atomic_file::{is_temporary, pause_point, write_atomically, PAUSE_MID_WRITE_ENV};
    pub use crate::error::nearest_names;
    pub use crate::file_kind::file_kind;
    pub use crate::memory::{available_memory, check_memory, human, AVAILABLE_MEMORY_ENV};
    pub use crate::names_filter::{glob_match, is_glob};
    pub use crate::safetensors_writer::save_safetensors;
}

/// What `#[derive(Hooked)]` expands to refers to these, by absolute path, so that a
/// user's own names cannot shadow them. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::hook_point::declare_position_axis;
    pub use crate::hooked::probe::{Probe, ProbeHooked, ProbeOther};
    pub use crate::{Error, HookPath, HookPoint, Hooked};
}

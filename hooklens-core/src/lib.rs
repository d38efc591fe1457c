//! The hook engine of hooklens: [`HookPoint`], the [`Hooked`] trait that
//! `#[derive(Hooked)]` implements, TransformerLens's hook API on every hooked model
//! ([`HookedModel`]), context scopes ([`HookScope`]), per-run hooks and caching, and
//! [`ActivationCache`].

mod error;
mod hook;
mod hook_point;
mod hooked;
mod run_frame;

pub use error::{nearest_names, Error, Result};
pub use hook::{Direction, Hook, HookFnDyn, HookInfo};
pub use hook_point::{layer_of, HookPoint};
pub use hooked::{probe, HookPath, Hooked};

/// What `#[derive(Hooked)]` expands to refers to these, by absolute path, so that a
/// user's own names cannot shadow them. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::hooked::probe::{Probe, ProbeHooked, ProbeOther};
    pub use crate::{Error, HookPath, HookPoint, Hooked};
}

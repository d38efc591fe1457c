//! `HookedForward`: runs on models with one obvious forward.

use crate::{ActivationCache, CacheOptions, HookSet, HookedModel, Result};

/// A model with one obvious forward pass (tokens -> logits, say). It gets the input
/// versions of `run_with_hooks` and `run_with_cache`, which otherwise take the forward
/// as a closure.
pub trait HookedForward: HookedModel {
    /// What the forward takes.
    type Input: ?Sized;
    /// What the forward returns.
    type Output;

    /// The forward pass, hooks applying.
    fn forward_hooked(&self, input: &Self::Input) -> Result<Self::Output>;

    /// [`HookedModel::run_with_hooks`] on this model's forward.
    fn run_with_hooks_on(&self, input: &Self::Input, hooks: HookSet) -> Result<Self::Output> {
        self.run_with_hooks(hooks, |m| m.forward_hooked(input))
    }

    /// [`HookedModel::run_with_cache`] on this model's forward.
    fn run_with_cache_on(&self, input: &Self::Input, opts: CacheOptions) -> Result<(Self::Output, ActivationCache)> {
        self.run_with_cache(opts, |m| m.forward_hooked(input))
    }
}

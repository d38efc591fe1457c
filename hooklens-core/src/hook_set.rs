//! `HookSet`: the forward and backward hooks given to a scope or a run.

use candle_core::Tensor;

use crate::{Hook, HookPoint, NamesFilter, Result};

/// Hooks to attach for a `hooks()` scope or one `run_with_hooks` call
/// (TransformerLens's `fwd_hooks` and `bwd_hooks` lists), each with the names it
/// applies to.
///
/// ```
/// # use hooklens_core::HookSet;
/// let hooks = HookSet::new()
///     .fwd("blocks.0.hook_resid_pre", |x, _hp| Ok(Some(x.zeros_like()?)))
///     .fwd("blocks.*.attn.hook_pattern", |_x, hp| {
///         println!("saw {}", hp.name());
///         Ok(None)
///     });
/// assert_eq!(hooks.len(), 2);
/// ```
#[derive(Clone, Debug, Default)]
pub struct HookSet {
    pub(crate) fwd: Vec<(NamesFilter, Hook)>,
    pub(crate) bwd: Vec<(NamesFilter, Hook)>,
}

impl HookSet {
    /// No hooks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a forward hook on the points `names` selects.
    pub fn fwd<F>(self, names: impl Into<NamesFilter>, f: F) -> Self
    where
        F: Fn(&Tensor, &HookPoint) -> Result<Option<Tensor>> + Send + Sync + 'static,
    {
        self.fwd_hook(names, Hook::new(f))
    }

    /// Adds an existing forward [`Hook`] (shared, not copied) on the points `names` selects.
    pub fn fwd_hook(mut self, names: impl Into<NamesFilter>, hook: Hook) -> Self {
        self.fwd.push((names.into(), hook));
        self
    }

    /// Adds a backward hook: it sees the gradient at the points `names` selects.
    pub fn bwd<F>(self, names: impl Into<NamesFilter>, f: F) -> Self
    where
        F: Fn(&Tensor, &HookPoint) -> Result<Option<Tensor>> + Send + Sync + 'static,
    {
        self.bwd_hook(names, Hook::new(f))
    }

    /// Adds an existing backward [`Hook`] on the points `names` selects.
    pub fn bwd_hook(mut self, names: impl Into<NamesFilter>, hook: Hook) -> Self {
        self.bwd.push((names.into(), hook));
        self
    }

    /// The number of (filter, hook) pairs, both directions.
    pub fn len(&self) -> usize {
        self.fwd.len() + self.bwd.len()
    }

    /// Whether there are no hooks.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

//! `HookSet`: the forward and backward hooks given to a scope or a run.

use std::sync::Arc;

use candle_core::Tensor;

use crate::{Hook, HookPoint, NamesFilter, Result, Splice};

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
#[derive(Clone, Default)]
pub struct HookSet {
    pub(crate) fwd: Vec<(NamesFilter, Hook)>,
    pub(crate) bwd: Vec<(NamesFilter, Hook)>,
    pub(crate) splices: Vec<(String, Arc<dyn Splice>)>,
}

impl std::fmt::Debug for HookSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookSet")
            .field("fwd", &self.fwd)
            .field("bwd", &self.bwd)
            .field("splices", &self.splices.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .finish()
    }
}

impl HookSet {
    /// No hooks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a forward hook on the points `names` selects. The closure's types are
    /// inferred; a closure or `fn` annotated to return `candle_core::Result` goes to
    /// [`HookSet::fwd_hook`] instead, which takes any error type (see [`Hook`]'s `From`).
    pub fn fwd<F>(self, names: impl Into<NamesFilter>, f: F) -> Self
    where
        F: Fn(&Tensor, &HookPoint) -> Result<Option<Tensor>> + Send + Sync + 'static,
    {
        self.fwd_hook(names, Hook::new(f))
    }

    /// Adds a forward hook on the points `names` selects: an existing [`Hook`] (shared,
    /// not copied), or a closure or `fn` returning `Result<Option<Tensor>, E>` for any
    /// `E` that converts into hooklens's `Error` (candle's `Result` included).
    pub fn fwd_hook(mut self, names: impl Into<NamesFilter>, hook: impl Into<Hook>) -> Self {
        self.fwd.push((names.into(), hook.into()));
        self
    }

    /// Adds a backward hook: it sees the gradient at the points `names` selects (the
    /// closure's types inferred, as in [`HookSet::fwd`]).
    pub fn bwd<F>(self, names: impl Into<NamesFilter>, f: F) -> Self
    where
        F: Fn(&Tensor, &HookPoint) -> Result<Option<Tensor>> + Send + Sync + 'static,
    {
        self.bwd_hook(names, Hook::new(f))
    }

    /// Adds a backward hook on the points `names` selects: a [`Hook`] or anything that
    /// converts into one, as [`HookSet::fwd_hook`].
    pub fn bwd_hook(mut self, names: impl Into<NamesFilter>, hook: impl Into<Hook>) -> Self {
        self.bwd.push((names.into(), hook.into()));
        self
    }

    /// Splices `splice` in at the hook point named `name` (an exact name of the model):
    /// the point's place, hooks and cache entry go to the splice's own points (see
    /// [`Splice`]). One splice per point; the hooks of this set may name the splice's
    /// points (`"<name>.<its point>"`).
    pub fn splice(mut self, name: impl Into<String>, splice: Arc<dyn Splice>) -> Self {
        self.splices.push((name.into(), splice));
        self
    }

    /// Appends another set's hooks and splices after this one's.
    pub fn extend(mut self, other: HookSet) -> Self {
        self.fwd.extend(other.fwd);
        self.bwd.extend(other.bwd);
        self.splices.extend(other.splices);
        self
    }

    /// The number of (filter, hook) pairs, both directions, and of splices.
    pub fn len(&self) -> usize {
        self.fwd.len() + self.bwd.len() + self.splices.len()
    }

    /// Whether there are no hooks.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

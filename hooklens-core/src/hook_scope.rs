//! `HookScope`: TransformerLens's `with model.hooks(...)` as a guard.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Direction, HookedModel};

static NEXT_LEVEL: AtomicU64 = AtomicU64::new(1);

/// A fresh context level. Levels are unique numbers rather than nesting depths, so
/// scopes opened from different threads on one model never remove each other's hooks.
pub(crate) fn next_level() -> u64 {
    NEXT_LEVEL.fetch_add(1, Ordering::Relaxed)
}

/// While it lives, the hooks it was opened with stay attached to the model at its
/// own context level; dropping it removes exactly that level's non-permanent hooks,
/// also when unwinding from a panic. Nested scopes nest as TransformerLens's
/// `hooks()` contexts do.
#[must_use = "the hooks are removed as soon as the scope is dropped"]
pub struct HookScope<'m, M: HookedModel + ?Sized> {
    pub(crate) model: &'m M,
    pub(crate) level: u64,
    pub(crate) reset_hooks_end: bool,
    pub(crate) clear_contexts: bool,
}

impl<'m, M: HookedModel + ?Sized> HookScope<'m, M> {
    /// The context level of this scope's hooks (pass it to `add_hook` to attach more
    /// hooks that end with the scope).
    pub fn level(&self) -> u64 {
        self.level
    }

    /// The model the scope is on.
    pub fn model(&self) -> &'m M {
        self.model
    }

    /// Keeps the hooks attached after the scope ends (TransformerLens's
    /// `reset_hooks_end=False`).
    pub fn keep_hooks_at_end(mut self) -> Self {
        self.reset_hooks_end = false;
        self
    }

    /// Also clears the hook points' contexts when the scope ends.
    pub fn clear_contexts_at_end(mut self) -> Self {
        self.clear_contexts = true;
        self
    }
}

impl<M: HookedModel + ?Sized> Drop for HookScope<'_, M> {
    fn drop(&mut self) {
        if self.reset_hooks_end {
            // Hooks first: the points of this scope's splices are reachable only while
            // they are spliced in.
            self.model
                .reset_hooks(self.clear_contexts, Direction::Both, false, Some(self.level));
            let mut path = crate::HookPath::new();
            self.model
                .visit_hook_points(&mut path, &mut |_, p| drop(p.remove_splices(true, Some(self.level))));
        }
    }
}

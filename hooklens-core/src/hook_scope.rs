//! `HookScope`: TransformerLens's `with model.hooks(...)` as a guard.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::ThreadId;

use crate::{HookedModel, RemoveOptions, ResetOptions};

static NEXT_LEVEL: AtomicU64 = AtomicU64::new(1);

/// How many scopes are open in the process, so that the common answer of
/// [`open_on_this_thread`] ("none") costs one atomic load.
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// The open scopes' levels and the threads that opened them. A registry rather than a
/// thread-local counter: a scope may be dropped on another thread than its own.
static OPENED_BY: Mutex<Vec<(u64, ThreadId)>> = Mutex::new(Vec::new());

/// Whether a scope opened by this thread is still open: hook points firing now are
/// inside it (see [`crate::HookPoint::forward`]'s check for unnamed points). Only ever
/// called for a point no hook dictionary named, which a correct model never fires in a
/// scope, so the lock is off every hot path.
pub(crate) fn open_on_this_thread() -> bool {
    if OPEN.load(Ordering::Acquire) == 0 {
        return false;
    }
    let me = std::thread::current().id();
    OPENED_BY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|(_, t)| *t == me)
}

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
    /// A scope on `model` for the hooks already attached at `level`, registered as open
    /// on this thread until dropped.
    pub(crate) fn open(model: &'m M, level: u64) -> Self {
        OPENED_BY
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((level, std::thread::current().id()));
        OPEN.fetch_add(1, Ordering::AcqRel);
        HookScope {
            model,
            level,
            reset_hooks_end: true,
            clear_contexts: false,
        }
    }

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
        {
            let mut open = OPENED_BY.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = open.iter().position(|(level, _)| *level == self.level) {
                open.swap_remove(i);
                OPEN.fetch_sub(1, Ordering::AcqRel);
            }
        }
        if self.reset_hooks_end {
            // Hooks first: the points of this scope's splices are reachable only while
            // they are spliced in.
            let reset = ResetOptions {
                clear_contexts: self.clear_contexts,
                ..ResetOptions::new().level(self.level)
            };
            self.model.reset_hooks(reset);
            let mut path = crate::HookPath::new();
            self.model.visit_hook_points(&mut path, &mut |_, p| {
                drop(p.remove_splices(RemoveOptions::new().including_permanent().level(self.level)))
            });
        }
    }
}

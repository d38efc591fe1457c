//! What a hook is: a closure on an activation, its direction, and how it is attached.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::Tensor;

use crate::{HookPoint, Result};

/// The signature every hook has: it sees the activation (forward) or its gradient
/// (backward) and the hook point it runs at. `Ok(None)` keeps the tensor, `Ok(Some(t))`
/// replaces it (same shape, dtype and device), and the next hook in the chain sees `t`.
pub type HookFnDyn = dyn Fn(&Tensor, &HookPoint) -> Result<Option<Tensor>> + Send + Sync;

/// A shareable hook: cloning it shares the closure, so one hook can be attached at
/// many hook points (as a names filter does).
#[derive(Clone)]
pub struct Hook(pub(crate) Arc<HookFnDyn>);

impl Hook {
    /// Wraps a closure as a hook. The closure's argument types are inferred here,
    /// which is why every API that takes a hook takes the closure directly.
    pub fn new<F>(f: F) -> Self
    where
        F: Fn(&Tensor, &HookPoint) -> Result<Option<Tensor>> + Send + Sync + 'static,
    {
        Hook(Arc::new(f))
    }

    /// Runs the hook on `x` at `point`.
    pub fn call(&self, x: &Tensor, point: &HookPoint) -> Result<Option<Tensor>> {
        (self.0)(x, point)
    }
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook(..)")
    }
}

/// Which pass a hook runs in (TransformerLens's `dir`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Forward: the hook sees the activation.
    Fwd,
    /// Backward: the hook sees the gradient of the loss with respect to the activation.
    Bwd,
    /// Both directions; only meaningful when removing hooks.
    Both,
}

impl Direction {
    pub(crate) fn includes(self, other: Direction) -> bool {
        self == Direction::Both || self == other
    }
}

/// A hook attached to a hook point as model state (by `add_hook` or a `hooks()` scope),
/// with the bookkeeping TransformerLens keeps in its `LensHandle`.
#[derive(Clone, Debug)]
pub(crate) struct AttachedHook {
    pub(crate) hook: Hook,
    pub(crate) info: HookInfo,
}

/// What `list_hooks` reports of one attached hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookInfo {
    /// A number unique to this attachment, in the order hooks were attached.
    pub id: u64,
    /// The pass it runs in.
    pub direction: Direction,
    /// Whether `reset_hooks` without `including_permanent` leaves it attached.
    pub is_permanent: bool,
    /// The context level it was attached at (`None`: outside any `hooks()` scope).
    pub level: Option<u64>,
}

static NEXT_ATTACHMENT: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_attachment_id() -> u64 {
    NEXT_ATTACHMENT.fetch_add(1, Ordering::Relaxed)
}

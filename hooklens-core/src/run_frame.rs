//! Per-run hooks, private to the thread that runs them.
//!
//! TransformerLens's `run_with_hooks` attaches its hooks to the model and removes them
//! afterwards, so two threads sharing a model would see each other's hooks. Here the
//! hooks of one run live in a frame on a thread-local stack, keyed by hook point id:
//! only forwards executed by that thread, during that run, see them. A hook point with
//! no hook attached checks one atomic and one thread-local counter, and returns.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use crate::Hook;

/// The hooks of one run: hook point id -> hooks in the order they run.
#[derive(Default)]
pub(crate) struct RunFrame {
    pub(crate) fwd: HashMap<u64, Vec<Hook>>,
}

thread_local! {
    static FRAMES: RefCell<Vec<Rc<RunFrame>>> = const { RefCell::new(Vec::new()) };
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Whether any run frame is active on this thread: the hot-path check.
#[inline]
pub(crate) fn any_active() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// The run-local forward hooks for a hook point, outermost run first (as hooks of
/// nested `hooks()` contexts run in TransformerLens: in the order they were added).
pub(crate) fn fwd_hooks_for(point_id: u64, out: &mut Vec<Hook>) {
    FRAMES.with(|frames| {
        for frame in frames.borrow().iter() {
            if let Some(hooks) = frame.fwd.get(&point_id) {
                out.extend(hooks.iter().cloned());
            }
        }
    });
}

/// Pushes a frame for the guard's lifetime. Dropping the guard pops it, also while
/// unwinding from a panic in the forward pass, so per-run hooks cannot leak.
pub(crate) struct FrameGuard {
    // Frames are thread-local: the guard must be dropped on the thread that pushed it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl FrameGuard {
    pub(crate) fn push(frame: RunFrame) -> Self {
        FRAMES.with(|f| f.borrow_mut().push(Rc::new(frame)));
        DEPTH.with(|d| d.set(d.get() + 1));
        FrameGuard {
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for FrameGuard {
    fn drop(&mut self) {
        FRAMES.with(|f| {
            f.borrow_mut().pop();
        });
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

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

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::hook_point::BwdCount;
use crate::{Direction, Hook, Splice};

/// The hooks of one run: hook point id -> hooks in the order they run.
#[derive(Default)]
pub(crate) struct RunFrame {
    pub(crate) fwd: HashMap<u64, Vec<Hook>>,
    pub(crate) bwd: HashMap<u64, Vec<Hook>>,
    /// Modules spliced in for this run: hook point id -> splice.
    pub(crate) splices: HashMap<u64, Arc<dyn Splice>>,
    /// Whether this run wants gradients (it has backward hooks or records them).
    pub(crate) grads: bool,
}

thread_local! {
    static FRAMES: RefCell<Vec<Rc<RunFrame>>> = const { RefCell::new(Vec::new()) };
    /// The backward-hook counts of the models whose forwards run on this thread,
    /// innermost last (see `HookPoint::model_forward`).
    static MODELS: RefCell<Vec<BwdCount>> = const { RefCell::new(Vec::new()) };
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    static GRAD_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Whether a run on this thread wants gradients.
pub(crate) fn grads_wanted() -> bool {
    GRAD_DEPTH.with(|d| d.get() > 0)
}

/// The model-state backward hooks of the innermost model forward on this thread, or
/// `None` outside any.
pub(crate) fn model_bwd_hooks() -> Option<usize> {
    MODELS.with(|m| m.borrow().last().map(|count| count.load(Ordering::Acquire)))
}

pub(crate) fn push_model(count: BwdCount) {
    MODELS.with(|m| m.borrow_mut().push(count));
}

pub(crate) fn pop_model() {
    MODELS.with(|m| {
        m.borrow_mut().pop();
    });
}

/// Whether any run frame is active on this thread: the hot-path check.
#[inline]
pub(crate) fn any_active() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// The run-local hooks in `dir` for a hook point, outermost run first (as hooks of
/// nested `hooks()` contexts run in TransformerLens: in the order they were added).
pub(crate) fn hooks_for(point_id: u64, dir: Direction, out: &mut Vec<Hook>) {
    FRAMES.with(|frames| {
        for frame in frames.borrow().iter() {
            let map = if dir == Direction::Bwd { &frame.bwd } else { &frame.fwd };
            if let Some(hooks) = map.get(&point_id) {
                out.extend(hooks.iter().cloned());
            }
        }
    });
}

/// Whether any run frame on this thread has a hook or a splice at this point.
pub(crate) fn touches(point_id: u64) -> bool {
    FRAMES.with(|frames| {
        frames.borrow().iter().any(|frame| {
            frame.fwd.contains_key(&point_id)
                || frame.bwd.contains_key(&point_id)
                || frame.splices.contains_key(&point_id)
        })
    })
}

/// The splice of the innermost run on this thread that has one at this point.
pub(crate) fn splice_for(point_id: u64) -> Option<Arc<dyn Splice>> {
    FRAMES.with(|frames| {
        frames
            .borrow()
            .iter()
            .rev()
            .find_map(|frame| frame.splices.get(&point_id).cloned())
    })
}

/// Pushes a frame for the guard's lifetime. Dropping the guard pops it, also while
/// unwinding from a panic in the forward pass, so per-run hooks cannot leak.
pub(crate) struct FrameGuard {
    grads: bool,
    // Frames are thread-local: the guard must be dropped on the thread that pushed it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl FrameGuard {
    pub(crate) fn push(frame: RunFrame) -> Self {
        let grads = frame.grads || !frame.bwd.is_empty();
        FRAMES.with(|f| f.borrow_mut().push(Rc::new(frame)));
        DEPTH.with(|d| d.set(d.get() + 1));
        if grads {
            GRAD_DEPTH.with(|d| d.set(d.get() + 1));
        }
        FrameGuard {
            grads,
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
        if self.grads {
            GRAD_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        }
    }
}

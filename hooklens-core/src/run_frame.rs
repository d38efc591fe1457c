//! Per-run hooks, private to the thread that runs them.
//!
//! TransformerLens's `run_with_hooks` attaches its hooks to the model and removes them
//! afterwards, so two threads sharing a model would see each other's hooks. Here the
//! hooks of one run live in a frame on a thread-local stack, keyed by hook point id:
//! only forwards executed by that thread, during that run, see them. A hook point with
//! no hook attached checks one atomic and one thread-local counter, and returns.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::hook_point::{BwdCount, OffThreadFires};
use crate::{Direction, Error, Hook, HookPoint, Result, Splice};

/// The hooks of one run: hook point id -> hooks in the order they run.
#[derive(Default)]
pub(crate) struct RunFrame {
    pub(crate) fwd: HashMap<u64, Vec<Hook>>,
    pub(crate) bwd: HashMap<u64, Vec<Hook>>,
    /// Modules spliced in for this run: hook point id -> splice.
    pub(crate) splices: HashMap<u64, Arc<dyn Splice>>,
    /// Whether this run wants gradients (it has backward hooks or records them).
    pub(crate) grads: bool,
    /// The points this run hooks or splices, watched while it lasts (see
    /// [`HookPoint::forward`]'s thread rule), each with its off-thread fires at the start.
    pub(crate) watched: Vec<(HookPoint, OffThreadFires)>,
    /// The ids of `watched`, for the hot-ish lookup of every hooked fire.
    pub(crate) watched_ids: HashSet<u64>,
    /// The ids of the watched points that fired on this thread during the run.
    pub(crate) fired: RefCell<HashSet<u64>>,
    /// Whether a model's forward (`HookPoint::model_forward`) started on this thread
    /// during the run.
    pub(crate) forward_here: Cell<bool>,
}

impl RunFrame {
    /// Adds a hook in `dir` at `point` for this run, after those already there, and
    /// watches the point.
    pub(crate) fn add_hook(&mut self, dir: Direction, point: &HookPoint, hook: Hook) {
        let map = if dir == Direction::Bwd {
            &mut self.bwd
        } else {
            &mut self.fwd
        };
        map.entry(point.id()).or_default().push(hook);
        self.watch(point);
    }

    /// Splices `splice` in at `point` for this run, and watches the point.
    pub(crate) fn add_splice(&mut self, point: &HookPoint, splice: Arc<dyn Splice>) {
        self.splices.insert(point.id(), splice);
        self.watch(point);
    }

    /// Watches `point` for the run's lifetime: a fire of it on another thread that is
    /// neither inside a run nor inside a model's forward is counted, and, if the point
    /// never fired on the run's thread, [`FrameGuard::finish`] reports it.
    fn watch(&mut self, point: &HookPoint) {
        if self.watched_ids.insert(point.id()) {
            self.watched.push((point.handle(), OffThreadFires::default()));
        }
    }
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
    if any_active() {
        FRAMES.with(|frames| frames.borrow().iter().for_each(|f| f.forward_here.set(true)));
    }
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

/// Whether a model's forward (one that called `HookPoint::model_forward`) is running on
/// this thread.
pub(crate) fn in_model_forward() -> bool {
    MODELS.with(|m| !m.borrow().is_empty())
}

/// Notes that `point_id` fired on this thread, in every run frame here that watches it.
pub(crate) fn mark_fired(point_id: u64) {
    FRAMES.with(|frames| {
        for frame in frames.borrow().iter() {
            if frame.watched_ids.contains(&point_id) {
                frame.fired.borrow_mut().insert(point_id);
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
    pub(crate) fn push(mut frame: RunFrame) -> Self {
        let grads = frame.grads || !frame.bwd.is_empty();
        for (point, start) in &mut frame.watched {
            *start = point.watch();
        }
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

    /// Ends the run: an error naming a point its hooks missed because it ran on another
    /// thread. Two cases: a point that fired, during the run, on a thread with no run and
    /// no model forward of its own (one the forward spawned) and never on this thread;
    /// and a run that started no model forward and fired none of its points on this
    /// thread while they fired on threads with no run (the closure moved the whole
    /// forward to another thread).
    pub(crate) fn finish(self) -> Result<()> {
        let missed = FRAMES.with(|frames| {
            let frames = frames.borrow();
            let frame = frames.last()?;
            let fired = frame.fired.borrow();
            let spawned = frame
                .watched
                .iter()
                .find(|(p, start)| !fired.contains(&p.id()) && p.off_thread_fires().strays > start.strays);
            let moved = || {
                frame.watched.iter().find(|(p, start)| {
                    let now = p.off_thread_fires();
                    now.strays > start.strays || now.foreign > start.foreign
                })
            };
            let here = !fired.is_empty() || frame.forward_here.get();
            let missed = spawned.or_else(|| if here { None } else { moved() });
            missed.map(|(p, _)| p.name().to_string())
        });
        drop(self);
        match missed {
            Some(name) => Err(Error::HookPointOffThread { name }),
            None => Ok(()),
        }
    }
}

impl Drop for FrameGuard {
    fn drop(&mut self) {
        let frame = FRAMES.with(|f| f.borrow_mut().pop());
        if let Some(frame) = frame {
            for (point, _) in &frame.watched {
                point.unwatch();
            }
        }
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        if self.grads {
            GRAD_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        }
    }
}

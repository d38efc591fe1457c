//! `HookPoint`: an identity on a tensor that runs the hooks attached to it.

use std::any::Any;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use candle_core::Tensor;

use crate::hook::{next_attachment_id, AttachedHook};
use crate::splice::AttachedSplice;
use crate::{run_frame, Direction, Error, Hook, HookInfo, HookOptions, RemoveOptions, Result, Splice, SpliceOptions};

static NEXT_POINT: AtomicU64 = AtomicU64::new(1);

/// A named place in a model's forward pass where hooks can read or replace the
/// activation. Put one in a model struct for every activation worth naming, call
/// [`HookPoint::forward`] on the activation, and `#[derive(Hooked)]` gives it its name.
///
/// With no hook attached and no run watching the point, `forward` returns its input (a
/// reference-counted clone, no copy) after one atomic load: no allocation, no lock. While
/// a run on any thread hooks the point, other threads' forwards through it take a slower
/// path that notes where it fired (see the thread rule on [`HookPoint::forward`]).
pub struct HookPoint {
    // Shared so that a backward op recorded in the graph can call the hooks with this
    // very point (its name and context) when the backward pass runs, even later.
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    name: RwLock<Arc<str>>,
    /// Set once a hook dictionary has named the point. A point fired inside a run or a
    /// scope without it was never reached by the model's `Hooked` walk: no hook, cache
    /// or filter can see it, so firing it is an error rather than a silent gap.
    named: AtomicBool,
    /// Everything that sends `forward` off its fast path, summed: model-state hooks in
    /// either direction, splices, runs watching the point, and 1 while it is unnamed.
    /// One load decides the common case (see [`HookPoint::forward`]).
    busy: AtomicUsize,
    fwd: RwLock<Vec<AttachedHook>>,
    bwd: RwLock<Vec<AttachedHook>>,
    n_fwd: AtomicUsize,
    n_bwd: AtomicUsize,
    /// Modules spliced in as model state; the last one takes the point's place.
    splices: RwLock<Vec<AttachedSplice>>,
    n_splices: AtomicUsize,
    ctx: Mutex<HashMap<String, Box<dyn Any + Send + Sync>>>,
    /// The declared position axis (see [`HookPoint::with_position_axis`]), encoded:
    /// `UNDECLARED`, `NO_AXIS`, or the axis itself.
    pos_axis: AtomicI8,
    /// The backward-hook count of the model this point belongs to, shared by all its
    /// points (see [`BwdCount`]); the point's own until a hook dictionary takes it in.
    group: RwLock<BwdCount>,
    /// How many runs, on any thread, hook or splice this point now. While any does, a
    /// fire takes the cold path, which counts the fires that no run can see.
    watchers: AtomicUsize,
    /// Fires while watched on a thread with no run and no model forward of its own: a
    /// thread the model's forward spawned, which the run's hooks (thread-local) miss.
    strays: AtomicU64,
    /// Fires while watched on a thread with no run but inside a model's forward: a forward
    /// of its own, or one that a run's closure moved to another thread whole.
    foreign: AtomicU64,
}

/// How many backward hooks are attached as model state to the points of one model:
/// shared by every point its hook dictionary walked. [`crate::grad_mode`] reads it during
/// that model's forward ([`HookPoint::model_forward`]), so a backward hook on one model
/// leaves every other model on its fast path.
pub(crate) type BwdCount = Arc<AtomicUsize>;

/// `pos_axis` when the point declared nothing: the name decides.
const UNDECLARED: i8 = i8::MIN;
/// `pos_axis` when the point has no position axis.
const NO_AXIS: i8 = i8::MAX;

impl Drop for Inner {
    fn drop(&mut self) {
        let n = *self.n_bwd.get_mut();
        BWD_ATTACHED.fetch_sub(n, Ordering::AcqRel);
        let group = self.group.get_mut().unwrap_or_else(|e| e.into_inner());
        group.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Model-state backward hooks attached anywhere in the process. Only forwards that did
/// not say which model they are (no [`HookPoint::model_forward`]) go by it: they cannot
/// tell whose hooks these are, so any of them puts them on their differentiable paths.
pub(crate) static BWD_ATTACHED: AtomicUsize = AtomicUsize::new(0);

/// How often a point fired, while some run watched it, on a thread with no run of its own:
/// outside any model's forward (`strays`: a thread a forward spawned), and inside one
/// (`foreign`). Runs compare these at their start and end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct OffThreadFires {
    pub(crate) strays: u64,
    pub(crate) foreign: u64,
}

/// The stored form of a position axis (see [`HookPoint::with_position_axis`]).
fn axis_code(axis: Option<isize>) -> i8 {
    match axis {
        None => NO_AXIS,
        Some(a) => i8::try_from(a).ok().filter(|a| *a < 0).unwrap_or(NO_AXIS),
    }
}

/// Declares `point`'s position axis unless it has one: what `#[hooked(position_axis = ..)]`
/// expands to. The declaration nearest the point wins: the point's constructor
/// ([`HookPoint::with_position_axis`]), then the innermost field's attribute (the walk
/// calls the inner field's declaration first). Not public API.
#[doc(hidden)]
pub fn declare_position_axis(point: &HookPoint, axis: Option<isize>) {
    let _ = point
        .inner
        .pos_axis
        .compare_exchange(UNDECLARED, axis_code(axis), Ordering::Relaxed, Ordering::Relaxed);
}

/// Moves `count` from `old` to `new` (a count that went from `old` to `new`).
fn adjust(counter: &AtomicUsize, old: usize, new: usize) {
    if new > old {
        counter.fetch_add(new - old, Ordering::AcqRel);
    } else {
        counter.fetch_sub(old - new, Ordering::AcqRel);
    }
}

/// Makes `grad_mode` answer for one model on this thread until dropped: see
/// [`HookPoint::model_forward`]. Dropped on the thread that made it (it is not `Send`).
#[must_use = "the model's forward lasts as long as the guard"]
pub struct ModelForward {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for ModelForward {
    fn drop(&mut self) {
        run_frame::pop_model();
    }
}

impl Default for HookPoint {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for HookPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookPoint")
            .field("name", &&*self.name())
            .field("fwd_hooks", &read(&self.inner.fwd).len())
            .field("bwd_hooks", &read(&self.inner.bwd).len())
            .finish()
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Hooks never run while a lock is held, so poisoning means a bug elsewhere; the
    // hook lists are still consistent (every write is a single push or retain).
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl HookPoint {
    /// A hook point with no name yet; the model's `Hooked` walk names it.
    pub fn new() -> Self {
        HookPoint {
            inner: Arc::new(Inner {
                id: NEXT_POINT.fetch_add(1, Ordering::Relaxed),
                name: RwLock::new(Arc::from("")),
                named: AtomicBool::new(false),
                busy: AtomicUsize::new(1),
                fwd: RwLock::new(Vec::new()),
                bwd: RwLock::new(Vec::new()),
                n_fwd: AtomicUsize::new(0),
                n_bwd: AtomicUsize::new(0),
                splices: RwLock::new(Vec::new()),
                n_splices: AtomicUsize::new(0),
                ctx: Mutex::new(HashMap::new()),
                pos_axis: AtomicI8::new(UNDECLARED),
                group: RwLock::new(Arc::new(AtomicUsize::new(0))),
                watchers: AtomicUsize::new(0),
                strays: AtomicU64::new(0),
                foreign: AtomicU64::new(0),
            }),
        }
    }

    /// This point, declaring which axis of its activations holds positions, counted from
    /// the end: `Some(-2)` for `[batch, pos, d]`, `Some(-3)` for `[batch, pos, head, d]`,
    /// `Some(-1)` for `[batch, pos]`; `None` for activations without one (such as rows
    /// flattened over batch, positions and heads), which `pos_slice` then leaves whole.
    /// A point that declares nothing gets TransformerLens's rule from its name (see
    /// [`crate::position_axis`]). An axis that is not negative, or below `-127`, is
    /// taken as no axis.
    ///
    /// ```
    /// use hooklens_core::HookPoint;
    /// let q = HookPoint::new().with_position_axis(Some(-3));
    /// assert_eq!(q.position_axis(4), Some(-3));
    /// assert_eq!(q.position_axis(2), None); // too few axes for it
    /// ```
    pub fn with_position_axis(self, axis: Option<isize>) -> Self {
        self.inner.pos_axis.store(axis_code(axis), Ordering::Relaxed);
        self
    }

    /// The position axis of an activation of rank `rank` at this point (negative, from
    /// the end), as declared by [`HookPoint::with_position_axis`] or, undeclared, by the
    /// point's name; `None` when it has none or `rank` is too small for it.
    pub fn position_axis(&self, rank: usize) -> Option<isize> {
        match self.inner.pos_axis.load(Ordering::Relaxed) {
            UNDECLARED => crate::position_axis(&self.name(), rank),
            NO_AXIS => None,
            a => (rank as isize >= -(a as isize)).then_some(a as isize),
        }
    }

    /// Another handle to this same point: the same hooks, name, context and splices,
    /// valid after the model it came from is borrowed elsewhere (it keeps the point's
    /// state alive, not the model). [`HookedModel::hook_point`](crate::HookedModel::hook_point)
    /// returns one.
    pub fn handle(&self) -> HookPoint {
        HookPoint {
            inner: self.inner.clone(),
        }
    }

    /// A number unique to this hook point in the process.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The full name, e.g. `blocks.3.attn.hook_pattern` (empty until the model's hook
    /// dictionary has been built once).
    pub fn name(&self) -> Arc<str> {
        read(&self.inner.name).clone()
    }

    /// Sets the name; called by the hook dictionary, which names points from their path.
    pub(crate) fn set_name(&self, name: &str) {
        if &**read(&self.inner.name) != name {
            *write(&self.inner.name) = Arc::from(name);
        }
        if !self.inner.named.swap(true, Ordering::AcqRel) {
            self.inner.busy.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether a hook dictionary has named this point (the root point of a model that
    /// is a bare `HookPoint` is named `""`, and named all the same).
    pub fn is_named(&self) -> bool {
        self.inner.named.load(Ordering::Acquire)
    }

    /// The backward-hook count of the model this point belongs to.
    pub(crate) fn bwd_group(&self) -> BwdCount {
        read(&self.inner.group).clone()
    }

    /// Makes this point count its backward hooks in `group` (the hook dictionary's, so
    /// that all points of one model share one count), moving those already attached. A
    /// point walked by two models' dictionaries counts for the one that walked it last,
    /// as its name is the one that model gave it.
    pub(crate) fn join_group(&self, group: &BwdCount) {
        if Arc::ptr_eq(&read(&self.inner.group), group) {
            return;
        }
        // Under the backward list's lock, as every change of `n_bwd` is: none can land
        // between reading the count and moving it.
        let _bwd = write(&self.inner.bwd);
        let mut mine = write(&self.inner.group);
        let n = self.inner.n_bwd.load(Ordering::Acquire);
        mine.fetch_sub(n, Ordering::AcqRel);
        group.fetch_add(n, Ordering::AcqRel);
        *mine = group.clone();
    }

    /// Declares that this thread runs the forward of the model this point belongs to,
    /// until the returned guard drops: [`crate::grad_mode`] then counts only that model's
    /// backward hooks (those attached to the points its hook dictionary names), not every
    /// model's in the process. A model calls it on any of its points (hooklens's
    /// `HookedTransformer` does, on `hook_embed`) at the start of each forward; nested
    /// forwards (a spliced module's, another model's inside a hook) each answer for
    /// their own model while they run. It also marks the thread as running a forward of
    /// its own, which the thread rule of [`HookPoint::forward`] tells apart from threads
    /// a forward spawns.
    pub fn model_forward(&self) -> ModelForward {
        run_frame::push_model(self.bwd_group());
        ModelForward {
            _not_send: std::marker::PhantomData,
        }
    }

    /// The layer this point is in: `N` from the `blocks.N.` segment of its name.
    pub fn layer(&self) -> Result<usize> {
        layer_of(&self.name()).ok_or_else(|| Error::NoLayer {
            name: self.name().to_string(),
        })
    }

    /// Passes `x` (any shape) through the hooks attached to this point and returns the
    /// activation the rest of the forward pass should use: `x` itself when no hook
    /// replaces it, otherwise a tensor of the same shape, dtype and device.
    ///
    /// Errors from hooks come back as candle errors so that candle-style `forward`s can
    /// use `?`; hooklens's `run_*` functions turn them back into [`Error`]s that name
    /// the hook.
    ///
    /// A point that no hook dictionary has named ([`HookPoint::is_named`]) firing inside
    /// a `run_with_hooks` / `run_with_cache` run or a `hooks()` scope of this thread is
    /// [`Error::UnnamedHookPoint`]: the model's walk never reached it (typically a struct
    /// holding it lacks `#[derive(Hooked)]`), so no hook or cache could see it.
    ///
    /// **Call it on the thread that started the run.** A run's hooks, cache and splices
    /// belong to the thread that called `run_with_hooks` / `run_with_cache` (that is what
    /// keeps concurrent runs on one model apart), so a forward that hands a point to a
    /// thread it spawns (`std::thread::scope`, a rayon `par_iter` over heads) runs it
    /// unhooked there. When a point the run hooks fires that way and never on the run's
    /// thread, the run returns [`Error::HookPointOffThread`] naming it instead of a result
    /// that silently missed it. Other threads' forwards of the same model at the same time
    /// are legal and do not count when they are inside runs of their own or inside a
    /// forward that said which model it is ([`HookPoint::model_forward`], which every
    /// bundled model calls). A model that does not call it cannot be told from a thread
    /// its forward spawned: then a plain forward elsewhere that fires a point this run
    /// hooks but never reaches itself is reported too, so such a model should call
    /// `model_forward` at the start of its forward. A run's closure that moves the whole
    /// forward to another thread (no model forward starts and none of the run's points
    /// fire on its own thread, and some fire on a thread with no run) gets the same
    /// error. Start concurrent runs on threads of your own (as `Patching::threads` does),
    /// not as jobs of a rayon pool that the forward's kernels also use: a worker waiting
    /// inside one run may take up another run's job, nesting the second run inside the
    /// first on that thread.
    ///
    /// ```
    /// use hooklens::candle_core::{Device, Tensor};
    /// use hooklens::{CacheOptions, HookPoint, HookSet, Hooked, HookedModel};
    ///
    /// #[derive(Hooked)]
    /// struct Mlp {
    ///     hook_pre: HookPoint,
    /// }
    ///
    /// #[derive(Hooked)]
    /// struct Model {
    ///     mlp: Mlp,
    ///     hook_out: HookPoint,
    /// }
    ///
    /// impl Model {
    ///     fn forward(&self, x: &Tensor) -> hooklens::candle_core::Result<Tensor> {
    ///         let h = self.mlp.hook_pre.forward(x)?;   // the identity unless hooked
    ///         self.hook_out.forward(&h.relu()?)
    ///     }
    /// }
    ///
    /// let model = Model { mlp: Mlp { hook_pre: HookPoint::new() }, hook_out: HookPoint::new() };
    /// let x = Tensor::new(&[[-1f32, 2.0]], &Device::Cpu)?;
    /// // Negate the MLP's input for this run only.
    /// let hooks = HookSet::new().fwd("mlp.hook_pre", |x, _hp| Ok(Some(x.neg()?)));
    /// let y = model.run_with_hooks(hooks, |m| m.forward(&x))?;
    /// assert_eq!(y.to_vec2::<f32>()?, [[1.0, 0.0]]);
    /// let (_, cache) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&x))?;
    /// assert_eq!(cache.keys().collect::<Vec<_>>(), ["mlp.hook_pre", "hook_out"]);
    /// assert_eq!(model.mlp.hook_pre.name().as_ref(), "mlp.hook_pre");
    /// # Ok::<(), hooklens::Error>(())
    /// ```
    #[inline]
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // One load for the point's hooks, splices, watching runs and name. A run on this
        // thread that hooks or splices the point watches it, so that load covers it too.
        if self.inner.busy.load(Ordering::Acquire) == 0 {
            debug_assert!(!(run_frame::any_active() && run_frame::touches(self.inner.id)));
            return Ok(x.clone());
        }
        self.forward_cold(x).map_err(Error::into_candle)
    }

    /// `forward` for a point with hooks to run, one never named, or one a run watches:
    /// an unnamed point is an error inside a run or scope (see [`HookPoint::forward`]),
    /// the identity outside; a watched one notes on which kind of thread it fired.
    #[cold]
    fn forward_cold(&self, x: &Tensor) -> Result<Tensor> {
        if !self.is_named() && (run_frame::any_active() || crate::hook_scope::open_on_this_thread()) {
            return Err(Error::UnnamedHookPoint);
        }
        if self.inner.watchers.load(Ordering::Acquire) > 0 {
            if run_frame::any_active() {
                run_frame::mark_fired(self.inner.id);
            } else if run_frame::in_model_forward() {
                self.inner.foreign.fetch_add(1, Ordering::AcqRel);
            } else {
                self.inner.strays.fetch_add(1, Ordering::AcqRel);
            }
        }
        if self.is_idle() {
            return Ok(x.clone());
        }
        self.run_hooks(x)
    }

    /// Whether [`forward`](Self::forward) on this thread, now, would return its input
    /// without calling anything: no hook or splice attached as model state, and none
    /// at this point in a `run_with_hooks` / `run_with_cache` run active on this
    /// thread. Then nothing can keep the activation, and a model may overwrite it in
    /// place once it has passed this point.
    #[inline]
    pub fn is_idle(&self) -> bool {
        self.inner.n_fwd.load(Ordering::Acquire) == 0
            && self.inner.n_bwd.load(Ordering::Acquire) == 0
            && self.inner.n_splices.load(Ordering::Acquire) == 0
            && !(run_frame::any_active() && run_frame::touches(self.inner.id))
    }

    #[cold]
    fn run_hooks(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(splice) = self.splice() {
            return splice.forward(x, self);
        }
        let mut chain: Vec<Hook> = Vec::new();
        if self.inner.n_fwd.load(Ordering::Acquire) > 0 {
            chain.extend(read(&self.inner.fwd).iter().map(|a| a.hook.clone()));
        }
        if run_frame::any_active() {
            run_frame::hooks_for(self.inner.id, Direction::Fwd, &mut chain);
        }
        let mut current = x.clone();
        for hook in &chain {
            if let Some(replacement) = self.call_hook(hook, &current)? {
                self.check_replacement(x, &replacement)?;
                current = replacement;
            }
        }
        let mut bwd_chain: Vec<Hook> = Vec::new();
        if self.inner.n_bwd.load(Ordering::Acquire) > 0 {
            bwd_chain.extend(read(&self.inner.bwd).iter().map(|a| a.hook.clone()));
        }
        if run_frame::any_active() {
            run_frame::hooks_for(self.inner.id, Direction::Bwd, &mut bwd_chain);
        }
        if !bwd_chain.is_empty() {
            current = crate::grad_hook_op::attach(self.handle(), bwd_chain, &current)?;
        }
        Ok(current)
    }

    /// Runs one hook with panics caught and errors labelled with this point's name.
    pub(crate) fn call_hook(&self, hook: &Hook, x: &Tensor) -> Result<Option<Tensor>> {
        match catch_unwind(AssertUnwindSafe(|| hook.call(x, self))) {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(Error::HookFailed {
                name: self.name().to_string(),
                source: Box::new(e),
            }),
            Err(panic) => Err(Error::HookPanicked {
                name: self.name().to_string(),
                message: panic_message(&*panic),
            }),
        }
    }

    /// A replacement must be interchangeable with the activation, or the error would
    /// surface later in some unrelated op with no mention of the hook.
    pub(crate) fn check_replacement(&self, x: &Tensor, got: &Tensor) -> Result<()> {
        if got.shape() != x.shape() {
            return Err(Error::HookShape {
                name: self.name().to_string(),
                expected: x.shape().clone(),
                got: got.shape().clone(),
            });
        }
        if got.dtype() != x.dtype() {
            return Err(Error::HookDType {
                name: self.name().to_string(),
                expected: x.dtype(),
                got: got.dtype(),
            });
        }
        if !got.device().same_device(x.device()) {
            return Err(Error::HookDevice {
                name: self.name().to_string(),
                expected: x.device().location(),
                got: got.device().location(),
            });
        }
        Ok(())
    }

    /// Attaches `hook` as model state (TransformerLens's `HookPoint.add_hook`), in the
    /// direction, permanence and level `opts` says; `opts.prepend` puts it before the
    /// hooks already attached in that direction.
    pub fn add_hook(&self, hook: Hook, opts: HookOptions) -> Result<HookInfo> {
        let list = match opts.dir {
            Direction::Fwd => &self.inner.fwd,
            Direction::Bwd => &self.inner.bwd,
            Direction::Both => {
                return Err(Error::Direction(format!(
                    "a hook is added in one direction (Fwd or Bwd), not Both (at `{}`)",
                    self.name()
                )))
            }
        };
        let info = HookInfo {
            id: next_attachment_id(),
            direction: opts.dir,
            is_permanent: opts.is_permanent,
            level: opts.level,
        };
        let attached = AttachedHook {
            hook,
            info: info.clone(),
        };
        let mut hooks = write(list);
        if opts.prepend {
            hooks.insert(0, attached);
        } else {
            hooks.push(attached);
        }
        self.count_changed(opts.dir, hooks.len());
        Ok(info)
    }

    /// Removes attached hooks (TransformerLens's `HookPoint.remove_hooks`): those in
    /// `opts.direction`, permanent ones only if `opts.including_permanent`, and only those
    /// at `opts.level` when a level is given. Returns how many were removed.
    pub fn remove_hooks(&self, opts: RemoveOptions) -> usize {
        let mut removed = 0;
        for (d, list) in [(Direction::Fwd, &self.inner.fwd), (Direction::Bwd, &self.inner.bwd)] {
            if !opts.direction.includes(d) {
                continue;
            }
            let mut hooks = write(list);
            let before = hooks.len();
            hooks.retain(|a| !opts.removes(a.info.is_permanent, a.info.level));
            removed += before - hooks.len();
            self.count_changed(d, hooks.len());
        }
        removed
    }

    /// Counts one more run watching this point; returns its off-thread fires now.
    pub(crate) fn watch(&self) -> OffThreadFires {
        self.inner.watchers.fetch_add(1, Ordering::AcqRel);
        self.inner.busy.fetch_add(1, Ordering::AcqRel);
        self.off_thread_fires()
    }

    /// Counts one run fewer watching this point.
    pub(crate) fn unwatch(&self) {
        self.inner.watchers.fetch_sub(1, Ordering::AcqRel);
        self.inner.busy.fetch_sub(1, Ordering::AcqRel);
    }

    /// The fires of this point, while watched, on threads with no run of their own.
    pub(crate) fn off_thread_fires(&self) -> OffThreadFires {
        OffThreadFires {
            strays: self.inner.strays.load(Ordering::Acquire),
            foreign: self.inner.foreign.load(Ordering::Acquire),
        }
    }

    /// Keeps the lock-free counters in step with the lists (called under the write lock).
    fn count_changed(&self, dir: Direction, len: usize) {
        match dir {
            Direction::Fwd => {
                let old = self.inner.n_fwd.swap(len, Ordering::AcqRel);
                adjust(&self.inner.busy, old, len);
            }
            _ => {
                let old = self.inner.n_bwd.swap(len, Ordering::AcqRel);
                adjust(&self.inner.busy, old, len);
                adjust(&BWD_ATTACHED, old, len);
                adjust(&read(&self.inner.group), old, len);
            }
        }
    }

    /// The module spliced in at this point for a forward on this thread now: the
    /// innermost run's or scope's, else the last one attached as model state.
    pub fn splice(&self) -> Option<Arc<dyn Splice>> {
        if run_frame::any_active() {
            if let Some(s) = run_frame::splice_for(self.inner.id) {
                return Some(s);
            }
        }
        if self.inner.n_splices.load(Ordering::Acquire) == 0 {
            return None;
        }
        read(&self.inner.splices).last().map(|a| a.splice.clone())
    }

    /// Splices `splice` in at this point as model state (see [`Splice`]); it takes the
    /// place of any spliced before it until removed; `opts` says whether it is permanent
    /// and its context level.
    pub fn add_splice(&self, splice: Arc<dyn Splice>, opts: SpliceOptions) {
        let mut list = write(&self.inner.splices);
        list.push(AttachedSplice {
            splice,
            is_permanent: opts.is_permanent,
            level: opts.level,
        });
        let old = self.inner.n_splices.swap(list.len(), Ordering::AcqRel);
        adjust(&self.inner.busy, old, list.len());
    }

    /// Removes splices attached as model state: permanent ones only if
    /// `opts.including_permanent`, and only those at `opts.level` when one is given
    /// (`opts.direction` is not read: a splice takes the point's place in both passes).
    /// Returns the levels of those removed (`None` for a splice attached without one).
    pub fn remove_splices(&self, opts: RemoveOptions) -> Vec<Option<u64>> {
        let mut list = write(&self.inner.splices);
        let mut removed = Vec::new();
        list.retain(|a| {
            let keep = !opts.removes(a.is_permanent, a.level);
            if !keep {
                removed.push(a.level);
            }
            keep
        });
        let old = self.inner.n_splices.swap(list.len(), Ordering::AcqRel);
        adjust(&self.inner.busy, old, list.len());
        removed
    }

    /// The hooks attached as model state, forward ones first, in running order.
    pub fn hooks(&self) -> Vec<HookInfo> {
        let mut out: Vec<HookInfo> = read(&self.inner.fwd).iter().map(|a| a.info.clone()).collect();
        out.extend(read(&self.inner.bwd).iter().map(|a| a.info.clone()));
        out
    }

    /// The number of hooks attached in `dir` (`Both` counts both).
    pub fn num_hooks(&self, dir: Direction) -> usize {
        let mut n = 0;
        if dir.includes(Direction::Fwd) {
            n += read(&self.inner.fwd).len();
        }
        if dir.includes(Direction::Bwd) {
            n += read(&self.inner.bwd).len();
        }
        n
    }

    /// The backward hooks attached as model state, in running order.
    pub fn bwd_hooks(&self) -> Vec<Hook> {
        read(&self.inner.bwd).iter().map(|a| a.hook.clone()).collect()
    }

    /// Stores a value in this point's scratch context (TransformerLens's `hook.ctx`),
    /// for hooks that need to remember something between runs.
    pub fn ctx_insert<T: Any + Send + Sync>(&self, key: impl Into<String>, value: T) {
        self.lock_ctx().insert(key.into(), Box::new(value));
    }

    /// A clone of the context value under `key`, if there is one of type `T`.
    pub fn ctx_get<T: Any + Clone>(&self, key: &str) -> Option<T> {
        self.lock_ctx().get(key).and_then(|v| v.downcast_ref::<T>()).cloned()
    }

    /// Removes and returns the context value under `key`, if there is one of type `T`.
    pub fn ctx_remove<T: Any>(&self, key: &str) -> Option<T> {
        let boxed = self.lock_ctx().remove(key)?;
        boxed.downcast::<T>().ok().map(|b| *b)
    }

    /// The number of values in the context.
    pub fn ctx_len(&self) -> usize {
        self.lock_ctx().len()
    }

    /// Empties the context (TransformerLens's `clear_context`).
    pub fn clear_context(&self) {
        self.lock_ctx().clear();
    }

    fn lock_ctx(&self) -> std::sync::MutexGuard<'_, HashMap<String, Box<dyn Any + Send + Sync>>> {
        self.inner.ctx.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `N` from the first `blocks.N` segment pair of a hook name.
pub fn layer_of(name: &str) -> Option<usize> {
    let mut segments = name.split('.');
    while let Some(seg) = segments.next() {
        if seg == "blocks" {
            return segments.next().and_then(|n| n.parse().ok());
        }
    }
    None
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn layer_reads_the_blocks_segment() {
        assert_eq!(layer_of("blocks.3.attn.hook_pattern"), Some(3));
        assert_eq!(layer_of("blocks.12.hook_resid_pre"), Some(12));
        assert_eq!(layer_of("hook_embed"), None);
        assert_eq!(layer_of("blocks.x.hook"), None);
    }

    #[test]
    fn no_hook_returns_the_same_storage() {
        let hp = HookPoint::new();
        let x = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        let y = hp.forward(&x).unwrap();
        assert_eq!(x.id(), y.id(), "the very same tensor comes back");
    }

    #[test]
    fn hooks_chain_in_order_and_prepend_goes_first() {
        let hp = HookPoint::new();
        let add = |v: f64| Hook::new(move |x: &Tensor, _: &HookPoint| Ok(Some((x + v)?)));
        let mul = |v: f64| Hook::new(move |x: &Tensor, _: &HookPoint| Ok(Some((x * v)?)));
        hp.add_hook(add(1.0), HookOptions::fwd()).unwrap();
        hp.add_hook(mul(10.0), HookOptions::fwd()).unwrap();
        hp.add_hook(mul(2.0), HookOptions::fwd().prepend()).unwrap();
        let x = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        // (1 * 2 + 1) * 10
        assert_eq!(hp.forward(&x).unwrap().to_vec1::<f32>().unwrap(), vec![30.0]);
    }

    #[test]
    fn wrong_shape_is_an_error_naming_both_shapes() {
        let hp = HookPoint::new();
        hp.set_name("blocks.1.hook_resid_pre");
        hp.add_hook(
            Hook::new(|x: &Tensor, _: &HookPoint| Ok(Some(x.sum_keepdim(0)?))),
            HookOptions::fwd(),
        )
        .unwrap();
        let x = Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap();
        let err = Error::from(hp.forward(&x).unwrap_err());
        let msg = err.to_string();
        assert!(matches!(err, Error::HookShape { .. }), "{msg}");
        assert!(
            msg.contains("blocks.1.hook_resid_pre") && msg.contains("[4, 2]") && msg.contains("[1, 2]"),
            "{msg}"
        );
    }

    #[test]
    fn remove_respects_permanence_and_level() {
        let hp = HookPoint::new();
        let id = Hook::new(|_: &Tensor, _: &HookPoint| Ok(None));
        hp.add_hook(id.clone(), HookOptions::fwd().permanent()).unwrap();
        hp.add_hook(id.clone(), HookOptions::fwd().level(7)).unwrap();
        hp.add_hook(id.clone(), HookOptions::bwd().level(8)).unwrap();
        assert_eq!(hp.remove_hooks(RemoveOptions::new().level(7)), 1);
        assert_eq!(hp.num_hooks(Direction::Both), 2);
        assert_eq!(hp.remove_hooks(RemoveOptions::new().direction(Direction::Fwd)), 0);
        assert_eq!(hp.remove_hooks(RemoveOptions::new().including_permanent()), 2);
        assert_eq!(hp.num_hooks(Direction::Both), 0);
    }

    #[test]
    fn context_stores_typed_values() {
        let hp = HookPoint::new();
        hp.ctx_insert("n", 3usize);
        assert_eq!(hp.ctx_get::<usize>("n"), Some(3));
        assert_eq!(hp.ctx_get::<u32>("n"), None);
        hp.clear_context();
        assert_eq!(hp.ctx_len(), 0);
    }
}

//! `HookedModel`: TransformerLens's hook API on every `Hooked` model.

use std::sync::{Arc, Mutex};

use candle_core::Tensor;

use crate::activation_cache::squeeze_batch;
use crate::hook_scope::next_level;
use crate::run_frame::{FrameGuard, RunFrame};
use crate::{
    ActivationCache, CacheOptions, Direction, Error, Hook, HookDict, HookInfo, HookOptions, HookPath, HookPoint,
    HookScope, HookSet, Hooked, NamesFilter, RemoveOptions, ResetOptions, Result, Splice, SpliceOptions,
};

/// The hook API of TransformerLens's `HookedRootModule`, for any [`Hooked`] model
/// (implemented for all of them; bring it in scope with `use hooklens::HookedModel`).
///
/// Two kinds of hooks exist, as in TransformerLens: hooks attached as model state
/// (`add_hook`, `hooks()` scopes), seen by every forward on any thread until removed;
/// and per-run hooks (`run_with_hooks`, `run_with_cache`), seen only by the forward
/// passes that the run's closure executes, on its thread. Model-state hooks run first,
/// then per-run hooks, each group in the order it was added.
///
/// ```
/// use hooklens::candle_core::{Device, Tensor};
/// use hooklens::{CacheOptions, HookOptions, HookPoint, HookSet, Hooked, HookedModel, ResetOptions};
///
/// #[derive(Hooked)]
/// struct Model {
///     hook_in: HookPoint,
///     hook_out: HookPoint,
/// }
///
/// impl Model {
///     fn forward(&self, x: &Tensor) -> hooklens::candle_core::Result<Tensor> {
///         let h = self.hook_in.forward(x)?;
///         self.hook_out.forward(&(h * 10.0)?)
///     }
/// }
///
/// let model = Model { hook_in: HookPoint::new(), hook_out: HookPoint::new() };
/// let x = Tensor::new(&[1f32, 2.0], &Device::Cpu)?;
///
/// // run_with_hooks: hooks for this call only.
/// let hooks = HookSet::new().fwd("hook_in", |x, _hp| Ok(Some((x + 1.0)?)));
/// let y = model.run_with_hooks(hooks, |m| m.forward(&x))?;
/// assert_eq!(y.to_vec1::<f32>()?, [20.0, 30.0]);
/// assert_eq!(model.forward(&x)?.to_vec1::<f32>()?, [10.0, 20.0]); // nothing left attached
///
/// // run_with_cache: every activation (or a glob's, a list's) by name.
/// let (_, cache) = model.run_with_cache(CacheOptions::new().names("hook_*"), |m| m.forward(&x))?;
/// assert_eq!(cache["hook_out"].to_vec1::<f32>()?, [10.0, 20.0]);
///
/// // hooks(): TransformerLens's `with model.hooks(...)`, gone when the scope drops.
/// {
///     let _scope = model.hooks(HookSet::new().fwd("hook_out", |x, _hp| Ok(Some(x.neg()?))))?;
///     assert_eq!(model.forward(&x)?.to_vec1::<f32>()?, [-10.0, -20.0]);
///     assert_eq!(model.list_hooks().len(), 1);
/// }
/// assert!(model.list_hooks().is_empty());
///
/// // add_hook: model state until removed, as in TransformerLens.
/// model.add_hook("hook_in", |x, _hp| Ok(Some(x.zeros_like()?)), HookOptions::fwd())?;
/// assert_eq!(model.forward(&x)?.to_vec1::<f32>()?, [0.0, 0.0]);
/// model.reset_hooks(ResetOptions::new());
///
/// // An unknown name is an error that suggests the nearest ones.
/// let err = model.run_with_hooks(HookSet::new().fwd("hook_inn", |_, _| Ok(None)), |m| m.forward(&x));
/// assert!(err.unwrap_err().to_string().contains("did you mean `hook_in`"));
/// # Ok::<(), hooklens::Error>(())
/// ```
pub trait HookedModel: Hooked {
    /// The hook points by name, in registration order; building it names every point.
    fn hook_dict(&self) -> HookDict<'_> {
        HookDict::build(self)
    }

    /// The hook points in registration order (handles: see [`HookPoint::handle`]).
    fn hook_points(&self) -> Vec<HookPoint> {
        self.hook_dict().iter().map(|(_, p)| p.handle()).collect()
    }

    /// The hook names in registration order.
    fn hook_names(&self) -> Vec<String> {
        self.hook_dict().names().map(String::from).collect()
    }

    /// The hook point named `name` (a handle: see [`HookPoint::handle`]), or an error
    /// suggesting the nearest names.
    fn hook_point(&self, name: &str) -> Result<HookPoint> {
        self.hook_dict().require(self, name).map(HookPoint::handle)
    }

    /// Attaches `hook` at every point `names` selects (TransformerLens's `add_hook`), as
    /// `opts` says: direction, permanence, context level, prepend
    /// (`HookOptions::fwd()` for TransformerLens's defaults).
    fn add_hook<F>(&self, names: impl Into<NamesFilter>, hook: F, opts: HookOptions) -> Result<()>
    where
        F: Fn(&Tensor, &HookPoint) -> Result<Option<Tensor>> + Send + Sync + 'static,
    {
        self.add_shared_hook(names, Hook::new(hook), opts)
    }

    /// [`HookedModel::add_hook`] with an existing [`Hook`], shared rather than copied,
    /// or with a closure or `fn` returning `Result<Option<Tensor>, E>` for any `E` that
    /// converts into hooklens's `Error` (candle's `Result` included).
    fn add_shared_hook(&self, names: impl Into<NamesFilter>, hook: impl Into<Hook>, opts: HookOptions) -> Result<()> {
        if opts.dir == Direction::Both {
            return Err(Error::Direction(
                "a hook is added in one direction (Fwd or Bwd), not Both".into(),
            ));
        }
        let hook = hook.into();
        let dict = self.hook_dict();
        for (_, point) in dict.select(self, &names.into())? {
            point.add_hook(hook.clone(), opts)?;
        }
        Ok(())
    }

    /// Attaches a permanent hook: `reset_hooks` leaves it unless told otherwise.
    fn add_perma_hook<F>(&self, names: impl Into<NamesFilter>, hook: F, dir: Direction) -> Result<()>
    where
        F: Fn(&Tensor, &HookPoint) -> Result<Option<Tensor>> + Send + Sync + 'static,
    {
        let opts = HookOptions {
            dir,
            ..HookOptions::fwd().permanent()
        };
        self.add_hook(names, hook, opts)
    }

    /// Removes the attached hooks `opts` selects from every point (TransformerLens's
    /// `remove_all_hook_fns`): in `opts.direction`, permanent ones only if
    /// `opts.including_permanent`, and only those at `opts.level` if one is given.
    /// Returns how many were removed. Points hidden by a splice and the points of spliced
    /// modules count too.
    fn remove_all_hook_fns(&self, opts: RemoveOptions) -> usize {
        every_point(self).iter().map(|p| p.remove_hooks(opts)).sum()
    }

    /// TransformerLens's `reset_hooks`: [`HookedModel::remove_all_hook_fns`] with the hooks
    /// `opts` selects, and, if `opts.clear_contexts`, every point's context emptied
    /// (`ResetOptions::new()` for TransformerLens's defaults). Returns how many hooks
    /// were removed.
    fn reset_hooks(&self, opts: ResetOptions) -> usize {
        if opts.clear_contexts {
            for p in every_point(self) {
                p.clear_context();
            }
        }
        self.remove_all_hook_fns(opts.remove_options())
    }

    /// The points that have hooks attached as model state, with those hooks.
    fn list_hooks(&self) -> Vec<(String, Vec<HookInfo>)> {
        self.hook_dict()
            .iter()
            .filter_map(|(n, p)| {
                let hooks = p.hooks();
                (!hooks.is_empty()).then(|| (n.to_string(), hooks))
            })
            .collect()
    }

    /// Attaches `hooks` at a new context level until the returned scope is dropped
    /// (TransformerLens's `with model.hooks(fwd_hooks, bwd_hooks):`, and SAELens's
    /// `with model.saes(...)` for the set's splices). Every name is checked before any
    /// hook is attached, so an error attaches nothing.
    fn hooks(&self, hooks: HookSet) -> Result<HookScope<'_, Self>> {
        let level = next_level();
        attach(self, hooks, false, level)?;
        Ok(HookScope::open(self, level))
    }

    /// Attaches the splices of `hooks` as model state (SAELens's `add_sae`), with the
    /// set's hooks (which may name the splices' points), until
    /// [`HookedModel::reset_splices`]: `reset_hooks` leaves them. Returns the context
    /// level they were attached at. Every name is checked first; an error attaches nothing.
    fn add_splices(&self, hooks: HookSet) -> Result<u64> {
        let level = next_level();
        attach(self, hooks, true, level)?;
        Ok(level)
    }

    /// Removes every splice attached as model state and the hooks attached along with
    /// them (SAELens's `reset_saes`). Returns how many splices were removed.
    fn reset_splices(&self) -> usize {
        // Taken before the splices go: their points are reachable only while spliced.
        let points = every_point(self);
        let mut levels: Vec<Option<u64>> = Vec::new();
        let mut path = HookPath::new();
        self.visit_hook_points(&mut path, &mut |_, p| {
            levels.extend(p.remove_splices(RemoveOptions::new().including_permanent()))
        });
        let n = levels.len();
        levels.sort_unstable();
        levels.dedup();
        for level in levels.into_iter().flatten() {
            for p in &points {
                p.remove_hooks(RemoveOptions::new().including_permanent().level(level));
            }
        }
        n
    }

    /// Runs `f` with `hooks` attached in a scope; they are removed when `f` returns,
    /// errs or panics.
    fn with_hooks<R>(&self, hooks: HookSet, f: impl FnOnce(&Self) -> R) -> Result<R> {
        let _scope = self.hooks(hooks)?;
        Ok(f(self))
    }

    /// Runs `forward` (any forward of this model, as a closure) with `hooks` applying
    /// to this run only (TransformerLens's `run_with_hooks`). Other threads running the
    /// same model at the same time do not see them, and nothing is left attached after,
    /// whatever happens in `forward`.
    ///
    /// Backward hooks in `hooks` run when a loss computed in `forward` is
    /// back-propagated (`loss.backward()`, inside or after the closure): they are part
    /// of the graph this run recorded, and of nothing else.
    ///
    /// The hooks live on this thread: `forward` must fire the points it hooks here, not
    /// on threads it spawns or hands the forward to. A hooked point that fired only on
    /// such a thread is [`Error::HookPointOffThread`] (see [`HookPoint::forward`]); the
    /// same holds for `run_with_cache` and its variants.
    fn run_with_hooks<R, E: Into<Error>>(
        &self,
        hooks: HookSet,
        forward: impl FnOnce(&Self) -> std::result::Result<R, E>,
    ) -> Result<R> {
        run_in_frame(self, hooks, false, forward)
    }

    /// Runs `forward` and records the activations `opts` selects (TransformerLens's
    /// `run_with_cache`). Recording is a per-run hook, so it sees activations after
    /// the model's attached hooks have edited them, and other threads' runs are not
    /// recorded. Returns the forward's output and the cache.
    fn run_with_cache<R, E: Into<Error>>(
        &self,
        opts: CacheOptions,
        forward: impl FnOnce(&Self) -> std::result::Result<R, E>,
    ) -> Result<(R, ActivationCache)> {
        self.run_with_cache_and_hooks(opts, HookSet::new(), forward)
    }

    /// [`HookedModel::run_with_cache`] with per-run `hooks` that run before recording,
    /// so the cache holds the edited activations.
    fn run_with_cache_and_hooks<R, E: Into<Error>>(
        &self,
        opts: CacheOptions,
        hooks: HookSet,
        forward: impl FnOnce(&Self) -> std::result::Result<R, E>,
    ) -> Result<(R, ActivationCache)> {
        if opts.incl_bwd {
            return Err(Error::invalid(
                "incl_bwd needs a backward pass from a scalar: use run_with_cache_bwd, whose forward returns the loss",
            ));
        }
        let (hooks, records) = add_recorders(self, hooks, &opts, false);
        let out = run_in_frame(self, hooks, false, forward)?;
        Ok((out, records.into_cache(&opts)))
    }

    /// `run_with_cache(incl_bwd=True)`: runs `forward`, which returns a scalar (the
    /// loss, shape `[]` or `[1]`), back-propagates it, and returns it with a cache
    /// holding the selected activations and, for each, `<name>_grad`: the gradient of
    /// the scalar with respect to that activation. Per-run `hooks` (forward and
    /// backward) apply before recording.
    fn run_with_cache_bwd<E: Into<Error>>(
        &self,
        opts: CacheOptions,
        hooks: HookSet,
        forward: impl FnOnce(&Self) -> std::result::Result<Tensor, E>,
    ) -> Result<(Tensor, ActivationCache)> {
        let (hooks, records) = add_recorders(self, hooks, &opts, true);
        let loss = run_in_frame(self, hooks, true, |m| -> Result<Tensor> {
            let loss = forward(m).map_err(Into::into)?;
            if loss.elem_count() != 1 {
                return Err(Error::invalid(format!(
                    "run_with_cache_bwd needs a scalar to back-propagate, got shape {:?}",
                    loss.shape()
                )));
            }
            loss.backward()?;
            Ok(loss)
        })?;
        Ok((loss.detach(), records.into_cache(&opts)))
    }
}

/// Every hook point of `model`: its own (also those a splice hides) and those of the
/// modules spliced in as model state or by this thread's runs, once each.
fn every_point<M: Hooked + ?Sized>(model: &M) -> Vec<HookPoint> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut path = HookPath::new();
    model.visit_hook_points(&mut path, &mut |_, p| {
        if seen.insert(p.id()) {
            out.push(p.handle());
        }
    });
    for (_, p) in HookDict::build(model).iter() {
        if seen.insert(p.id()) {
            out.push(p.handle());
        }
    }
    out
}

/// The points the splices of a set go to, checked: exact names of the model's own
/// points (a point with a splice already in place can take another, which then wins),
/// one splice per point.
fn splice_targets<M: HookedModel + ?Sized>(
    model: &M,
    splices: &[(String, Arc<dyn Splice>)],
) -> Result<Vec<(HookPoint, Arc<dyn Splice>)>> {
    let mut own: Vec<(String, HookPoint)> = Vec::new();
    let mut path = HookPath::new();
    model.visit_hook_points(&mut path, &mut |name, p| own.push((name.to_string(), p.handle())));
    let mut out: Vec<(HookPoint, Arc<dyn Splice>)> = Vec::new();
    for (name, splice) in splices {
        let Some((_, point)) = own.iter().find(|(n, _)| n == name) else {
            return Err(model.unknown_hook_hint(name).unwrap_or_else(|| Error::UnknownHook {
                name: name.clone(),
                suggestions: crate::error::nearest_names(name, own.iter().map(|(n, _)| n.as_str()), 3),
            }));
        };
        if out.iter().any(|(p, _)| p.id() == point.id()) {
            return Err(Error::invalid(format!(
                "two modules spliced in at `{name}` in one set: a hook point takes one"
            )));
        }
        out.push((point.handle(), splice.clone()));
    }
    Ok(out)
}

/// Attaches a set's splices, then its hooks, at `level`; on error removes what it attached.
fn attach<M: HookedModel + ?Sized>(model: &M, hooks: HookSet, permanent: bool, level: u64) -> Result<()> {
    let targets = splice_targets(model, &hooks.splices)?;
    for (point, splice) in &targets {
        point.add_splice(
            splice.clone(),
            SpliceOptions {
                is_permanent: permanent,
                level: Some(level),
            },
        );
    }
    let undo = || {
        for (point, _) in &targets {
            point.remove_splices(RemoveOptions::new().including_permanent().level(level));
        }
    };
    let dict = model.hook_dict();
    let mut plan: Vec<(&HookPoint, Hook, Direction)> = Vec::new();
    for (dir, list) in [(Direction::Fwd, &hooks.fwd), (Direction::Bwd, &hooks.bwd)] {
        for (filter, hook) in list {
            match dict.select(model, filter) {
                Ok(points) => plan.extend(points.into_iter().map(|(_, p)| (p, hook.clone(), dir))),
                Err(e) => {
                    undo();
                    return Err(e);
                }
            }
        }
    }
    for (point, hook, dir) in plan {
        point.add_hook(
            hook,
            HookOptions {
                dir,
                is_permanent: permanent,
                level: Some(level),
                prepend: false,
            },
        )?;
    }
    Ok(())
}

/// Pushes a frame with `hooks` (and gradients wanted if `grads`), runs `forward`, pops it.
/// The set's splices go in a frame of their own first, so that its hooks can name the
/// splices' points.
fn run_in_frame<M: HookedModel + ?Sized, R, E: Into<Error>>(
    model: &M,
    hooks: HookSet,
    grads: bool,
    forward: impl FnOnce(&M) -> std::result::Result<R, E>,
) -> Result<R> {
    let splices = if hooks.splices.is_empty() {
        None
    } else {
        let mut frame = RunFrame::default();
        for (point, splice) in splice_targets(model, &hooks.splices)? {
            frame.add_splice(&point, splice);
        }
        Some(FrameGuard::push(frame))
    };
    let mut frame = RunFrame {
        grads,
        ..RunFrame::default()
    };
    {
        let dict = model.hook_dict();
        for (dir, list) in [(Direction::Fwd, &hooks.fwd), (Direction::Bwd, &hooks.bwd)] {
            for (filter, hook) in list {
                for (_, point) in dict.select(model, filter)? {
                    frame.add_hook(dir, point, hook.clone());
                }
            }
        }
    }
    let guard = FrameGuard::push(frame);
    let out = forward(model).map_err(Into::into);
    // The forward's own error first: a point missed on another thread may be its cause,
    // but the error says what went wrong where.
    let finished = guard.finish();
    let out = out?;
    finished?;
    if let Some(splices) = splices {
        splices.finish()?;
    }
    Ok(out)
}

/// What the recording hooks collect: (cache name, activation) in the order seen.
type Records = Vec<(String, Tensor)>;

/// The recording hooks' shared buffer.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Records>>);

impl Recorder {
    fn push(&self, name: String, t: Tensor) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push((name, t));
    }

    fn into_cache(self, opts: &CacheOptions) -> ActivationCache {
        let records = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        let mut cache = ActivationCache::new(!opts.remove_batch_dim);
        for (name, t) in records {
            cache.insert(name, t);
        }
        cache
    }
}

/// Adds hooks that record the activations (and with `grads`, their gradients as
/// `<name>_grad`) that `opts` selects, after `hooks`.
fn add_recorders<M: HookedModel + ?Sized>(
    model: &M,
    hooks: HookSet,
    opts: &CacheOptions,
    grads: bool,
) -> (HookSet, Recorder) {
    let recorder = Recorder::default();
    let filter = opts.names_filter.clone().unwrap_or(NamesFilter::All);
    if matches!(filter, NamesFilter::All) && model.hook_dict().is_empty() {
        return (hooks, recorder);
    }
    let make = |suffix: &'static str| {
        let (recorder, opts) = (recorder.clone(), opts.clone());
        Hook::new(move |x: &Tensor, hp: &HookPoint| {
            let name = hp.name();
            let t = prepare_for_cache(hp, &name, x, &opts)?;
            recorder.push(format!("{name}{suffix}"), t);
            Ok(None)
        })
    };
    let mut hooks = hooks.fwd_hook(filter.clone(), make(""));
    if grads {
        hooks = hooks.bwd_hook(filter, make("_grad"));
    }
    (hooks, recorder)
}

impl<M: Hooked + ?Sized> HookedModel for M {}

/// Applies `run_with_cache`'s options to one activation: device move, batch axis,
/// position slice. Without a device move the result shares `x`'s storage.
fn prepare_for_cache(hp: &HookPoint, name: &str, x: &Tensor, opts: &CacheOptions) -> Result<Tensor> {
    let mut t = x.clone();
    if let Some(device) = &opts.device {
        t = t.to_device(device)?;
    }
    if opts.remove_batch_dim {
        t = squeeze_batch(name, &t)?;
    }
    if let Some(slice) = &opts.pos_slice {
        if let Some(axis) = hp.position_axis(t.rank()) {
            t = slice.apply(&t, axis)?;
        }
    }
    Ok(t)
}

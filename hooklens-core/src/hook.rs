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
    /// Wraps a closure as a hook. The closure's argument and error types are inferred
    /// here, which is why every API that takes a hook takes the closure directly. A
    /// closure or `fn` already annotated to return `candle_core::Result` converts with
    /// `Hook::from` (see the `From` impl below).
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

/// Any closure or function with a hook's arguments whose error converts into hooklens's
/// [`Error`](crate::Error), candle's included: a hook written against
/// `candle_core::Result` is as good as one written against `hooklens::Result`.
/// [`HookSet::fwd_hook`](crate::HookSet::fwd_hook), [`HookSet::bwd_hook`](crate::HookSet::bwd_hook)
/// and [`HookedModel::add_shared_hook`](crate::HookedModel::add_shared_hook) take
/// anything that converts into a `Hook`, so they take these directly.
///
/// (`Hook::new` and the closure-taking methods, such as [`HookSet::fwd`](crate::HookSet::fwd),
/// keep one fixed error type on purpose: that is what lets them infer the argument and
/// error types of a closure written inline without annotations. Rust cannot infer an
/// error type that is left generic.)
///
/// ```
/// use hooklens::candle_core::{self, Device, Tensor};
/// use hooklens::{Hook, HookPoint, HookSet, Hooked, HookedModel};
///
/// #[derive(Hooked)]
/// struct Model {
///     hook_x: HookPoint,
/// }
///
/// // Both annotations a user might write; both are hooks.
/// let with_candle = |x: &Tensor, _: &HookPoint| -> candle_core::Result<Option<Tensor>> { Ok(Some(x.neg()?)) };
/// let with_hooklens = |x: &Tensor, _: &HookPoint| -> hooklens::Result<Option<Tensor>> { Ok(Some((x * 2.0)?)) };
/// fn double(x: &Tensor, _: &HookPoint) -> candle_core::Result<Option<Tensor>> {
///     Ok(Some((x * 2.0)?))
/// }
///
/// let model = Model { hook_x: HookPoint::new() };
/// let x = Tensor::new(&[1f32, 2.0], &Device::Cpu)?;
/// let plus_one = |x: &Tensor, _: &HookPoint| -> candle_core::Result<Option<Tensor>> { Ok(Some((x + 1.0)?)) };
/// let hooks = HookSet::new()
///     .fwd_hook("hook_x", with_candle)
///     .fwd_hook("hook_x", with_hooklens)
///     .fwd_hook("hook_x", double)
///     .fwd_hook("hook_x", Hook::from(plus_one))
///     // Inline and unannotated, as most hooks are: `fwd` infers the types.
///     .fwd("hook_x", |x, _hp| Ok(Some((x - 1.0)?)));
/// let y = model.run_with_hooks(hooks, |m| m.hook_x.forward(&x))?;
/// assert_eq!(y.to_vec1::<f32>()?, [-4.0, -8.0]);
/// # Ok::<(), hooklens::Error>(())
/// ```
impl<F, E> From<F> for Hook
where
    F: Fn(&Tensor, &HookPoint) -> std::result::Result<Option<Tensor>, E> + Send + Sync + 'static,
    E: Into<crate::Error>,
{
    fn from(f: F) -> Self {
        Hook(Arc::new(move |x: &Tensor, p: &HookPoint| -> Result<Option<Tensor>> {
            f(x, p).map_err(Into::into)
        }))
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

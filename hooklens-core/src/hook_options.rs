//! The options of attaching and removing model-state hooks, as values: TransformerLens's
//! keyword arguments (`dir`, `is_permanent`, `level`, `prepend`; `clear_contexts`,
//! `direction`, `including_permanent`) under the same names, so that no call is a row of
//! booleans that can be swapped unseen.

use crate::Direction;

/// How [`HookedModel::add_hook`](crate::HookedModel::add_hook) and
/// [`HookPoint::add_hook`](crate::HookPoint::add_hook) attach a hook: TransformerLens's
/// `add_hook(name, hook, dir="fwd", is_permanent=False, level=None, prepend=False)`.
///
/// ```
/// use hooklens_core::{Direction, HookOptions};
/// let opts = HookOptions::bwd().permanent().prepend();
/// assert_eq!((opts.dir, opts.is_permanent, opts.level, opts.prepend), (Direction::Bwd, true, None, true));
/// assert_eq!(HookOptions::default(), HookOptions::fwd());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookOptions {
    /// The direction: [`Direction::Fwd`] (the default) or [`Direction::Bwd`]; `Both` is
    /// an error, as a hook runs in one of them.
    pub dir: Direction,
    /// A permanent hook stays through `reset_hooks` unless it says `including_permanent`.
    pub is_permanent: bool,
    /// The context level it is tagged with (see [`HookScope::level`](crate::HookScope::level)),
    /// so that removing that level removes it.
    pub level: Option<u64>,
    /// Runs it before the hooks already attached in its direction, not after.
    pub prepend: bool,
}

impl Default for HookOptions {
    fn default() -> Self {
        Self::fwd()
    }
}

impl HookOptions {
    /// A forward hook, not permanent, no level, appended: TransformerLens's defaults.
    pub fn fwd() -> Self {
        HookOptions {
            dir: Direction::Fwd,
            is_permanent: false,
            level: None,
            prepend: false,
        }
    }

    /// A backward hook (on the gradient at the point), otherwise the defaults.
    pub fn bwd() -> Self {
        HookOptions {
            dir: Direction::Bwd,
            ..Self::fwd()
        }
    }

    /// The same options, with the hook permanent.
    pub fn permanent(self) -> Self {
        HookOptions {
            is_permanent: true,
            ..self
        }
    }

    /// The same options, tagged with context level `level`.
    pub fn level(self, level: u64) -> Self {
        HookOptions {
            level: Some(level),
            ..self
        }
    }

    /// The same options, running the hook before those already attached.
    pub fn prepend(self) -> Self {
        HookOptions { prepend: true, ..self }
    }
}

/// How [`HookPoint::add_splice`](crate::HookPoint::add_splice) attaches a module as model
/// state: permanence and context level, as for a hook (a splice has no direction).
///
/// ```
/// use hooklens_core::SpliceOptions;
/// let opts = SpliceOptions::new().permanent().level(4);
/// assert_eq!((opts.is_permanent, opts.level), (true, Some(4)));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceOptions {
    /// A permanent splice stays through removals that do not say `including_permanent`.
    pub is_permanent: bool,
    /// The context level it is tagged with, so that removing that level removes it.
    pub level: Option<u64>,
}

impl SpliceOptions {
    /// Not permanent, no level.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same options, with the splice permanent.
    pub fn permanent(self) -> Self {
        SpliceOptions {
            is_permanent: true,
            ..self
        }
    }

    /// The same options, tagged with context level `level`.
    pub fn level(self, level: u64) -> Self {
        SpliceOptions {
            level: Some(level),
            ..self
        }
    }
}

/// Which model-state hooks [`HookedModel::remove_all_hook_fns`](crate::HookedModel::remove_all_hook_fns)
/// and [`HookPoint::remove_hooks`](crate::HookPoint::remove_hooks) remove: TransformerLens's
/// `remove_all_hook_fns(direction="both", including_permanent=False, level=None)`.
///
/// ```
/// use hooklens_core::{Direction, RemoveOptions};
/// let opts = RemoveOptions::new().direction(Direction::Bwd).including_permanent();
/// assert_eq!((opts.direction, opts.including_permanent, opts.level), (Direction::Bwd, true, None));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoveOptions {
    /// The hooks of this direction (`Both` by default).
    pub direction: Direction,
    /// Permanent hooks too (by default they stay).
    pub including_permanent: bool,
    /// Only the hooks tagged with this context level (by default, any level).
    pub level: Option<u64>,
}

impl Default for RemoveOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl RemoveOptions {
    /// Every non-permanent hook, both directions, any level: TransformerLens's defaults.
    pub fn new() -> Self {
        RemoveOptions {
            direction: Direction::Both,
            including_permanent: false,
            level: None,
        }
    }

    /// The same, for hooks in `direction` only.
    pub fn direction(self, direction: Direction) -> Self {
        RemoveOptions { direction, ..self }
    }

    /// The same, permanent hooks included.
    pub fn including_permanent(self) -> Self {
        RemoveOptions {
            including_permanent: true,
            ..self
        }
    }

    /// The same, for hooks at context level `level` only.
    pub fn level(self, level: u64) -> Self {
        RemoveOptions {
            level: Some(level),
            ..self
        }
    }

    /// Whether a hook attached with these properties is removed.
    pub(crate) fn removes(&self, is_permanent: bool, level: Option<u64>) -> bool {
        let keep_permanent = is_permanent && !self.including_permanent;
        let other_level = self.level.is_some() && level != self.level;
        !(keep_permanent || other_level)
    }
}

/// What [`HookedModel::reset_hooks`](crate::HookedModel::reset_hooks) does: TransformerLens's
/// `reset_hooks(clear_contexts=True, direction="both", including_permanent=False, level=None)`.
///
/// ```
/// use hooklens_core::{Direction, ResetOptions};
/// let opts = ResetOptions::new().keep_contexts().level(3);
/// assert_eq!(
///     (opts.clear_contexts, opts.direction, opts.including_permanent, opts.level),
///     (false, Direction::Both, false, Some(3))
/// );
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetOptions {
    /// Empties every point's context (`ctx`) too (the default).
    pub clear_contexts: bool,
    /// Removes the hooks of this direction (`Both` by default).
    pub direction: Direction,
    /// Removes permanent hooks too (by default they stay).
    pub including_permanent: bool,
    /// Removes only the hooks tagged with this context level (by default, any level).
    pub level: Option<u64>,
}

impl Default for ResetOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ResetOptions {
    /// Clears contexts and removes every non-permanent hook: TransformerLens's defaults.
    pub fn new() -> Self {
        let remove = RemoveOptions::new();
        ResetOptions {
            clear_contexts: true,
            direction: remove.direction,
            including_permanent: remove.including_permanent,
            level: remove.level,
        }
    }

    /// The same, leaving the points' contexts as they are.
    pub fn keep_contexts(self) -> Self {
        ResetOptions {
            clear_contexts: false,
            ..self
        }
    }

    /// The same, for hooks in `direction` only.
    pub fn direction(self, direction: Direction) -> Self {
        ResetOptions { direction, ..self }
    }

    /// The same, permanent hooks included.
    pub fn including_permanent(self) -> Self {
        ResetOptions {
            including_permanent: true,
            ..self
        }
    }

    /// The same, for hooks at context level `level` only.
    pub fn level(self, level: u64) -> Self {
        ResetOptions {
            level: Some(level),
            ..self
        }
    }

    /// The hooks these options remove.
    pub fn remove_options(&self) -> RemoveOptions {
        RemoveOptions {
            direction: self.direction,
            including_permanent: self.including_permanent,
            level: self.level,
        }
    }
}

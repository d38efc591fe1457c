//! The one error type of hooklens.
//!
//! Errors raised inside a model's forward pass (a hook that fails, returns the wrong
//! shape or panics) must travel through candle's `Result`, because models are written
//! in candle's style. They are wrapped into a downcastable candle error on the way in
//! ([`Error::into_candle`]) and recovered intact on the way out (`From<candle_core::Error>`),
//! so a caller of `run_with_hooks` sees the hook's name, not an opaque string.

use std::path::PathBuf;

use candle_core::{DType, DeviceLocation, Shape};

/// The result type of hooklens.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in hooklens. Each variant names what and where.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A hook name that the model does not have.
    #[error("unknown hook point `{name}`{}", suggest(.suggestions))]
    UnknownHook {
        /// The name that was asked for.
        name: String,
        /// The model's names closest to it, best first.
        suggestions: Vec<String>,
    },

    /// A hook point that exists in the architecture but is switched off by the model's
    /// configuration (TransformerLens's `use_attn_result` and friends).
    #[error("hook point `{name}` is disabled: set `{flag}` in the model's config to use it")]
    DisabledHook {
        /// The hook name.
        name: String,
        /// The configuration flag that turns it on.
        flag: String,
    },

    /// A names filter (glob, list or predicate) that selected no hook point.
    #[error("names filter {filter} matched no hook point of the model")]
    EmptyFilter {
        /// The filter, as written.
        filter: String,
    },

    /// A hook returned a tensor whose shape differs from the activation's.
    #[error("hook at `{name}` returned a tensor of shape {got:?}, but the activation has shape {expected:?}")]
    HookShape {
        /// The hook point.
        name: String,
        /// The activation's shape.
        expected: Shape,
        /// The shape the hook returned.
        got: Shape,
    },

    /// A hook returned a tensor of another dtype than the activation's.
    #[error("hook at `{name}` returned a {got:?} tensor, but the activation is {expected:?}")]
    HookDType {
        /// The hook point.
        name: String,
        /// The activation's dtype.
        expected: DType,
        /// The dtype the hook returned.
        got: DType,
    },

    /// A hook returned a tensor on another device than the activation's.
    #[error("hook at `{name}` returned a tensor on {got:?}, but the activation is on {expected:?}")]
    HookDevice {
        /// The hook point.
        name: String,
        /// The activation's device.
        expected: DeviceLocation,
        /// The device the hook returned.
        got: DeviceLocation,
    },

    /// A hook returned an error.
    #[error("hook at `{name}` failed: {source}")]
    HookFailed {
        /// The hook point.
        name: String,
        /// What the hook returned.
        source: Box<Error>,
    },

    /// A hook panicked; the panic was caught and the run ended with this error.
    #[error("hook at `{name}` panicked: {message}")]
    HookPanicked {
        /// The hook point.
        name: String,
        /// The panic's message.
        message: String,
    },

    /// A `HookPoint` fired inside a run or a scope that no hook dictionary ever named:
    /// the model's `Hooked` walk does not reach it, so no hook, filter or cache can see
    /// it. Typically a struct holding it lacks `#[derive(Hooked)]`, or a field holding it
    /// is `#[hooked(skip)]`.
    #[error(
        "a HookPoint with no name fired: is the struct holding it missing #[derive(Hooked)]? \
         (hook points are named by the model's `Hooked` walk, which never reached this one, so \
         no hook or cache can see it; a field marked #[hooked(skip)] is not walked either)"
    )]
    UnnamedHookPoint,

    /// A hook point that a run hooks, caches or splices ran on another thread during the
    /// run, and never on the run's own thread: the run's hooks, which live on the thread
    /// that started it, missed it.
    #[error(
        "hook point `{name}` ran on another thread during a run that hooks it, and never on the thread \
         that started the run, so the run's hooks, cache and splices missed it: a model's forward must \
         call HookPoint::forward on the thread that called run_with_hooks / run_with_cache (threads \
         spawned inside the forward do not see the run)"
    )]
    HookPointOffThread {
        /// The hook point's name.
        name: String,
    },

    /// `HookPoint::layer` on a name without a `blocks.N.` segment.
    #[error("hook point `{name}` is not inside a layer (its name has no `blocks.N.` segment)")]
    NoLayer {
        /// The hook name.
        name: String,
    },

    /// A hook direction that does not fit the call (e.g. `Both` in `add_hook`).
    #[error("{0}")]
    Direction(String),

    /// A position or batch slice that does not fit a tensor, or does not parse.
    #[error("slice {slice}: {reason}")]
    Slice {
        /// The slice, as written.
        slice: String,
        /// Why it does not fit.
        reason: String,
    },

    /// An operation that needs batch size 1 (`remove_batch_dim`) met a larger batch.
    #[error("`{name}` has batch size {batch}: removing the batch dimension needs batch size 1")]
    BatchNotOne {
        /// The activation.
        name: String,
        /// Its batch size.
        batch: usize,
    },

    /// A name that is not in an activation cache.
    #[error("no activation `{name}` in the cache{}", suggest(.suggestions))]
    NotCached {
        /// The name that was asked for.
        name: String,
        /// The cached names closest to it.
        suggestions: Vec<String>,
    },

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// A file that is not what it should be (malformed safetensors, bad JSON, ...).
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A token id outside the model's vocabulary (or its tokenizer's).
    #[error("{message}")]
    TokenOutOfVocab {
        /// The id.
        id: i64,
        /// The vocabulary size it had to be below.
        d_vocab: usize,
        /// What happened, where.
        message: String,
    },

    /// More positions than the model's context holds.
    #[error("{message}")]
    ContextTooLong {
        /// The positions asked for (prompt plus cached plus new ones).
        positions: usize,
        /// The model's context length.
        n_ctx: usize,
        /// What happened, where.
        message: String,
    },

    /// A tensor of another shape than the call needs.
    #[error("{message}")]
    ShapeMismatch {
        /// What the tensor is (`residual input`, an activation's name, ...).
        what: String,
        /// The shape needed, as a pattern (`[batch, pos, 768]`).
        expected: String,
        /// The shape given.
        got: Vec<usize>,
        /// What happened, where.
        message: String,
    },

    /// A checkpoint of a family, or an SAE of an architecture, that hooklens does not run.
    #[error("{message}")]
    UnsupportedArchitecture {
        /// The architecture named.
        name: String,
        /// Those hooklens runs.
        supported: Vec<String>,
        /// What happened, where.
        message: String,
    },

    /// Invalid input given to a function; the message says which and why.
    #[error("{0}")]
    Invalid(String),

    /// An error from candle.
    #[error(transparent)]
    Candle(candle_core::Error),
}

fn suggest(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
        format!("; did you mean {}?", quoted.join(", "))
    }
}

/// Debug shows the message: errors reach users through `unwrap` and `main`'s
/// `Result`, where the derived struct dump would hide the sentence that matters.
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The context string marks a hooklens error carried through candle's `Result`.
const CARRIED: &str = "raised in a hooklens hook point";

impl Error {
    /// Wraps this error so it can cross a candle-style `forward` that returns
    /// `candle_core::Result`; `Error::from(candle_core::Error)` recovers it.
    pub fn into_candle(self) -> candle_core::Error {
        match self {
            Error::Candle(e) => e,
            other => candle_core::Error::WrappedContext {
                wrapped: Box::new(other),
                context: CARRIED.to_string(),
            },
        }
    }

    /// A short constructor for [`Error::Invalid`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }

    /// A short constructor for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        match e {
            candle_core::Error::WrappedContext { wrapped, context } if context == CARRIED => {
                match wrapped.downcast::<Error>() {
                    Ok(inner) => *inner,
                    Err(wrapped) => Error::Candle(candle_core::Error::WrappedContext { wrapped, context }),
                }
            }
            candle_core::Error::WithBacktrace { inner, backtrace } => match Error::from(*inner) {
                Error::Candle(inner) => Error::Candle(candle_core::Error::WithBacktrace {
                    inner: Box::new(inner),
                    backtrace,
                }),
                recovered => recovered,
            },
            candle_core::Error::Context { inner, context } => match Error::from(*inner) {
                Error::Candle(inner) => Error::Candle(candle_core::Error::Context {
                    inner: Box::new(inner),
                    context,
                }),
                recovered => recovered,
            },
            other => Error::Candle(other),
        }
    }
}

impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        e.into_candle()
    }
}

/// Names within edit distance of `name`, closest first, at most `max` of them.
/// Used for "did you mean" hints on unknown hook and cache names.
pub fn nearest_names<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>, max: usize) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> = candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, c)| *d <= (name.len().max(c.len()) / 3).max(2) || c.ends_with(name) || name.ends_with(*c))
        .collect();
    scored.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().take(max).map(|(_, c)| c.to_string()).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_error_survives_a_candle_result() {
        let e = Error::HookPanicked {
            name: "blocks.0.hook_resid_pre".into(),
            message: "boom".into(),
        };
        let through: candle_core::Error = e.into_candle().context("outer layer");
        match Error::from(through) {
            Error::HookPanicked { name, message } => {
                assert_eq!(name, "blocks.0.hook_resid_pre");
                assert_eq!(message, "boom");
            }
            other => panic!("not recovered: {other}"),
        }
    }

    #[test]
    fn plain_candle_errors_stay_candle_errors() {
        let e = Error::from(candle_core::Error::Msg("x".into()));
        assert!(matches!(e, Error::Candle(_)));
    }

    #[test]
    fn nearest_names_prefers_small_edits() {
        let names = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "hook_embed"];
        let got = nearest_names("blocks.0.hook_resid_pr", names, 2);
        assert_eq!(got[0], "blocks.0.hook_resid_pre");
        assert!(!got.contains(&"hook_embed".to_string()));
    }
}

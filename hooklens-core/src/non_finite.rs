//! An opt-in numerics check: the first hook point where a NaN or an infinity appears.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Shape, Tensor};

use crate::{Error, HookPoint, HookSet, HookedModel, Result};

/// Where non-finite values first appeared in a forward pass, and how many.
#[derive(Clone, Debug, PartialEq)]
pub struct NonFinite {
    /// The hook point, in firing order the first with a non-finite value.
    pub name: String,
    /// The activation's shape.
    pub shape: Shape,
    /// How many NaNs it holds.
    pub nan: usize,
    /// How many infinities it holds (masked `-inf` attention scores not counted).
    pub inf: usize,
}

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "first non-finite activation at `{}` (shape {:?}): {} NaN, {} infinite",
            self.name, self.shape, self.nan, self.inf
        )
    }
}

/// Counts NaNs and infinities in `x`; at `hook_attn_scores`, `-inf` is the causal mask
/// and only `+inf` counts.
fn count_non_finite(name: &str, x: &Tensor) -> Result<(usize, usize)> {
    if !x.dtype().is_float() {
        return Ok((0, 0));
    }
    let x = x.to_dtype(DType::F32)?;
    let nan = x.ne(&x)?.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize;
    let inf = if name.ends_with("hook_attn_scores") {
        x.eq(f32::INFINITY as f64)?
    } else {
        x.abs()?.eq(f32::INFINITY as f64)?
    };
    let inf = inf.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize;
    Ok((nan, inf))
}

/// Runs `forward` with a check at every hook point and returns its output with the
/// first point (in firing order) whose activation has a NaN or an infinity, if any.
/// Opt-in: each check reads the whole activation back.
pub fn first_non_finite<M, R, E>(
    model: &M,
    forward: impl FnOnce(&M) -> std::result::Result<R, E>,
) -> Result<(R, Option<NonFinite>)>
where
    M: HookedModel + ?Sized,
    E: Into<Error>,
{
    let found: Arc<Mutex<Option<NonFinite>>> = Arc::default();
    let slot = found.clone();
    let check = move |x: &Tensor, hp: &HookPoint| {
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            let name = hp.name();
            let (nan, inf) = count_non_finite(&name, x)?;
            if nan + inf > 0 {
                *slot = Some(NonFinite {
                    name: name.to_string(),
                    shape: x.shape().clone(),
                    nan,
                    inf,
                });
            }
        }
        Ok(None)
    };
    let out = if model.hook_dict().is_empty() {
        model.run_with_hooks(HookSet::new(), forward)?
    } else {
        model.run_with_hooks(HookSet::new().fwd("*", check), forward)?
    };
    let report = found.lock().unwrap_or_else(|e| e.into_inner()).take();
    Ok((out, report))
}

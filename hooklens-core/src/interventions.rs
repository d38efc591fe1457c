//! Ready-made interventions: the edits TransformerLens users write by hand in a hook
//! (`z[:, :, h, :] = 0`, patching a position from a cached run, steering), as
//! [`HookSet`]s for `run_with_hooks`, `run_with_cache_and_hooks` or a `hooks()` scope.
//!
//! Each checks the activation it meets (rank, head, positions, the lengths of vectors
//! and sources) and fails with an error that names the hook point and both shapes
//! rather than broadcasting into a wrong answer. Positions are counted on the point's
//! position axis ([`HookPoint::position_axis`]: `[batch, pos, ..]` for residuals,
//! `[batch, pos, head, d_head]` for `attn.hook_z` and the other per-head points).
//!
//! ```
//! use hooklens::candle_core::{Device, Tensor};
//! use hooklens::{interventions, HookPoint, Hooked, HookedModel};
//!
//! #[derive(Hooked)]
//! struct Attn { hook_z: HookPoint }
//! #[derive(Hooked)]
//! struct Block { attn: Attn }
//! #[derive(Hooked)]
//! struct Model { blocks: Vec<Block> }
//!
//! let model = Model { blocks: vec![Block { attn: Attn { hook_z: HookPoint::new() } }] };
//! // [batch 1, pos 2, head 2, d_head 1]
//! let z = Tensor::new(&[[[[1f32], [2.0]], [[3.0], [4.0]]]], &Device::Cpu)?;
//! let hooks = interventions::zero_ablate_head("blocks.0.attn.hook_z", 1);
//! let out = model.run_with_hooks(hooks, |m| m.blocks[0].attn.hook_z.forward(&z))?;
//! assert_eq!(out.flatten_all()?.to_vec1::<f32>()?, [1.0, 0.0, 3.0, 0.0]);
//! # Ok::<(), hooklens::Error>(())
//! ```

use candle_core::{DType, Tensor, D};

use crate::{Error, HookPoint, HookSet, NamesFilter, Result};

/// Zero-ablates head `head` of a per-head activation `[batch, pos, head, d_head]`
/// (`attn.hook_z`, `hook_q`, `hook_v`, `hook_result`, ...): TransformerLens's
/// `z[:, :, head, :] = 0`. A head past the activation's heads is an error.
pub fn zero_ablate_head(names: impl Into<NamesFilter>, head: usize) -> HookSet {
    HookSet::new().fwd(names, move |x, hp| {
        let mask = head_mask(x, hp, head, "zero_ablate_head")?;
        Ok(Some(mask.where_cond(&x.zeros_like()?, x)?))
    })
}

/// Mean-ablates head `head` of a per-head activation `[batch, pos, head, d_head]`:
/// the head's output at each position is replaced by its mean over the batch of this
/// run (TransformerLens's `z[:, :, head, :] = z[:, :, head, :].mean(0)`), so that a
/// batch of reference prompts defines the mean. With batch 1 this changes nothing.
pub fn mean_ablate_head(names: impl Into<NamesFilter>, head: usize) -> HookSet {
    HookSet::new().fwd(names, move |x, hp| {
        let mask = head_mask(x, hp, head, "mean_ablate_head")?;
        let mean = x.mean_keepdim(0)?.broadcast_as(x.shape())?.contiguous()?;
        Ok(Some(mask.where_cond(&mean, x)?))
    })
}

/// Patches positions from another run: at `positions` (all of them with `None`) the
/// activation becomes `source`'s, elsewhere it is left alone. `source` is the same
/// activation from a cached run (`clean_cache["blocks.3.hook_resid_pre"].clone()`), of
/// the same shape, dtype and device; a filter that selects several points patches each
/// from the same `source`, so give one name.
pub fn patch_positions(names: impl Into<NamesFilter>, source: Tensor, positions: Option<Vec<usize>>) -> HookSet {
    HookSet::new().fwd(names, move |x, hp| {
        if source.shape() != x.shape() || source.dtype() != x.dtype() {
            return Err(Error::invalid(format!(
                "patch_positions at `{}`: the source is a {:?} tensor of shape {:?}, the activation a {:?} tensor of shape {:?}",
                hp.name(),
                source.dtype(),
                source.shape(),
                x.dtype(),
                x.shape()
            )));
        }
        let source = source.to_device(x.device())?;
        match &positions {
            None => Ok(Some(source)),
            Some(positions) => {
                let mask = position_mask(x, hp, positions, "patch_positions")?;
                Ok(Some(mask.broadcast_as(x.shape())?.where_cond(&source, x)?))
            }
        }
    })
}

/// Adds `coefficient * vector` to the activation at `positions` (all with `None`):
/// activation steering. `vector` has the length of the activation's last axis
/// (`d_model` for residuals and `hook_*_out`).
pub fn add_vector(
    names: impl Into<NamesFilter>,
    vector: Tensor,
    coefficient: f64,
    positions: Option<Vec<usize>>,
) -> HookSet {
    HookSet::new().fwd(names, move |x, hp| {
        let v = last_axis_vector(x, hp, &vector, "add_vector")?;
        let delta = (v * coefficient)?;
        let delta = match &positions {
            None => delta,
            Some(positions) => {
                let mask = position_mask(x, hp, positions, "add_vector")?.to_dtype(x.dtype())?;
                mask.broadcast_mul(&delta)?
            }
        };
        Ok(Some(x.broadcast_add(&delta)?))
    })
}

/// Scales the component of the activation along `direction` by `factor`, leaving the
/// orthogonal part alone: `x + (factor - 1) (x . d) d` with `d` the unit vector of
/// `direction` along the last axis. `factor = 0` projects the direction out
/// (directional ablation), `factor = 2` doubles it. A zero `direction` is an error.
pub fn scale_direction(names: impl Into<NamesFilter>, direction: Tensor, factor: f64) -> HookSet {
    HookSet::new().fwd(names, move |x, hp| {
        let d = last_axis_vector(x, hp, &direction, "scale_direction")?;
        let norm = d.sqr()?.sum_all()?.sqrt()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !(norm > 0.0 && norm.is_finite()) {
            return Err(Error::invalid(format!(
                "scale_direction at `{}`: the direction has norm {norm}, so it has no unit vector",
                hp.name()
            )));
        }
        let unit = (d / norm)?;
        let along = x.broadcast_mul(&unit)?.sum_keepdim(D::Minus1)?;
        Ok(Some(x.broadcast_add(
            &along.broadcast_mul(&unit)?.affine(factor - 1.0, 0.0)?,
        )?))
    })
}

/// A `[.., head, ..]` boolean mask over a per-head activation: 1 at `head`, broadcast to
/// the activation's shape.
fn head_mask(x: &Tensor, hp: &HookPoint, head: usize, what: &str) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() != 4 {
        return Err(Error::invalid(format!(
            "{what} at `{}`: expects a per-head activation [batch, pos, head, d_head], got shape {:?}",
            hp.name(),
            x.shape()
        )));
    }
    let n_heads = dims[2];
    if head >= n_heads {
        return Err(Error::invalid(format!(
            "{what} at `{}`: head {head} out of range, the activation of shape {:?} has {n_heads} heads",
            hp.name(),
            x.shape()
        )));
    }
    let one_hot: Vec<u8> = (0..n_heads).map(|h| u8::from(h == head)).collect();
    let mask = Tensor::from_vec(one_hot, (1, 1, n_heads, 1), x.device())?;
    Ok(mask.broadcast_as(x.shape())?.contiguous()?)
}

/// A boolean mask with 1 at `positions` of the point's position axis and length 1 on
/// every other axis (broadcastable to the activation).
fn position_mask(x: &Tensor, hp: &HookPoint, positions: &[usize], what: &str) -> Result<Tensor> {
    let rank = x.rank();
    let axis = hp.position_axis(rank).ok_or_else(|| {
        Error::invalid(format!(
            "{what} at `{}`: an activation of shape {:?} has no position axis here",
            hp.name(),
            x.shape()
        ))
    })?;
    let axis = (rank as isize + axis) as usize;
    let n_pos = x.dims()[axis];
    if let Some(bad) = positions.iter().find(|&&p| p >= n_pos) {
        return Err(Error::invalid(format!(
            "{what} at `{}`: position {bad} out of range, the activation of shape {:?} has {n_pos} positions (axis {axis})",
            hp.name(),
            x.shape()
        )));
    }
    let mut flags = vec![0u8; n_pos];
    for &p in positions {
        flags[p] = 1;
    }
    let mut shape = vec![1usize; rank];
    shape[axis] = n_pos;
    Ok(Tensor::from_vec(flags, shape, x.device())?)
}

/// `vector` checked to be 1-D with the length of the activation's last axis, in its
/// dtype and on its device.
fn last_axis_vector(x: &Tensor, hp: &HookPoint, vector: &Tensor, what: &str) -> Result<Tensor> {
    let d = x.dims().last().copied().unwrap_or(0);
    if vector.dims() != [d] {
        return Err(Error::invalid(format!(
            "{what} at `{}`: the vector has shape {:?}, but the activation of shape {:?} needs [{d}] (its last axis)",
            hp.name(),
            vector.shape(),
            x.shape()
        )));
    }
    Ok(vector.to_dtype(x.dtype())?.to_device(x.device())?)
}

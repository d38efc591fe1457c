//! `CacheOptions`: what `run_with_cache` records and how.

use candle_core::Device;

use crate::{NamesFilter, Slice};

/// The options of `run_with_cache`, as in TransformerLens: which hooks, on which
/// device, with or without the batch axis, and which positions.
///
/// ```
/// # use hooklens_core::{CacheOptions, Slice};
/// let opts = CacheOptions::new().names("blocks.*.attn.hook_pattern").pos_slice(Slice::Index(-1));
/// ```
#[derive(Clone, Debug, Default)]
pub struct CacheOptions {
    /// Which hook points to record (default: all).
    pub names_filter: Option<NamesFilter>,
    /// Move recorded tensors here (default: keep them where they are, sharing storage).
    pub device: Option<Device>,
    /// Drop the leading batch axis (batch must be 1).
    pub remove_batch_dim: bool,
    /// Keep only these positions, on the position axis of each activation.
    pub pos_slice: Option<Slice>,
    /// Also record `<name>_grad` gradients (TransformerLens's `incl_bwd`).
    pub incl_bwd: bool,
}

impl CacheOptions {
    /// Record everything, as is.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records only the hook points `names` selects.
    pub fn names(mut self, names: impl Into<NamesFilter>) -> Self {
        self.names_filter = Some(names.into());
        self
    }

    /// Moves recorded tensors to `device`.
    pub fn device(mut self, device: Device) -> Self {
        self.device = Some(device);
        self
    }

    /// Drops the batch axis of every recorded tensor (batch must be 1).
    pub fn remove_batch_dim(mut self, yes: bool) -> Self {
        self.remove_batch_dim = yes;
        self
    }

    /// Keeps only the positions `slice` selects.
    pub fn pos_slice(mut self, slice: impl Into<Slice>) -> Self {
        self.pos_slice = Some(slice.into());
        self
    }

    /// Records gradients too.
    pub fn incl_bwd(mut self, yes: bool) -> Self {
        self.incl_bwd = yes;
        self
    }
}

/// The axis holding positions in a hook's activation by its name, as TransformerLens's
/// `run_with_cache` decides it: `-3` for `[batch, pos, head, ..]` points (q, k, v, z,
/// result, rotary q and k, and the per-head inputs), `-2` otherwise; points that
/// declare their axis ([`crate::HookPoint::with_position_axis`]) use that instead; `None` when the tensor is too
/// small to have one, so such tensors are never sliced. `hook_tokens` (`[batch, pos]`)
/// is `-1`, where TransformerLens would slice its batch axis.
pub fn position_axis(name: &str, rank: usize) -> Option<isize> {
    let last = name.rsplit('.').next().unwrap_or(name);
    let axis: isize = match last {
        "hook_q" | "hook_k" | "hook_v" | "hook_z" | "hook_result" | "hook_rot_q" | "hook_rot_k" | "hook_q_input"
        | "hook_k_input" | "hook_v_input" => -3,
        "hook_tokens" => -1,
        _ => -2,
    };
    (rank as isize >= -axis).then_some(axis)
}

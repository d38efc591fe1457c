//! Backward hooks: an identity op whose backward runs the hook point's backward hooks.
//!
//! candle keeps gradients only for `Var`s and has no hook on intermediate gradients,
//! so a hook point with backward hooks inserts this op into the graph. Its forward is a
//! copy (candle needs new storage); its backward hands the incoming gradient through
//! the hooks, in order, and passes on what they return. Untracked activations (the
//! model's weights are plain tensors) are first made a `Var`, so the graph starts at
//! the first hook point that needs it and a plain run records no graph at all.

use std::sync::atomic::Ordering;

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, Var};

use crate::hook_point::BWD_ATTACHED;
use crate::{run_frame, Error, Hook, HookPoint, Result};

/// Whether a forward on this thread should take differentiable paths: a run here
/// asked for gradients, or the model whose forward is running here (see
/// [`HookPoint::model_forward`]) has backward hooks attached as model state. Outside a
/// forward that said which model it is, a backward hook on any model counts. Models
/// check this to avoid fused kernels (softmax, layer norm) that have no backward in
/// candle.
pub fn grad_mode() -> bool {
    run_frame::grads_wanted()
        || match run_frame::model_bwd_hooks() {
            Some(n) => n > 0,
            None => BWD_ATTACHED.load(Ordering::Acquire) > 0,
        }
}

/// Runs `f` with [`grad_mode`] on for this thread, e.g. to train a model's weights
/// (as `Var`s) through the same forward that hooks use.
pub fn with_grad_mode<R>(f: impl FnOnce() -> R) -> R {
    let _frame = run_frame::FrameGuard::push(run_frame::RunFrame {
        grads: true,
        ..Default::default()
    });
    f()
}

struct GradHookOp {
    point: HookPoint,
    hooks: Vec<Hook>,
}

/// Returns `x` (same values) recorded in the graph behind an op whose backward runs
/// `hooks` at `point`.
pub(crate) fn attach(point: HookPoint, hooks: Vec<Hook>, x: &Tensor) -> Result<Tensor> {
    let tracked = if x.track_op() {
        x.clone()
    } else {
        Var::from_tensor(x)?.as_tensor().clone()
    };
    Ok(tracked.apply_op1(GradHookOp { point, hooks })?)
}

/// A copy of the strided input as new contiguous storage, on any backend.
fn copy<S>(storage: &S, layout: &Layout) -> candle_core::Result<(S, Shape)>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    let shape = layout.shape().clone();
    let mut dst = storage.device().zeros_impl(&shape, storage.dtype())?;
    storage.copy_strided_src(&mut dst, 0, layout)?;
    Ok((dst, shape))
}

impl CustomOp1 for GradHookOp {
    fn name(&self) -> &'static str {
        "hooklens-backward-hook"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        copy(storage, layout)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        copy(storage, layout)
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        storage: &candle_core::MetalStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::MetalStorage, Shape)> {
        copy(storage, layout)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let run = || -> Result<Tensor> {
            let mut current = grad.clone();
            for hook in &self.hooks {
                if let Some(replacement) = self.point.call_hook(hook, &current)? {
                    self.point.check_replacement(grad, &replacement)?;
                    current = replacement;
                }
            }
            Ok(current)
        };
        run().map(Some).map_err(Error::into_candle)
    }
}

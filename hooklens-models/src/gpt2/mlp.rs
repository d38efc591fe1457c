//! The MLP of a GPT-2 block with TransformerLens's hook points.

use candle_core::Tensor;
use hooklens_core::HookPoint;

use super::config::ActFn;
use super::{kernels, linear};

/// `W_out · act(W_in · x + b_in) + b_out`, with `hook_pre` / `hook_post` around the activation.
#[derive(Debug, hooklens_derive::Hooked)]
#[hooked(crate = "hooklens_core")]
pub struct Mlp {
    /// `[d_model, d_mlp]` (TransformerLens's `W_in`, also HF's Conv1D layout).
    pub(crate) w_in: Tensor,
    /// `[d_mlp]`.
    pub(crate) b_in: Tensor,
    /// `[d_mlp, d_model]`.
    pub(crate) w_out: Tensor,
    /// `[d_model]`.
    pub(crate) b_out: Tensor,
    pub(crate) act_fn: ActFn,
    /// Before the activation, `[batch, pos, d_mlp]`.
    pub hook_pre: HookPoint,
    /// After the activation, `[batch, pos, d_mlp]`.
    pub hook_post: HookPoint,
}

impl Mlp {
    /// `[batch, pos, d_model]` -> `[batch, pos, d_model]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let pre = linear(x, &self.w_in, Some(&self.b_in))?;
        let post = match self.act_fn {
            // Nothing can have kept the fresh `pre`: the activation overwrites it.
            ActFn::GeluNew if self.hook_pre.is_idle() => kernels::gelu_new_owned(pre)?,
            act_fn => {
                let pre = self.hook_pre.forward(&pre)?;
                match act_fn {
                    ActFn::GeluNew => kernels::gelu_new(&pre)?,
                    ActFn::Gelu => pre.gelu_erf()?,
                    ActFn::Relu => pre.relu()?,
                }
            }
        };
        let post = self.hook_post.forward(&post)?;
        linear(&post, &self.w_out, Some(&self.b_out))
    }
}

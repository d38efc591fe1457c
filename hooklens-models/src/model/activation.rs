//! The MLP's activation functions, shared by the dense MLP and the mixture of experts.

use candle_core::Tensor;

use crate::config::ActFn;
use crate::ops::kernels;

/// `act(x)`, a new tensor.
pub(super) fn activate(act_fn: ActFn, pre: &Tensor) -> candle_core::Result<Tensor> {
    match act_fn {
        ActFn::GeluNew => kernels::gelu_new(pre),
        ActFn::Gelu => pre.gelu_erf(),
        ActFn::Relu => pre.relu(),
        ActFn::Silu => pre.silu(),
    }
}

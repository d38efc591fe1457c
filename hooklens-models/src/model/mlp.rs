//! The MLP of a block with TransformerLens's hook points: plain or gated.

use candle_core::Tensor;
use hooklens_core::HookPoint;

use super::activation::activate;
use super::moe::Moe;
use crate::config::ActFn;
use crate::ops::{kernels, linear};

/// Plain: `W_out · act(W_in · x + b_in) + b_out`, with `hook_pre` / `hook_post` around
/// the activation. Gated (Llama's SwiGLU, Gemma's GeGLU): `hook_pre` = `x @ W_gate`,
/// `hook_pre_linear` = `x @ W_in`, `hook_post` = `act(pre) * pre_linear + b_in`, as
/// TransformerLens's `GatedMLP` computes it.
///
/// `hook_in` and `hook_out` around the whole MLP are circuit-tracer's names (SAELens's
/// `HookedSAETransformer` adds `hook_in` too), not TransformerLens 2.x's: they are where
/// transcoders read and write.
///
/// With `num_experts` in the config the MLP is a sparse mixture of experts (`moe`):
/// then its points are `hook_in`, the [`Moe`]'s (`hook_router_logits`,
/// `experts.{e}.hook_gate / hook_pre / hook_post`, `hook_expert_weights`,
/// `hook_expert_indices`) and `hook_out`; the dense points (`hook_pre`,
/// `hook_pre_linear`, `hook_post`) are not registered and never fire, and the dense
/// weights are empty (`d_mlp` 0 columns).
#[derive(Debug)]
pub struct Mlp {
    /// `[d_model, d_mlp]`: the gate of a gated MLP.
    pub(crate) w_gate: Option<Tensor>,
    /// `[d_model, d_mlp]` (TransformerLens's `W_in`, also HF's Conv1D layout).
    pub(crate) w_in: Tensor,
    /// `[d_mlp]`.
    pub(crate) b_in: Tensor,
    /// Whether `b_in` is not all zeros (else its addition is skipped).
    pub(crate) b_in_used: bool,
    /// `[d_mlp, d_model]`.
    pub(crate) w_out: Tensor,
    /// `[d_model]`.
    pub(crate) b_out: Tensor,
    /// Whether `b_out` is not all zeros.
    pub(crate) b_out_used: bool,
    pub(crate) act_fn: ActFn,
    /// The MLP's input, `[batch, pos, d_model]`: ln2's output after its gain, exactly
    /// what the MLP computes from. Not a TransformerLens 2.x point: circuit-tracer's
    /// and SAELens's `HookedSAETransformer`'s name, where their transcoders read
    /// (`hook_name: blocks.L.mlp.hook_in`).
    pub hook_in: HookPoint,
    /// Before the activation, `[batch, pos, d_mlp]`.
    pub hook_pre: HookPoint,
    /// The linear branch of a gated MLP, `[batch, pos, d_mlp]`.
    pub hook_pre_linear: Option<HookPoint>,
    /// After the activation (and the gate), `[batch, pos, d_mlp]`.
    pub hook_post: HookPoint,
    /// The MLP's output, `[batch, pos, d_model]`: before any norm after the MLP
    /// (Gemma 2's `ln2_post`) and before the block's `hook_mlp_out`. Not a
    /// TransformerLens 2.x point: circuit-tracer's name, where its transcoders write
    /// (`hook_name_out: blocks.L.mlp.hook_out`).
    pub hook_out: HookPoint,
    /// The mixture of experts that replaces the dense MLP (`num_experts`).
    pub moe: Option<Moe>,
}

/// By hand rather than derived: a sparse MLP's points sit directly under `mlp.` (as
/// TransformerLens names them, `blocks.L.mlp.experts.E.hook_gate`), in place of the
/// dense ones.
impl hooklens_core::Hooked for Mlp {
    fn visit_hook_points<'a>(
        &'a self,
        path: &mut hooklens_core::HookPath,
        visitor: &mut dyn FnMut(&str, &'a HookPoint),
    ) {
        fn point<'a>(
            path: &mut hooklens_core::HookPath,
            name: &str,
            p: &'a HookPoint,
            visitor: &mut dyn FnMut(&str, &'a HookPoint),
        ) {
            path.push(name);
            visitor(path.as_str(), p);
            path.pop();
        }
        point(path, "hook_in", &self.hook_in, visitor);
        match &self.moe {
            Some(moe) => hooklens_core::Hooked::visit_hook_points(moe, path, visitor),
            None => {
                point(path, "hook_pre", &self.hook_pre, visitor);
                if let Some(p) = &self.hook_pre_linear {
                    point(path, "hook_pre_linear", p, visitor);
                }
                point(path, "hook_post", &self.hook_post, visitor);
            }
        }
        point(path, "hook_out", &self.hook_out, visitor);
    }
}

impl Mlp {
    /// `[batch, pos, d_model]` -> `[batch, pos, d_model]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // An idle point hands `x` back (a reference count, no copy).
        let x = &self.hook_in.forward(x)?;
        if let Some(moe) = &self.moe {
            return self.hook_out.forward(&moe.forward(x)?);
        }
        let post = match &self.w_gate {
            None => {
                let pre = linear(x, &self.w_in, self.b_in_used.then_some(&self.b_in))?;
                match self.act_fn {
                    // Nothing can have kept the fresh `pre`: the activation overwrites it.
                    ActFn::GeluNew if self.hook_pre.is_idle() => kernels::gelu_new_owned(pre)?,
                    act_fn => activate(act_fn, &self.hook_pre.forward(&pre)?)?,
                }
            }
            Some(w_gate) => {
                let pre = self.hook_pre.forward(&linear(x, w_gate, None)?)?;
                let fresh = linear(x, &self.w_in, None)?;
                // The activations the gated-product kernel has: `Some(true)` for SiLU.
                let silu = match self.act_fn {
                    ActFn::Silu => Some(true),
                    ActFn::GeluNew => Some(false),
                    _ => None,
                };
                let idle = self.hook_pre_linear.as_ref().is_none_or(|hp| hp.is_idle());
                // Nothing can have kept the fresh up projection: the product overwrites it.
                let fused = silu
                    .filter(|_| idle)
                    .and_then(|silu| kernels::gated_product_owned(&pre, fresh.clone(), silu));
                let product = match fused {
                    Some(p) => p?,
                    None => {
                        let pre_linear = match &self.hook_pre_linear {
                            Some(hp) => hp.forward(&fresh)?,
                            None => fresh,
                        };
                        // Out of place: a hook or the cache may hold the up projection.
                        match silu.and_then(|silu| kernels::gated_product(&pre, &pre_linear, silu)) {
                            Some(p) => p?,
                            None => (activate(self.act_fn, &pre)? * pre_linear)?,
                        }
                    }
                };
                // TransformerLens adds a gated MLP's b_in after the product.
                if self.b_in_used {
                    product.broadcast_add(&self.b_in)?
                } else {
                    product
                }
            }
        };
        let post = self.hook_post.forward(&post)?;
        let out = linear(&post, &self.w_out, self.b_out_used.then_some(&self.b_out))?;
        self.hook_out.forward(&out)
    }
}

//! One training step's loss and gradients: the sparse step (`sparse_step.rs`) where the
//! objective allows it, else the dense one (`architecture.rs`).

use candle_core::Tensor;
use hooklens_core::Result;

use super::architecture::{jumprelu, matryoshka, standard, Forward, Grads, Matryoshka, Objective, Params, StepInputs};
use super::sparse_step;

/// The loss of `x` `[batch, d_in]` and its gradients with respect to every parameter.
///
/// Standard: `mse + l1 * mean_b sum_f acts[b, f] * ||W_dec[f]||`. TopK: `mse +
/// aux_coef * scale * mean_b ||W_dec-reconstruction of the top dead pre-activations -
/// residual||^2` (SAELens's `calculate_topk_aux_loss`: `k_aux = min(d_in / 2,
/// n_dead)`, `scale = min(n_dead / (d_in / 2), 1)`, residual detached).
///
/// `target` `[batch, d_out]`: a transcoder's, which reconstructs it from `x` read as it
/// is (SAELens's transcoders have `apply_b_dec_to_input = false`); `None`: an SAE, which
/// reconstructs `x` from `x - b_dec`.
pub(crate) fn loss_and_grads(
    p: &Params,
    x: &Tensor,
    target: Option<&Tensor>,
    obj: &Objective,
) -> Result<(Forward, Grads)> {
    let apply_b_dec = target.is_none();
    let xc = if apply_b_dec {
        x.broadcast_sub(&p.b_dec)?
    } else {
        x.clone()
    };
    let h0 = crate::ops::matmul(&xc, &p.w_enc)?.broadcast_add(&p.b_enc)?;
    let norms = p.dec_norms()?;
    let s = StepInputs {
        p,
        target: target.unwrap_or(x),
        xc: &xc,
        h0: &h0,
        norms: &norms,
        apply_b_dec,
    };
    match obj {
        Objective::Standard { l1_coefficient } => match sparse_step::standard(&s, *l1_coefficient)? {
            Some(step) => Ok(step),
            None => standard(&s, *l1_coefficient),
        },
        Objective::JumpRelu {
            l0_coefficient,
            opts,
            dead,
        } => jumprelu(&s, *l0_coefficient, opts, *dead),
        Objective::TopK {
            k,
            batch,
            aux_loss_coefficient,
            dead,
            inner_widths,
            matryoshka_aux,
        } => {
            if inner_widths.is_empty() {
                sparse_step::topk(&s, *k, *batch, *aux_loss_coefficient, *dead)
            } else {
                let levels = Matryoshka {
                    inner_widths,
                    aux_per_level: *matryoshka_aux,
                };
                matryoshka(&s, *k, *batch, *aux_loss_coefficient, *dead, &levels)
            }
        }
    }
}

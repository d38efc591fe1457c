//! Adam as `torch.optim.Adam` computes it (its single-tensor CPU path; SAELens uses
//! Adam with `betas = (adam_beta1, adam_beta2)` and torch's defaults otherwise: eps 1e-8,
//! no weight decay, no amsgrad), on flat `f32` buffers.

/// One parameter's moment estimates.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AdamState {
    pub(crate) exp_avg: Vec<f32>,
    pub(crate) exp_avg_sq: Vec<f32>,
}

impl AdamState {
    pub(crate) fn zeros(n: usize) -> Self {
        AdamState {
            exp_avg: vec![0.0; n],
            exp_avg_sq: vec![0.0; n],
        }
    }
}

/// Adam's hyperparameters for one update.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdamStep {
    pub(crate) lr: f64,
    pub(crate) beta1: f64,
    pub(crate) beta2: f64,
    /// The update's number, from 1 (torch's `state["step"]` after its increment).
    pub(crate) step: u64,
}

pub(crate) const ADAM_EPS: f32 = 1e-8;

/// Updates `param` in place with `grad`, in the order and precision torch does: the bias
/// corrections in f64 (Python floats), the element-wise work in f32.
pub(crate) fn adam_update(param: &mut [f32], grad: &[f32], state: &mut AdamState, s: AdamStep) {
    // powf is C's pow, what Python's `beta ** step` calls.
    let bias_correction1 = 1.0 - s.beta1.powf(s.step as f64);
    let bias_correction2 = 1.0 - s.beta2.powf(s.step as f64);
    let step_size = (s.lr / bias_correction1) as f32;
    let bc2_sqrt = bias_correction2.sqrt() as f32;
    let w1 = (1.0 - s.beta1) as f32;
    let b2 = s.beta2 as f32;
    let w2 = (1.0 - s.beta2) as f32;
    let chunks = param
        .iter_mut()
        .zip(grad)
        .zip(state.exp_avg.iter_mut().zip(state.exp_avg_sq.iter_mut()));
    for ((p, &g), (m, v)) in chunks {
        // torch's lerp with a weight below 0.5: m + w * (g - m).
        *m += w1 * (g - *m);
        *v = *v * b2 + w2 * g * g;
        let denom = v.sqrt() / bc2_sqrt + ADAM_EPS;
        *p += -step_size * (*m / denom);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_steps_match_torch() {
        // torch.optim.Adam([p], lr=0.1, betas=(0.9, 0.999)) with p = [1.0, -2.0] and
        // gradients [0.5, -0.25] then [0.1, 0.3]: p = [0.9, -1.9], then
        // [0.8000..., -1.8017...] (each first step moves by lr * sign(g)).
        let mut p = vec![1.0f32, -2.0];
        let mut st = AdamState::zeros(2);
        let base = AdamStep {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            step: 1,
        };
        adam_update(&mut p, &[0.5, -0.25], &mut st, base);
        assert!((p[0] - 0.9).abs() < 1e-6 && (p[1] + 1.9).abs() < 1e-6, "{p:?}");
        adam_update(&mut p, &[0.1, 0.3], &mut st, AdamStep { step: 2, ..base });
        // Closed form of the second update, in f64.
        let upd = |g1: f64, g2: f64| {
            let m = 0.9 * (0.1 * g1) + 0.1 * g2;
            let v = 0.999 * (0.001 * g1 * g1) + 0.001 * g2 * g2;
            let mh = m / (1.0 - 0.81);
            let vh = v / (1.0 - 0.999f64.powi(2));
            0.1 * mh / (vh.sqrt() + 1e-8)
        };
        assert!((p[0] as f64 - (0.9 - upd(0.5, 0.1))).abs() < 1e-6, "{p:?}");
        assert!((p[1] as f64 - (-1.9 - upd(-0.25, 0.3))).abs() < 1e-6, "{p:?}");
    }
}

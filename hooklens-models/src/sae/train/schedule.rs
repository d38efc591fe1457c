//! SAELens's schedules: the learning rate (`get_lr_scheduler` with the `constant` main
//! scheduler: linear warm-up, constant, linear decay to 0) and the L1 coefficient's
//! warm-up (`CoefficientScheduler`), as functions of the number of finished steps.

/// The learning-rate multiplier at `step` (steps finished before this one) of a run of
/// `total_steps`: torch's `SequentialLR` of `LinearLR(1/warm_up, 1, warm_up - 1)`, the
/// constant scheduler, and `LinearLR(1, 0, decay)` from `total_steps - decay`.
pub(crate) fn lr_factor(step: usize, total_steps: usize, warm_up: usize, decay: usize) -> f64 {
    if warm_up > 0 && step < warm_up {
        if warm_up == 1 {
            return 1.0;
        }
        let start = 1.0 / warm_up as f64;
        return start + (1.0 - start) * step as f64 / (warm_up - 1) as f64;
    }
    let decay_from = total_steps.saturating_sub(decay);
    if decay > 0 && step >= decay_from {
        let s = (step - decay_from).min(decay);
        return 1.0 - s as f64 / decay as f64;
    }
    1.0
}

/// The L1 coefficient used at `step`: SAELens's `CoefficientScheduler` starts at 0 and is
/// stepped after each training step, so step `n` sees `final * min(n, warm_up) / warm_up`.
pub(crate) fn l1_coefficient(step: usize, final_value: f64, warm_up: usize) -> f64 {
    if warm_up == 0 {
        return final_value;
    }
    final_value * step.min(warm_up) as f64 / warm_up as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_and_decay_match_torch() {
        // torch: LinearLR(start_factor=1/4, total_iters=3), then constant, then
        // LinearLR(1, 0, total_iters=2) from step 8 of 10.
        let got: Vec<f64> = (0..10).map(|s| lr_factor(s, 10, 4, 2)).collect();
        let want = [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        assert_eq!(lr_factor(5, 10, 0, 0), 1.0);
        assert_eq!(l1_coefficient(0, 2.0, 4), 0.0);
        assert_eq!(l1_coefficient(2, 2.0, 4), 1.0);
        assert_eq!(l1_coefficient(9, 2.0, 4), 2.0);
    }
}

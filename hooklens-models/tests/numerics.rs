//! The opt-in numerics check on GPT-2 (issue 6): `first_non_finite` names the first
//! hook point, in firing order, where a NaN or an infinity appears, and does not count
//! the `-inf` of the causal mask in `hook_attn_scores`.

mod common;

use candle_core::{DType, Tensor};
use common::*;
use hooklens_core::{first_non_finite, CacheOptions, HookPoint, HookSet, HookedModel};

#[test]
fn a_clean_run_reports_nothing_although_attention_scores_hold_the_masks_minus_inf() {
    let model = processed_model();
    let toks = tokens();
    let (_, cache) = model
        .run_with_cache(CacheOptions::new().names("blocks.*.attn.hook_attn_scores"), |m| {
            m.forward(&toks)
        })
        .unwrap();
    let scores = cache["blocks.0.attn.hook_attn_scores"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let masked = scores.iter().filter(|v| **v == f32::NEG_INFINITY).count();
    // [2, 4, 10, 10]: 45 masked entries in each of 8 (batch, head) 10x10 patterns.
    assert_eq!(masked, 2 * 4 * 45, "the scores do hold -inf");
    let (logits, report) = first_non_finite(&model, |m| m.forward(&toks)).unwrap();
    assert_eq!(report, None, "the mask is not a finding");
    assert_eq!(
        max_abs_diff(&logits, &model.forward(&toks).unwrap()),
        0.0,
        "the check changes nothing"
    );
}

#[test]
fn nan_injected_at_blocks_1_attn_hook_z_is_reported_there() {
    let model = raw_model();
    let toks = tokens();
    // One NaN at batch 1, position 3, head 2: everything downstream is poisoned too, but
    // the report names where it appeared first.
    let inject = |z: &Tensor, _: &HookPoint| {
        let (b, p, h, d) = z.dims4()?;
        let mut v = z.flatten_all()?.to_vec1::<f32>()?;
        v[((b - 1) * p * h + 3 * h + 2) * d] = f32::NAN;
        Ok(Some(Tensor::from_vec(v, (b, p, h, d), z.device())?))
    };
    let (_, report) = model
        .run_with_hooks(HookSet::new().fwd("blocks.1.attn.hook_z", inject), |m| {
            first_non_finite(m, |m| m.forward(&toks))
        })
        .unwrap();
    let report = report.expect("the NaN is found");
    assert_eq!(report.name, "blocks.1.attn.hook_z");
    assert_eq!(report.shape.dims(), [2, 10, 4, 16]);
    assert_eq!((report.nan, report.inf), (1, 0));
    assert!(report.to_string().contains("blocks.1.attn.hook_z"), "{report}");
    assert!(model.list_hooks().is_empty());
}

#[test]
fn plus_infinity_in_attention_scores_counts_and_so_does_minus_infinity_elsewhere() {
    let model = raw_model();
    let toks = tokens();
    let (_, report) = model
        .run_with_hooks(
            HookSet::new().fwd("blocks.0.attn.hook_attn_scores", |s: &Tensor, _: &HookPoint| {
                // +inf on the diagonal, which the mask leaves open.
                let diagonal = Tensor::eye(10, DType::U8, s.device())?.broadcast_as(s.shape())?;
                let inf = s.ones_like()?.affine(0.0, f64::INFINITY)?;
                Ok(Some(diagonal.where_cond(&inf, s)?))
            }),
            |m| first_non_finite(m, |m| m.forward(&toks)),
        )
        .unwrap();
    let report = report.expect("+inf in the scores is found");
    assert_eq!(report.name, "blocks.0.attn.hook_attn_scores");
    assert_eq!((report.nan, report.inf), (0, 2 * 4 * 10));
    let (_, report) = model
        .run_with_hooks(
            HookSet::new().fwd("blocks.0.hook_resid_mid", |x: &Tensor, _: &HookPoint| {
                Ok(Some(x.affine(0.0, f64::NEG_INFINITY)?))
            }),
            |m| first_non_finite(m, |m| m.forward(&toks)),
        )
        .unwrap();
    let report = report.expect("-inf outside the scores is found");
    assert_eq!(report.name, "blocks.0.hook_resid_mid");
    assert_eq!(report.inf, 2 * 10 * 64);
}

//! The hooked replacement model: exact logits, feature activations under their hook
//! names equal to the replacement run's, and an edit through a hook equal to circuit-tracer's
//! feature intervention where the two must agree (the last layer).

mod common;

use std::sync::Arc;

use candle_core::{Device, Tensor};
use common::circuits::{f32s, model, tokens};
use hooklens_core::{CacheOptions, HookSet, HookedModel};
use hooklens_models::circuits::{
    feature_intervention, replacement_run, FeatureIntervention, ReplacementModel, Transcoders,
};
use hooklens_testutil::{assert_close, testdata};

fn cases() -> Vec<(String, ReplacementModel, Vec<u32>)> {
    [
        "circuits",
        "circuits-clt",
        "circuits-extra/skip",
        "circuits-extra/clt-skip",
    ]
    .iter()
    .filter(|c| testdata().join(c).is_dir())
    .map(|c| {
        let dir = testdata().join(c);
        let m = model(&dir);
        let tc = Transcoders::from_dir(dir.join("transcoders")).unwrap();
        let rm = ReplacementModel::new(Arc::new(m), Arc::new(tc)).unwrap();
        (c.to_string(), rm, tokens(&dir))
    })
    .collect()
}

#[test]
fn the_replacement_models_logits_are_the_models() {
    for (name, rm, toks) in cases() {
        // A batch of two prompts: the reference one and it reversed after BOS.
        let mut other = toks.clone();
        other[1..].reverse();
        let t = Tensor::new(vec![toks.clone(), other], &Device::Cpu).unwrap();
        let want = rm.model().forward(&t).unwrap();
        let got = rm.forward(&t).unwrap();
        assert_close(&format!("{name}: logits"), &got, &want, 1e-5);
        let names = rm.hook_names();
        for l in 0..rm.transcoders().n_layers() {
            for p in ["hook_pre", "hook_acts", "hook_recons", "hook_error"] {
                assert!(
                    names.contains(&format!("blocks.{l}.transcoder.{p}")),
                    "{name}: {names:?}"
                );
            }
        }
    }
}

#[test]
fn cached_feature_activations_are_the_replacement_runs() {
    for (name, rm, toks) in cases() {
        let run = replacement_run(rm.model(), rm.transcoders(), &toks).unwrap();
        let t = Tensor::new(toks.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let (_, cache) = rm.run_with_cache(CacheOptions::new(), |m| m.forward(&t)).unwrap();
        let f = rm.transcoders().d_transcoder();
        let n_pos = toks.len();
        for l in 0..rm.transcoders().n_layers() {
            let acts = f32s(cache.try_get(&format!("blocks.{l}.transcoder.hook_acts")).unwrap());
            // The replacement run drops position 0 (circuit-tracer's zero_positions).
            let mut want = vec![0f32; n_pos * f];
            for i in 0..run.active.len() {
                if run.active.layer[i] == l {
                    want[run.active.pos[i] * f + run.active.feature[i]] = run.active.value[i];
                }
            }
            let got: Vec<f32> = acts
                .iter()
                .enumerate()
                .map(|(i, &v)| if i < f { 0.0 } else { v })
                .collect();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst <= 1e-4 * scale, "{name}: layer {l} activations off by {worst}");
            // The reconstruction plus the error is the true MLP output.
            let recon = f32s(cache.try_get(&format!("blocks.{l}.transcoder.hook_recons")).unwrap());
            let error = f32s(cache.try_get(&format!("blocks.{l}.transcoder.hook_error")).unwrap());
            let d = rm.transcoders().d_model();
            let truth = &run.feature_output[l * n_pos * d..(l + 1) * n_pos * d];
            let worst = recon
                .iter()
                .zip(&error)
                .zip(truth)
                .fold(0f32, |m, ((r, e), t)| m.max((r + e - t).abs()));
            assert!(
                worst < 1e-4,
                "{name}: layer {l}: recons + error off the MLP output by {worst}"
            );
        }
    }
}

#[test]
fn zeroing_a_last_layer_feature_by_hook_is_circuit_tracers_intervention() {
    for (name, rm, toks) in cases() {
        let run = replacement_run(rm.model(), rm.transcoders(), &toks).unwrap();
        let last = run.n_layers() - 1;
        let i = (0..run.active.len())
            .rev()
            .find(|&i| run.active.layer[i] == last)
            .unwrap();
        let (pos, feat) = (run.active.pos[i], run.active.feature[i]);
        let f = rm.transcoders().d_transcoder();
        let t = Tensor::new(toks.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let hooks = HookSet::new().fwd(format!("blocks.{last}.transcoder.hook_acts"), move |x: &Tensor, _| {
            let mut v = x.flatten_all()?.to_vec1::<f32>()?;
            v[pos * f + feat] = 0.0;
            Ok(Some(Tensor::from_vec(v, x.dims(), x.device())?))
        });
        let got = rm.run_with_hooks(hooks, |m| m.forward(&t)).unwrap().squeeze(0).unwrap();
        let iv = [FeatureIntervention {
            layer: last,
            pos,
            feature: feat,
            value: 0.0,
        }];
        let want = feature_intervention(rm.model(), rm.transcoders(), &toks, &iv, false).unwrap();
        assert_close(&format!("{name}: zeroed feature"), &got, &want, 1e-5);
        let clean = rm.model().forward(&t).unwrap().squeeze(0).unwrap();
        assert!(
            hooklens_testutil::max_abs_diff(&got, &clean) > 1e-4,
            "{name}: the edit changed nothing"
        );
    }
}

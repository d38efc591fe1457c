//! Activation patching on the reference GPT-2: TransformerLens's sweep shapes, and
//! identities that pin the values down exactly.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{DType, IndexOp, Tensor};
use common::*;
use hooklens_core::{ActivationCache, CacheOptions, HookedModel};
use hooklens_models::analysis::patching::{PatchIndex, PatchSetter, Patching, Progress};
use hooklens_models::HookedTransformer;

/// Mean logit difference between tokens 7 and 42 at the last position.
fn metric(logits: &Tensor) -> hooklens_core::Result<f64> {
    let last = logits.i((.., logits.dim(1)? - 1))?;
    let diff = (last.i((.., 7))? - last.i((.., 42))?)?;
    Ok(diff.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// The fixture's tokens (clean) and the same with position 3 changed (corrupted), u32.
fn inputs() -> (Tensor, Tensor) {
    let clean = tokens().to_dtype(DType::U32).unwrap();
    let mut rows = clean.to_vec2::<u32>().unwrap();
    for row in &mut rows {
        row[3] = (row[3] + 17) % 500;
    }
    let corrupted = Tensor::new(rows, clean.device()).unwrap();
    (clean, corrupted)
}

fn cache_of(model: &HookedTransformer, tokens: &Tensor) -> (Tensor, ActivationCache) {
    model
        .run_with_cache(CacheOptions::new(), |m| m.forward(tokens))
        .unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn patching_the_whole_input_residual_gives_the_clean_metric_exactly() {
    let model = processed_model();
    let (clean, corrupted) = inputs();
    let (clean_logits, clean_cache) = cache_of(&model, &clean);
    let clean_metric = metric(&clean_logits).unwrap() as f32;
    let corrupted_metric = metric(&model.forward(&corrupted).unwrap()).unwrap() as f32;
    assert_ne!(clean_metric, corrupted_metric);
    let patching = Patching::gpt2(&model, &corrupted, &clean_cache).unwrap();
    let everything = PatchSetter::custom(|_corrupted, _index, clean| Ok(clean.clone()));
    for name in ["resid_pre", "resid_mid", "resid_post"] {
        let out = patching
            .generic_activation_patch(&metric, &everything, name, &PatchIndex::Rows(vec![vec![0]]))
            .unwrap();
        assert_eq!(out.dims(), &[1]);
        assert_eq!(values(&out)[0], clean_metric, "{name}");
    }
    // One position at a time at layer 0: only the changed position moves the metric.
    let grid = patching.get_act_patch_resid_pre(&metric).unwrap();
    assert_eq!(grid.dims(), &[2, 10]);
    let row0 = values(&grid.get(0).unwrap());
    for (p, v) in row0.iter().enumerate() {
        if p == 3 {
            assert_ne!(*v, corrupted_metric);
        } else {
            assert_eq!(*v, corrupted_metric, "position {p}");
        }
    }
    // At the last block's input the last position already carries what layer 0's attention
    // read from position 3, so patching it alone moves the metric too.
    let last = values(&grid.get(1).unwrap());
    assert_ne!(last[9], corrupted_metric);
}

#[test]
fn patching_a_run_with_its_own_cache_changes_nothing() {
    let model = processed_model();
    let (clean, _) = inputs();
    let (logits, cache) = cache_of(&model, &clean);
    let clean_metric = metric(&logits).unwrap() as f32;
    let patching = Patching::gpt2(&model, &clean, &cache).unwrap();
    let block = patching.get_act_patch_block_every(&metric).unwrap();
    assert_eq!(block.dims(), &[3, 2, 10]);
    assert!(values(&block).iter().all(|v| *v == clean_metric));
    let heads = patching.get_act_patch_attn_head_all_pos_every(&metric).unwrap();
    assert_eq!(heads.dims(), &[5, 2, 4]);
    assert!(values(&heads).iter().all(|v| *v == clean_metric));
    let mid = patching.get_act_patch_resid_mid(&metric).unwrap();
    assert!(values(&mid).iter().all(|v| *v == clean_metric));
}

#[test]
fn sweep_shapes_follow_transformer_lens() {
    let model = processed_model();
    let (clean, corrupted) = inputs();
    // A short input keeps the per-entry pattern sweep small.
    let clean = clean.narrow(1, 0, 5).unwrap();
    let corrupted = corrupted.narrow(1, 0, 5).unwrap();
    let (_, cache) = cache_of(&model, &clean);
    let p = Patching::gpt2(&model, &corrupted, &cache).unwrap();
    assert_eq!(p.get_act_patch_attn_out(&metric).unwrap().dims(), &[2, 5]);
    assert_eq!(p.get_act_patch_mlp_out(&metric).unwrap().dims(), &[2, 5]);
    assert_eq!(
        p.get_act_patch_attn_head_out_by_pos(&metric).unwrap().dims(),
        &[2, 5, 4]
    );
    assert_eq!(p.get_act_patch_attn_head_q_by_pos(&metric).unwrap().dims(), &[2, 5, 4]);
    assert_eq!(
        p.get_act_patch_attn_head_pattern_by_pos(&metric).unwrap().dims(),
        &[2, 4, 5]
    );
    let dest_src = p.get_act_patch_attn_head_pattern_dest_src_pos(&metric).unwrap();
    assert_eq!(dest_src.dims(), &[2, 4, 5, 5]);
    let every = p.get_act_patch_attn_head_by_pos_every(&metric).unwrap();
    assert_eq!(every.dims(), &[5, 2, 5, 4]);
    // The pattern part is the by-destination sweep, transposed to [layer, pos, head].
    let pattern = p.get_act_patch_attn_head_pattern_by_pos(&metric).unwrap();
    assert_eq!(
        values(&every.get(4).unwrap()),
        values(&pattern.transpose(1, 2).unwrap().contiguous().unwrap())
    );
}

#[test]
fn threads_and_progress() {
    let model = processed_model();
    let (clean, corrupted) = inputs();
    let (_, cache) = cache_of(&model, &clean);
    let serial = Patching::gpt2(&model, &corrupted, &cache)
        .unwrap()
        .get_act_patch_attn_head_out_by_pos(&metric)
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen_total = Arc::new(AtomicUsize::new(0));
    let (c, t) = (calls.clone(), seen_total.clone());
    let parallel = Patching::gpt2(&model, &corrupted, &cache)
        .unwrap()
        .threads(2)
        .progress(Arc::new(move |p: Progress| {
            c.fetch_add(1, Ordering::Relaxed);
            t.store(p.total, Ordering::Relaxed);
        }))
        .get_act_patch_attn_head_out_by_pos(&metric)
        .unwrap();
    assert_eq!(values(&serial), values(&parallel));
    assert_eq!(calls.load(Ordering::Relaxed), 2 * 10 * 4);
    assert_eq!(seen_total.load(Ordering::Relaxed), 80);
}

#[test]
fn mismatched_runs_and_bad_indices_are_errors() {
    let model = processed_model();
    let (clean, corrupted) = inputs();
    let (_, cache) = cache_of(&model, &clean);
    let short = corrupted.narrow(1, 0, 9).unwrap();
    let err = Patching::gpt2(&model, &short, &cache)
        .unwrap()
        .get_act_patch_resid_pre(&metric)
        .unwrap_err()
        .to_string();
    assert!(err.contains("same batch size and length"), "{err}");
    let one = corrupted.narrow(0, 0, 1).unwrap();
    let err = Patching::gpt2(&model, &one, &cache)
        .unwrap()
        .get_act_patch_attn_head_pattern_all_pos(&metric)
        .unwrap_err()
        .to_string();
    assert!(err.contains("same batch size and length"), "{err}");
    let p = Patching::gpt2(&model, &corrupted, &cache).unwrap();
    let rows = PatchIndex::Rows(vec![vec![2, 0]]);
    assert!(p
        .generic_activation_patch(&metric, &PatchSetter::LayerPos, "resid_pre", &rows)
        .is_err());
    let axes = PatchIndex::Axes(vec![hooklens_models::analysis::patching::Axis::Pos]);
    assert!(p
        .generic_activation_patch(&metric, &PatchSetter::LayerPos, "resid_pre", &axes)
        .is_err());
    assert!(p
        .generic_activation_patch(
            &metric,
            &PatchSetter::LayerPos,
            "resid_pre5",
            &PatchIndex::Rows(vec![vec![0, 0]])
        )
        .is_err());
    let one_clean = clean.narrow(0, 0, 1).unwrap();
    let (_, no_batch) = model
        .run_with_cache(CacheOptions::new().remove_batch_dim(true), |m| m.forward(&one_clean))
        .unwrap();
    let err = Patching::gpt2(&model, &one, &no_batch).err().unwrap().to_string();
    assert!(err.contains("batch axis"), "{err}");
    let (_, partial) = model
        .run_with_cache(CacheOptions::new().names("blocks.*.hook_mlp_out"), |m| {
            m.forward(&clean)
        })
        .unwrap();
    let err = Patching::gpt2(&model, &corrupted, &partial)
        .unwrap()
        .get_act_patch_resid_pre(&metric)
        .unwrap_err()
        .to_string();
    assert!(err.contains("blocks.0.hook_resid_pre"), "{err}");
    // A metric error stops the sweep and comes back as is.
    let failing = |_: &Tensor| -> hooklens_core::Result<f64> { Err(hooklens_core::Error::invalid("metric says no")) };
    let err = p.get_act_patch_mlp_out(&failing).unwrap_err().to_string();
    assert!(err.contains("metric says no"), "{err}");
}

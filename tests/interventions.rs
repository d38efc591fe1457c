//! The ready-made interventions against hand-computed results, and their errors.

use candle_core::{Device, Tensor};
use hooklens::{interventions, CacheOptions, Error, HookPoint, HookSet, Hooked, HookedModel};

#[derive(Hooked)]
struct Attn {
    hook_z: HookPoint,
}

#[derive(Hooked)]
struct Block {
    hook_resid_pre: HookPoint,
    attn: Attn,
}

#[derive(Hooked)]
struct Model {
    blocks: Vec<Block>,
}

const Z: &str = "blocks.0.attn.hook_z";
const RESID: &str = "blocks.0.hook_resid_pre";

fn model() -> Model {
    Model {
        blocks: vec![Block {
            hook_resid_pre: HookPoint::new(),
            attn: Attn {
                hook_z: HookPoint::new(),
            },
        }],
    }
}

fn tensor(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape, &Device::Cpu).unwrap()
}

/// `0, 1, 2, ...` in `shape`.
fn counting(shape: &[usize]) -> (Vec<f32>, Tensor) {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let t = tensor(&v, shape);
    (v, t)
}

/// Runs `hooks` with `x` through the point `name` and returns what came out, flat.
fn through(hooks: HookSet, name: &str, x: &Tensor) -> hooklens::Result<Vec<f32>> {
    let m = model();
    let out = m.run_with_hooks(hooks, |m| {
        let point = if name == Z {
            &m.blocks[0].attn.hook_z
        } else {
            &m.blocks[0].hook_resid_pre
        };
        point.forward(x)
    })?;
    Ok(out.flatten_all()?.to_vec1::<f32>()?)
}

/// The error must be the hook's, name the point, and say `needle`.
fn assert_hook_error(err: Error, name: &str, needle: &str) {
    let msg = err.to_string();
    assert!(matches!(err, Error::HookFailed { .. }), "{msg}");
    assert!(msg.contains(&format!("`{name}`")) && msg.contains(needle), "{msg}");
}

#[test]
fn zero_ablate_head_zeroes_that_head_only() {
    let shape = [2, 3, 4, 2]; // [batch, pos, head, d_head]
    let (v, z) = counting(&shape);
    let got = through(interventions::zero_ablate_head(Z, 2), Z, &z).unwrap();
    let expected: Vec<f32> = v
        .iter()
        .enumerate()
        .map(|(i, &x)| if (i / 2) % 4 == 2 { 0.0 } else { x })
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn mean_ablate_head_takes_the_batch_mean_per_position() {
    let shape = [2, 3, 2, 2];
    let (v, z) = counting(&shape);
    let got = through(interventions::mean_ablate_head(Z, 0), Z, &z).unwrap();
    // One batch element is 12 values; the mean of x and x + 12 is x + 6 (batch 0) and
    // x - 6 (batch 1).
    let expected: Vec<f32> = v
        .iter()
        .enumerate()
        .map(|(i, &x)| match ((i / 2) % 2, i / 12) {
            (0, 0) => x + 6.0,
            (0, _) => x - 6.0,
            _ => x,
        })
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn head_interventions_check_the_head_and_the_rank() {
    let (_, z) = counting(&[1, 2, 3, 2]);
    let err = through(interventions::zero_ablate_head(Z, 3), Z, &z).unwrap_err();
    assert_hook_error(err, Z, "head 3 out of range");
    let (_, resid) = counting(&[1, 2, 3]);
    let err = through(interventions::mean_ablate_head(RESID, 0), RESID, &resid).unwrap_err();
    assert_hook_error(err, RESID, "[batch, pos, head, d_head], got shape [1, 2, 3]");
}

#[test]
fn patch_positions_from_a_cached_run() {
    let (_, clean) = counting(&[1, 3, 2]);
    let corrupted = tensor(&[-1.0; 6], &[1, 3, 2]);
    // The clean run's activation, from its cache: cloned out, moved into the hook.
    let m = model();
    let (_, cache) = m
        .run_with_cache(CacheOptions::new().names(RESID), |m| {
            m.blocks[0].hook_resid_pre.forward(&clean)
        })
        .unwrap();
    let source = cache[RESID].clone();
    let got = through(
        interventions::patch_positions(RESID, source, Some(vec![0, 2])),
        RESID,
        &corrupted,
    )
    .unwrap();
    assert_eq!(got, [0.0, 1.0, -1.0, -1.0, 4.0, 5.0]);

    // On hook_z the positions are axis -3.
    let (_, clean_z) = counting(&[1, 2, 2, 1]);
    let corrupted_z = tensor(&[-1.0; 4], &[1, 2, 2, 1]);
    let got = through(
        interventions::patch_positions(Z, clean_z.clone(), Some(vec![1])),
        Z,
        &corrupted_z,
    )
    .unwrap();
    assert_eq!(got, [-1.0, -1.0, 2.0, 3.0]);
    let got = through(interventions::patch_positions(Z, clean_z, None), Z, &corrupted_z).unwrap();
    assert_eq!(got, [0.0, 1.0, 2.0, 3.0]);
}

#[test]
fn patch_positions_checks_the_source_and_the_positions() {
    let x = tensor(&[0.0; 6], &[1, 3, 2]);
    let err = through(
        interventions::patch_positions(RESID, tensor(&[0.0; 4], &[1, 2, 2]), None),
        RESID,
        &x,
    )
    .unwrap_err();
    assert_hook_error(err, RESID, "shape [1, 2, 2]");
    let err = through(
        interventions::patch_positions(RESID, x.clone(), Some(vec![3])),
        RESID,
        &x,
    )
    .unwrap_err();
    assert_hook_error(err, RESID, "position 3 out of range");
}

#[test]
fn add_vector_steers_the_chosen_positions() {
    let (_, x) = counting(&[1, 3, 2]);
    let v = tensor(&[1.0, 10.0], &[2]);
    let got = through(
        interventions::add_vector(RESID, v.clone(), 0.5, Some(vec![1])),
        RESID,
        &x,
    )
    .unwrap();
    assert_eq!(got, [0.0, 1.0, 2.5, 8.0, 4.0, 5.0]);
    let got = through(interventions::add_vector(RESID, v, -1.0, None), RESID, &x).unwrap();
    assert_eq!(got, [-1.0, -9.0, 1.0, -7.0, 3.0, -5.0]);
    let err = through(
        interventions::add_vector(RESID, tensor(&[1.0; 3], &[3]), 1.0, None),
        RESID,
        &x,
    )
    .unwrap_err();
    assert_hook_error(err, RESID, "needs [2]");
}

#[test]
fn scale_direction_scales_only_the_component_along_it() {
    let x = tensor(&[3.0, 4.0, -2.0, 1.0], &[1, 2, 2]);
    // Along the first axis, whatever the direction's length.
    let got = through(
        interventions::scale_direction(RESID, tensor(&[2.0, 0.0], &[2]), 0.0),
        RESID,
        &x,
    )
    .unwrap();
    assert_eq!(got, [0.0, 4.0, 0.0, 1.0]);
    let got = through(
        interventions::scale_direction(RESID, tensor(&[1.0, 0.0], &[2]), 2.0),
        RESID,
        &x,
    )
    .unwrap();
    assert_eq!(got, [6.0, 4.0, -4.0, 1.0]);
    // Along (1, 1): (3, 4) has 3.5 (1, 1) on it, (-2, 1) has -0.5 (1, 1).
    let got = through(
        interventions::scale_direction(RESID, tensor(&[1.0, 1.0], &[2]), 0.0),
        RESID,
        &x,
    )
    .unwrap();
    let expected = [-0.5, 0.5, -1.5, 1.5];
    for (g, e) in got.iter().zip(expected) {
        assert!((g - e).abs() < 1e-6, "{got:?}");
    }
    let err = through(
        interventions::scale_direction(RESID, tensor(&[0.0, 0.0], &[2]), 0.0),
        RESID,
        &x,
    )
    .unwrap_err();
    assert_hook_error(err, RESID, "norm 0");
}

//! Shared helpers for the GPT-2 tests: the TransformerLens fixture and comparisons.
// Each test binary uses a different part of this module.
#![allow(dead_code, unused_imports)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use hooklens_models::{HookedTransformer, LoadOptions};
pub use hooklens_testutil::{assert_close, max_abs_diff, test_device, tolerance_on, TempDir};

pub mod circuits;

/// The TransformerLens reference fixture.
pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/tiny-gpt2");

/// The fixture's model directory.
pub fn model_dir() -> PathBuf {
    Path::new(FIXTURE).join("model")
}

/// A safetensors file of the fixture, by name.
pub fn load_ref(file: &str) -> HashMap<String, Tensor> {
    hooklens_testutil::reference("tiny-gpt2", file)
}

/// The fixture's tokens, i64 `[2, 10]`.
pub fn tokens() -> Tensor {
    hooklens_testutil::reference_tokens("tiny-gpt2")
}

/// The fixture model, unprocessed.
pub fn raw_model() -> HookedTransformer {
    HookedTransformer::from_dir(model_dir(), &LoadOptions::no_processing()).unwrap()
}

/// The fixture model with TransformerLens's default processing.
pub fn processed_model() -> HookedTransformer {
    HookedTransformer::from_dir(model_dir(), &LoadOptions::default()).unwrap()
}

/// `opts` on the device the parity tests run on (`HOOKLENS_TEST_DEVICE`, the CPU unless
/// `scripts/gpu-check.sh` asks for a GPU).
pub fn on_test_device(opts: LoadOptions) -> LoadOptions {
    opts.with_device(test_device())
}

/// The parity tolerance `cpu_rel` for a model on the test device.
pub fn parity_tol(cpu_rel: f32) -> f32 {
    tolerance_on(&test_device(), cpu_rel)
}

/// `names` without the two points hooklens adds to every MLP beyond TransformerLens
/// 2.x's (circuit-tracer's / SAELens's `mlp.hook_in` and circuit-tracer's
/// `mlp.hook_out`), after checking that each block has both where they belong: its
/// `mlp.*` points are contiguous, `mlp.hook_in` first and `mlp.hook_out` last.
pub fn without_mlp_io(names: &[String]) -> Vec<String> {
    let n_layers = names
        .iter()
        .filter_map(|n| n.strip_prefix("blocks.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |l| l + 1);
    assert!(n_layers > 0, "no blocks in {names:?}");
    for l in 0..n_layers {
        let prefix = format!("blocks.{l}.mlp.");
        let at: Vec<usize> = (0..names.len()).filter(|&i| names[i].starts_with(&prefix)).collect();
        assert!(at.len() >= 4, "block {l}: mlp points {at:?}");
        assert!(
            at.windows(2).all(|w| w[1] == w[0] + 1),
            "block {l}: mlp points not contiguous"
        );
        assert_eq!(names[at[0]], format!("{prefix}hook_in"), "block {l}: first mlp point");
        assert_eq!(
            names[at[1]],
            format!("{prefix}hook_pre"),
            "block {l}: hook_in right before hook_pre"
        );
        assert_eq!(
            names[*at.last().unwrap()],
            format!("{prefix}hook_out"),
            "block {l}: last mlp point"
        );
        assert_eq!(
            names[at[at.len() - 2]],
            format!("{prefix}hook_post"),
            "block {l}: hook_out right after hook_post"
        );
    }
    let kept: Vec<String> = names
        .iter()
        .filter(|n| !(n.starts_with("blocks.") && (n.ends_with(".mlp.hook_in") || n.ends_with(".mlp.hook_out"))))
        .cloned()
        .collect();
    assert_eq!(kept.len(), names.len() - 2 * n_layers, "exactly one of each per block");
    kept
}

/// The reference config of `family` with `changes` applied (a `null` removes a key).
pub fn variant(family: &str, changes: serde_json::Value) -> String {
    let path = format!("{}/../testdata/{family}/model/config.json", env!("CARGO_MANIFEST_DIR"));
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            cfg.as_object_mut().unwrap().remove(k);
        } else {
            cfg[k] = v.clone();
        }
    }
    cfg.to_string()
}

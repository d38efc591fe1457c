//! Shared helpers for the GPT-2 tests: the TransformerLens fixture and comparisons.
// Each test binary uses a different part of this module.
#![allow(dead_code, unused_imports)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use hooklens_models::{HookedGpt2, LoadOptions};
pub use hooklens_testutil::{assert_close, max_abs_diff, test_device, tolerance_on, TempDir};

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
pub fn raw_model() -> HookedGpt2 {
    HookedGpt2::from_dir(model_dir(), &LoadOptions::no_processing()).unwrap()
}

/// The fixture model with TransformerLens's default processing.
pub fn processed_model() -> HookedGpt2 {
    HookedGpt2::from_dir(model_dir(), &LoadOptions::default()).unwrap()
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

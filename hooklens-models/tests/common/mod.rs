//! Shared helpers for the GPT-2 tests: the TransformerLens fixture and comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use hooklens_models::{HookedGpt2, LoadOptions};

/// The TransformerLens reference fixture.
pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/tiny-gpt2");

/// The fixture's model directory.
pub fn model_dir() -> PathBuf {
    Path::new(FIXTURE).join("model")
}

/// A safetensors file of the fixture, by name.
pub fn load_ref(file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(Path::new(FIXTURE).join(file), &Device::Cpu).unwrap()
}

/// The fixture's tokens, i64 `[2, 10]`.
pub fn tokens() -> Tensor {
    load_ref("tokens.safetensors").remove("tokens").unwrap()
}

/// The fixture model, unprocessed.
pub fn raw_model() -> HookedGpt2 {
    HookedGpt2::from_dir(model_dir(), &LoadOptions::no_processing()).unwrap()
}

/// The fixture model with TransformerLens's default processing.
pub fn processed_model() -> HookedGpt2 {
    HookedGpt2::from_dir(model_dir(), &LoadOptions::default()).unwrap()
}

/// Checks `got` against `want` as the fixture's README asks: same shape, within `rel`
/// of `want`'s largest finite magnitude, and `-inf` exactly where `want` has `-inf`.
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, rel: f32) {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let g = got
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let w = want
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let scale = w
        .iter()
        .filter(|x| x.is_finite())
        .fold(0f32, |m, x| m.max(x.abs()))
        .max(1e-12);
    let mut worst = 0f32;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        if b.is_infinite() || a.is_infinite() {
            assert_eq!(a, b, "{name}: element {i}: got {a}, want {b}");
            continue;
        }
        assert!(a.is_finite(), "{name}: element {i} is {a}");
        worst = worst.max((a - b).abs());
    }
    assert!(worst <= rel * scale, "{name}: max abs diff {worst} > {rel} * {scale}");
}

/// The largest absolute difference between two tensors of the same shape.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A temporary directory, removed when dropped.
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty temporary directory for one test.
pub fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("hooklens-models-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

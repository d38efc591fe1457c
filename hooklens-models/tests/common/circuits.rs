//! Shared helpers for the attribution tests against circuit-tracer's reference cases
//! (`testdata/circuits*`): a case's model, tokens and `graph_meta.json`, and tensors as
//! flat vectors.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::path::Path;

use candle_core::{DType, Tensor, WithDType};
use hooklens_models::{HookedTransformer, LoadOptions};
use hooklens_testutil::load_tensors;

/// The model of the reference case in `dir` (`dir/model`), unprocessed.
pub fn model(dir: &Path) -> HookedTransformer {
    HookedTransformer::from_pretrained(dir.join("model").to_str().unwrap(), &LoadOptions::no_processing()).unwrap()
}

/// The prompt of the reference case in `dir` (`dir/tokens.safetensors`).
pub fn tokens(dir: &Path) -> Vec<u32> {
    let t = load_tensors(dir.join("tokens.safetensors")).remove("tokens").unwrap();
    i64s(&t).into_iter().map(|x| x as u32).collect()
}

/// The reference case's `graph_meta.json`: how circuit-tracer was called, and what it gave.
pub fn graph_meta(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("graph_meta.json")).unwrap()).unwrap()
}

/// The elements of `t`, flattened, as `T`.
pub fn flat<T: WithDType>(t: &Tensor) -> Vec<T> {
    t.flatten_all()
        .unwrap()
        .to_dtype(T::DTYPE)
        .unwrap()
        .to_vec1::<T>()
        .unwrap()
}

/// The elements of `t`, flattened, as i64.
pub fn i64s(t: &Tensor) -> Vec<i64> {
    flat(t)
}

/// The elements of `t`, flattened, as f32.
pub fn f32s(t: &Tensor) -> Vec<f32> {
    flat(t)
}

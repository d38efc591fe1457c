//! How far apart two tensors are, for the unit tests that compare a kernel or a
//! rewritten computation with the straightforward one.

use candle_core::{DType, Tensor};

/// The largest absolute difference between `a` and `b` (same shape, any float dtype).
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
    d.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

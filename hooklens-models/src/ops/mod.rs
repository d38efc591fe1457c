//! The CPU kernels every model family shares: weight products, attention products,
//! row kernels (norms, GELU, softmax), cross-entropy. Each op picks its own fast path
//! (f32 on the CPU with no gradient tracked) and falls back to candle's ops elsewhere.

pub(crate) mod attention_products;
mod bf16_products;
mod cross_entropy;
pub(crate) mod kernels;
mod packed_gemm;
#[cfg_attr(not(feature = "bench-internals"), allow(dead_code))]
mod seeded_rng;
mod shared_out;
pub(crate) mod slice_gemm;
pub(crate) mod sparse_rows;
mod streamed_gemm;
mod threads;
mod transpose;
mod weight_gemm;
mod weighted_scatter;

pub use cross_entropy::cross_entropy_per_row;
pub use seeded_rng::SeededRng;
pub(crate) use transpose::transposed;
pub use weight_gemm::WeightGemm;
pub(crate) use weighted_scatter::weighted_scatter_add;

use candle_core::Tensor;

/// `x @ w` as the model's linear layers compute it: `x` `[rows, in]`, `w` `[in, out]`
/// (any strides, such as `W_E` transposed) -> `[rows, out]`.
///
/// On the CPU in f32 with no gradient tracked, one row or a few go through a kernel
/// that streams the weight once (decoding is bound by memory), and more through
/// `matrixmultiply`'s sgemm in column blocks over rayon's threads, which on the 2-core
/// machine it was measured on beats candle's gemm at every shape of GPT-2's forward;
/// bf16 on the CPU goes through `bf16_products` (sums in f32, AVX512-BF16's dot
/// products where the CPU has them); anything else (gradients, other devices and
/// dtypes) is candle's `matmul`.
pub fn matmul(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    match kernels::small_matmul(x, w)
        .or_else(|| kernels::sgemm(x, w))
        .or_else(|| bf16_products::matmul(x, w))
    {
        Some(y) => y,
        None => x.matmul(w),
    }
}

/// [`matmul`] through one given kernel (f32 on the CPU with no gradient tracked), for
/// the benchmarks and tests that compare them; an error elsewhere, or where that
/// kernel cannot run the product on this CPU.
#[cfg_attr(not(feature = "bench-internals"), allow(dead_code))]
pub fn matmul_with(x: &Tensor, w: &Tensor, kernel: WeightGemm) -> candle_core::Result<Tensor> {
    match kernels::sgemm_with(x, w, Some(kernel)) {
        Some(y) => y,
        None => candle_core::bail!("matmul_with({kernel:?}): f32 CPU operands with no gradient tracked only"),
    }
}

/// Attention scores as the model computes them: `scale * q @ k^T` for `q` `[batch, pos,
/// head, d_head]` and `k` `[batch, keys, head, d_head]` (any strides, such as views of
/// the q|k|v projection) -> `[batch, head, pos, keys]`. On the CPU in f32 with no
/// gradient tracked it reads the operands in place (one sgemm per batch and head);
/// otherwise candle's batched matmul on transposed copies.
pub fn attention_scores(q: &Tensor, k: &Tensor, scale: f32) -> candle_core::Result<Tensor> {
    match attention_products::scores(q, k, scale) {
        Some(s) => s,
        None => {
            let q = q.transpose(1, 2)?.contiguous()?;
            let k = k.transpose(1, 2)?.contiguous()?;
            q.matmul(&k.t()?)? * scale as f64
        }
    }
}

/// The attention's weighted values as the model computes them: `pattern @ v` for
/// `pattern` `[batch, head, pos, keys]` and `v` `[batch, keys, head, d_head]` (any
/// strides) -> z `[batch, pos, head, d_head]`, written in that layout on the CPU fast
/// path, else candle's batched matmul and a transposed copy. The model computes z with
/// its output projection fused in (`attention_products`); this is the product alone,
/// for the benchmarks.
#[cfg_attr(not(feature = "bench-internals"), allow(dead_code))]
pub fn attention_z(pattern: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    match attention_products::pattern_times_v(pattern, v) {
        Some(z) => z,
        None => pattern
            .contiguous()?
            .matmul(&v.transpose(1, 2)?.contiguous()?)?
            .transpose(1, 2)?
            .contiguous(),
    }
}

/// `x @ w + b` for `x` `[.., in]`, `w` `[in, out]`, `b` `[out]` -> `[.., out]`, as one
/// 2-D matmul over the flattened leading axes (faster in candle than a batched matmul
/// with a broadcast right-hand side).
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let (d_in, d_out) = w.dims2()?;
    let lead: usize = dims[..dims.len().saturating_sub(1)].iter().product();
    let x2 = x.reshape((lead, d_in))?;
    let y = matmul(&x2, w)?;
    let y = match b {
        Some(b) => kernels::add_bias_owned(y, b)?,
        None => y,
    };
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = d_out;
    }
    y.reshape(out_dims)
}

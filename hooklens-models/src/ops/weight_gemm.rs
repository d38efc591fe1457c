//! Which kernel multiplies a batch of activations by a weight on the CPU in f32.
//!
//! Four kernels can: hooklens's packed (`packed_gemm`) and streamed (`streamed_gemm`)
//! AVX-512F kernels, the `gemm` crate (candle's own CPU gemm, AVX-512 where the CPU has
//! it, AVX2 + FMA, scalar) and `matrixmultiply` (AVX2 + FMA, SSE, scalar), the last two
//! with their own run-time CPU detection. [`WeightGemm::pick`] chooses by the shape, from
//! `hooklens-models/examples/gemm_bench.rs` on the 2-core AVX-512 machine this project is
//! measured on (docs/performance.md, "Weight products").

use super::shared_out::SharedOut;

/// One CPU kernel for `y (+)= x @ w` (`x` `[rows, in]` row-major, `w` `[in, out]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightGemm {
    /// hooklens's BLIS-style AVX-512F kernel, both operands packed (any weight strides).
    Packed,
    /// hooklens's AVX-512F kernel that streams a row-major weight once per band of rows,
    /// overlapping its read from memory with the arithmetic (no accumulation).
    Streamed,
    /// The `gemm` crate, one call over every thread (any strides, accumulation).
    GemmCrate,
    /// `matrixmultiply`'s sgemm in column blocks over rayon's threads (any CPU).
    MatrixMultiply,
}

impl WeightGemm {
    /// Every kernel, for benchmarks and tests.
    #[cfg_attr(not(any(test, feature = "bench-internals")), allow(dead_code))]
    pub const ALL: [WeightGemm; 4] = [Self::Packed, Self::Streamed, Self::GemmCrate, Self::MatrixMultiply];

    /// The kernel for a product of `rows` rows, adding to its output with
    /// `accumulate`, from a `[d_in, d_out]` weight with column stride `cs` (1:
    /// row-major).
    pub(crate) fn pick(rows: usize, accumulate: bool, cs: usize, (d_in, d_out): (usize, usize)) -> WeightGemm {
        if rows >= MANY_ROWS {
            // The gemm crate led at the Llama shape's products (inputs and outputs of
            // 2048 and more, row-major) and trailed far at GPT-2's (768 wide, the tied
            // unembedding transposed): its 8 x 128 forward took 1.41 times as long as
            // with the packed kernel.
            let large = cs == 1 && d_in >= 2048 && d_out >= 2048;
            return if large {
                Self::GemmCrate
            } else {
                Self::Packed.or(Self::MatrixMultiply, accumulate, cs)
            };
        }
        // The streamed kernel re-reads the weight once per 1 MiB band of rows, fewer
        // rows per band the wider the input: at 64 rows it led for inputs of 2048 into
        // up to 8192 outputs (111-123 GFLOP/s, matrixmultiply 109-116) and trailed for
        // 8192 inputs (90 against 142) and the 128256-wide unembedding (136 against 151).
        let streams_well = d_in < 4096 && d_out <= 8192;
        if streams_well && Self::Streamed.runs(accumulate, cs) {
            return Self::Streamed;
        }
        Self::MatrixMultiply
    }

    /// This kernel where it runs on this CPU, else `other`.
    fn or(self, other: WeightGemm, accumulate: bool, cs: usize) -> WeightGemm {
        if self.runs(accumulate, cs) {
            self
        } else {
            other
        }
    }

    /// Whether this kernel can run such a product on this CPU.
    pub(crate) fn runs(self, accumulate: bool, cs: usize) -> bool {
        match self {
            Self::Packed => super::packed_gemm::available(),
            Self::Streamed => !accumulate && cs == 1 && super::streamed_gemm::available(),
            Self::GemmCrate | Self::MatrixMultiply => true,
        }
    }
}

/// One product `y (+)= x @ w` as the kernels take it: `x` `[rows, d_in]` row-major,
/// `w` `[d_in, d_out]` with strides `(rs, cs)`, `y` `[rows, d_out]` row-major (which may
/// be uninitialised unless `accumulate`).
pub(crate) struct WeightProduct<'a> {
    pub(crate) x: &'a [f32],
    pub(crate) rows: usize,
    pub(crate) d_in: usize,
    pub(crate) d_out: usize,
    /// The weight's storage from its first value.
    pub(crate) w: &'a [f32],
    pub(crate) strides: (usize, usize),
    pub(crate) y: SharedOut,
    pub(crate) accumulate: bool,
}

impl WeightProduct<'_> {
    /// The whole product through the gemm crate, which splits it over `threads` itself
    /// (by rows and columns, sharing its packed blocks).
    ///
    /// # Safety
    /// `x` holds `rows * d_in` values, `w`'s strided view lies inside `w`, `y` holds
    /// `rows * d_out` values that nothing else reads or writes during the call.
    pub(crate) unsafe fn gemm_crate(&self, threads: usize) {
        let (rs, cs) = self.strides;
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: the contract above. With read_dst false the crate writes every value
        // of y and reads none, so y may be uninitialised memory.
        unsafe {
            gemm::gemm(
                self.rows,
                self.d_out,
                self.d_in,
                self.y.get(),
                1,
                self.d_out as isize,
                self.accumulate,
                self.x.as_ptr(),
                1,
                self.d_in as isize,
                self.w.as_ptr(),
                cs as isize,
                rs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    }

    /// Columns `j0..j0 + n` of the product through `kernel` (not the gemm crate), on
    /// this thread.
    ///
    /// # Safety
    /// As [`WeightProduct::gemm_crate`], but only columns `j0..j0 + n` of `y` are this
    /// call's; `kernel.runs(accumulate, cs)`.
    pub(crate) unsafe fn columns(&self, kernel: WeightGemm, j0: usize, n: usize) {
        let (rs, cs) = self.strides;
        let (x, w, y) = (self.x.as_ptr(), self.w.as_ptr(), self.y.get());
        let (rows, d_in, d_out) = (self.rows, self.d_in, self.d_out);
        // SAFETY: the contract above; each kernel writes only columns j0..j0 + n of y,
        // reads w through its strides inside its view, and the packed and streamed
        // kernels have avx512f (`runs`). With beta 0 matrixmultiply reads no value of y
        // (its kernels store alpha * AB then), so y may be uninitialised.
        unsafe {
            match kernel {
                WeightGemm::Packed => {
                    super::packed_gemm::gemm(x, rows, d_in, w, rs, cs, y, d_out, j0, j0 + n, self.accumulate)
                }
                WeightGemm::Streamed => super::streamed_gemm::gemm(x, rows, d_in, w, rs, y, d_out, j0, j0 + n),
                WeightGemm::GemmCrate | WeightGemm::MatrixMultiply => matrixmultiply::sgemm(
                    rows,
                    d_in,
                    n,
                    1.0,
                    x,
                    d_in as isize,
                    1,
                    w.add(j0 * cs),
                    rs as isize,
                    cs as isize,
                    if self.accumulate { 1.0 } else { 0.0 },
                    y.add(j0),
                    d_out as isize,
                    1,
                ),
            }
        }
    }
}

/// Runs `block(j0, n)` over column blocks `j0..j0 + n` that cover `d_out` output
/// columns, each block whole 32-column register tiles: one block per thread of rayon's
/// pool when the product (`work` multiply-adds) is worth splitting, else one block on
/// this thread. Column blocks on rayon's threads, each one single-threaded kernel: a
/// kernel's own thread pool beside rayon's (which the other kernels use) would have
/// rayon's idle workers spin while its threads want the same cores.
pub(crate) fn column_blocks(d_out: usize, work: usize, block: impl Fn(usize, usize) + Sync + Send) {
    let threads = super::threads::num_threads();
    let blocks = if threads > 1 && work >= 1 << 20 { threads } else { 1 };
    let width = d_out.div_ceil(blocks).div_ceil(32) * 32;
    if blocks == 1 {
        block(0, d_out);
    } else {
        use rayon::prelude::*;
        (0..d_out)
            .step_by(width)
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(|j0| block(j0, width.min(d_out - j0)));
    }
}

/// From this many rows on, a kernel that packs both operands: at 256 and 1024 rows of
/// the Llama-3.2-1B shape's products the gemm crate ran at 139-208 GFLOP/s, the packed
/// kernel at 164-195 and `matrixmultiply` at 169-191 (2 threads; torch 134-178 on the
/// same machine), the streamed kernel at 87-161.
const MANY_ROWS: usize = 256;

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::ops::kernels::sgemm_with;

    /// Every kernel this CPU can run, at row counts around the tiles and blocks (1, 7,
    /// 63, 65, 1023), widths that are no multiple of them, with a row-major and a
    /// transposed weight: against a plain product in f64.
    #[test]
    fn every_kernel_equals_a_plain_product() {
        for kernel in WeightGemm::ALL {
            for rows in [1, 7, 63, 65, 1023] {
                for (d_in, d_out) in [(37, 95), (300, 33)] {
                    for transposed in [false, true] {
                        if !kernel.runs(false, if transposed { d_in } else { 1 }) {
                            continue;
                        }
                        check(kernel, rows, d_in, d_out, transposed);
                    }
                }
            }
        }
    }

    /// Accumulating products (the factored unembedding's) at the row counts that pick
    /// each kernel: the sum of the accumulator and the product.
    #[test]
    fn accumulation_adds_the_product() {
        for rows in [7, 300] {
            let x = Tensor::randn(0f32, 1.0, (rows, 70), &Device::Cpu).unwrap();
            let w = Tensor::randn(0f32, 1.0, (70, 45), &Device::Cpu).unwrap();
            let acc = Tensor::randn(0f32, 1.0, (rows, 45), &Device::Cpu).unwrap();
            let want = (acc.clone() + x.matmul(&w).unwrap()).unwrap();
            let fresh = (acc.clone() * 1.0).unwrap();
            let got = crate::ops::kernels::sgemm_accumulate(&fresh, &x, &w)
                .expect("fast path")
                .unwrap();
            let diff = hooklens_testutil::max_abs_diff(&got, &want);
            assert!(diff < 1e-4, "{rows} rows: accumulated product off by {diff}");
        }
    }

    fn check(kernel: WeightGemm, rows: usize, d_in: usize, d_out: usize, transposed: bool) {
        let xs: Vec<f32> = (0..rows * d_in)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let ws: Vec<f32> = (0..d_in * d_out)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 24.0)
            .collect();
        let x = Tensor::from_vec(xs.clone(), (rows, d_in), &Device::Cpu).unwrap();
        // w[p, j] at p * rs + j * cs of ws.
        let (w, rs, cs) = if transposed {
            (
                Tensor::from_vec(ws.clone(), (d_out, d_in), &Device::Cpu)
                    .unwrap()
                    .t()
                    .unwrap(),
                1,
                d_in,
            )
        } else {
            (
                Tensor::from_vec(ws.clone(), (d_in, d_out), &Device::Cpu).unwrap(),
                d_out,
                1,
            )
        };
        let y = sgemm_with(&x, &w, Some(kernel)).expect("f32 CPU operands").unwrap();
        let y = y.to_vec2::<f32>().unwrap();
        for (i, row) in y.iter().enumerate() {
            for (j, &got) in row.iter().enumerate() {
                let want: f64 = (0..d_in)
                    .map(|p| xs[i * d_in + p] as f64 * ws[p * rs + j * cs] as f64)
                    .sum();
                assert!(
                    (got as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{kernel:?} {rows} x {d_in} x {d_out} transposed {transposed}: y[{i}, {j}] = {got}, want {want}"
                );
            }
        }
    }
}

//! The model's weight products in bf16 on the CPU: `x @ w` for a bf16 `x` and weight,
//! summed in f32 through [`super::packed_gemm::gemm_bf16`] (AVX512-BF16's dot products
//! where the CPU has them), in column blocks over rayon's threads; a few rows (a
//! decoding step) stream the weight once through the f32 kernels' row form instead. candle's own bf16
//! product on the CPU is several times slower than its f32 one; this is faster than
//! the f32 product where the CPU has the bf16 units.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use half::bf16;

use super::kernels::{SmallMatmul, SMALL_MATMUL_ROWS};
use super::packed_gemm;
use super::shared_out::SharedOut;
use super::weight_gemm::column_blocks;

/// `x @ w` for bf16 `x` `[rows, in]` and `w` `[in, out]` (any strides) on the CPU with
/// no gradient tracked, as bf16 `[rows, out]`; `None` elsewhere (other dtypes and
/// devices, gradients, CPUs without AVX-512F), where candle's matmul does it.
pub(crate) fn matmul(x: &Tensor, w: &Tensor) -> Option<candle_core::Result<Tensor>> {
    let bf16_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::BF16 && !t.track_op();
    let (_, _) = x.dims2().ok()?;
    let (_, _) = w.dims2().ok()?;
    if !bf16_cpu(x) || !bf16_cpu(w) || hooklens_core::grad_mode() {
        return None;
    }
    let dot = packed_gemm::bf16_support()?;
    Some(x.contiguous().and_then(|x| x.apply_op2_no_bwd(w, &Bf16Matmul { dot })))
}

/// The op behind [`matmul`]; `dot` picks AVX512-BF16's dot products.
struct Bf16Matmul {
    dot: bool,
}

impl CustomOp2 for Bf16Matmul {
    fn name(&self) -> &'static str {
        "hooklens-bf16-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, d_in) = l1.shape().dims2()?;
        let (w_in, d_out) = l2.shape().dims2()?;
        if w_in != d_in {
            candle_core::bail!("bf16 matmul: input [{rows}, {d_in}] does not fit weight [{w_in}, {d_out}]")
        }
        let x = match l1.contiguous_offsets() {
            Some((a, b)) => &s1.as_slice::<bf16>()?[a..b],
            None => candle_core::bail!("bf16 matmul: the input must be contiguous"),
        };
        let w = s2.as_slice::<bf16>()?;
        let [rs, cs] = *l2.stride() else {
            candle_core::bail!("bf16 matmul: weight strides {:?}", l2.stride())
        };
        let start = l2.start_offset();
        let last = start + (d_in.max(1) - 1) * rs + (d_out.max(1) - 1) * cs;
        if rows == 0 || d_in == 0 || d_out == 0 || last >= w.len() {
            candle_core::bail!(
                "bf16 matmul: weight layout {l2:?} exceeds its storage ({} values)",
                w.len()
            );
        }
        let w = &w[start..];
        let row_major = cs == 1 && rs == d_out;
        if rows <= SMALL_MATMUL_ROWS && (row_major || (rs == 1 && cs == d_in)) {
            // Decoding: the weight is read once, widened as it streams in (half the
            // bytes of an f32 weight), no packing; a transposed weight (the tied
            // unembedding) by dot products along its rows.
            let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
            let w = &w[..d_in * d_out];
            let y = if row_major {
                SmallMatmul::rows_form(&xf, rows, d_in, w, d_out)
            } else {
                SmallMatmul::dot_form(&xf, rows, d_in, w, d_out)
            };
            let y = y.into_iter().map(bf16::from_f32).collect();
            return Ok((CpuStorage::BF16(y), Shape::from((rows, d_out))));
        }
        let n = rows * d_out;
        let mut y: Vec<bf16> = Vec::with_capacity(n);
        let out = SharedOut::new(y.as_mut_ptr().cast::<f32>());
        column_blocks(d_out, rows * d_in * d_out, |j0, cols| {
            let j1 = j0 + cols;
            // SAFETY: x is [rows, d_in] row-major; w's strided view was checked above to
            // stay inside its storage; y has capacity rows * d_out, each block writes
            // only its own columns j0..j1 of every row (all of them, before any read),
            // and bf16_support() was Some (Some(true) where `dot`).
            unsafe {
                packed_gemm::gemm_bf16(
                    x.as_ptr(),
                    rows,
                    d_in,
                    w.as_ptr(),
                    rs,
                    cs,
                    out.get().cast::<bf16>(),
                    d_out,
                    (j0, j1),
                    self.dot,
                )
            }
        });
        // SAFETY: the blocks cover every column of every row, so all n values are written.
        unsafe { y.set_len(n) };
        Ok((CpuStorage::BF16(y), Shape::from((rows, d_out))))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// Both code paths (dot products, f32 panels) at odd shapes, a transposed weight and
    /// a column range: against f64 sums of the same bf16 values, within bf16's rounding
    /// of the result.
    #[test]
    fn equals_a_plain_product_of_the_bf16_values() {
        let Some(has_dot) = packed_gemm::bf16_support() else {
            return;
        };
        let paths: &[bool] = if has_dot { &[true, false] } else { &[false] };
        for &dot in paths {
            for (m, k, n) in [
                (1, 7, 33),
                (7, 1, 5),
                (13, 513, 95),
                (63, 1100, 70),
                (65, 300, 600),
                (1023, 29, 37),
            ] {
                for transposed in [false, true] {
                    let x: Vec<bf16> = (0..m * k)
                        .map(|i| bf16::from_f32(((i * 37 % 101) as f32 - 50.0) / 25.0))
                        .collect();
                    let w: Vec<bf16> = (0..k * n)
                        .map(|i| bf16::from_f32(((i * 53 % 97) as f32 - 48.0) / 24.0))
                        .collect();
                    let (rs, cs) = if transposed { (1, k) } else { (n, 1) };
                    let mut y = vec![bf16::from_f32(-7.0); m * n];
                    let (j0, j1) = (n / 3, n);
                    // SAFETY: sizes as documented; nothing else touches y.
                    unsafe {
                        packed_gemm::gemm_bf16(x.as_ptr(), m, k, w.as_ptr(), rs, cs, y.as_mut_ptr(), n, (j0, j1), dot)
                    };
                    for i in 0..m {
                        for j in 0..n {
                            let got = y[i * n + j].to_f64();
                            if j < j0 {
                                assert_eq!(got, -7.0, "dot {dot}: y[{i}, {j}] outside the range was written");
                                continue;
                            }
                            let want: f64 = (0..k)
                                .map(|p| x[i * k + p].to_f64() * w[p * rs + j * cs].to_f64())
                                .sum();
                            assert!(
                                (got - want).abs() <= 1e-5 * k as f64 + want.abs() / 128.0,
                                "dot {dot} m {m} k {k} n {n} transposed {transposed}: y[{i}, {j}] = {got}, want {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The op through a tensor, threads and all, with many rows (packed) and few (the
    /// row form; dot products for a transposed weight), against the f32 product of the
    /// same values.
    #[test]
    fn matmul_matches_the_f32_product() {
        if packed_gemm::bf16_support().is_none() {
            return;
        }
        for rows in [1, 3, 70] {
            for transposed in [false, true] {
                check_matmul(rows, transposed);
            }
        }
    }

    fn check_matmul(rows: usize, transposed: bool) {
        let bf = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
        let x = bf(Tensor::randn(0f32, 1.0, (rows, 300), &Device::Cpu).unwrap());
        let w = if transposed {
            bf(Tensor::randn(0f32, 0.1, (1000, 300), &Device::Cpu).unwrap())
                .t()
                .unwrap()
        } else {
            bf(Tensor::randn(0f32, 0.1, (300, 1000), &Device::Cpu).unwrap())
        };
        let ours = matmul(&x, &w)
            .expect("bf16 path")
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let f32_of = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let theirs = f32_of(&x).matmul(&f32_of(&w)).unwrap();
        let diff = hooklens_testutil::max_abs_diff(&ours, &theirs);
        let scale = theirs.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(
            diff <= scale / 128.0,
            "{rows} rows, transposed {transposed}: bf16 matmul differs from the f32 product of the same values by {diff} (scale {scale})"
        );
    }
}

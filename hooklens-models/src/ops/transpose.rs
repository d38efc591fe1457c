//! Transposing a matrix into a new contiguous one, in cache-sized tiles: what loading
//! does to every Hugging Face `[out, in]` weight to get the `[in, out]` layout the
//! products read. candle's strided copy walks the source one element at a time down
//! its columns, about 0.25 GB/s on a large f32 matrix here.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, WithDType};

/// `t` `[rows, cols]` -> its transpose `[cols, rows]`, contiguous. A contiguous f32,
/// bf16 or f16 matrix on the CPU goes through the tiled kernel; anything else through
/// candle (`t()?.contiguous()`).
pub(crate) fn transposed(t: &Tensor) -> candle_core::Result<Tensor> {
    if t.rank() == 2 && t.device().is_cpu() && t.is_contiguous() && !t.track_op() {
        t.apply_op1_no_bwd(&Transpose)
    } else {
        t.t()?.contiguous()
    }
}

struct Transpose;

/// Rows and columns of a tile: 32 x 32 f32 values are 4 KiB, read and written a cache
/// line at a time.
const TILE: usize = 32;

fn transpose_slice<T: WithDType>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::zero(); rows * cols];
    let fill = |first_out_row: usize, block: &mut [T]| {
        // `block` holds output rows first_out_row.. (each `rows` long): source columns.
        let n_out = block.len() / rows;
        for r0 in (0..rows).step_by(TILE) {
            for c in first_out_row..first_out_row + n_out {
                let dst = &mut block[(c - first_out_row) * rows..][..rows];
                for r in r0..(r0 + TILE).min(rows) {
                    dst[r] = src[r * cols + c];
                }
            }
        }
    };
    let per_block = TILE * rows;
    if rows * cols < 1 << 16 {
        fill(0, &mut out);
    } else {
        use rayon::prelude::*;
        out.par_chunks_mut(per_block.max(1))
            .enumerate()
            .for_each(|(i, block)| fill(i * TILE, block));
    }
    out
}

impl CustomOp1 for Transpose {
    fn name(&self) -> &'static str {
        "hooklens-transpose"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = l.shape().dims2()?;
        let (a, b) = match l.contiguous_offsets() {
            Some(o) => o,
            None => candle_core::bail!("transpose: the matrix must be contiguous"),
        };
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(transpose_slice(&v[a..b], rows, cols)),
            CpuStorage::BF16(v) => CpuStorage::BF16(transpose_slice(&v[a..b], rows, cols)),
            CpuStorage::F16(v) => CpuStorage::F16(transpose_slice(&v[a..b], rows, cols)),
            CpuStorage::F64(v) => CpuStorage::F64(transpose_slice(&v[a..b], rows, cols)),
            _ => candle_core::bail!("transpose: a float matrix is expected"),
        };
        Ok((out, Shape::from((cols, rows))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn equals_candles_transpose_at_every_remainder() {
        for (r, c) in [(1, 1), (3, 70), (33, 31), (64, 64), (300, 257), (129, 1100)] {
            let t = Tensor::randn(0f32, 1.0, (r, c), &Device::Cpu).unwrap();
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let t = t.to_dtype(dtype).unwrap();
                let got = transposed(&t).unwrap();
                let want = t.t().unwrap().contiguous().unwrap();
                assert_eq!(got.dims(), [c, r]);
                assert!(got.is_contiguous());
                let d = hooklens_testutil::max_abs_diff(&got, &want);
                assert_eq!(d, 0.0, "{r}x{c} {dtype:?}");
            }
        }
        // A view (not contiguous) goes through candle and gives the same.
        let t = Tensor::randn(0f32, 1.0, (40, 50), &Device::Cpu).unwrap();
        let view = t.narrow(1, 5, 20).unwrap();
        let got = transposed(&view).unwrap();
        assert_eq!(got.dims(), [20, 40]);
    }
}

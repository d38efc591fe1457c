//! `C = A @ B + beta * C` on plain f32 slices with any strides (transposes are free),
//! split by rows over rayon's threads; each block is one single-threaded
//! `matrixmultiply` sgemm. For code that keeps its data in its own buffers rather than
//! in tensors (the attribution's linear backward pass).

use rayon::prelude::*;

use super::shared_out::SharedOut;
use super::threads::num_threads;

/// A read-only matrix view: `data[offset + i * rs + j * cs]` is element `(i, j)` of a
/// `rows x cols` matrix.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) offset: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a> View<'a> {
    /// A row-major `rows x cols` matrix at the start of `data`.
    pub(crate) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        View {
            data,
            offset: 0,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (a view of the same values).
    pub(crate) fn t(self) -> Self {
        View {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1)
            .checked_mul(self.rs)
            .and_then(|a| (self.cols - 1).checked_mul(self.cs).and_then(|b| a.checked_add(b)))
            .and_then(|a| a.checked_add(self.offset));
        last.is_some_and(|l| l < self.data.len())
    }
}

/// `c = a @ b + beta * c`, `c` row-major `[a.rows, b.cols]` with row stride `ldc`.
/// Panics on mismatched shapes or views outside their slices (a bug in the caller, not
/// bad input).
pub(crate) fn gemm(a: View<'_>, b: View<'_>, beta: f32, c: &mut [f32], ldc: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions {k} and {}", b.rows);
    assert!(a.in_bounds() && b.in_bounds(), "gemm: a view exceeds its slice");
    assert!(ldc >= n, "gemm: row stride {ldc} below {n} columns");
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= (m - 1) * ldc + n, "gemm: output too short");
    if k == 0 {
        for i in 0..m {
            c[i * ldc..i * ldc + n].iter_mut().for_each(|v| *v *= beta);
        }
        return;
    }
    let threads = num_threads();
    let flops = m * k * n;
    let blocks = if threads > 1 && flops >= 1 << 18 && m >= 2 * threads {
        threads
    } else {
        1
    };
    let rows_per = m.div_ceil(blocks);
    let out = SharedOut::new(c.as_mut_ptr());
    let block = |i0: usize| {
        let rows = rows_per.min(m - i0);
        // SAFETY: both views were checked to stay inside their slices, and rows i0..i0 +
        // rows of `a` lie inside that view; `c` holds (m - 1) * ldc + n values (checked)
        // and is borrowed mutably for this call; each block writes only its own rows
        // i0..i0 + rows, columns 0..n. beta multiplies values of c that were initialised
        // by the caller (a &mut [f32]).
        unsafe {
            matrixmultiply::sgemm(
                rows,
                k,
                n,
                1.0,
                a.data.as_ptr().add(a.offset + i0 * a.rs),
                a.rs as isize,
                a.cs as isize,
                b.data.as_ptr().add(b.offset),
                b.rs as isize,
                b.cs as isize,
                beta,
                out.get().add(i0 * ldc),
                ldc as isize,
                1,
            );
        }
    };
    if blocks == 1 {
        block(0);
    } else {
        (0..m)
            .step_by(rows_per)
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: View<'_>, b: View<'_>) -> Vec<f32> {
        let mut c = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                let mut s = 0.0;
                for p in 0..a.cols {
                    s += a.data[a.offset + i * a.rs + p * a.cs] * b.data[b.offset + p * b.rs + j * b.cs];
                }
                c[i * b.cols + j] = s;
            }
        }
        c
    }

    #[test]
    fn strided_products_equal_the_naive_ones() {
        let vals = |n: usize, seed: f32| (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect::<Vec<_>>();
        for &(m, k, n) in &[(1, 1, 1), (7, 5, 3), (65, 63, 33), (300, 17, 70)] {
            let a = vals(m * k, 0.1);
            let b = vals(k * n, 0.7);
            let (av, bv) = (View::row_major(&a, m, k), View::row_major(&b, k, n));
            let mut c = vec![1.0; m * n];
            gemm(av, bv, 0.0, &mut c, n);
            let want = naive(av, bv);
            assert!(c.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-4), "{m}x{k}x{n}");
            // Transposed views of the transposed data give the same product.
            let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let mut c2 = vec![0.0; m * n];
            gemm(View::row_major(&at, k, m).t(), bv, 0.0, &mut c2, n);
            assert!(c2.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-4));
            // beta 1 accumulates.
            gemm(av, bv, 1.0, &mut c2, n);
            assert!(c2.iter().zip(&want).all(|(x, y)| (x - 2.0 * y).abs() < 1e-3));
        }
    }
}

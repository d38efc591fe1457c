//! A matrix kept as each row's non-zero entries (compressed sparse rows), and the
//! products with dense matrices that an SAE's training step takes with its feature
//! activations.
//!
//! A TopK SAE keeps `k` of `d_sae` features per token and a trained standard SAE a few
//! percent, yet a dense step multiplies by every zero: the decoder's product, the
//! gradient at the features and both weights' gradients cost `batch * d_sae * d_in`
//! each. Here they cost `nnz * d_in`, which leaves the encoder's product the one dense
//! product of a step. Each product writes every output row from one thread, in a fixed
//! order, so results do not depend on the thread count.

use rayon::prelude::*;

use super::kernels::{axpy, dispatched, dot};

/// A `[rows, cols]` f32 matrix as each row's entries `(column, value)`, in the order
/// they were given; a `(row, column)` pair may appear more than once, meaning the sum.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SparseRows {
    rows: usize,
    cols: usize,
    /// Row `r`'s entries are `offsets[r]..offsets[r + 1]` of `columns` and `values`.
    offsets: Vec<usize>,
    columns: Vec<u32>,
    values: Vec<f32>,
}

impl SparseRows {
    /// The non-zero entries of `dense` `[rows, cols]` (row-major), in column order.
    #[cfg(test)]
    pub(crate) fn from_dense(dense: &[f32], rows: usize, cols: usize) -> Self {
        Self::keeping(dense, rows, cols, |v| v != 0.0)
    }

    /// The positive entries of `dense` `[rows, cols]` (row-major), in column order:
    /// `relu(dense)`.
    pub(crate) fn positive_entries(dense: &[f32], rows: usize, cols: usize) -> Self {
        Self::keeping(dense, rows, cols, |v| v > 0.0)
    }

    /// The entries of `dense` `[rows, cols]` that `keep` accepts, in column order.
    fn keeping(dense: &[f32], rows: usize, cols: usize, keep: impl Fn(f32) -> bool + Sync) -> Self {
        debug_assert_eq!(dense.len(), rows * cols);
        let per_row: Vec<Vec<(u32, f32)>> = dense
            .par_chunks(cols.max(1))
            .take(rows)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .filter(|(_, &v)| keep(v))
                    .map(|(c, &v)| (c as u32, v))
                    .collect()
            })
            .collect();
        Self::from_row_entries(per_row, cols)
    }

    /// From each row's `(column, value)` entries (`per_row.len()` rows), kept in the
    /// order given.
    pub(crate) fn from_row_entries(per_row: Vec<Vec<(u32, f32)>>, cols: usize) -> Self {
        let nnz = per_row.iter().map(Vec::len).sum();
        let mut offsets = Vec::with_capacity(per_row.len() + 1);
        let (mut columns, mut values) = (Vec::with_capacity(nnz), Vec::with_capacity(nnz));
        offsets.push(0);
        for row in &per_row {
            for &(c, v) in row {
                debug_assert!((c as usize) < cols);
                columns.push(c);
                values.push(v);
            }
            offsets.push(columns.len());
        }
        Self {
            rows: per_row.len(),
            cols,
            offsets,
            columns,
            values,
        }
    }

    /// The entries of `self` and then of `other`, row by row: their sum, `[rows, cols]`.
    pub(crate) fn concat_rows(&self, other: &Self) -> Self {
        debug_assert_eq!((self.rows, self.cols), (other.rows, other.cols));
        let per_row = (0..self.rows)
            .map(|r| self.row(r).chain(other.row(r)).collect())
            .collect();
        Self::from_row_entries(per_row, self.cols)
    }

    /// Row `r`'s entries.
    pub(crate) fn row(&self, r: usize) -> impl Iterator<Item = (u32, f32)> + '_ {
        let span = self.offsets[r]..self.offsets[r + 1];
        self.columns[span.clone()]
            .iter()
            .copied()
            .zip(self.values[span].iter().copied())
    }

    /// `(rows, cols)`.
    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// How many entries are stored.
    pub(crate) fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Each entry's column, in entry order.
    pub(crate) fn columns(&self) -> &[u32] {
        &self.columns
    }

    /// Each entry's value, in entry order.
    pub(crate) fn values(&self) -> &[f32] {
        &self.values
    }

    /// The same entries with other values (`values.len()` must be [`Self::nnz`]).
    pub(crate) fn with_values(&self, values: Vec<f32>) -> Self {
        assert_eq!(values.len(), self.nnz(), "one value per entry");
        Self { values, ..self.clone() }
    }

    /// The matrix, `[rows, cols]` row-major, zero where no entry is.
    pub(crate) fn to_dense(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols.max(1)).enumerate().for_each(|(r, row)| {
            for (c, v) in self.row(r) {
                row[c as usize] += v;
            }
        });
        out
    }

    /// `self @ w` for `w` `[cols, d]` row-major: `[rows, d]` row-major.
    pub(crate) fn matmul(&self, w: &[f32], d: usize) -> Vec<f32> {
        debug_assert_eq!(w.len(), self.cols * d);
        let mut out = vec![0f32; self.rows * d];
        out.par_chunks_mut(d.max(1)).enumerate().for_each(|(r, out)| {
            for (c, v) in self.row(r) {
                let c = c as usize;
                axpy_f32(v, &w[c * d..(c + 1) * d], out);
            }
        });
        out
    }

    /// `(g @ w^T)[r, c]` at each entry `(r, c)`, in entry order, for `g` `[rows, d]` and
    /// `w` `[cols, d]` (row-major): the gradient reaching the entries through a product
    /// by `w`.
    pub(crate) fn sampled_dots(&self, g: &[f32], w: &[f32], d: usize) -> Vec<f32> {
        debug_assert_eq!((g.len(), w.len()), (self.rows * d, self.cols * d));
        let mut out = vec![0f32; self.nnz()];
        let mut per_row: Vec<&mut [f32]> = Vec::with_capacity(self.rows);
        let mut rest = out.as_mut_slice();
        for r in 0..self.rows {
            let (this, next) = rest.split_at_mut(self.offsets[r + 1] - self.offsets[r]);
            per_row.push(this);
            rest = next;
        }
        per_row.into_par_iter().enumerate().for_each(|(r, out)| {
            let g = &g[r * d..(r + 1) * d];
            let span = self.offsets[r]..self.offsets[r + 1];
            for (o, &c) in out.iter_mut().zip(&self.columns[span]) {
                let c = c as usize;
                *o = dot_f32(g, &w[c * d..(c + 1) * d]);
            }
        });
        out
    }

    /// `self^T @ g` for `g` `[rows, d]` row-major: `[cols, d]` row-major.
    pub(crate) fn t_matmul(&self, g: &[f32], d: usize) -> Vec<f32> {
        debug_assert_eq!(g.len(), self.rows * d);
        let by_column = self.transposed();
        let mut out = vec![0f32; self.cols * d];
        out.par_chunks_mut(d.max(1)).enumerate().for_each(|(c, out)| {
            for (r, v) in by_column.row(c) {
                let r = r as usize;
                axpy_f32(v, &g[r * d..(r + 1) * d], out);
            }
        });
        out
    }

    /// Each column's sum of values, `[cols]`, summed in row order.
    pub(crate) fn column_sums(&self) -> Vec<f32> {
        let mut sums = vec![0f32; self.cols];
        for (&c, &v) in self.columns.iter().zip(&self.values) {
            sums[c as usize] += v;
        }
        sums
    }

    /// `self^T` as rows: each column's entries `(row, value)` in row order.
    fn transposed(&self) -> Self {
        let mut offsets = vec![0usize; self.cols + 1];
        for &c in &self.columns {
            offsets[c as usize + 1] += 1;
        }
        for c in 0..self.cols {
            offsets[c + 1] += offsets[c];
        }
        let mut next = offsets.clone();
        let mut columns = vec![0u32; self.nnz()];
        let mut values = vec![0f32; self.nnz()];
        for r in 0..self.rows {
            for (c, v) in self.row(r) {
                let slot = &mut next[c as usize];
                columns[*slot] = r as u32;
                values[*slot] = v;
                *slot += 1;
            }
        }
        Self {
            rows: self.cols,
            cols: self.rows,
            offsets,
            columns,
            values,
        }
    }
}

dispatched! {
    /// `y += a * x`.
    fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) => axpy
}

dispatched! {
    /// `a . b`.
    fn dot_f32(a: &[f32], b: &[f32]) -> f32 => dot
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[rows, cols]` matrix with about a third of its entries non-zero.
    fn sparse_dense(rows: usize, cols: usize, seed: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| {
                let h = (i * 2654435761 + seed * 40503) % 1000;
                if h.is_multiple_of(3) {
                    (h as f32 - 500.0) / 250.0
                } else {
                    0.0
                }
            })
            .collect()
    }

    fn dense(rows: usize, cols: usize, seed: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| ((i * 7919 + seed * 104729) % 997) as f32 / 498.5 - 1.0)
            .collect()
    }

    /// `a [n, k] @ b [k, m]` in f64.
    fn product(a: &[f32], b: &[f32], n: usize, k: usize, m: usize) -> Vec<f64> {
        let mut out = vec![0f64; n * m];
        for i in 0..n {
            for p in 0..k {
                for j in 0..m {
                    out[i * m + j] += a[i * k + p] as f64 * b[p * m + j] as f64;
                }
            }
        }
        out
    }

    fn transpose(a: &[f32], n: usize, m: usize) -> Vec<f32> {
        (0..m * n).map(|i| a[(i % n) * m + i / n]).collect()
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}[{i}]: {g} against {w}"
            );
        }
    }

    /// Every product against the dense one, at widths that are and are not multiples
    /// of the vector width, with an empty row and an empty column.
    #[test]
    fn products_equal_the_dense_ones() {
        for (rows, cols, d) in [(7, 13, 5), (33, 40, 48), (5, 64, 17)] {
            let mut a = sparse_dense(rows, cols, rows);
            a[cols..2 * cols].iter_mut().for_each(|v| *v = 0.0);
            for r in 0..rows {
                a[r * cols + 2] = 0.0;
            }
            let s = SparseRows::from_dense(&a, rows, cols);
            assert_eq!(s.nnz(), a.iter().filter(|&&v| v != 0.0).count());
            assert_eq!(s.to_dense(), a);
            let w = dense(cols, d, 1);
            assert_close(&s.matmul(&w, d), &product(&a, &w, rows, cols, d), "matmul");
            let g = dense(rows, d, 2);
            let full = product(&g, &transpose(&w, cols, d), rows, d, cols);
            let want: Vec<f64> = (0..rows)
                .flat_map(|r| s.row(r).map(move |(c, _)| (r, c)).collect::<Vec<_>>())
                .map(|(r, c)| full[r * cols + c as usize])
                .collect();
            assert_close(&s.sampled_dots(&g, &w, d), &want, "sampled_dots");
            let at = transpose(&a, rows, cols);
            assert_close(&s.t_matmul(&g, d), &product(&at, &g, cols, rows, d), "t_matmul");
            let sums: Vec<f64> = (0..cols)
                .map(|c| (0..rows).map(|r| a[r * cols + c] as f64).sum())
                .collect();
            assert_close(&s.column_sums(), &sums, "column_sums");
        }
    }

    /// Entries given twice are summed; `concat_rows` is the sum of two matrices.
    #[test]
    fn repeated_entries_add() {
        let one = SparseRows::from_row_entries(vec![vec![(1, 2.0)], vec![], vec![(0, 1.0), (2, 3.0)]], 3);
        let two = SparseRows::from_row_entries(vec![vec![(1, 0.5), (0, 1.0)], vec![(2, 4.0)], vec![]], 3);
        let both = one.concat_rows(&two);
        assert_eq!(both.nnz(), 6);
        assert_eq!(both.to_dense(), vec![1.0, 2.5, 0.0, 0.0, 0.0, 4.0, 1.0, 0.0, 3.0]);
        let w = [1.0, 10.0, 100.0];
        assert_eq!(both.matmul(&w, 1), vec![26.0, 400.0, 301.0]);
        assert_eq!(both.column_sums(), vec![2.0, 2.5, 7.0]);
        assert_eq!(both.t_matmul(&[1.0, 2.0, 3.0], 1), vec![4.0, 2.5, 17.0]);
    }
}

//! Small dense linear algebra in f64 on the CPU: Householder QR, one-sided Jacobi SVD
//! and eigenvalues of a general real matrix (Hessenberg + Francis double-shift QR).
//!
//! candle has no SVD or eigendecomposition. The matrices that need them here are small
//! (a factored matrix's `[rank, rank]` core, or `BA`), so plain, accurate algorithms in
//! f64 are enough; nothing here is on a hot path.

use hooklens_core::{Error, Result};

/// A row-major `rows x cols` matrix of f64.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Mat {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) data: Vec<f64>,
}

impl Mat {
    pub(crate) fn zeros(rows: usize, cols: usize) -> Self {
        Mat {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub(crate) fn eye(rows: usize, cols: usize) -> Self {
        let mut m = Mat::zeros(rows, cols);
        for i in 0..rows.min(cols) {
            m[(i, i)] = 1.0;
        }
        m
    }

    pub(crate) fn from_vec(rows: usize, cols: usize, data: Vec<f64>) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        Mat { rows, cols, data }
    }

    pub(crate) fn t(&self) -> Mat {
        let mut out = Mat::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                out[(j, i)] = self[(i, j)];
            }
        }
        out
    }

    pub(crate) fn matmul(&self, other: &Mat) -> Mat {
        debug_assert_eq!(self.cols, other.rows);
        let mut out = Mat::zeros(self.rows, other.cols);
        for i in 0..self.rows {
            for k in 0..self.cols {
                let a = self[(i, k)];
                if a == 0.0 {
                    continue;
                }
                let row = &other.data[k * other.cols..(k + 1) * other.cols];
                let dst = &mut out.data[i * other.cols..(i + 1) * other.cols];
                for (d, b) in dst.iter_mut().zip(row) {
                    *d += a * b;
                }
            }
        }
        out
    }
}

impl std::ops::Index<(usize, usize)> for Mat {
    type Output = f64;
    fn index(&self, (i, j): (usize, usize)) -> &f64 {
        &self.data[i * self.cols + j]
    }
}

impl std::ops::IndexMut<(usize, usize)> for Mat {
    fn index_mut(&mut self, (i, j): (usize, usize)) -> &mut f64 {
        &mut self.data[i * self.cols + j]
    }
}

/// The unit Householder vector that maps `x` onto a multiple of `e_0`, or `None` when
/// `x` is already zero below its first entry... or entirely zero.
fn householder(x: &[f64]) -> Option<Vec<f64>> {
    let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm == 0.0 {
        return None;
    }
    let alpha = if x[0] >= 0.0 { -norm } else { norm };
    let mut v = x.to_vec();
    v[0] -= alpha;
    let vn = v.iter().map(|t| t * t).sum::<f64>().sqrt();
    if vn == 0.0 {
        return None;
    }
    v.iter_mut().for_each(|t| *t /= vn);
    Some(v)
}

/// Thin QR: `a` `[m, n]` = `q` `[m, k]` · `r` `[k, n]` with `k = min(m, n)`, `q` with
/// orthonormal columns and `r` upper triangular.
pub(crate) fn qr(a: &Mat) -> (Mat, Mat) {
    let (m, n) = (a.rows, a.cols);
    let k = m.min(n);
    // Column-major working copies (rows of `rt` are columns of `a`), so that every inner
    // loop runs over contiguous memory.
    let mut rt = a.t();
    let mut vs: Vec<Option<Vec<f64>>> = Vec::with_capacity(k);
    for j in 0..k {
        let v = householder(&rt.data[j * m + j..(j + 1) * m]);
        if let Some(v) = &v {
            for c in j..n {
                let col = &mut rt.data[c * m + j..(c + 1) * m];
                let dot: f64 = v.iter().zip(col.iter()).map(|(x, y)| x * y).sum();
                col.iter_mut().zip(v).for_each(|(y, x)| *y -= 2.0 * x * dot);
            }
        }
        vs.push(v);
    }
    let mut qt = Mat::zeros(k, m);
    for c in 0..k {
        qt[(c, c)] = 1.0;
    }
    for j in (0..k).rev() {
        if let Some(v) = &vs[j] {
            for c in 0..k {
                let col = &mut qt.data[c * m + j..(c + 1) * m];
                let dot: f64 = v.iter().zip(col.iter()).map(|(x, y)| x * y).sum();
                col.iter_mut().zip(v).for_each(|(y, x)| *y -= 2.0 * x * dot);
            }
        }
    }
    let mut rk = Mat::zeros(k, n);
    for i in 0..k {
        for j in i..n {
            rk[(i, j)] = rt[(j, i)];
        }
    }
    (qt.t(), rk)
}

fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Rotates rows `i` and `j` of the row-major `data` (rows of length `len`).
fn rotate_rows(data: &mut [f64], len: usize, i: usize, j: usize, c: f64, s: f64) {
    let (lo, hi) = data.split_at_mut(j * len);
    let (ri, rj) = (&mut lo[i * len..(i + 1) * len], &mut hi[..len]);
    for (x, y) in ri.iter_mut().zip(rj.iter_mut()) {
        let (a, b) = (*x, *y);
        *x = c * a - s * b;
        *y = s * a + c * b;
    }
}

/// Reduced SVD: `a` `[m, n]` = `u` `[m, k]` · diag(`s`) · `v`ᵀ with `v` `[n, k]`,
/// `k = min(m, n)`, singular values in decreasing order, `u` and `v` with orthonormal
/// columns (completed arbitrarily where a singular value is zero). One-sided Jacobi
/// (Hestenes): accurate to working precision, and fast enough for the small cores here.
pub(crate) fn svd(a: &Mat) -> Result<(Mat, Vec<f64>, Mat)> {
    if a.rows < a.cols {
        let (u, s, v) = svd(&a.t())?;
        return Ok((v, s, u));
    }
    let (m, n) = (a.rows, a.cols);
    // Columns stored as rows: `ut` `[n, m]`, `vt` `[n, n]`.
    let mut ut = a.t();
    let mut vt = Mat::eye(n, n);
    let scale: f64 = a.data.iter().map(|x| x * x).sum::<f64>();
    let mut converged = scale == 0.0;
    for _sweep in 0..80 {
        if converged {
            break;
        }
        let mut rotated = false;
        for i in 0..n {
            for j in i + 1..n {
                let (ci, cj) = (&ut.data[i * m..(i + 1) * m], &ut.data[j * m..(j + 1) * m]);
                let alpha = dot(ci, ci);
                let beta = dot(cj, cj);
                let gamma = dot(ci, cj);
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() || alpha * beta < 1e-300 * scale {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let sign = if zeta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                rotate_rows(&mut ut.data, m, i, j, c, s);
                rotate_rows(&mut vt.data, n, i, j, c, s);
            }
        }
        converged = !rotated;
    }
    if !converged {
        return Err(Error::invalid(
            "SVD: Jacobi sweeps did not converge (is the matrix finite?)",
        ));
    }
    let norms: Vec<f64> = (0..n)
        .map(|j| dot(&ut.data[j * m..(j + 1) * m], &ut.data[j * m..(j + 1) * m]).sqrt())
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| norms[y].total_cmp(&norms[x]));
    let mut uo = Mat::zeros(m, n);
    let mut vo = Mat::zeros(n, n);
    let mut s = Vec::with_capacity(n);
    let tiny = norms.iter().cloned().fold(0.0, f64::max) * 1e-13;
    let mut zero_cols = Vec::new();
    for (k, &j) in order.iter().enumerate() {
        s.push(norms[j]);
        for r in 0..n {
            vo[(r, k)] = vt[(j, r)];
        }
        if norms[j] > tiny && norms[j] > 0.0 {
            for r in 0..m {
                uo[(r, k)] = ut[(j, r)] / norms[j];
            }
        } else {
            zero_cols.push(k);
        }
    }
    complete_orthonormal(&mut uo, &zero_cols);
    Ok((uo, s, vo))
}

/// Fills the columns `cols` of `q` (zero) with unit vectors orthogonal to every other
/// column, by Gram-Schmidt on the standard basis.
fn complete_orthonormal(q: &mut Mat, cols: &[usize]) {
    let m = q.rows;
    let mut basis = 0;
    for &c in cols {
        while basis < m {
            let mut cand = vec![0.0; m];
            cand[basis] = 1.0;
            basis += 1;
            for _ in 0..2 {
                for other in 0..q.cols {
                    if other == c {
                        continue;
                    }
                    let dot: f64 = (0..m).map(|r| q[(r, other)] * cand[r]).sum();
                    for (r, x) in cand.iter_mut().enumerate() {
                        *x -= dot * q[(r, other)];
                    }
                }
            }
            let norm = cand.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm > 1e-8 {
                for (r, x) in cand.iter().enumerate() {
                    q[(r, c)] = x / norm;
                }
                break;
            }
        }
    }
}

/// Eigenvalues of a square matrix as `(re, im)` pairs, complex conjugates next to each
/// other, sorted by decreasing modulus (then by real part, then imaginary part).
pub(crate) fn eigenvalues(a: &Mat) -> Result<Vec<(f64, f64)>> {
    if a.rows != a.cols {
        return Err(Error::invalid(format!(
            "eigenvalues need a square matrix, got {}x{}",
            a.rows, a.cols
        )));
    }
    if a.data.iter().any(|x| !x.is_finite()) {
        return Err(Error::invalid("eigenvalues: the matrix has a NaN or infinite entry"));
    }
    let n = a.rows;
    if n == 0 {
        return Ok(Vec::new());
    }
    let h = hessenberg(a);
    let mut out = hqr(h)?;
    out.sort_by(|x, y| {
        let (mx, my) = (x.0.hypot(x.1), y.0.hypot(y.1));
        my.total_cmp(&mx).then(y.0.total_cmp(&x.0)).then(y.1.total_cmp(&x.1))
    });
    Ok(out)
}

/// Householder reduction to upper Hessenberg form (same eigenvalues).
fn hessenberg(a: &Mat) -> Mat {
    let n = a.rows;
    let mut h = a.clone();
    for k in 0..n.saturating_sub(2) {
        let x: Vec<f64> = (k + 1..n).map(|i| h[(i, k)]).collect();
        let Some(v) = householder(&x) else { continue };
        for c in 0..n {
            let dot: f64 = (k + 1..n).map(|i| v[i - k - 1] * h[(i, c)]).sum();
            for i in k + 1..n {
                h[(i, c)] -= 2.0 * v[i - k - 1] * dot;
            }
        }
        for r in 0..n {
            let dot: f64 = (k + 1..n).map(|j| h[(r, j)] * v[j - k - 1]).sum();
            for j in k + 1..n {
                h[(r, j)] -= 2.0 * dot * v[j - k - 1];
            }
        }
        for i in k + 2..n {
            h[(i, k)] = 0.0;
        }
    }
    h
}

/// Eigenvalues of an upper Hessenberg matrix by the Francis double-shift QR algorithm
/// (the classic EISPACK `hqr`), in 1-based indexing to keep its well-tested index logic.
// The stages live in the helpers below, each keeping the published algorithm's index loops
// and arithmetic order (so results stay bit-identical to the single-function version).
fn hqr(h: Mat) -> Result<Vec<(f64, f64)>> {
    let n = h.rows;
    let (mut a, anorm) = one_based_with_norm(&h);
    let mut wr = vec![0.0; n + 1];
    let mut wi = vec![0.0; n + 1];
    let mut nn = n;
    let mut t = 0.0;
    while nn >= 1 {
        let mut its = 0;
        loop {
            let l = small_subdiagonal(&mut a, nn, anorm);
            let mut x = a[nn][nn];
            if l == nn {
                wr[nn] = x + t;
                wi[nn] = 0.0;
                nn -= 1;
            } else {
                let mut y = a[nn - 1][nn - 1];
                let mut w = a[nn][nn - 1] * a[nn - 1][nn];
                if l == nn - 1 {
                    let [upper, lower] = pair_roots(x, y, w, t);
                    (wr[nn - 1], wi[nn - 1]) = upper;
                    (wr[nn], wi[nn]) = lower;
                    nn = nn.saturating_sub(2);
                } else {
                    if its == 60 {
                        return Err(Error::invalid("eigenvalues: the QR algorithm did not converge"));
                    }
                    if its == 10 || its == 20 || its == 40 {
                        (x, y, w) = exceptional_shift(&mut a, nn, &mut t, x);
                    }
                    its += 1;
                    let (m, pqr) = double_shift_start(&a, l, nn, x, y, w);
                    francis_double_step(&mut a, l, m, nn, pqr);
                }
            }
            if nn < 2 || l >= nn.saturating_sub(1) {
                break;
            }
        }
    }
    Ok((1..=n).map(|i| (wr[i], wi[i])).collect())
}

/// FORTRAN's `SIGN(a, b)`: `|a|` carrying the sign of `b` (with `b == -0.0` counting as
/// positive, unlike `f64::copysign`).
fn fortran_sign(a: f64, b: f64) -> f64 {
    if b >= 0.0 {
        a.abs()
    } else {
        -a.abs()
    }
}

/// The matrix copied into 1-based rows (`(n + 1) x (n + 1)`, row and column 0 unused) and
/// the sum of absolute values of its Hessenberg part, the scale for negligible entries.
// Index loops on purpose: rewriting them as iterators would obscure the correspondence
// with the published algorithm, which is what makes it checkable.
#[allow(clippy::needless_range_loop)]
fn one_based_with_norm(h: &Mat) -> (Vec<Vec<f64>>, f64) {
    let n = h.rows;
    let mut a = vec![vec![0.0f64; n + 1]; n + 1];
    for i in 0..n {
        for j in 0..n {
            a[i + 1][j + 1] = h[(i, j)];
        }
    }
    let mut anorm = 0.0;
    for i in 1..=n {
        for j in (i.max(2) - 1)..=n {
            anorm += a[i][j].abs();
        }
    }
    (a, anorm)
}

/// The row `l` (1-based, `1..=nn`) where the active block starts: the lowest `l` above
/// which the subdiagonal entry `a[l][l - 1]` is negligible (that entry is set to zero), or 1.
fn small_subdiagonal(a: &mut [Vec<f64>], nn: usize, anorm: f64) -> usize {
    let mut l = nn;
    while l >= 2 {
        let mut s = a[l - 1][l - 1].abs() + a[l][l].abs();
        if s == 0.0 {
            s = anorm;
        }
        if a[l][l - 1].abs() + s == s {
            a[l][l - 1] = 0.0;
            break;
        }
        l -= 1;
    }
    l
}

/// The two eigenvalues `(re, im)` of the trailing 2x2 block (`x` and `y` its diagonal
/// entries, `w` the product of its off-diagonal ones), shifted back by `t`: rows `nn - 1`
/// then `nn`.
fn pair_roots(mut x: f64, y: f64, w: f64, t: f64) -> [(f64, f64); 2] {
    let p = 0.5 * (y - x);
    let q = p * p + w;
    let mut z = q.abs().sqrt();
    x += t;
    if q >= 0.0 {
        z = p + fortran_sign(z, p);
        let upper = x + z;
        let mut lower = x + z;
        if z != 0.0 {
            lower = x - w / z;
        }
        [(upper, 0.0), (lower, 0.0)]
    } else {
        [(x + p, -z), (x + p, z)]
    }
}

/// The ad hoc shift `(x, y, w)` used after 10, 20 and 40 iterations without convergence
/// (it breaks cycles the standard shift can fall into); subtracts the current `x` from the
/// diagonal of rows `1..=nn` and adds it to the accumulated shift `t`.
fn exceptional_shift(a: &mut [Vec<f64>], nn: usize, t: &mut f64, x: f64) -> (f64, f64, f64) {
    *t += x;
    for (i, row) in a.iter_mut().enumerate().take(nn + 1).skip(1) {
        row[i] -= x;
    }
    let s = a[nn][nn - 1].abs() + a[nn - 1][nn - 2].abs();
    let x = 0.75 * s;
    (x, x, -0.4375 * s * s)
}

/// The row `m` (`l..=nn - 2`) where the double-shift sweep starts, the first row whose
/// bulge would not disturb the small subdiagonal above it, and the scaled first column
/// `(p, q, r)` of the double-shifted matrix there.
fn double_shift_start(a: &[Vec<f64>], l: usize, nn: usize, x: f64, y: f64, w: f64) -> (usize, (f64, f64, f64)) {
    let mut m = nn - 2;
    let (mut p, mut q, mut r);
    loop {
        let z = a[m][m];
        r = x - z;
        let s = y - z;
        p = (r * s - w) / a[m + 1][m] + a[m][m + 1];
        q = a[m + 1][m + 1] - z - r - s;
        r = a[m + 2][m + 1];
        let s = p.abs() + q.abs() + r.abs();
        p /= s;
        q /= s;
        r /= s;
        if m == l {
            break;
        }
        let u = a[m][m - 1].abs() * (q.abs() + r.abs());
        let v = p.abs() * (a[m - 1][m - 1].abs() + z.abs() + a[m + 1][m + 1].abs());
        if u + v == v {
            break;
        }
        m -= 1;
    }
    (m, (p, q, r))
}

/// Applies one Francis double-shift QR step in place to rows and columns `l..=nn`, chasing
/// the bulge down from row `m` (whose scaled first column is `(p, q, r)`) with 3x3
/// Householder reflections.
// Index loops on purpose, as in `one_based_with_norm`.
#[allow(clippy::needless_range_loop)]
fn francis_double_step(a: &mut [Vec<f64>], l: usize, m: usize, nn: usize, (mut p, mut q, mut r): (f64, f64, f64)) {
    for i in m + 2..=nn {
        a[i][i - 2] = 0.0;
        if i != m + 2 {
            a[i][i - 3] = 0.0;
        }
    }
    // Every read of `x` follows a write in the same pass (k != m, or s != 0); the zero only
    // satisfies the compiler.
    let mut x = 0.0;
    let mut k = m;
    while k < nn {
        if k != m {
            p = a[k][k - 1];
            q = a[k + 1][k - 1];
            r = 0.0;
            if k != nn - 1 {
                r = a[k + 2][k - 1];
            }
            x = p.abs() + q.abs() + r.abs();
            if x != 0.0 {
                p /= x;
                q /= x;
                r /= x;
            }
        }
        let s = fortran_sign((p * p + q * q + r * r).sqrt(), p);
        if s != 0.0 {
            if k == m {
                if l != m {
                    a[k][k - 1] = -a[k][k - 1];
                }
            } else {
                a[k][k - 1] = -s * x;
            }
            p += s;
            x = p / s;
            let y = q / s;
            let z = r / s;
            q /= p;
            r /= p;
            for j in k..=nn {
                p = a[k][j] + q * a[k + 1][j];
                if k != nn - 1 {
                    p += r * a[k + 2][j];
                    a[k + 2][j] -= p * z;
                }
                a[k + 1][j] -= p * y;
                a[k][j] -= p * x;
            }
            let mmin = if nn < k + 3 { nn } else { k + 3 };
            for row in a.iter_mut().take(mmin + 1).skip(l) {
                p = x * row[k] + y * row[k + 1];
                if k != nn - 1 {
                    p += z * row[k + 2];
                    row[k + 2] -= p * r;
                }
                row[k + 1] -= p * q;
                row[k] -= p;
            }
        }
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mat(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64) -> Mat {
        let mut m = Mat::zeros(rows, cols);
        for i in 0..rows {
            for j in 0..cols {
                m[(i, j)] = f(i, j);
            }
        }
        m
    }

    fn max_diff(a: &Mat, b: &Mat) -> f64 {
        a.data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    fn pseudo(i: usize, j: usize, seed: f64) -> f64 {
        ((i * 31 + j * 17) as f64 * 0.7 + seed).sin()
    }

    #[test]
    fn qr_reconstructs_and_is_orthonormal() {
        for (m, n) in [(6, 3), (3, 6), (4, 4)] {
            let a = mat(m, n, |i, j| pseudo(i, j, 0.3));
            let (q, r) = qr(&a);
            assert!(max_diff(&q.matmul(&r), &a) < 1e-12, "{m}x{n}");
            let k = m.min(n);
            assert!(max_diff(&q.t().matmul(&q), &Mat::eye(k, k)) < 1e-12);
            for i in 0..k {
                for j in 0..i.min(n) {
                    assert_eq!(r[(i, j)], 0.0);
                }
            }
        }
    }

    #[test]
    fn svd_reconstructs_with_sorted_values() {
        for (m, n) in [(7, 4), (4, 7), (5, 5)] {
            let a = mat(m, n, |i, j| pseudo(i, j, 1.1));
            let (u, s, v) = svd(&a).unwrap();
            let k = m.min(n);
            assert_eq!(s.len(), k);
            assert!(s.windows(2).all(|w| w[0] >= w[1]));
            let us = mat(m, k, |i, j| u[(i, j)] * s[j]);
            assert!(max_diff(&us.matmul(&v.t()), &a) < 1e-10, "{m}x{n}");
            assert!(max_diff(&u.t().matmul(&u), &Mat::eye(k, k)) < 1e-10);
            assert!(max_diff(&v.t().matmul(&v), &Mat::eye(k, k)) < 1e-10);
        }
    }

    #[test]
    fn svd_of_rank_deficient_matrix_completes_u() {
        // rank 1: outer product
        let a = mat(4, 3, |i, j| (i as f64 + 1.0) * (j as f64 - 1.0));
        let (u, s, _v) = svd(&a).unwrap();
        assert!(s[1].abs() < 1e-10 && s[2].abs() < 1e-10);
        assert!(max_diff(&u.t().matmul(&u), &Mat::eye(3, 3)) < 1e-8);
    }

    fn sorted(mut v: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
        v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        v
    }

    fn close(a: &[(f64, f64)], b: &[(f64, f64)]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x.0 - y.0).abs() < 1e-9 && (x.1 - y.1).abs() < 1e-9)
    }

    #[test]
    fn eigenvalues_of_known_matrices() {
        // A rotation by 90 degrees: ±i.
        let rot = Mat::from_vec(2, 2, vec![0.0, -1.0, 1.0, 0.0]);
        assert!(close(&sorted(eigenvalues(&rot).unwrap()), &[(0.0, -1.0), (0.0, 1.0)]));
        // Triangular: the diagonal.
        let tri = mat(4, 4, |i, j| if j >= i { (i + 1) as f64 + 0.5 * j as f64 } else { 0.0 });
        let want: Vec<(f64, f64)> = (0..4).map(|i| ((i + 1) as f64 + 0.5 * i as f64, 0.0)).collect();
        assert!(close(&sorted(eigenvalues(&tri).unwrap()), &sorted(want)));
        // Companion matrix of (x-1)(x-2)(x^2+2x+5): roots 1, 2, -1±2i.
        // x^4 - x^3 + x^2 - 11x + 10 -> coefficients c0..c3 = 10, -11, 1, -1.
        let c = [10.0, -11.0, 1.0, -1.0];
        let comp = mat(4, 4, |i, j| {
            if i == 3 {
                -c[j]
            } else if j == i + 1 {
                1.0
            } else {
                0.0
            }
        });
        let got = sorted(eigenvalues(&comp).unwrap());
        assert!(
            close(&got, &[(-1.0, -2.0), (-1.0, 2.0), (1.0, 0.0), (2.0, 0.0)]),
            "{got:?}"
        );
        // A similarity transform of a diagonal matrix keeps its eigenvalues.
        let p = mat(5, 5, |i, j| pseudo(i, j, 0.2) + if i == j { 3.0 } else { 0.0 });
        let d = mat(5, 5, |i, j| if i == j { i as f64 - 2.0 } else { 0.0 });
        let (q, _) = qr(&p);
        let a = q.matmul(&d).matmul(&q.t());
        let got = sorted(eigenvalues(&a).unwrap());
        let want: Vec<(f64, f64)> = (0..5).map(|i| (i as f64 - 2.0, 0.0)).collect();
        assert!(close(&got, &want), "{got:?}");
        assert!(eigenvalues(&Mat::zeros(2, 3)).is_err());
        assert_eq!(eigenvalues(&Mat::zeros(3, 3)).unwrap(), vec![(0.0, 0.0); 3]);
    }

    #[test]
    fn eigenvalues_of_larger_matrices_satisfy_trace_identities() {
        for n in [7, 30, 64] {
            let a = mat(n, n, |i, j| pseudo(i, j, 0.9 + n as f64));
            let ev = eigenvalues(&a).unwrap();
            assert_eq!(ev.len(), n);
            // sum(λ^k) = tr(A^k) for k = 1, 2, 3 (imaginary parts cancel in conjugate pairs).
            let mut power = a.clone();
            for k in 1..=3 {
                let trace: f64 = (0..n).map(|i| power[(i, i)]).sum();
                let (mut re, mut im) = (0.0, 0.0);
                for &(x, y) in &ev {
                    let (mut pr, mut pi) = (1.0, 0.0);
                    for _ in 0..k {
                        (pr, pi) = (pr * x - pi * y, pr * y + pi * x);
                    }
                    re += pr;
                    im += pi;
                }
                let scale = 1.0 + trace.abs();
                assert!(
                    (re - trace).abs() < 1e-8 * scale * n as f64,
                    "n={n} k={k}: {re} vs {trace}"
                );
                assert!(im.abs() < 1e-8 * scale * n as f64, "n={n} k={k}: imaginary {im}");
                power = power.matmul(&a);
            }
            // AᵀA is symmetric PSD: real eigenvalues, the squared singular values of A.
            let ata = a.t().matmul(&a);
            let mut ev = eigenvalues(&ata).unwrap();
            ev.sort_by(|x, y| y.0.total_cmp(&x.0));
            let (_, s, _) = svd(&a).unwrap();
            for (e, s) in ev.iter().zip(&s) {
                assert!(
                    e.1.abs() < 1e-8 && (e.0 - s * s).abs() < 1e-8 * (1.0 + s * s),
                    "{e:?} vs {}",
                    s * s
                );
            }
        }
    }
}

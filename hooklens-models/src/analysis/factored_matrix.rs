//! `FactoredMatrix`: TransformerLens's low-rank matrix `A·B`, kept as its two factors.

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Tensor};
use hooklens_core::{Error, Result};

use super::linalg::{self, Mat};

/// A matrix `AB` `[..., ldim, rdim]` stored as `A` `[..., ldim, mdim]` and `B`
/// `[..., mdim, rdim]`, with any leading (batch) axes, e.g. every head's QK circuit
/// `[n_layers, n_heads, d_model, d_model]` held as `W_Q` and `W_Kᵀ` of rank `d_head`.
/// The product is only built on request ([`FactoredMatrix::ab`]); the SVD, norm and
/// eigenvalues come from the small `mdim`-sized core, as in TransformerLens.
///
/// SVD and eigenvalues are computed in f64 on the CPU (candle has neither) and returned
/// in `A`'s dtype on `A`'s device. The SVD is computed once and kept.
#[derive(Clone, Debug)]
pub struct FactoredMatrix {
    a: Tensor,
    b: Tensor,
    svd: Arc<OnceLock<Svd>>,
}

/// The reduced SVD of a [`FactoredMatrix`]: `AB = U · diag(S) · Vhᵀ`, as TransformerLens
/// returns it (`Vh` is `V`, not `Vᵀ`, despite the name).
#[derive(Clone, Debug)]
pub struct Svd {
    /// Left singular vectors `[..., ldim, k]`, orthonormal columns.
    pub u: Tensor,
    /// Singular values `[..., k]`, decreasing.
    pub s: Tensor,
    /// Right singular vectors `[..., rdim, k]`, orthonormal columns.
    pub vh: Tensor,
}

/// Eigenvalues of a square [`FactoredMatrix`] as real and imaginary parts, each
/// `[..., mdim]`: complex conjugate pairs are adjacent, sorted by decreasing modulus.
#[derive(Clone, Debug)]
pub struct Eigenvalues {
    /// Real parts `[..., mdim]`.
    pub re: Tensor,
    /// Imaginary parts `[..., mdim]` (zero for real eigenvalues).
    pub im: Tensor,
}

fn broadcast_leading(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let x = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let y = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// The matrices of a `[..., r, c]` tensor as f64 [`Mat`]s, leading axes flattened.
fn to_mats(t: &Tensor) -> Result<Vec<Mat>> {
    let dims = t.dims();
    let (r, c) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let data = t
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    if r * c == 0 {
        return Ok(vec![Mat::zeros(r, c); data.len().checked_div(r * c).unwrap_or(0)]);
    }
    Ok(data.chunks(r * c).map(|d| Mat::from_vec(r, c, d.to_vec())).collect())
}

fn from_f64(data: Vec<f64>, shape: Vec<usize>, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?
        .to_dtype(like.dtype())?
        .to_device(like.device())?)
}

impl FactoredMatrix {
    /// `A` `[..., ldim, mdim]` and `B` `[..., mdim, rdim]`; leading axes broadcast
    /// against each other (numpy rules). An error if either has rank below 2, the inner
    /// dimensions differ, the leading axes do not broadcast, or dtype or device differ.
    pub fn new(a: Tensor, b: Tensor) -> Result<Self> {
        if a.rank() < 2 || b.rank() < 2 {
            return Err(Error::invalid(format!(
                "FactoredMatrix needs matrices (rank >= 2), got A {:?} and B {:?}",
                a.shape(),
                b.shape()
            )));
        }
        let (ad, bd) = (a.dims(), b.dims());
        if ad[ad.len() - 1] != bd[bd.len() - 2] {
            return Err(Error::invalid(format!(
                "FactoredMatrix factors must match on the inner dimension, got A {:?} and B {:?}",
                a.shape(),
                b.shape()
            )));
        }
        if a.dtype() != b.dtype() || !a.device().same_device(b.device()) {
            return Err(Error::invalid(format!(
                "FactoredMatrix factors must share dtype and device, got {:?} on {:?} and {:?} on {:?}",
                a.dtype(),
                a.device().location(),
                b.dtype(),
                b.device().location()
            )));
        }
        let lead = broadcast_leading(&ad[..ad.len() - 2], &bd[..bd.len() - 2]).ok_or_else(|| {
            Error::invalid(format!(
                "FactoredMatrix factors' leading axes do not broadcast: A {:?}, B {:?}",
                a.shape(),
                b.shape()
            ))
        })?;
        let with = |t: &Tensor| -> Result<Tensor> {
            let d = t.dims();
            let mut shape = lead.clone();
            shape.extend_from_slice(&d[d.len() - 2..]);
            Ok(if d == shape.as_slice() {
                t.clone()
            } else {
                t.broadcast_as(shape)?.contiguous()?
            })
        };
        Ok(FactoredMatrix {
            a: with(&a)?,
            b: with(&b)?,
            svd: Arc::new(OnceLock::new()),
        })
    }

    /// The left factor `A` `[..., ldim, mdim]`.
    pub fn a(&self) -> &Tensor {
        &self.a
    }

    /// The right factor `B` `[..., mdim, rdim]`.
    pub fn b(&self) -> &Tensor {
        &self.b
    }

    /// `(A, B)` (TransformerLens's `pair`).
    pub fn pair(&self) -> (&Tensor, &Tensor) {
        (&self.a, &self.b)
    }

    /// Rows of the product.
    pub fn ldim(&self) -> usize {
        self.a.dims()[self.a.rank() - 2]
    }

    /// Inner (hidden) dimension: the rank bound.
    pub fn mdim(&self) -> usize {
        self.a.dims()[self.a.rank() - 1]
    }

    /// Columns of the product.
    pub fn rdim(&self) -> usize {
        self.b.dims()[self.b.rank() - 1]
    }

    /// The leading axes, without `ldim, rdim`.
    pub fn leading_dims(&self) -> &[usize] {
        &self.a.dims()[..self.a.rank() - 2]
    }

    /// The shape of the product: `[..., ldim, rdim]`.
    pub fn shape(&self) -> Vec<usize> {
        let mut s = self.leading_dims().to_vec();
        s.extend([self.ldim(), self.rdim()]);
        s
    }

    /// The number of axes of the product.
    pub fn ndim(&self) -> usize {
        self.a.rank()
    }

    /// The product `A·B` `[..., ldim, rdim]` (can be large).
    pub fn ab(&self) -> Result<Tensor> {
        Ok(self.a.matmul(&self.b)?)
    }

    /// The reverse product `B·A` `[..., mdim, mdim]`; only for a square product (ldim == rdim).
    pub fn ba(&self) -> Result<Tensor> {
        if self.ldim() != self.rdim() {
            return Err(Error::invalid(format!(
                "BA needs ldim == rdim, the factored matrix has shape {:?}",
                self.shape()
            )));
        }
        Ok(self.b.matmul(&self.a)?)
    }

    /// The transpose `Bᵀ·Aᵀ` `[..., rdim, ldim]`, still factored.
    pub fn t(&self) -> Result<Self> {
        FactoredMatrix::new(self.b.t()?.contiguous()?, self.a.t()?.contiguous()?)
    }

    /// `self · other` for a matrix `other` `[..., rdim, n]` -> `[..., ldim, n]`, factored
    /// through whichever inner dimension is smaller (as TransformerLens does).
    pub fn matmul(&self, other: &Tensor) -> Result<Self> {
        if other.rank() < 2 || other.dims()[other.rank() - 2] != self.rdim() {
            return Err(Error::invalid(format!(
                "cannot multiply a factored matrix of shape {:?} by a tensor of shape {:?}",
                self.shape(),
                other.shape()
            )));
        }
        if self.rdim() > self.mdim() {
            FactoredMatrix::new(self.a.clone(), self.b.broadcast_matmul(other)?)
        } else {
            FactoredMatrix::new(self.ab()?, other.clone())
        }
    }

    /// `self · v` for a vector `v` `[rdim]` -> `[..., ldim]`, never building `AB`.
    pub fn matmul_vec(&self, v: &Tensor) -> Result<Tensor> {
        if v.rank() != 1 || v.dim(0)? != self.rdim() {
            return Err(Error::invalid(format!(
                "cannot multiply a factored matrix of shape {:?} by a vector of shape {:?}",
                self.shape(),
                v.shape()
            )));
        }
        let col = v.unsqueeze(1)?;
        Ok(self
            .a
            .broadcast_matmul(&self.b.broadcast_matmul(&col)?)?
            .squeeze(self.a.rank() - 1)?)
    }

    /// `self · other` for another factored matrix -> `[..., ldim, other.rdim]`.
    pub fn matmul_factored(&self, other: &FactoredMatrix) -> Result<Self> {
        self.matmul(&other.a)?.matmul(&other.b)
    }

    /// `other · self` for a matrix `other` `[..., n, ldim]` -> `[..., n, rdim]`, factored.
    pub fn rmatmul(&self, other: &Tensor) -> Result<Self> {
        if other.rank() < 2 || other.dims()[other.rank() - 1] != self.ldim() {
            return Err(Error::invalid(format!(
                "cannot multiply a tensor of shape {:?} by a factored matrix of shape {:?}",
                other.shape(),
                self.shape()
            )));
        }
        if self.ldim() > self.mdim() {
            FactoredMatrix::new(other.broadcast_matmul(&self.a)?, self.b.clone())
        } else {
            FactoredMatrix::new(other.clone(), self.ab()?)
        }
    }

    /// `v · self` for a vector `v` `[ldim]` -> `[..., rdim]`, never building `AB`.
    pub fn rmatmul_vec(&self, v: &Tensor) -> Result<Tensor> {
        if v.rank() != 1 || v.dim(0)? != self.ldim() {
            return Err(Error::invalid(format!(
                "cannot multiply a vector of shape {:?} by a factored matrix of shape {:?}",
                v.shape(),
                self.shape()
            )));
        }
        let row = v.unsqueeze(0)?;
        let out = row.broadcast_matmul(&self.a)?.broadcast_matmul(&self.b)?;
        Ok(out.squeeze(out.rank() - 2)?)
    }

    /// `s · self`: the scalar goes into `A`.
    pub fn scale(&self, s: f64) -> Result<Self> {
        FactoredMatrix::new((&self.a * s)?, self.b.clone())
    }

    /// Adds a size-1 axis at `dim` of the leading axes (TransformerLens's `unsqueeze`).
    pub fn unsqueeze(&self, dim: usize) -> Result<Self> {
        if dim > self.leading_dims().len() {
            return Err(Error::invalid(format!(
                "unsqueeze({dim}) on a factored matrix with {} leading axes: only leading axes can be added",
                self.leading_dims().len()
            )));
        }
        FactoredMatrix::new(self.a.unsqueeze(dim)?, self.b.unsqueeze(dim)?)
    }

    /// The matrix at index `i` of the first leading axis (TransformerLens's `fm[i]`).
    pub fn get(&self, i: usize) -> Result<Self> {
        let lead = self.leading_dims();
        match lead.first() {
            None => Err(Error::invalid("this factored matrix has no leading axis to index")),
            Some(&n) if i >= n => Err(Error::invalid(format!(
                "index {i} is out of range for a leading axis of length {n}"
            ))),
            Some(_) => FactoredMatrix::new(self.a.get(i)?, self.b.get(i)?),
        }
    }

    /// The top-left `k x k` corner of the product `[..., k, k]`, computed from the
    /// first `k` rows of `A` and columns of `B` only.
    pub fn get_corner(&self, k: usize) -> Result<Tensor> {
        let (r, c) = (k.min(self.ldim()), k.min(self.rdim()));
        let ra = self.a.rank();
        Ok(self
            .a
            .narrow(ra - 2, 0, r)?
            .matmul(&self.b.narrow(ra - 1, 0, c)?.contiguous()?)?)
    }

    /// The SVD of the product, computed from the factors: QR of `A` and of `Bᵀ`, then the
    /// SVD of the small `R_A·R_Bᵀ` core. `U` `[..., ldim, k]`, `S` `[..., k]`, `Vh`
    /// `[..., rdim, k]` with `k = min(ldim, mdim, rdim)`.
    pub fn svd(&self) -> Result<&Svd> {
        if let Some(s) = self.svd.get() {
            return Ok(s);
        }
        let svd = self.compute_svd()?;
        Ok(self.svd.get_or_init(|| svd))
    }

    fn compute_svd(&self) -> Result<Svd> {
        let (l, m, r) = (self.ldim(), self.mdim(), self.rdim());
        let k = l.min(m).min(r);
        let (am, bm) = (to_mats(&self.a)?, to_mats(&self.b)?);
        let (mut u, mut s, mut vh) = (Vec::new(), Vec::new(), Vec::new());
        for (a, b) in am.iter().zip(&bm) {
            let (qa, ra) = linalg::qr(a);
            let (qb, rb) = linalg::qr(&b.t());
            let core = ra.matmul(&rb.t());
            let (uc, sc, vc) = linalg::svd(&core)?;
            let (uf, vf) = (qa.matmul(&uc), qb.matmul(&vc));
            for i in 0..l {
                u.extend((0..k).map(|j| uf[(i, j)]));
            }
            s.extend(sc.iter().take(k));
            for i in 0..r {
                vh.extend((0..k).map(|j| vf[(i, j)]));
            }
        }
        let lead = self.leading_dims().to_vec();
        let shape = |tail: &[usize]| -> Vec<usize> { lead.iter().chain(tail).copied().collect() };
        Ok(Svd {
            u: from_f64(u, shape(&[l, k]), &self.a)?,
            s: from_f64(s, shape(&[k]), &self.a)?,
            vh: from_f64(vh, shape(&[r, k]), &self.a)?,
        })
    }

    /// Left singular vectors `[..., ldim, k]`.
    pub fn u(&self) -> Result<Tensor> {
        Ok(self.svd()?.u.clone())
    }

    /// Singular values `[..., k]`, decreasing.
    pub fn s(&self) -> Result<Tensor> {
        Ok(self.svd()?.s.clone())
    }

    /// Right singular vectors `[..., rdim, k]` (TransformerLens's `Vh`).
    pub fn vh(&self) -> Result<Tensor> {
        Ok(self.svd()?.vh.clone())
    }

    /// The Frobenius norm of the product `[...]`: the root of the summed squared
    /// singular values.
    pub fn norm(&self) -> Result<Tensor> {
        let s = self.s()?;
        Ok(s.sqr()?.sum(s.rank() - 1)?.sqrt()?)
    }

    /// The eigenvalues of a square product, from `BA` `[mdim, mdim]` (the nonzero
    /// eigenvalues of `AB` and `BA` agree): real and imaginary parts `[..., mdim]`.
    pub fn eigenvalues(&self) -> Result<Eigenvalues> {
        let ba = self.ba()?;
        let m = self.mdim();
        let (mut re, mut im) = (Vec::new(), Vec::new());
        for mat in to_mats(&ba)? {
            for (x, y) in linalg::eigenvalues(&mat)? {
                re.push(x);
                im.push(y);
            }
        }
        let shape: Vec<usize> = self.leading_dims().iter().copied().chain([m]).collect();
        Ok(Eigenvalues {
            re: from_f64(re, shape.clone(), &self.a)?,
            im: from_f64(im, shape, &self.a)?,
        })
    }

    /// `S·Vhᵀ` `[..., k, rdim]`: the product without its left orthogonal factor
    /// (same Frobenius norm, same products on the right).
    pub fn collapse_l(&self) -> Result<Tensor> {
        let svd = self.svd()?;
        let vt = svd.vh.t()?;
        Ok(vt.broadcast_mul(&svd.s.unsqueeze(svd.s.rank())?)?)
    }

    /// `U·S` `[..., ldim, k]`: the product without its right orthogonal factor.
    pub fn collapse_r(&self) -> Result<Tensor> {
        let svd = self.svd()?;
        Ok(svd.u.broadcast_mul(&svd.s.unsqueeze(svd.s.rank() - 1)?)?)
    }

    /// The same product factored evenly: `(U·√S, √S·Vhᵀ)`.
    pub fn make_even(&self) -> Result<Self> {
        let svd = self.svd()?;
        let root = svd.s.sqrt()?;
        let a = svd.u.broadcast_mul(&root.unsqueeze(root.rank() - 1)?)?;
        let b = svd.vh.t()?.broadcast_mul(&root.unsqueeze(root.rank())?)?;
        FactoredMatrix::new(a, b.contiguous()?)
    }
}

/// TransformerLens's `composition_scores`: for every pair of a `left` matrix
/// `[*L, d, d]` and a `right` matrix `[*R, d, d]`, `‖left·right‖_F / (‖left‖_F ‖right‖_F)`;
/// shape `[*L, *R]`. Computed from the collapsed factors (`[k, d]` and `[d, k]`), a few left
/// matrices at a time, so no `[*L, *R, d, d]` tensor is ever built.
pub fn composition_scores(left: &FactoredMatrix, right: &FactoredMatrix) -> Result<Tensor> {
    if left.rdim() != right.ldim() {
        return Err(Error::invalid(format!(
            "composition scores need left.rdim == right.ldim, shapes were left {:?}, right {:?}",
            left.shape(),
            right.shape()
        )));
    }
    let d = left.rdim();
    let nl: usize = left.leading_dims().iter().product();
    let nr: usize = right.leading_dims().iter().product();
    let l_coll = left.collapse_l()?; // [*L, kl, d]
    let r_coll = right.collapse_r()?; // [*R, d, kr]
    let kl = l_coll.dim(l_coll.rank() - 2)?;
    let kr = r_coll.dim(r_coll.rank() - 1)?;
    let l_norm = left.norm()?.flatten_all()?.to_dtype(DType::F32)?;
    let r_norm = right.norm()?.flatten_all()?.to_dtype(DType::F32)?;
    let l_flat = l_coll.reshape((nl, kl, d))?.to_dtype(DType::F32)?;
    // [d, nr*kr]: every right matrix side by side, one matmul per left matrix.
    let r_flat = r_coll
        .reshape((nr, d, kr))?
        .permute((1, 0, 2))?
        .contiguous()?
        .reshape((d, nr * kr))?
        .to_dtype(DType::F32)?;
    // Several left matrices per matmul keep the GEMM large, with the product bounded
    // to about 64 MiB of f32.
    let per_chunk = (16 * 1024 * 1024 / (kl * nr * kr).max(1)).clamp(1, nl.max(1));
    let mut rows = Vec::with_capacity(nl);
    let mut start = 0;
    while start < nl {
        let len = per_chunk.min(nl - start);
        let chunk = l_flat.narrow(0, start, len)?.reshape((len * kl, d))?;
        let prod = chunk.matmul(&r_flat)?; // [len*kl, nr*kr]
        let sq = prod.sqr()?.reshape((len, kl, nr, kr))?.sum(3)?.sum(1)?; // [len, nr]
        rows.push(sq.sqrt()?);
        start += len;
    }
    let comp = Tensor::cat(&rows, 0)?; // [nl, nr]
    let denom = l_norm.unsqueeze(1)?.broadcast_mul(&r_norm.unsqueeze(0)?)?;
    let scores = (comp / denom)?;
    let shape: Vec<usize> = left
        .leading_dims()
        .iter()
        .chain(right.leading_dims())
        .copied()
        .collect();
    Ok(scores.reshape(shape)?.to_dtype(left.a.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hooklens_testutil::max_abs_diff;

    fn t(shape: &[usize], seed: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| ((i as f64 * 0.73 + seed).sin()) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn products_agree_with_dense() {
        let fm = FactoredMatrix::new(t(&[3, 8, 2], 0.1), t(&[3, 2, 6], 0.9)).unwrap();
        let ab = fm.ab().unwrap();
        assert_eq!(ab.dims(), &[3, 8, 6]);
        assert_eq!(fm.shape(), vec![3, 8, 6]);
        assert!(max_abs_diff(&fm.t().unwrap().ab().unwrap(), &ab.transpose(1, 2).unwrap()) < 1e-6);
        let m = t(&[6, 5], 0.4);
        let prod = fm.matmul(&m).unwrap();
        assert!(max_abs_diff(&prod.ab().unwrap(), &ab.broadcast_matmul(&m).unwrap()) < 1e-5);
        let v = t(&[6], 0.2);
        let mv = fm.matmul_vec(&v).unwrap();
        let dense = ab
            .broadcast_matmul(&v.unsqueeze(1).unwrap())
            .unwrap()
            .squeeze(2)
            .unwrap();
        assert!(max_abs_diff(&mv, &dense) < 1e-5);
        let w = t(&[8], 0.3);
        let vm = fm.rmatmul_vec(&w).unwrap();
        let dense = w
            .unsqueeze(0)
            .unwrap()
            .broadcast_matmul(&ab)
            .unwrap()
            .squeeze(1)
            .unwrap();
        assert!(max_abs_diff(&vm, &dense) < 1e-5);
        let left = t(&[4, 8], 0.5);
        let lm = fm.rmatmul(&left).unwrap();
        assert!(max_abs_diff(&lm.ab().unwrap(), &left.broadcast_matmul(&ab).unwrap()) < 1e-5);
        let other = FactoredMatrix::new(t(&[6, 3], 0.6), t(&[3, 4], 0.7)).unwrap();
        let ff = fm.matmul_factored(&other).unwrap();
        assert!(max_abs_diff(&ff.ab().unwrap(), &ab.broadcast_matmul(&other.ab().unwrap()).unwrap()) < 1e-5);
        assert!(max_abs_diff(&fm.scale(2.0).unwrap().ab().unwrap(), &(&ab * 2.0).unwrap()) < 1e-5);
        assert!(max_abs_diff(&fm.get(1).unwrap().ab().unwrap(), &ab.get(1).unwrap()) < 1e-6);
        let corner = fm.get_corner(3).unwrap();
        assert!(max_abs_diff(&corner, &ab.narrow(1, 0, 3).unwrap().narrow(2, 0, 3).unwrap()) < 1e-6);
        assert_eq!(fm.unsqueeze(0).unwrap().shape(), vec![1, 3, 8, 6]);
    }

    #[test]
    fn leading_axes_broadcast() {
        let fm = FactoredMatrix::new(t(&[2, 1, 5, 3], 0.1), t(&[4, 3, 5], 0.2)).unwrap();
        assert_eq!(fm.shape(), vec![2, 4, 5, 5]);
        assert!(FactoredMatrix::new(t(&[2, 5, 3], 0.1), t(&[3, 3, 5], 0.2)).is_err());
        assert!(FactoredMatrix::new(t(&[5, 3], 0.1), t(&[4, 5], 0.2)).is_err());
        assert!(FactoredMatrix::new(t(&[5], 0.1), t(&[5, 2], 0.2)).is_err());
    }

    #[test]
    fn svd_reconstructs_the_product_and_norm_is_frobenius() {
        let fm = FactoredMatrix::new(t(&[2, 9, 3], 0.1), t(&[2, 3, 7], 0.9)).unwrap();
        let ab = fm.ab().unwrap();
        let svd = fm.svd().unwrap();
        assert_eq!(svd.u.dims(), &[2, 9, 3]);
        assert_eq!(svd.s.dims(), &[2, 3]);
        assert_eq!(svd.vh.dims(), &[2, 7, 3]);
        let us = svd.u.broadcast_mul(&svd.s.unsqueeze(1).unwrap()).unwrap();
        let rebuilt = us
            .matmul(&svd.vh.transpose(1, 2).unwrap().contiguous().unwrap())
            .unwrap();
        assert!(max_abs_diff(&rebuilt, &ab) < 1e-5);
        let fro = ab.sqr().unwrap().sum((1, 2)).unwrap().sqrt().unwrap();
        assert!(max_abs_diff(&fm.norm().unwrap(), &fro) < 1e-5);
        assert!(max_abs_diff(&fm.make_even().unwrap().ab().unwrap(), &ab) < 1e-5);
        assert!(max_abs_diff(&fm.collapse_r().unwrap().matmul(&svd.vh.t().unwrap()).unwrap(), &ab) < 1e-5);
        assert!(max_abs_diff(&svd.u.matmul(&fm.collapse_l().unwrap()).unwrap(), &ab) < 1e-5);
    }

    #[test]
    fn eigenvalues_of_a_known_matrix() {
        // AB = [[2, 0], [0, 3]] · R(90°) has eigenvalues ±i·sqrt(6).
        let a = Tensor::new(&[[2f32, 0.], [0., 3.]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[0f32, -1.], [1., 0.]], &Device::Cpu).unwrap();
        let ev = FactoredMatrix::new(a, b).unwrap().eigenvalues().unwrap();
        let re = ev.re.to_vec1::<f32>().unwrap();
        let mut im = ev.im.to_vec1::<f32>().unwrap();
        im.sort_by(f32::total_cmp);
        assert!(re.iter().all(|x| x.abs() < 1e-6));
        let r6 = 6f32.sqrt();
        assert!((im[0] + r6).abs() < 1e-5 && (im[1] - r6).abs() < 1e-5, "{im:?}");
        // Low rank: the eigenvalues of AB are those of BA (plus zeros).
        let fm = FactoredMatrix::new(t(&[6, 2], 0.3), t(&[2, 6], 0.4)).unwrap();
        let ba = fm.ba().unwrap().to_vec2::<f32>().unwrap();
        let (tr, det) = (ba[0][0] + ba[1][1], ba[0][0] * ba[1][1] - ba[0][1] * ba[1][0]);
        let ev = fm.eigenvalues().unwrap();
        let re = ev.re.to_vec1::<f32>().unwrap();
        let im = ev.im.to_vec1::<f32>().unwrap();
        assert!((re.iter().sum::<f32>() - tr).abs() < 1e-4);
        let prod_re = re[0] * re[1] - im[0] * im[1];
        assert!((prod_re - det).abs() < 1e-4);
        assert!(FactoredMatrix::new(t(&[6, 2], 0.3), t(&[2, 5], 0.4))
            .unwrap()
            .ba()
            .is_err());
    }

    #[test]
    fn composition_scores_match_dense() {
        let left = FactoredMatrix::new(t(&[2, 6, 2], 0.1), t(&[2, 2, 6], 0.2)).unwrap();
        let right = FactoredMatrix::new(t(&[3, 6, 2], 0.3), t(&[3, 2, 6], 0.4)).unwrap();
        let scores = composition_scores(&left, &right).unwrap();
        assert_eq!(scores.dims(), &[2, 3]);
        let (la, ra) = (left.ab().unwrap(), right.ab().unwrap());
        let fro = |x: &Tensor| {
            x.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .sqrt()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        for i in 0..2 {
            for j in 0..3 {
                let (l, r) = (la.get(i).unwrap(), ra.get(j).unwrap());
                let want = fro(&l.matmul(&r).unwrap()) / fro(&l) / fro(&r);
                let got = scores.get(i).unwrap().get(j).unwrap().to_scalar::<f32>().unwrap();
                assert!((want - got).abs() < 1e-5, "{i},{j}: {want} vs {got}");
            }
        }
    }
}

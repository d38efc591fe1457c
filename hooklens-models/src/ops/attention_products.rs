//! The attention's two batched products on the CPU, read straight from the layouts the
//! model has: `q`, `k` and `v` as `[batch, pos, head, d_head]` views of the q|k|v
//! projection, and `z` written as `[batch, pos, head, d_head]`.
//!
//! candle's batched matmul wants `[batch, head, pos, d_head]` operands, which cost a
//! transposed copy of q, k and v and another of z per layer, plus a scaled copy of q;
//! `matrixmultiply`'s sgemm takes any strides and a scale, so these products need no
//! copy at all. Each (batch, head) pair is one sgemm, the pairs spread over threads.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::kernels::{constant_cpu_f32, fast_path};
use super::shared_out::SharedOut;

/// A strided 4-D operand `[batch, head, rows, cols]` inside a storage.
#[derive(Clone, Copy)]
struct Operand {
    offset: usize,
    /// Strides of batch, head, row and column.
    strides: [usize; 4],
}

impl Operand {
    /// The operand's largest index, which must lie inside its storage.
    fn last(&self, dims: [usize; 4]) -> usize {
        self.offset + (0..4).map(|i| (dims[i].max(1) - 1) * self.strides[i]).sum::<usize>()
    }
}

/// `out[b, h] = alpha * a[b, h] @ b[b, h]` for every (batch, head): `a` `[B, H, M, K]`,
/// `b` `[B, H, K, N]`, written at `out_strides` (of batch, head, row, column) into a
/// new buffer of `B * H * M * N` values.
#[allow(clippy::too_many_arguments)]
fn batched_sgemm(
    a: &[f32],
    ao: Operand,
    b: &[f32],
    bo: Operand,
    dims: [usize; 5],
    alpha: f32,
    out_strides: [usize; 4],
) -> candle_core::Result<Vec<f32>> {
    let [nb, nh, m, k, n] = dims;
    if ao.last([nb, nh, m, k]) >= a.len() || bo.last([nb, nh, k, n]) >= b.len() {
        candle_core::bail!("attention product: an operand's layout exceeds its storage")
    }
    let total = nb * nh * m * n;
    if total == 0 || k == 0 {
        return Ok(vec![0f32; total]);
    }
    // Not zeroed first: sgemm with beta 0 writes every value and reads none. The pairs
    // write disjoint parts of `out` (its strides are a permutation of a contiguous
    // layout, so together they write all of it).
    let mut out: Vec<f32> = Vec::with_capacity(total);
    let out_ptr = SharedOut::new(out.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    (0..nb * nh).into_par_iter().for_each(|pair| {
        let (bi, hi) = (pair / nh, pair % nh);
        let a_start = ao.offset + bi * ao.strides[0] + hi * ao.strides[1];
        let b_start = bo.offset + bi * bo.strides[0] + hi * bo.strides[1];
        let c_start = bi * out_strides[0] + hi * out_strides[1];
        // SAFETY: both operands' last elements were checked to lie inside their
        // storages, every (row, col) of this pair's output lies inside `out` at its
        // own index, and no other pair writes it.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                alpha,
                a.as_ptr().add(a_start),
                ao.strides[2] as isize,
                ao.strides[3] as isize,
                b.as_ptr().add(b_start),
                bo.strides[2] as isize,
                bo.strides[3] as isize,
                0.0,
                out_ptr.get().add(c_start),
                out_strides[2] as isize,
                out_strides[3] as isize,
            );
        }
    });
    // SAFETY: the pairs wrote all `total` values (see above).
    unsafe { out.set_len(total) };
    Ok(out)
}

fn storage_f32<'a>(s: &'a CpuStorage, what: &str) -> candle_core::Result<&'a [f32]> {
    match s {
        CpuStorage::F32(v) => Ok(v),
        _ => candle_core::bail!("attention product: {what} must be f32"),
    }
}

fn dims4(l: &Layout, what: &str) -> candle_core::Result<([usize; 4], [usize; 4])> {
    match (l.dims(), l.stride()) {
        ([a, b, c, d], [sa, sb, sc, sd]) => Ok(([*a, *b, *c, *d], [*sa, *sb, *sc, *sd])),
        _ => candle_core::bail!("attention product: {what} must be 4-D, got {:?}", l.dims()),
    }
}

/// `alpha * q @ k^T`: `q` `[batch, pos, head, d_head]`, `k` `[batch, keys, head, d_head]`
/// -> scores `[batch, head, pos, keys]`.
struct Scores {
    alpha: f32,
}

impl CustomOp2 for Scores {
    fn name(&self) -> &'static str {
        "hooklens-attention-scores"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let ([b, p, h, dh], qs) = dims4(l1, "q")?;
        let ([kb, l, kh, kdh], ks) = dims4(l2, "k")?;
        if (kb, kh, kdh) != (b, h, dh) {
            candle_core::bail!("attention scores: q [{b}, {p}, {h}, {dh}] and k [{kb}, {l}, {kh}, {kdh}] do not fit")
        }
        let q = Operand {
            offset: l1.start_offset(),
            strides: [qs[0], qs[2], qs[1], qs[3]],
        };
        // k^T: rows are d_head, columns the keys.
        let kt = Operand {
            offset: l2.start_offset(),
            strides: [ks[0], ks[2], ks[3], ks[1]],
        };
        let out = batched_sgemm(
            storage_f32(s1, "q")?,
            q,
            storage_f32(s2, "k")?,
            kt,
            [b, h, p, dh, l],
            self.alpha,
            [h * p * l, p * l, l, 1],
        )?;
        Ok((CpuStorage::F32(out), Shape::from((b, h, p, l))))
    }
}

/// `pattern @ v`: `pattern` `[batch, head, pos, keys]`, `v` `[batch, keys, head, d_head]`
/// -> z `[batch, pos, head, d_head]`.
struct PatternTimesV;

impl CustomOp2 for PatternTimesV {
    fn name(&self) -> &'static str {
        "hooklens-attention-z"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let ([b, h, p, l], ps) = dims4(l1, "pattern")?;
        let ([vb, vl, vh, dh], vs) = dims4(l2, "v")?;
        if (vb, vl, vh) != (b, l, h) {
            candle_core::bail!("attention z: pattern [{b}, {h}, {p}, {l}] and v [{vb}, {vl}, {vh}, {dh}] do not fit")
        }
        let pattern = Operand {
            offset: l1.start_offset(),
            strides: ps,
        };
        let v = Operand {
            offset: l2.start_offset(),
            strides: [vs[0], vs[2], vs[1], vs[3]],
        };
        let out = batched_sgemm(
            storage_f32(s1, "pattern")?,
            pattern,
            storage_f32(s2, "v")?,
            v,
            [b, h, p, l, dh],
            1.0,
            [p * h * dh, dh, h * dh, 1],
        )?;
        Ok((CpuStorage::F32(out), Shape::from((b, p, h, dh))))
    }
}

/// `alpha * q @ k^T` as scores `[batch, head, pos, keys]`, from `q` `[batch, pos, head,
/// d_head]` and `k` `[batch, keys, head, d_head]` of any strides; `None` off the CPU
/// f32 no-gradient path.
pub(crate) fn scores(q: &Tensor, k: &Tensor, alpha: f32) -> Option<candle_core::Result<Tensor>> {
    if !fast_path(q) || !constant_cpu_f32(k) || q.rank() != 4 || k.rank() != 4 {
        return None;
    }
    Some(q.apply_op2_no_bwd(k, &Scores { alpha }))
}

/// `pattern @ v` as z `[batch, pos, head, d_head]`, from `pattern` `[batch, head, pos,
/// keys]` and `v` `[batch, keys, head, d_head]` of any strides; `None` off the CPU f32
/// no-gradient path.
pub(crate) fn pattern_times_v(pattern: &Tensor, v: &Tensor) -> Option<candle_core::Result<Tensor>> {
    if !fast_path(pattern) || !constant_cpu_f32(v) || pattern.rank() != 4 || v.rank() != 4 {
        return None;
    }
    Some(pattern.apply_op2_no_bwd(v, &PatternTimesV))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use hooklens_testutil::max_abs_diff;

    /// Strided views, as the model has them (q, k, v narrowed out of one projection),
    /// against candle's batched matmul on contiguous copies.
    #[test]
    fn products_equal_candle_on_strided_views() {
        let dev = Device::Cpu;
        let (b, p, h, dh) = (2, 5, 3, 4);
        let qkv = Tensor::randn(0f32, 1., (b, p, 3, h, dh), &dev).unwrap();
        let part = |i: usize| qkv.narrow(2, i, 1).unwrap().squeeze(2).unwrap();
        let (q, k, v) = (part(0), part(1), part(2));
        let got = scores(&q, &k, 0.5).unwrap().unwrap();
        let qt = q.transpose(1, 2).unwrap().contiguous().unwrap();
        let kt = k.transpose(1, 2).unwrap().contiguous().unwrap();
        let want = (qt.matmul(&kt.t().unwrap()).unwrap() * 0.5).unwrap();
        assert_eq!(got.dims(), &[b, h, p, p]);
        assert!(max_abs_diff(&got, &want) < 1e-5);

        let pattern = candle_nn::ops::softmax_last_dim(&want).unwrap();
        let got = pattern_times_v(&pattern, &v).unwrap().unwrap();
        let vt = v.transpose(1, 2).unwrap().contiguous().unwrap();
        let want = pattern.matmul(&vt).unwrap().transpose(1, 2).unwrap();
        assert_eq!(got.dims(), &[b, p, h, dh]);
        assert!(max_abs_diff(&got, &want) < 1e-5);

        // Mismatched shapes are errors, not wild reads.
        let short = k.narrow(2, 0, 2).unwrap();
        assert!(scores(&q, &short, 1.0).unwrap().is_err());
    }
}

//! CPU kernels for the no-gradient forward, where candle's generic ops are slow.
//!
//! candle's `gelu` computes `tanh` element by element on one thread, which costs more
//! than the MLP matmul it follows; its bias `broadcast_add` allocates and runs on one
//! thread. These kernels run on row chunks across threads. They have no backward:
//! the model uses them only when [`hooklens_core::grad_mode`] is off, on CPU f32.

use candle_core::{CpuStorage, CustomOp1, DType, InplaceOp2, Layout, Shape, Tensor};

/// Whether `t` can go through these kernels.
pub(crate) fn fast_path(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && !hooklens_core::grad_mode()
}

/// Runs `f(first_row, rows_in, rows_out)` over contiguous chunks of rows, on several
/// threads when the tensor is large enough for that to pay.
pub(crate) fn par_rows<F>(n_rows: usize, in_width: usize, src: &[f32], out_width: usize, dst: &mut [f32], f: F)
where
    F: Fn(usize, &[f32], &mut [f32]) + Sync,
{
    let threads = candle_core::utils::get_num_threads().max(1);
    if threads == 1 || n_rows * in_width.max(out_width) < (1 << 16) || n_rows < 2 {
        f(0, src, dst);
        return;
    }
    let per = n_rows.div_ceil(threads);
    std::thread::scope(|s| {
        let f = &f;
        for (i, (src, dst)) in src
            .chunks(per * in_width)
            .zip(dst.chunks_mut(per * out_width))
            .enumerate()
        {
            s.spawn(move || f(i * per, src, dst));
        }
    });
}

/// The contiguous f32 data of a storage, or an error naming `what`.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// GPT-2's `gelu_new`, `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`, computed as the
/// identical `x · sigmoid(2u)`: one `exp` instead of a `tanh`.
struct GeluNew;

impl CustomOp1 for GeluNew {
    fn name(&self) -> &'static str {
        "hooklens-gelu-new"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(s, l, "gelu input")?;
        let mut dst = vec![0f32; src.len()];
        const WIDTH: usize = 1024;
        let rows = src.len().div_ceil(WIDTH);
        // Rows are just equal chunks here; the last one may be short.
        par_rows(rows, WIDTH, src, WIDTH, &mut dst, |_, src, dst| {
            let mut outs = dst.chunks_exact_mut(8);
            let mut ins = src.chunks_exact(8);
            for (o, x) in (&mut outs).zip(&mut ins) {
                for k in 0..8 {
                    o[k] = gelu_new_scalar(x[k]);
                }
            }
            for (o, &x) in outs.into_remainder().iter_mut().zip(ins.remainder()) {
                *o = gelu_new_scalar(x);
            }
        });
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }
}

#[inline(always)]
fn gelu_new_scalar(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    let u = C * (x + 0.044715 * x * x * x);
    x / (1.0 + exp_approx(-2.0 * u))
}

/// `e^x` to about 2 ulp, branch-free so that loops over it vectorise (libm's `expf`
/// is a call per element). Range reduction `x = n ln2 + r`, a degree-6 polynomial for
/// `e^r` on `|r| <= ln2/2`, and `2^n` built from its exponent bits; inputs are clamped
/// to the finite range of f32.
#[inline(always)]
pub(crate) fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    // The integer n sits in the low bits of `shifted` (offset by 0x4B40_0000).
    let n_bits = shifted.to_bits().wrapping_sub(0x4B40_0000);
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    p * scale
}

/// `x` `[.., n]` -> `gelu_new(x)`, a new tensor (candle's `Tensor::gelu` elsewhere).
pub(crate) fn gelu_new(x: &Tensor) -> candle_core::Result<Tensor> {
    if fast_path(x) {
        x.contiguous()?.apply_op1_no_bwd(&GeluNew)
    } else {
        x.gelu()
    }
}

/// Adds a bias `[n]` to every row of a contiguous `[.., n]` tensor, in place.
struct AddBias;

impl InplaceOp2 for AddBias {
    fn name(&self) -> &'static str {
        "hooklens-add-bias"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let bias = contiguous_f32(s2, l2, "bias")?;
        let n = bias.len();
        let (a, b) = match l1.contiguous_offsets() {
            Some(o) => o,
            None => candle_core::bail!("add-bias: output must be contiguous"),
        };
        let data = match s1 {
            CpuStorage::F32(v) => &mut v[a..b],
            _ => candle_core::bail!("add-bias: output must be f32"),
        };
        if n == 0 || data.len() % n != 0 {
            candle_core::bail!("add-bias: bias of {n} values for rows of {:?}", l1.dims())
        }
        let rows = data.len() / n;
        let threads = candle_core::utils::get_num_threads().max(1);
        let add = |chunk: &mut [f32]| {
            for row in chunk.chunks_mut(n) {
                for (x, b) in row.iter_mut().zip(bias) {
                    *x += b;
                }
            }
        };
        if threads == 1 || data.len() < (1 << 16) {
            add(data);
        } else {
            let per = rows.div_ceil(threads) * n;
            std::thread::scope(|s| {
                for chunk in data.chunks_mut(per) {
                    s.spawn(move || add(chunk));
                }
            });
        }
        Ok(())
    }
}

/// `y + b` for a fresh matmul output `y` `[rows, n]` and `b` `[n]`. On the fast path
/// the sum is written into `y`, which must not be shared with anything else.
pub(crate) fn add_bias_owned(y: Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if fast_path(&y) && y.is_contiguous() && b.dtype() == DType::F32 && b.rank() == 1 {
        y.inplace_op2(&b.contiguous()?, &AddBias)?;
        Ok(y)
    } else {
        y.broadcast_add(b)
    }
}

/// Adds an additive attention mask in place: `scores` `[batch, head, query, key]`
/// (contiguous), `mask` `[query, key]` or `[batch, 1, query, key]`.
struct AddMask;

impl InplaceOp2 for AddMask {
    fn name(&self) -> &'static str {
        "hooklens-add-mask"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let mask = contiguous_f32(s2, l2, "attention mask")?;
        let dims = l1.dims();
        let (b, h, q, k) = match dims {
            [b, h, q, k] => (*b, *h, *q, *k),
            _ => candle_core::bail!("add-mask: scores must be [batch, head, query, key], got {dims:?}"),
        };
        let block = q * k;
        let per_batch = match l2.dims() {
            [mq, mk] if *mq == q && *mk == k => false,
            [mb, 1, mq, mk] if *mb == b && *mq == q && *mk == k => true,
            other => candle_core::bail!("add-mask: mask {other:?} does not fit scores {dims:?}"),
        };
        let (a, e) = match l1.contiguous_offsets() {
            Some(o) => o,
            None => candle_core::bail!("add-mask: scores must be contiguous"),
        };
        let data = match s1 {
            CpuStorage::F32(v) => &mut v[a..e],
            _ => candle_core::bail!("add-mask: scores must be f32"),
        };
        let add = |first_block: usize, chunk: &mut [f32]| {
            for (i, blk) in chunk.chunks_mut(block).enumerate() {
                let bi = (first_block + i) / h;
                let m = if per_batch {
                    &mask[bi * block..(bi + 1) * block]
                } else {
                    mask
                };
                for (x, m) in blk.iter_mut().zip(m) {
                    *x += m;
                }
            }
        };
        let n_blocks = b * h;
        let threads = candle_core::utils::get_num_threads().max(1);
        if threads == 1 || data.len() < (1 << 16) {
            add(0, data);
        } else {
            let per = n_blocks.div_ceil(threads);
            std::thread::scope(|s| {
                for (i, chunk) in data.chunks_mut(per * block).enumerate() {
                    s.spawn(move || add(i * per, chunk));
                }
            });
        }
        Ok(())
    }
}

/// `scores + mask` for fresh matmul output `scores` `[batch, head, query, key]` and an
/// additive mask `[query, key]` or `[batch, 1, query, key]`; in place on the fast path.
pub(crate) fn add_mask_owned(scores: Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    if fast_path(&scores) && scores.is_contiguous() && mask.dtype() == DType::F32 {
        scores.inplace_op2(&mask.contiguous()?, &AddMask)?;
        Ok(scores)
    } else {
        scores.broadcast_add(mask)
    }
}

/// Softmax over the last axis, with TransformerLens's convention for rows whose every
/// entry is `-inf` (all keys masked): zeros instead of NaN. `-inf` entries give exact 0.
struct SoftmaxRows;

impl CustomOp1 for SoftmaxRows {
    fn name(&self) -> &'static str {
        "hooklens-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(s, l, "softmax input")?;
        let n = *l.dims().last().unwrap_or(&1);
        if n == 0 {
            return Ok((CpuStorage::F32(vec![]), l.shape().clone()));
        }
        let mut dst = vec![0f32; src.len()];
        par_rows(src.len() / n, n, src, n, &mut dst, |_, src, dst| {
            for (row, out) in src.chunks(n).zip(dst.chunks_mut(n)) {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
                if max == f32::NEG_INFINITY || max.is_nan() {
                    let fill = if max.is_nan() { f32::NAN } else { 0.0 };
                    out.iter_mut().for_each(|o| *o = fill);
                    continue;
                }
                for (o, &x) in out.iter_mut().zip(row) {
                    let d = x - max;
                    // exp_approx clamps at e^-87; masked entries must be exactly 0.
                    *o = if d < -87.0 { 0.0 } else { exp_approx(d) };
                }
                let sum: f32 = out.iter().sum();
                let inv = 1.0 / sum;
                out.iter_mut().for_each(|o| *o *= inv);
            }
        });
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }
}

/// Softmax over the last axis of `x`; rows that are all `-inf` give zeros (TransformerLens
/// replaces the NaN of such rows by 0). Off the fast path that replacement costs two
/// passes, made only when `may_have_empty_rows`.
pub(crate) fn softmax_last_dim(x: &Tensor, may_have_empty_rows: bool) -> candle_core::Result<Tensor> {
    if fast_path(x) {
        return x.contiguous()?.apply_op1_no_bwd(&SoftmaxRows);
    }
    let p = if hooklens_core::grad_mode() {
        candle_nn::ops::softmax(x, candle_core::D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&x.contiguous()?)?
    };
    if may_have_empty_rows {
        let is_nan = p.ne(&p)?;
        is_nan.where_cond(&p.zeros_like()?, &p)
    } else {
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn exp_approx_is_accurate() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = x.exp();
            worst = worst.max(((exp_approx(x) - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 1e-6, "{worst}");
    }

    #[test]
    fn kernels_equal_candle_ops() {
        let x = (Tensor::randn(0f32, 3.0, (300, 700), &Device::Cpu).unwrap() - 0.5).unwrap();
        let fast = gelu_new(&x).unwrap();
        let slow = x.gelu().unwrap();
        let d = (fast - slow)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{d}");
        let b = Tensor::randn(0f32, 1.0, 700, &Device::Cpu).unwrap();
        let want = x.broadcast_add(&b).unwrap();
        let got = add_bias_owned(x.copy().unwrap(), &b).unwrap();
        let d = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
    }
}

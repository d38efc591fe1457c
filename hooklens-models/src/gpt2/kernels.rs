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
            const C: f32 = 0.797_884_6; // sqrt(2 / pi)
            for (o, &x) in dst.iter_mut().zip(src) {
                let u = C * (x + 0.044715 * x * x * x);
                *o = x / (1.0 + (-2.0 * u).exp());
            }
        });
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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

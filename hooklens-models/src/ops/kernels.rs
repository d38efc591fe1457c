//! CPU kernels for the no-gradient forward, where candle's generic ops are slow.
//!
//! candle's `gelu` computes `tanh` element by element on one thread, which costs more
//! than the MLP matmul it follows; its bias `broadcast_add` allocates and runs on one
//! thread. These kernels run on row chunks across threads. They have no backward:
//! the model uses them only when [`hooklens_core::grad_mode`] is off, on CPU f32.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, InplaceOp1, InplaceOp2, Layout, Shape, Tensor};

use super::shared_out::SharedOut;
use super::threads::num_threads;
use super::weight_gemm::{column_blocks, WeightGemm, WeightProduct};

/// Defines `fn $name`, which runs `$imp::<true>` compiled for AVX2 + FMA where the
/// CPU has them (the crate is built for baseline x86-64, whose SSE2 is half as wide),
/// and the portable `$imp::<false>` elsewhere. Rust never fuses a multiply and an add
/// on its own, so both give the same bits unless `$imp` asks for `mul_add` with `true`.
macro_rules! dispatched {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $imp:ident) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $imp::<true>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $imp::<false>($($arg),*)
        }
    };
}
pub(crate) use dispatched;

/// Whether `t` can go through these kernels. Besides the gradient mode, `t` itself
/// must not be tracked by candle's autograd (a `Var`, or computed from one, as when
/// weights are trained as `Var`s without `with_grad_mode`): the in-place kernels would
/// overwrite values the backward pass still needs, and none of them has a backward.
pub(crate) fn fast_path(t: &Tensor) -> bool {
    constant_cpu_f32(t) && !hooklens_core::grad_mode()
}

/// Whether `t` is f32 on the CPU and not tracked by candle's autograd: what these
/// kernels need of a weight (any grad mode: a weight that is no `Var` has no gradient
/// to lose), and of every operand on the fast path.
pub(crate) fn constant_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op()
}

/// Runs `f(first_row, rows_in, rows_out)` over contiguous chunks of rows, on several
/// threads when the tensor is large enough for that to pay.
pub(crate) fn par_rows<F>(n_rows: usize, in_width: usize, src: &[f32], out_width: usize, dst: &mut [f32], f: F)
where
    F: Fn(usize, &[f32], &mut [f32]) + Sync,
{
    let threads = num_threads();
    if threads == 1 || n_rows * in_width.max(out_width) < (1 << 16) || n_rows < 2 {
        f(0, src, dst);
        return;
    }
    // On rayon's pool, which sgemm uses too: threads spawned per call cost a forward
    // about 70 thread starts, and they contend with rayon's spinning idle workers.
    use rayon::prelude::*;
    let per = n_rows.div_ceil(threads);
    src.par_chunks(per * in_width)
        .zip(dst.par_chunks_mut(per * out_width))
        .enumerate()
        .for_each(|(i, (src, dst))| f(i * per, src, dst));
}

/// Runs `f(i, chunk)` over the `i`-th chunk of `chunk` values of `data` (the last
/// maybe shorter), on rayon's threads when `data` has at least `min_len` values;
/// otherwise `f(0, data)`, whole, so `chunk` must be a multiple of whatever unit `f`
/// works in (a row).
fn par_chunks_in_place(data: &mut [f32], chunk: usize, min_len: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if num_threads() == 1 || data.len() < min_len || chunk >= data.len() {
        f(0, data);
    } else {
        use rayon::prelude::*;
        data.par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// Runs `f` over matching chunks of `src` and `dst` (`chunk` values each, the last
/// maybe shorter), on rayon's threads when `src` has at least `min_len` values; then
/// `dst`, which `f` must have written in full, as a vector.
fn par_map_into(
    src: &[f32],
    chunk: usize,
    min_len: usize,
    f: impl Fn(&[f32], &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let n = src.len();
    let mut dst: Vec<f32> = Vec::with_capacity(n);
    let out = &mut dst.spare_capacity_mut()[..n];
    if num_threads() == 1 || n < min_len || chunk >= n {
        f(src, out);
    } else {
        use rayon::prelude::*;
        src.par_chunks(chunk.max(1))
            .zip(out.par_chunks_mut(chunk.max(1)))
            .for_each(|(s, d)| f(s, d));
    }
    // SAFETY: `f` wrote every value of `out`, the first n of `dst`'s capacity (the
    // callers' kernels write one output per input, and the chunks cover both).
    unsafe { dst.set_len(n) };
    dst
}

/// The contiguous f32 data of a storage, mutable, or an error naming `what`.
fn contiguous_f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a mut [f32]> {
    let (a, b) = match l.contiguous_offsets() {
        Some(o) => o,
        None => candle_core::bail!("{what}: must be contiguous"),
    };
    match s {
        CpuStorage::F32(v) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("{what}: must be f32"),
    }
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
        let dst = par_map_into(src, src.len().div_ceil(num_threads()), 1 << 16, gelu_new_into);
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }
}

impl InplaceOp1 for GeluNew {
    fn name(&self) -> &'static str {
        "hooklens-gelu-new-in-place"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let data = contiguous_f32_mut(s, l, "gelu input")?;
        let chunk = data.len().div_ceil(num_threads());
        par_chunks_in_place(data, chunk, 1 << 16, |_, c| gelu_new_in_place(c));
        Ok(())
    }
}

dispatched! {
    /// `x[i] = gelu_new(x[i])`.
    fn gelu_new_in_place(x: &mut [f32]) => gelu_new_in_place_impl
}

#[inline(always)]
fn gelu_new_in_place_impl<const FMA: bool>(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        for v in c.iter_mut() {
            *v = gelu_new_scalar(*v);
        }
    }
    for v in chunks.into_remainder() {
        *v = gelu_new_scalar(*v);
    }
}

dispatched! {
    /// `dst[i] = gelu_new(src[i])`, into memory that need not be initialised (a copy
    /// followed by the in-place kernel would cost a pass more).
    fn gelu_new_into(src: &[f32], dst: &mut [MaybeUninit<f32>]) => gelu_new_into_impl
}

#[inline(always)]
fn gelu_new_into_impl<const FMA: bool>(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        d.write(gelu_new_scalar(x));
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

/// [`gelu_new`] of a tensor nothing else holds: on the fast path written over `x`,
/// which saves a buffer the size of the MLP's hidden layer and a pass over it.
pub(crate) fn gelu_new_owned(x: Tensor) -> candle_core::Result<Tensor> {
    if fast_path(&x) && x.is_contiguous() {
        x.inplace_op1(&GeluNew)?;
        Ok(x)
    } else {
        gelu_new(&x)
    }
}

/// The gated MLP's product `act(gate) * up`, written over `up`: `act` is SiLU or
/// `gelu_new` (Llama's SwiGLU, Gemma's GeGLU).
struct GatedProduct {
    silu: bool,
}

impl InplaceOp2 for GatedProduct {
    fn name(&self) -> &'static str {
        "hooklens-gated-product"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let gate = contiguous_f32(s2, l2, "gated MLP: gate")?;
        let up = contiguous_f32_mut(s1, l1, "gated MLP: up projection")?;
        if gate.len() != up.len() {
            candle_core::bail!(
                "gated MLP: gate {:?} and up projection {:?} differ",
                l2.dims(),
                l1.dims()
            )
        }
        let chunk = up.len().div_ceil(num_threads()).max(1);
        let silu = self.silu;
        par_chunks_in_place(up, chunk, 1 << 15, |i, out| {
            let g = &gate[i * chunk..i * chunk + out.len()];
            if silu {
                for (o, &x) in out.iter_mut().zip(g) {
                    *o *= x / (1.0 + exp_approx(-x));
                }
            } else {
                for (o, &x) in out.iter_mut().zip(g) {
                    *o *= gelu_new_scalar(x);
                }
            }
        });
        Ok(())
    }
}

/// `act(gate) * up` for a fresh `up` nothing else holds (both `[.., d_mlp]`, `act`
/// SiLU when `silu`, else `gelu_new`): on the fast path written over `up`; `None`
/// off it, where the caller computes it with candle's ops.
pub(crate) fn gated_product_owned(gate: &Tensor, up: Tensor, silu: bool) -> Option<candle_core::Result<Tensor>> {
    if !(fast_path(gate) && fast_path(&up) && up.is_contiguous() && gate.dims() == up.dims()) {
        return None;
    }
    Some(gate.contiguous().and_then(|g| {
        up.inplace_op2(&g, &GatedProduct { silu })?;
        Ok(up)
    }))
}

/// [`gated_product_owned`] into a new tensor, leaving `up` as it is (a hook or a cache
/// may hold it): `None` off the fast path.
pub(crate) fn gated_product(gate: &Tensor, up: &Tensor, silu: bool) -> Option<candle_core::Result<Tensor>> {
    if !(fast_path(gate) && fast_path(up) && gate.dims() == up.dims()) {
        return None;
    }
    // One copy of `up` to write the product into (`contiguous` already made one when
    // `up` was a view).
    let out = if up.is_contiguous() { up.copy() } else { up.contiguous() };
    Some(out.and_then(|out| {
        gated_product_owned(gate, out, silu).unwrap_or_else(|| candle_core::bail!("gated MLP: not on the fast path"))
    }))
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
        let data = contiguous_f32_mut(s1, l1, "add-bias: output")?;
        if n == 0 || data.len() % n != 0 {
            candle_core::bail!("add-bias: bias of {n} values for rows of {:?}", l1.dims())
        }
        let chunk = (data.len() / n).div_ceil(num_threads()) * n;
        par_chunks_in_place(data, chunk, 1 << 16, |_, chunk| {
            for row in chunk.chunks_mut(n) {
                for (x, b) in row.iter_mut().zip(bias) {
                    *x += b;
                }
            }
        });
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

/// At most this many rows go through [`small_matmul`] rather than candle's gemm, which
/// packs the weight into blocks first: worth it for many rows, wasted work for a
/// decoding step's one row, where the weight is read once and memory bandwidth is all
/// that counts (candle's gemm reaches a third of PyTorch's speed there).
pub(crate) const SMALL_MATMUL_ROWS: usize = 4;

/// `x` `[rows, in]` (contiguous) times `w` `[in, out]`, for few rows. `w` is either
/// contiguous (the Conv1D layout of every block weight) or the transpose of a
/// contiguous `[out, in]` (the unembedding tied to `W_E`); it is read exactly once.
pub(crate) struct SmallMatmul;

impl SmallMatmul {
    /// `y[r, c] = sum_i x[r, i] w[i, c]`, `w` row-major `[in, out]`: the sum of the
    /// weight's rows scaled by `x`. Each task takes a band of consecutive weight rows,
    /// so that every thread streams one contiguous stretch of memory (the prefetcher's
    /// best case: this product is bound by memory bandwidth), into its own partial sum
    /// of `rows * out` floats; the partial sums are added at the end.
    pub(crate) fn rows_form<W: WeightValue>(x: &[f32], rows: usize, d_in: usize, w: &[W], d_out: usize) -> Vec<f32> {
        use rayon::prelude::*;
        let tasks = rayon::current_num_threads().clamp(1, d_in);
        let band = d_in.div_ceil(tasks);
        let partials: Vec<Vec<f32>> = (0..d_in.div_ceil(band))
            .into_par_iter()
            .map(|t| {
                let (i0, i1) = (t * band, ((t + 1) * band).min(d_in));
                let mut acc = vec![0f32; rows * d_out];
                for r in 0..rows {
                    let xr = &x[r * d_in + i0..r * d_in + i1];
                    W::accumulate_rows(&mut acc[r * d_out..(r + 1) * d_out], xr, &w[i0 * d_out..i1 * d_out]);
                }
                acc
            })
            .collect();
        let mut parts = partials.into_iter();
        let mut y = parts.next().unwrap_or_else(|| vec![0f32; rows * d_out]);
        for p in parts {
            y.iter_mut().zip(&p).for_each(|(y, p)| *y += p);
        }
        y
    }

    /// `y[r, c] = dot(x[r, :], wt[c, :])` for `wt` row-major `[out, in]` (`w`'s
    /// transpose): one dot product per output, split over blocks of outputs (each a
    /// contiguous stretch of `wt`).
    pub(crate) fn dot_form<W: WeightValue>(x: &[f32], rows: usize, d_in: usize, wt: &[W], d_out: usize) -> Vec<f32> {
        use rayon::prelude::*;
        let mut yt = vec![0f32; d_out * rows];
        // Several blocks per thread: the OS may take a core away on a shared machine.
        let per = d_out.div_ceil(rayon::current_num_threads().max(1) * 4).max(64);
        yt.par_chunks_mut(per * rows).enumerate().for_each(|(blk, out)| {
            let c0 = blk * per;
            let n = out.len() / rows;
            W::dots(out, x, rows, d_in, &wt[c0 * d_in..(c0 + n) * d_in]);
        });
        if rows == 1 {
            return yt;
        }
        let mut y = vec![0f32; rows * d_out];
        for c in 0..d_out {
            for r in 0..rows {
                y[r * d_out + c] = yt[c * rows + r];
            }
        }
        y
    }
}

/// A weight's element type as [`SmallMatmul::rows_form`] reads it: f32, or bf16
/// widened to f32 as it streams in (the product is bound by the weight's bytes, which
/// bf16 halves).
pub(crate) trait WeightValue: Copy + Send + Sync {
    /// The value in f32.
    fn f32(self) -> f32;
    /// `acc += sum_i x[i] * w[i, :]` over the rows of `w` (`x.len()` rows of
    /// `acc.len()`), compiled for the CPU's widest vectors.
    fn accumulate_rows(acc: &mut [f32], x: &[f32], w: &[Self]);
    /// `out[c * rows + r] = dot(x[r, :], wt[c, :])` for every row `c` of `wt`,
    /// compiled for the CPU's widest vectors.
    fn dots(out: &mut [f32], x: &[f32], rows: usize, d_in: usize, wt: &[Self]);
}

impl WeightValue for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }

    fn accumulate_rows(acc: &mut [f32], x: &[f32], w: &[f32]) {
        accumulate_rows(acc, x, w)
    }

    fn dots(out: &mut [f32], x: &[f32], rows: usize, d_in: usize, wt: &[f32]) {
        dots(out, x, rows, d_in, wt)
    }
}

impl WeightValue for half::bf16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        // bf16 is f32's top half: widening is a shift, which vectorises (half's own
        // conversion checks for NaN first).
        f32::from_bits((self.to_bits() as u32) << 16)
    }

    fn accumulate_rows(acc: &mut [f32], x: &[f32], w: &[half::bf16]) {
        accumulate_rows_bf16(acc, x, w)
    }

    fn dots(out: &mut [f32], x: &[f32], rows: usize, d_in: usize, wt: &[half::bf16]) {
        dots_bf16(out, x, rows, d_in, wt)
    }
}

dispatched! {
    /// `acc += sum_i x[i] * w[i, :]` over the rows of `w` (`x.len()` rows of `acc.len()`).
    fn accumulate_rows(acc: &mut [f32], x: &[f32], w: &[f32]) => accumulate_rows_impl
}

dispatched! {
    /// [`accumulate_rows`] for a bf16 `w`.
    fn accumulate_rows_bf16(acc: &mut [f32], x: &[f32], w: &[half::bf16]) => accumulate_rows_impl
}

#[inline(always)]
fn accumulate_rows_impl<const FMA: bool>(acc: &mut [f32], x: &[f32], w: &[impl WeightValue]) {
    let n = acc.len();
    // Two weight rows per pass over `acc`: half the accumulator loads and stores.
    let mut pairs = x.chunks_exact(2).zip(w.chunks_exact(2 * n));
    for (xs, ws) in &mut pairs {
        let (w0, w1) = ws.split_at(n);
        let (a, b) = (xs[0], xs[1]);
        for ((o, &u), &v) in acc.iter_mut().zip(w0).zip(w1) {
            let (u, v) = (u.f32(), v.f32());
            *o = if FMA {
                v.mul_add(b, u.mul_add(a, *o))
            } else {
                *o + a * u + b * v
            };
        }
    }
    if x.len() % 2 == 1 {
        axpy::<FMA>(x[x.len() - 1], &w[(x.len() - 1) * n..], acc);
    }
}

/// `y += a * x`, element by element (`x` may be longer: its first `y.len()` values).
#[inline(always)]
pub(crate) fn axpy<const FMA: bool>(a: f32, x: &[impl WeightValue], y: &mut [f32]) {
    for (o, &u) in y.iter_mut().zip(x) {
        let u = u.f32();
        *o = if FMA { u.mul_add(a, *o) } else { *o + a * u };
    }
}

dispatched! {
    /// `out[c * rows + r] = dot(x[r, :], wt[c, :])` for every row `c` of `wt`.
    fn dots(out: &mut [f32], x: &[f32], rows: usize, d_in: usize, wt: &[f32]) => dots_impl
}

dispatched! {
    /// [`dots`] for a bf16 `wt`.
    fn dots_bf16(out: &mut [f32], x: &[f32], rows: usize, d_in: usize, wt: &[half::bf16]) => dots_impl
}

#[inline(always)]
fn dots_impl<const FMA: bool>(out: &mut [f32], x: &[f32], rows: usize, d_in: usize, wt: &[impl WeightValue]) {
    for (o, w_row) in out.chunks_mut(rows).zip(wt.chunks_exact(d_in)) {
        for (r, o) in o.iter_mut().enumerate() {
            *o = dot::<FMA>(&x[r * d_in..(r + 1) * d_in], w_row);
        }
    }
}

/// `dot(a, b)` with 16 independent accumulators, so that the loop vectorises.
#[inline(always)]
pub(crate) fn dot<const FMA: bool>(a: &[f32], b: &[impl WeightValue]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y.f32())
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..16 {
            let y = y[k].f32();
            acc[k] = if FMA {
                x[k].mul_add(y, acc[k])
            } else {
                acc[k] + x[k] * y
            };
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl CustomOp2 for SmallMatmul {
    fn name(&self) -> &'static str {
        "hooklens-small-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, rows, d_in, d_out) = matmul_operands(s1, l1, l2, "small matmul")?;
        let w = s2.as_slice::<f32>()?;
        let start = l2.start_offset();
        let w = &w[start..start + d_in * d_out];
        let y = match l2.stride() {
            [s0, 1] if *s0 == d_out => Self::rows_form(x, rows, d_in, w, d_out),
            [1, s1] if *s1 == d_in => Self::dot_form(x, rows, d_in, w, d_out),
            other => candle_core::bail!("small matmul: weight strides {other:?} are not supported"),
        };
        Ok((CpuStorage::F32(y), Shape::from((rows, d_out))))
    }
}

/// `x @ w` for `x` `[rows, in]` with few rows on the fast path (see [`SMALL_MATMUL_ROWS`]),
/// `None` where candle's matmul should do it.
pub(crate) fn small_matmul(x: &Tensor, w: &Tensor) -> Option<candle_core::Result<Tensor>> {
    let (rows, _) = x.dims2().ok()?;
    let (d_in, d_out) = w.dims2().ok()?;
    let w_ok = constant_cpu_f32(w);
    let layout_ok = w.is_contiguous() || w.stride() == [1, d_in];
    // Beyond ~4 rows gemm's blocking wins; below ~64K weights threading does not pay.
    if rows == 0 || rows > SMALL_MATMUL_ROWS || !fast_path(x) || !w_ok || !layout_ok || d_in * d_out < (1 << 16) {
        return None;
    }
    Some(x.contiguous().and_then(|x| x.apply_op2_no_bwd(w, &SmallMatmul)))
}

/// The contiguous input `[rows, in]` of `x @ w` and `(rows, in, out)`, or an error
/// naming `op` where the shapes do not fit.
fn matmul_operands<'a>(
    s1: &'a CpuStorage,
    l1: &Layout,
    l2: &Layout,
    op: &str,
) -> candle_core::Result<(&'a [f32], usize, usize, usize)> {
    let x = contiguous_f32(s1, l1, "matmul input")?;
    let (rows, d_in) = l1.shape().dims2()?;
    let (w_in, d_out) = l2.shape().dims2()?;
    if w_in != d_in {
        candle_core::bail!("{op}: input [{rows}, {d_in}] does not fit weight [{w_in}, {d_out}]")
    }
    Ok((x, rows, d_in, d_out))
}

/// Where [`sgemm_into`] writes its `[rows, d_out]` row-major result.
enum SgemmOut<'a> {
    /// Memory that need not be initialised (a new buffer: zeroing it would cost a pass
    /// of its own): sgemm with beta 0 writes every value and reads none.
    Fresh(&'a mut [MaybeUninit<f32>]),
    /// Values the product is added to (beta 1).
    Accumulate(&'a mut [f32]),
}

/// `y = x @ w` or `y += x @ w` through `matrixmultiply`'s sgemm: `x` `[rows, d_in]`
/// row-major, `w` `[d_in, d_out]` with any strides inside `w_storage`, `y`
/// `[rows, d_out]` row-major, through `kernel` (`None`: [`WeightGemm::pick`]'s).
#[allow(clippy::too_many_arguments)]
fn sgemm_into(
    x: &[f32],
    rows: usize,
    d_in: usize,
    d_out: usize,
    w_storage: &CpuStorage,
    l2: &Layout,
    y: SgemmOut<'_>,
    kernel: Option<WeightGemm>,
) -> candle_core::Result<()> {
    let (beta, y_len, y_out) = match y {
        SgemmOut::Fresh(y) => (0.0, y.len(), SharedOut::new(y.as_mut_ptr().cast::<f32>())),
        SgemmOut::Accumulate(y) => (1.0, y.len(), SharedOut::new(y.as_mut_ptr())),
    };
    let w = w_storage.as_slice::<f32>()?;
    let (rs, cs) = match l2.stride() {
        [rs, cs] => (*rs, *cs),
        other => candle_core::bail!("sgemm: weight strides {other:?}"),
    };
    let start = l2.start_offset();
    // The last element sgemm reads must lie inside the storage: it trusts the strides.
    let last = start + (d_in.max(1) - 1) * rs + (d_out.max(1) - 1) * cs;
    if rows == 0 || d_in == 0 || d_out == 0 || last >= w.len() {
        candle_core::bail!("sgemm: weight layout {:?} exceeds its storage ({} values)", l2, w.len());
    }
    if x.len() != rows * d_in || y_len != rows * d_out {
        candle_core::bail!(
            "sgemm: {} inputs and {y_len} outputs for [{rows}, {d_in}] x [{d_in}, {d_out}]",
            x.len(),
        );
    }
    let w = &w[start..];
    let kernel = kernel.unwrap_or_else(|| WeightGemm::pick(rows, beta != 0.0, cs, (d_in, d_out)));
    if !kernel.runs(beta != 0.0, cs) {
        candle_core::bail!("sgemm: the {kernel:?} kernel cannot run this product on this CPU")
    }
    let product = WeightProduct {
        x,
        rows,
        d_in,
        d_out,
        w,
        strides: (rs, cs),
        y: y_out,
        accumulate: beta != 0.0,
    };
    if kernel == WeightGemm::GemmCrate {
        // SAFETY: x holds rows * d_in values (row-major); w's strided view was checked
        // above to stay inside its storage; y holds rows * d_out values, borrowed
        // mutably by this call.
        unsafe { product.gemm_crate(num_threads()) };
        return Ok(());
    }
    column_blocks(d_out, rows * d_in * d_out, |j0, n| {
        // SAFETY: as above, each block writes only its own columns j0..j0 + n, and
        // `kernel.runs` was checked.
        unsafe { product.columns(kernel, j0, n) }
    });
    Ok(())
}

/// `acc += x @ w` in place, for [`sgemm_accumulate`].
struct SgemmAccumulate;

impl candle_core::InplaceOp3 for SgemmAccumulate {
    fn name(&self) -> &'static str {
        "hooklens-sgemm-accumulate"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let (x, rows, d_in, d_out) = matmul_operands(s2, l2, l3, "sgemm-accumulate")?;
        if l1.dims() != [rows, d_out] {
            candle_core::bail!(
                "sgemm-accumulate: accumulator {:?} for a [{rows}, {d_out}] product",
                l1.dims()
            )
        }
        let y = contiguous_f32_mut(s1, l1, "sgemm-accumulate: the accumulator")?;
        sgemm_into(x, rows, d_in, d_out, s3, l3, SgemmOut::Accumulate(y), None)
    }
}

/// `acc + x @ w` for `acc` `[rows, out]`, `x` `[rows, in]`, `w` `[in, out]` (any
/// strides), written into `acc`'s storage: sgemm adds the product to what is there,
/// so a bias or other terms precomputed in `acc` cost no pass of their own over the
/// output. `acc` must be a fresh tensor nothing else holds (it is edited in place).
/// `None` off the fast path and for few rows (where [`small_matmul`] is faster).
pub(crate) fn sgemm_accumulate(acc: &Tensor, x: &Tensor, w: &Tensor) -> Option<candle_core::Result<Tensor>> {
    let (rows, _) = x.dims2().ok()?;
    let w_ok = constant_cpu_f32(w) && w.rank() == 2;
    let acc_ok = fast_path(acc) && acc.is_contiguous();
    if rows <= SMALL_MATMUL_ROWS || !fast_path(x) || !w_ok || !acc_ok {
        return None;
    }
    Some(
        x.contiguous()
            .and_then(|x| acc.inplace_op3(&x, w, &SgemmAccumulate))
            .map(|()| acc.clone()),
    )
}

/// `x @ w` for [`sgemm`], through the given kernel (`None`: the one
/// [`WeightGemm::pick`] picks).
struct Sgemm(Option<WeightGemm>);

impl CustomOp2 for Sgemm {
    fn name(&self) -> &'static str {
        "hooklens-sgemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, rows, d_in, d_out) = matmul_operands(s1, l1, l2, "sgemm")?;
        let n = rows * d_out;
        let mut y: Vec<f32> = Vec::with_capacity(n);
        sgemm_into(
            x,
            rows,
            d_in,
            d_out,
            s2,
            l2,
            SgemmOut::Fresh(&mut y.spare_capacity_mut()[..n]),
            self.0,
        )?;
        // SAFETY: sgemm_into returned Ok, so it wrote all n values (every column
        // block of every row).
        unsafe { y.set_len(n) };
        Ok((CpuStorage::F32(y), Shape::from((rows, d_out))))
    }

    /// Only `x`'s gradient, `grad @ w^T`: [`matmul_constant_rhs`] is applied only where
    /// `w` is a constant.
    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let w_t = w.t()?;
        let grad_x = if grad.device().is_cpu() && grad.dtype() == DType::F32 {
            grad.contiguous()?.apply_op2_no_bwd(&w_t, &Sgemm(None))?
        } else {
            grad.matmul(&w_t)?
        };
        Ok((Some(grad_x), None))
    }
}

/// `x @ w` for `x` `[rows, in]`, which may carry a gradient, and a constant `w`
/// `[in, out]` (any strides; not tracked by autograd), as `[rows, out]`. candle's
/// matmul computes the gradient of both operands in the backward pass whether or not
/// anything needs it; with a frozen `[64, 50257]` unembedding (the built-in model's
/// training) that is half the backward's work, spent for nothing. On the CPU in f32
/// the product is [`sgemm`]'s and the backward computes `x`'s gradient alone;
/// elsewhere, or when `w` is tracked, it is candle's matmul.
pub(crate) fn matmul_constant_rhs(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let x_ok = x.device().is_cpu() && x.dtype() == DType::F32;
    if x_ok && constant_cpu_f32(w) && x.rank() == 2 && w.rank() == 2 {
        return x.contiguous()?.apply_op2(w, Sgemm(None));
    }
    x.matmul(w)
}

/// `x @ w` for `x` `[rows, in]` and `w` `[in, out]` (any strides, e.g. a transposed
/// `W_E`) through `matrixmultiply`'s sgemm on the fast path, `None` where candle's
/// matmul should do it (gradients, other devices and dtypes).
///
/// The output's columns are split in blocks over rayon's threads, each a
/// single-threaded sgemm (`matrixmultiply` is built without its own threading). On the
/// 2-core machine this project is measured on it beats candle's gemm at every shape of
/// the forward (`examples/gpt2_bench.rs` times both floors); it has not been measured on
/// more cores.
pub(crate) fn sgemm(x: &Tensor, w: &Tensor) -> Option<candle_core::Result<Tensor>> {
    sgemm_with(x, w, None)
}

/// [`sgemm`] through `kernel` (`None`: [`WeightGemm::pick`]'s); an error where that
/// kernel cannot run the product on this CPU.
pub(crate) fn sgemm_with(x: &Tensor, w: &Tensor, kernel: Option<WeightGemm>) -> Option<candle_core::Result<Tensor>> {
    let (rows, _) = x.dims2().ok()?;
    let (_, _) = w.dims2().ok()?;
    if rows == 0 || !fast_path(x) || !constant_cpu_f32(w) {
        return None;
    }
    Some(x.contiguous().and_then(|x| x.apply_op2_no_bwd(w, &Sgemm(kernel))))
}

/// Adds an additive attention mask in place: `scores` `[batch, head, query, key]`
/// (contiguous), `mask` `[query, key]`, `[batch, 1, query, key]` (padding), or
/// `[1, head, query, key]` / `[batch, head, query, key]` (ALiBi biases in it).
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
        // Which mask block goes with the scores' block `batch * h + head`: one for all,
        // one per sequence (padding), one per head or per sequence and head (ALiBi).
        let (per_batch, per_head) = match l2.dims() {
            [mq, mk] if *mq == q && *mk == k => (false, false),
            [mb, 1, mq, mk] if *mb == b && *mq == q && *mk == k => (true, false),
            [1, mh, mq, mk] if *mh == h && *mq == q && *mk == k => (false, true),
            [mb, mh, mq, mk] if *mb == b && *mh == h && *mq == q && *mk == k => (true, true),
            other => candle_core::bail!("add-mask: mask {other:?} does not fit scores {dims:?}"),
        };
        let data = contiguous_f32_mut(s1, l1, "add-mask: scores")?;
        let add = |first_block: usize, chunk: &mut [f32]| {
            for (i, blk) in chunk.chunks_mut(block).enumerate() {
                let idx = first_block + i;
                let m_block = match (per_batch, per_head) {
                    (false, false) => 0,
                    (true, false) => idx / h,
                    (false, true) => idx % h,
                    (true, true) => idx,
                };
                let m = &mask[m_block * block..(m_block + 1) * block];
                for (x, m) in blk.iter_mut().zip(m) {
                    *x += m;
                }
            }
        };
        let per = (b * h).div_ceil(num_threads());
        par_chunks_in_place(data, per * block, 1 << 16, |i, chunk| add(i * per, chunk));
        Ok(())
    }
}

/// `scores + mask` for fresh matmul output `scores` `[batch, head, query, key]` and an
/// additive mask `[query, key]`, `[batch, 1, query, key]`, `[1, head, query, key]` or
/// `[batch, head, query, key]`; in place on the fast path.
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
        let rows = src.len() / n;
        let chunk = rows.div_ceil(num_threads()) * n;
        let dst = par_map_into(src, chunk, 1 << 16, |src, dst| {
            for (row, out) in src.chunks(n).zip(dst.chunks_mut(n)) {
                softmax_row_into(row, out);
            }
        });
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }
}

impl InplaceOp1 for SoftmaxRows {
    fn name(&self) -> &'static str {
        "hooklens-softmax-in-place"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let n = *l.dims().last().unwrap_or(&1);
        let data = contiguous_f32_mut(s, l, "softmax input")?;
        if let Some(rows) = data.len().checked_div(n) {
            let chunk = rows.div_ceil(num_threads()) * n;
            par_chunks_in_place(data, chunk, 1 << 16, |_, chunk| {
                for row in chunk.chunks_mut(n) {
                    softmax_row(row);
                }
            });
        }
        Ok(())
    }
}

dispatched! {
    /// `row = softmax(row)`, in place; a row of `-inf` gives zeros, a NaN gives NaNs.
    fn softmax_row(row: &mut [f32]) => softmax_row_impl
}

#[inline(always)]
fn softmax_row_impl<const FMA: bool>(row: &mut [f32]) {
    let max = row_max(row);
    for o in row.iter_mut() {
        *o = exp_below(*o, max);
    }
    normalize(row, max);
}

dispatched! {
    /// `out = softmax(row)`, as [`softmax_row`], into memory that need not be initialised.
    fn softmax_row_into(row: &[f32], out: &mut [MaybeUninit<f32>]) => softmax_row_into_impl
}

#[inline(always)]
fn softmax_row_into_impl<const FMA: bool>(row: &[f32], out: &mut [MaybeUninit<f32>]) {
    let max = row_max(row);
    let len = row.len().min(out.len());
    let out = &mut out[..len];
    for (o, &x) in out.iter_mut().zip(row) {
        o.write(exp_below(x, max));
    }
    // SAFETY: every value of `out` was written just above (it is no longer than `row`).
    let out = unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) };
    normalize(out, max);
}

/// The largest value of `row` (NaNs skipped), in eight partial lanes so that the
/// reduction vectorises.
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = row.chunks_exact(8);
    let mut max = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    for c in chunks {
        for k in 0..8 {
            lanes[k] = if c[k] > lanes[k] { c[k] } else { lanes[k] };
        }
    }
    for l in lanes {
        max = if l > max { l } else { max };
    }
    max
}

/// `e^(x - max)`, exactly 0 far below `max` (exp_approx clamps at e^-87; masked
/// entries must be exactly 0).
#[inline(always)]
fn exp_below(x: f32, max: f32) -> f32 {
    let d = x - max;
    if d < -87.0 {
        0.0
    } else {
        exp_approx(d)
    }
}

/// Divides the exponentials of a row by their sum; a row whose `max` is `-inf` (every
/// key masked) becomes zeros.
#[inline(always)]
fn normalize(row: &mut [f32], max: f32) {
    if max == f32::NEG_INFINITY {
        row.iter_mut().for_each(|o| *o = 0.0);
        return;
    }
    let mut sums = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for k in 0..8 {
            sums[k] += c[k];
        }
    }
    let inv = 1.0 / (sums.iter().sum::<f32>() + tail);
    row.iter_mut().for_each(|o| *o *= inv);
}

/// [`softmax_last_dim`] of a tensor nothing else holds: on the fast path written
/// over `x`.
pub(crate) fn softmax_last_dim_owned(x: Tensor, may_have_empty_rows: bool) -> candle_core::Result<Tensor> {
    if fast_path(&x) && x.is_contiguous() {
        x.inplace_op1(&SoftmaxRows)?;
        Ok(x)
    } else {
        softmax_last_dim(&x, may_have_empty_rows)
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
    use hooklens_testutil::max_abs_diff;

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
    fn small_matmul_equals_candle_matmul() {
        let dev = Device::Cpu;
        let (d_in, d_out) = (301, 700);
        let w = Tensor::randn(0f32, 1.0, (d_in, d_out), &dev).unwrap();
        // The transpose of a contiguous [out, in], as the unembedding tied to W_E.
        let wt = Tensor::randn(0f32, 1.0, (d_out, d_in), &dev).unwrap();
        for rows in 1..=SMALL_MATMUL_ROWS {
            let x = Tensor::randn(0f32, 1.0, (rows, d_in), &dev).unwrap();
            for w in [w.clone(), wt.t().unwrap()] {
                let got = small_matmul(&x, &w).expect("takes the fast path").unwrap();
                let want = x.matmul(&w).unwrap();
                assert_eq!(got.dims(), want.dims());
                assert!(max_abs_diff(&got, &want) < 1e-3, "{rows} rows");
            }
        }
        // Many rows, a tracked weight, or a weight of other strides go to candle.
        let x = Tensor::randn(0f32, 1.0, (SMALL_MATMUL_ROWS + 1, d_in), &dev).unwrap();
        assert!(small_matmul(&x, &w).is_none());
        let x = Tensor::randn(0f32, 1.0, (1, d_in), &dev).unwrap();
        let var = candle_core::Var::from_tensor(&w).unwrap();
        assert!(small_matmul(&x, var.as_tensor()).is_none());
        let strided = Tensor::randn(0f32, 1.0, (d_in, 2 * d_out), &dev)
            .unwrap()
            .narrow(1, 0, d_out)
            .unwrap();
        assert!(small_matmul(&x, &strided).is_none());
    }

    #[test]
    fn sgemm_equals_candle_matmul_for_every_weight_layout() {
        let dev = Device::Cpu;
        let (d_in, d_out) = (97, 130);
        let w = Tensor::randn(0f32, 1.0, (d_in, d_out), &dev).unwrap();
        // W_E transposed (the tied unembedding), and a column window of a wider matrix
        // (a view that starts past the storage's first value).
        let wt = Tensor::randn(0f32, 1.0, (d_out, d_in), &dev).unwrap().t().unwrap();
        let window = Tensor::randn(0f32, 1.0, (d_in, 3 * d_out), &dev)
            .unwrap()
            .narrow(1, d_out, d_out)
            .unwrap();
        for rows in [1, 5, 64, 257] {
            let x = Tensor::randn(0f32, 1.0, (rows, d_in), &dev).unwrap();
            for w in [&w, &wt, &window] {
                // The op itself, whatever this machine's thread count makes `sgemm` choose.
                let got = x.apply_op2_no_bwd(w, &Sgemm(None)).unwrap();
                let want = x.matmul(&w.contiguous().unwrap()).unwrap();
                assert_eq!(got.dims(), want.dims());
                assert!(max_abs_diff(&got, &want) < 1e-3, "{rows} rows, {:?}", w.stride());
            }
        }
        // A tracked weight (training) goes to candle, which can differentiate it.
        let x = Tensor::randn(0f32, 1.0, (64, d_in), &dev).unwrap();
        let var = candle_core::Var::from_tensor(&w).unwrap();
        assert!(sgemm(&x, var.as_tensor()).is_none());
        // Shapes that do not fit are an error, not a read past the weight.
        let short = Tensor::randn(0f32, 1.0, (d_in - 1, d_out), &dev).unwrap();
        assert!(x.apply_op2_no_bwd(&short, &Sgemm(None)).is_err());
    }

    #[test]
    fn matmul_constant_rhs_differentiates_the_input_only() {
        let dev = candle_core::Device::Cpu;
        let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1., (5, 7), &dev).unwrap()).unwrap();
        // A transposed view, as the tied unembedding is.
        let w = Tensor::randn(0f32, 1., (11, 7), &dev).unwrap().t().unwrap();
        let probe = Tensor::randn(0f32, 1., (5, 11), &dev).unwrap();
        let ours = matmul_constant_rhs(x.as_tensor(), &w).unwrap();
        let theirs = x.as_tensor().matmul(&w).unwrap();
        assert!(max_abs_diff(&ours, &theirs) < 1e-5);
        let grad = |y: Tensor| {
            let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(x.as_tensor()).unwrap().clone()
        };
        assert!(max_abs_diff(&grad(ours), &grad(theirs)) < 1e-5);
    }

    #[test]
    fn fast_path_excludes_tracked_tensors() {
        let t = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(fast_path(&t));
        let var = candle_core::Var::from_tensor(&t).unwrap();
        assert!(!fast_path(var.as_tensor()));
        assert!(!fast_path(&(var.as_tensor() + 1.0).unwrap()));
    }

    #[test]
    fn kernels_equal_candle_ops() {
        let x = (Tensor::randn(0f32, 3.0, (300, 700), &Device::Cpu).unwrap() - 0.5).unwrap();
        let fast = gelu_new(&x).unwrap();
        let slow = x.gelu().unwrap();
        let d = max_abs_diff(&fast, &slow);
        assert!(d < 1e-5, "{d}");
        let b = Tensor::randn(0f32, 1.0, 700, &Device::Cpu).unwrap();
        let want = x.broadcast_add(&b).unwrap();
        let got = add_bias_owned(x.copy().unwrap(), &b).unwrap();
        let d = max_abs_diff(&got, &want);
        assert_eq!(d, 0.0);
    }

    #[test]
    fn in_place_kernels_equal_the_out_of_place_ones_and_candle() {
        // 133 keys: rows that are no multiple of the 8 lanes.
        let x = Tensor::randn(0f32, 3.0, (37, 133), &Device::Cpu).unwrap();
        let mut v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v[..133].fill(f32::NEG_INFINITY); // a fully masked row
        v[133..200].fill(f32::NEG_INFINITY); // a partly masked one
        v[3 * 133 + 7] = f32::NAN;
        let x = Tensor::from_vec(v, (37, 133), &Device::Cpu).unwrap();

        let fresh = softmax_last_dim(&x, true).unwrap();
        let owned = softmax_last_dim_owned(x.copy().unwrap(), true).unwrap();
        let (a, b) = (fresh.to_vec2::<f32>().unwrap(), owned.to_vec2::<f32>().unwrap());
        for (ra, rb) in a.iter().zip(&b) {
            for (p, q) in ra.iter().zip(rb) {
                assert!(p.to_bits() == q.to_bits(), "{p} vs {q}");
            }
        }
        assert!(a[0].iter().all(|&p| p == 0.0), "a row of -inf gives zeros");
        assert!(a[1][..67].iter().all(|&p| p == 0.0));
        assert!(a[3].iter().all(|p| p.is_nan()), "a NaN spreads over its row");
        let finite = x.narrow(0, 4, 33).unwrap();
        let want = candle_nn::ops::softmax_last_dim(&finite).unwrap();
        let d = max_abs_diff(&fresh.narrow(0, 4, 33).unwrap(), &want);
        assert!(d < 1e-6, "softmax off candle's by {d}");
        let sums = fresh.narrow(0, 1, 2).unwrap().sum(1).unwrap().to_vec1::<f32>().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6), "{sums:?}");

        let x = Tensor::randn(0f32, 3.0, (37, 133), &Device::Cpu).unwrap();
        let before = x.to_vec2::<f32>().unwrap();
        let fresh = gelu_new(&x).unwrap();
        assert_eq!(x.to_vec2::<f32>().unwrap(), before, "gelu_new leaves its input alone");
        let owned = gelu_new_owned(x.copy().unwrap()).unwrap();
        assert_eq!(fresh.to_vec2::<f32>().unwrap(), owned.to_vec2::<f32>().unwrap());
        // The dispatched build (AVX2 here) and the portable one agree bit for bit.
        let mut portable = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut dispatched = portable.clone();
        gelu_new_in_place_impl::<false>(&mut portable);
        gelu_new_in_place(&mut dispatched);
        assert_eq!(portable, dispatched);
        let mut row = x
            .narrow(0, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut row2 = row.clone();
        softmax_row_impl::<false>(&mut row);
        softmax_row(&mut row2);
        assert_eq!(row, row2);
    }

    /// The in-place mask addition equals candle's broadcast addition for every mask
    /// shape it takes: shared, per sequence, per head and per sequence and head.
    #[test]
    fn add_mask_in_place_equals_broadcast_add() {
        let dev = Device::Cpu;
        let (b, h, q, k) = (3, 5, 4, 6);
        let scores = Tensor::randn(0f32, 1.0, (b, h, q, k), &dev).unwrap();
        for shape in [vec![q, k], vec![b, 1, q, k], vec![1, h, q, k], vec![b, h, q, k]] {
            let mask = Tensor::randn(0f32, 1.0, shape.as_slice(), &dev).unwrap();
            let want = scores.broadcast_add(&mask).unwrap();
            let got = add_mask_owned(scores.copy().unwrap(), &mask).unwrap();
            assert_eq!(got.dims(), want.dims(), "{shape:?}");
            assert_eq!(max_abs_diff(&got, &want), 0.0, "{shape:?}");
        }
        // A mask that fits none of them is refused.
        let bad = Tensor::zeros((2, h, q, k), DType::F32, &dev).unwrap();
        assert!(add_mask_owned(scores.copy().unwrap(), &bad).is_err());
    }
}

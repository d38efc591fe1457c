//! TransformerLens's `LayerNorm` / `LayerNormPre` / `RMSNorm` / `RMSNormPre`, with
//! their two hook points.
//!
//! TransformerLens exposes the normalisation scale (`hook_scale`) between the two
//! halves of a norm, and a hook may replace it, so a single fused kernel cannot be
//! used: the norm is split into two row kernels, "scale" and "normalise with this
//! scale". candle-nn's fused `layer_norm` is not used either: it computes the variance
//! as `E[x²] - E[x]²`, which loses precision, and it has no `hook_scale`.
//!
//! The row kernels are CPU custom ops without backward; on other devices, and for
//! a differentiable forward, [`scale_composite`] and [`normalize_composite`] compute
//! the same thing with ordinary candle ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use hooklens_core::HookPoint;

use crate::ops::kernels::{contiguous_f32, par_rows};

/// Which statistics a norm removes: LayerNorm centres and scales, RMSNorm only scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// LayerNorm: `(x - mean) / sqrt(var + eps)`, then gain and bias.
    Layer,
    /// RMSNorm: `x / sqrt(mean(x²) + eps)`, then gain.
    Rms,
}

/// A norm as TransformerLens computes it. LayerNorm: centre, `hook_scale` =
/// `sqrt(var + eps)` `[.., 1]`, divide, gain and bias (LN) or nothing (LNPre), then
/// `hook_normalized`. RMSNorm: `hook_scale` = `sqrt(mean(x²) + eps)`, divide,
/// `hook_normalized` (before the gain, as TransformerLens), then the gain (RMS) or
/// nothing (RMSPre).
#[derive(Debug, hooklens_derive::Hooked)]
#[hooked(crate = "hooklens_core")]
pub struct Norm {
    kind: NormKind,
    /// Gain `[d]` and, for LayerNorm, bias `[d]`; `None` for the `Pre` forms.
    params: Option<(Tensor, Option<Tensor>)>,
    /// LayerNorm gain and bias stacked `[2, d]`, the fused kernel's third input.
    stacked: Option<Tensor>,
    eps: f64,
    /// The scale, `[.., 1]` (`[batch, pos, 1]` on the residual stream).
    pub hook_scale: HookPoint,
    /// The normalised input: LayerNorm's output after gain and bias, RMSNorm's before
    /// its gain; `[.., d]`.
    pub hook_normalized: HookPoint,
}

/// The GPT-2 name of [`Norm`], which was a LayerNorm only.
pub type LayerNorm = Norm;

impl Norm {
    /// A LayerNorm with gain `weight` and `bias` (both `[d]`), or none (LNPre).
    pub fn new(params: Option<(Tensor, Tensor)>, eps: f64) -> candle_core::Result<Self> {
        Self::with_kind(NormKind::Layer, params.map(|(w, b)| (w, Some(b))), eps)
    }

    /// An RMSNorm with gain `weight` `[d]`, or none (RMSPre).
    pub fn rms(weight: Option<Tensor>, eps: f64) -> candle_core::Result<Self> {
        Self::with_kind(NormKind::Rms, weight.map(|w| (w, None)), eps)
    }

    /// A norm of `kind` with gain and optional bias `[d]` (a bias only for LayerNorm).
    pub(crate) fn with_kind(
        kind: NormKind,
        params: Option<(Tensor, Option<Tensor>)>,
        eps: f64,
    ) -> candle_core::Result<Self> {
        let stacked = match (&kind, &params) {
            (NormKind::Layer, Some((w, Some(b)))) if w.device().is_cpu() && w.dtype() == DType::F32 => {
                Some(Tensor::stack(&[w, b], 0)?)
            }
            _ => None,
        };
        Ok(Norm {
            kind,
            params,
            stacked,
            eps,
            hook_scale: HookPoint::new(),
            hook_normalized: HookPoint::new(),
        })
    }

    /// This norm with hook points whose activations have no position axis: rows
    /// flattened over batch, positions and heads (the q/k norms), which `pos_slice`
    /// must leave whole.
    pub(crate) fn rows_without_positions(mut self) -> Self {
        self.hook_scale = std::mem::take(&mut self.hook_scale).with_position_axis(None);
        self.hook_normalized = std::mem::take(&mut self.hook_normalized).with_position_axis(None);
        self
    }

    /// LayerNorm or RMSNorm.
    pub fn kind(&self) -> NormKind {
        self.kind
    }

    /// The epsilon added under the square root.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// LayerNorm gain and bias `[d]`, if this is an LN with parameters.
    pub fn params(&self) -> Option<(&Tensor, &Tensor)> {
        match &self.params {
            Some((w, Some(b))) => Some((w, b)),
            _ => None,
        }
    }

    /// The gain `[d]` (LN or RMS), if the norm has parameters.
    pub fn weight(&self) -> Option<&Tensor> {
        self.params.as_ref().map(|(w, _)| w)
    }

    /// `x` `[.., d]` -> normalised `[.., d]`, running `hook_scale` (`[.., 1]`) and
    /// `hook_normalized`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let center = self.kind == NormKind::Layer;
        // The fused kernels have no backward: not for tensors candle's autograd tracks.
        let fused = crate::ops::kernels::fast_path(x)
            && self
                .params
                .as_ref()
                .is_none_or(|(w, b)| !w.track_op() && b.as_ref().is_none_or(|b| !b.track_op()));
        let x = if fused { x.contiguous()? } else { x.clone() };
        let scale = if fused {
            x.apply_op1_no_bwd(&RowScale {
                eps: self.eps as f32,
                center,
            })?
        } else {
            scale_of(&x, self.eps, center)?
        };
        let scale = self.hook_scale.forward(&scale)?;
        let layer_params = if center { self.params() } else { None };
        let out = if fused {
            let scale = scale.contiguous()?;
            let op = Normalize { center };
            match (layer_params, &self.stacked) {
                (Some(_), Some(wb)) => x.apply_op3_no_bwd(&scale, wb, &op)?,
                (Some((w, b)), None) => x.apply_op3_no_bwd(&scale, &Tensor::stack(&[w, b], 0)?, &op)?,
                (None, _) => x.apply_op2_no_bwd(&scale, &op)?,
            }
        } else if center {
            normalize_composite(&x, &scale, layer_params)?
        } else {
            let dtype = x.dtype();
            x.to_dtype(upcast(dtype))?
                .broadcast_div(&scale.to_dtype(upcast(dtype))?)?
                .to_dtype(dtype)?
        };
        let out = self.hook_normalized.forward(&out)?;
        match (&self.kind, &self.params) {
            // RMSNorm applies its gain after the hook, as TransformerLens.
            (NormKind::Rms, Some((w, _))) => out.broadcast_mul(w),
            _ => Ok(out),
        }
    }
}

/// `sqrt(mean(x²) + eps)` over the last axis, keeping it: `[.., d]` -> `[.., 1]`
/// (RMSNorm's scale). Computed in f32 for half-precision input, as TransformerLens does.
pub fn rms_scale_composite(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(upcast(dtype))?;
    (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.to_dtype(dtype)
}

fn scale_of(x: &Tensor, eps: f64, center: bool) -> candle_core::Result<Tensor> {
    if center {
        scale_composite(x, eps)
    } else {
        rms_scale_composite(x, eps)
    }
}

/// `sqrt(mean((x - mean(x))²) + eps)` over the last axis, keeping it: `[.., d]` -> `[.., 1]`.
/// Computed in f32 for half-precision input, as TransformerLens does.
pub fn scale_composite(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(upcast(dtype))?;
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    (centred.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.to_dtype(dtype)
}

/// `(x - mean(x)) / scale * w + b`: `x` `[.., d]`, `scale` `[.., 1]`, `w`, `b` `[d]`.
pub fn normalize_composite(
    x: &Tensor,
    scale: &Tensor,
    params: Option<(&Tensor, &Tensor)>,
) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(upcast(dtype))?;
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let y = centred.broadcast_div(&scale.to_dtype(x.dtype())?)?;
    let y = match params {
        Some((w, b)) => y
            .broadcast_mul(&w.to_dtype(x.dtype())?)?
            .broadcast_add(&b.to_dtype(x.dtype())?)?,
        None => y,
    };
    y.to_dtype(dtype)
}

fn upcast(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

/// `sum(f(x))` over a row with eight independent accumulators, which lets the compiler
/// vectorise the loop (a single f32 accumulator is a serial dependency chain).
#[inline]
fn sum8(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    let tail: f32 = rest.iter().map(|&x| f(x)).sum();
    acc.iter().sum::<f32>() + tail
}

fn row_mean_var(row: &[f32]) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = sum8(row, |x| x) / n;
    let var = sum8(row, |x| (x - mean) * (x - mean)) / n;
    (mean, var)
}

struct RowScale {
    eps: f32,
    /// LayerNorm's variance about the mean, or RMSNorm's mean square.
    center: bool,
}

impl CustomOp1 for RowScale {
    fn name(&self) -> &'static str {
        "hooklens-ln-scale"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(s, l, "layer norm input")?;
        let dims = l.dims();
        let d = *dims.last().unwrap_or(&1);
        if d == 0 {
            candle_core::bail!("layer norm over an empty axis")
        }
        let n_rows = src.len() / d;
        let mut dst = vec![0f32; n_rows];
        par_rows(n_rows, d, src, 1, &mut dst, |_, src, dst| {
            for (row, out) in src.chunks(d).zip(dst.iter_mut()) {
                let var = if self.center {
                    row_mean_var(row).1
                } else {
                    sum8(row, |x| x * x) / d as f32
                };
                *out = (var + self.eps).sqrt();
            }
        });
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = 1;
        }
        Ok((CpuStorage::F32(dst), Shape::from(out_dims)))
    }
}

struct Normalize {
    /// Subtract the row mean first (LayerNorm) or not (RMSNorm).
    center: bool,
}

impl Normalize {
    fn run(
        &self,
        src: &[f32],
        l: &Layout,
        scale: &[f32],
        params: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = *l.dims().last().unwrap_or(&1);
        if d == 0 || scale.len() * d != src.len() {
            candle_core::bail!(
                "layer norm: scale has {} rows, input has {}",
                scale.len(),
                src.len() / d.max(1)
            )
        }
        let (w, b) = match params {
            Some(p) if p.len() == 2 * d => (Some(&p[..d]), Some(&p[d..])),
            Some(p) => candle_core::bail!("layer norm: parameters have {} values, expected {}", p.len(), 2 * d),
            None => (None, None),
        };
        let mut dst = vec![0f32; src.len()];
        par_rows(scale.len(), d, src, d, &mut dst, |first, src, dst| {
            for (i, (row, out)) in src.chunks(d).zip(dst.chunks_mut(d)).enumerate() {
                let mean = if self.center { sum8(row, |x| x) / d as f32 } else { 0.0 };
                let s = scale[first + i];
                match (w, b) {
                    (Some(w), Some(b)) => {
                        for (((o, x), w), b) in out.iter_mut().zip(row).zip(w).zip(b) {
                            *o = (x - mean) / s * w + b;
                        }
                    }
                    _ => {
                        for (o, x) in out.iter_mut().zip(row) {
                            *o = (x - mean) / s;
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }
}

impl CustomOp2 for Normalize {
    fn name(&self) -> &'static str {
        "hooklens-ln-normalize"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(
            contiguous_f32(s1, l1, "layer norm input")?,
            l1,
            contiguous_f32(s2, l2, "layer norm scale")?,
            None,
        )
    }
}

impl CustomOp3 for Normalize {
    fn name(&self) -> &'static str {
        "hooklens-ln-normalize"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(
            contiguous_f32(s1, l1, "layer norm input")?,
            l1,
            contiguous_f32(s2, l2, "layer norm scale")?,
            Some(contiguous_f32(s3, l3, "layer norm parameters")?),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fused_equals_composite() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 3.0, (3, 5, 64), &dev).unwrap() + 2.0).unwrap();
        let w = Tensor::randn(1f32, 0.3, 64, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.3, 64, &dev).unwrap();
        let ln = LayerNorm::new(Some((w.clone(), b.clone())), 1e-5).unwrap();
        let got = ln.forward(&x).unwrap();
        let scale = scale_composite(&x, 1e-5).unwrap();
        let want = normalize_composite(&x, &scale, Some((&w, &b))).unwrap();
        let diff = hooklens_testutil::max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "{diff}");
        let big = Tensor::randn(0f32, 1.0, (300, 256), &dev).unwrap();
        let pre = LayerNorm::new(None, 1e-5).unwrap();
        let got = pre.forward(&big).unwrap();
        let want = normalize_composite(&big, &scale_composite(&big, 1e-5).unwrap(), None).unwrap();
        let diff = hooklens_testutil::max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "{diff}");
    }
}

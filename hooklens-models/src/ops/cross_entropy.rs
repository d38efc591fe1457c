//! A fused cross-entropy with its backward, for training over GPT-2's vocabulary.
//!
//! Composed from candle ops (log_softmax, gather), the loss over `[n, 50257]` logits
//! runs a dozen full passes forward and backward; this op makes one pass forward
//! (log-sum-exp per row) and one backward (`softmax - onehot`), rows in parallel.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use hooklens_core::{Error, Result};
use rayon::prelude::*;

use super::kernels::exp_approx;

struct CrossEntropy {
    targets: Vec<u32>,
    vocab: usize,
}

/// With [`exp_approx`] (2 ulp) rather than libm's `expf`, a call per element that
/// was a fifth of a training step of the built-in model over the whole vocabulary.
fn log_sum_exp(row: &[f32]) -> f32 {
    // Eight partial maxima and sums: a single running one is a chain the compiler may
    // not reorder, which keeps the loop scalar.
    let mut maxes = [f32::NEG_INFINITY; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks.clone() {
        for (m, &x) in maxes.iter_mut().zip(c) {
            *m = m.max(x);
        }
    }
    let max = tail.iter().chain(&maxes).cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sums = [0f32; 8];
    for c in chunks {
        for (s, &x) in sums.iter_mut().zip(c) {
            *s += exp_approx(x - max);
        }
    }
    let sum: f32 = sums.iter().sum::<f32>() + tail.iter().map(|&x| exp_approx(x - max)).sum::<f32>();
    max + sum.ln()
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "hooklens-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("cross_entropy: logits must be f32");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("cross_entropy: logits must be contiguous");
        };
        let data = &data[start..end];
        let losses: Vec<f32> = data
            .par_chunks(self.vocab)
            .zip(self.targets.par_iter())
            .map(|(row, &t)| log_sum_exp(row) - row[t as usize])
            .collect();
        let n = losses.len();
        Ok((CpuStorage::F32(losses), Shape::from(n)))
    }

    fn bwd(&self, logits: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = grad.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let x = logits.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(self.vocab)
            .zip(x.par_chunks(self.vocab))
            .zip(self.targets.par_iter().zip(g.par_iter()))
            .for_each(|((o, row), (&t, &gr))| {
                let lse = log_sum_exp(row);
                for (oi, &xi) in o.iter_mut().zip(row) {
                    *oi = gr * exp_approx(xi - lse);
                }
                o[t as usize] -= gr;
            });
        Ok(Some(Tensor::from_vec(out, logits.shape(), logits.device())?))
    }
}

/// Cross-entropy of each row: `logits` `[n, vocab]` (f32), `targets` `[n]` (integer
/// ids) -> `[n]`, `logsumexp(row) - row[target]`; differentiable with respect to the
/// logits. On the CPU it is one fused pass each way; elsewhere it falls back to
/// candle's log_softmax and gather.
pub fn cross_entropy_per_row(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, vocab) = logits.dims2()?;
    let targets_v: Vec<u32> = targets.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
    if targets_v.len() != n {
        return Err(Error::invalid(format!(
            "cross_entropy: {} targets for {n} rows of logits",
            targets_v.len()
        )));
    }
    if let Some(bad) = targets_v.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::invalid(format!(
            "cross_entropy: target {bad} is outside the vocabulary ({vocab})"
        )));
    }
    if !logits.device().is_cpu() || logits.dtype() != DType::F32 {
        let log_probs = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
        let idx = targets.to_dtype(DType::U32)?.reshape((n, 1))?;
        return Ok(log_probs.gather(&idx, 1)?.squeeze(1)?.neg()?);
    }
    Ok(logits.contiguous()?.apply_op1(CrossEntropy {
        targets: targets_v,
        vocab,
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use hooklens_testutil::max_abs_diff;

    #[test]
    fn matches_the_composed_loss_and_its_gradient() {
        let dev = Device::Cpu;
        let logits = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (5, 11), &dev).unwrap())).unwrap();
        let targets = Tensor::new(&[0u32, 10, 3, 3, 7], &dev).unwrap();
        let fused = cross_entropy_per_row(logits.as_tensor(), &targets).unwrap();
        let log_probs = candle_nn::ops::log_softmax(logits.as_tensor(), candle_core::D::Minus1).unwrap();
        let composed = log_probs
            .gather(&targets.reshape((5, 1)).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .neg()
            .unwrap();
        assert!(max_abs_diff(&fused, &composed) < 1e-5);
        let weights = Tensor::new(&[1f32, 2., 3., 4., 5.], &dev).unwrap();
        let g1 = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (composed * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_abs_diff(g1.get(&logits).unwrap(), g2.get(&logits).unwrap()) < 1e-5);
    }

    #[test]
    fn bad_targets_are_errors() {
        let logits = Tensor::zeros((2, 4), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(cross_entropy_per_row(&logits, &Tensor::new(&[0u32, 4], &candle_core::Device::Cpu).unwrap()).is_err());
        assert!(cross_entropy_per_row(&logits, &Tensor::new(&[0u32], &candle_core::Device::Cpu).unwrap()).is_err());
    }
}

//! `out[targets[i], :] += weights[i] * rows[i, :]` into a zeroed `[n, d]`: how a mixture of
//! experts puts each expert's rows, scaled by their mixing weights, back into their
//! tokens' rows.
//!
//! candle's `broadcast_mul` and `index_add` compute the same, but an elementwise op of
//! 64K values or more goes to candle's own thread pool (a barrier pool beside rayon's,
//! which the products use): at 1 x 64 tokens, 8 experts, top-2 and d_model 512 the
//! scaled rows are exactly 64K values, and perf put 80% of the MoE layer's main-thread
//! time in that pool's barrier, waiting for a worker that rayon's spinning threads kept
//! off the core. The scatter is a few hundred thousand multiply-adds at most: one loop
//! on the calling thread does it in microseconds.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::kernels::{contiguous_f32, fast_path};

/// The scatter's host-side operands: one weight and one target row per input row.
struct WeightedScatter {
    weights: Vec<f32>,
    targets: Vec<u32>,
    n: usize,
}

impl CustomOp1 for WeightedScatter {
    fn name(&self) -> &'static str {
        "hooklens-weighted-scatter"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let rows = contiguous_f32(s, l, "weighted scatter: rows")?;
        let (m, d) = l.shape().dims2()?;
        if self.weights.len() != m || self.targets.len() != m {
            candle_core::bail!(
                "weighted scatter: {} weights and {} targets for {m} rows",
                self.weights.len(),
                self.targets.len()
            )
        }
        let mut out = vec![0f32; self.n * d];
        for ((row, &w), &t) in rows.chunks_exact(d.max(1)).zip(&self.weights).zip(&self.targets) {
            let t = t as usize;
            if t >= self.n {
                candle_core::bail!("weighted scatter: target row {t} of {}", self.n)
            }
            for (o, &x) in out[t * d..(t + 1) * d].iter_mut().zip(row) {
                *o += w * x;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((self.n, d))))
    }
}

/// `[n, d]` zeros plus, for each row `i` of `rows` `[m, d]`, `weights[i] * rows[i, :]`
/// added into row `targets[i]` (`weights` and `targets` `[m]`; targets may repeat). On
/// the CPU in f32 with no gradient tracked a loop on this thread; elsewhere candle's
/// `broadcast_mul` and `index_add`.
pub(crate) fn weighted_scatter_add(
    rows: &Tensor,
    weights: &Tensor,
    targets: &Tensor,
    n: usize,
) -> candle_core::Result<Tensor> {
    if fast_path(rows) && fast_path(weights) {
        let op = WeightedScatter {
            weights: weights.flatten_all()?.to_vec1::<f32>()?,
            targets: targets.flatten_all()?.to_vec1::<u32>()?,
            n,
        };
        return rows.contiguous()?.apply_op1_no_bwd(&op);
    }
    let d = rows.dim(1)?;
    let weighted = rows.broadcast_mul(&weights.to_dtype(rows.dtype())?.reshape(((), 1))?)?;
    Tensor::zeros((n, d), rows.dtype(), rows.device())?.index_add(targets, &weighted, 0)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    #[test]
    fn equals_candle_mul_and_index_add() {
        let dev = Device::Cpu;
        let (m, d, n) = (37, 130, 11);
        let rows = Tensor::randn(0f32, 1.0, (m, d), &dev).unwrap();
        let weights = Tensor::rand(0f32, 1.0, m, &dev).unwrap();
        let targets: Vec<u32> = (0..m as u32).map(|i| (i * 7 + 3) % n as u32).collect();
        let targets = Tensor::from_vec(targets, m, &dev).unwrap();
        let got = super::weighted_scatter_add(&rows, &weights, &targets, n).unwrap();
        let want = Tensor::zeros((n, d), candle_core::DType::F32, &dev)
            .unwrap()
            .index_add(
                &targets,
                &rows.broadcast_mul(&weights.unsqueeze(1).unwrap()).unwrap(),
                0,
            )
            .unwrap();
        assert_eq!(got.dims(), [n, d]);
        let diff = hooklens_testutil::max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "{diff}");
        // A target past the output is an error, not a write out of bounds.
        let bad = Tensor::from_vec(vec![n as u32; m], m, &dev).unwrap();
        assert!(super::weighted_scatter_add(&rows, &weights, &bad, n).is_err());
    }
}

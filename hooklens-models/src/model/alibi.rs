//! ALiBi (BLOOM): no position embedding; head `h` adds `m_h * (j - i)` to the scaled
//! score of query position `i` and key position `j`, as TransformerLens does (before
//! the causal mask, so `hook_attn_scores` includes it). Hugging Face adds `m_h * j`,
//! which differs by a constant per query row: the same softmax.
//!
//! The slopes are Hugging Face's (`build_alibi_tensor`, the ALiBi paper's): for a
//! power of two `n`, `m_h = 2^(-8 (h + 1) / n)`; otherwise the slopes of the largest
//! power of two `p < n`, then every other slope of the `2p`-head sequence,
//! `2^(-4 (2h + 1) / p)`, for the remaining `n - p` heads. (TransformerLens 2.16.1
//! uses the power-of-two formula for every `n`, which is wrong for other head counts.)

use candle_core::{Device, Tensor};

/// The ALiBi slope of each of `n_heads` heads, as Hugging Face's `build_alibi_tensor`.
pub(crate) fn alibi_slopes(n_heads: usize) -> Vec<f64> {
    if n_heads == 0 {
        return Vec::new();
    }
    // The largest power of two not above n_heads.
    let p = 1usize << (usize::BITS - 1 - n_heads.leading_zeros());
    let base = 2f64.powf(-8.0 / p as f64);
    let mut slopes: Vec<f64> = (1..=p).map(|i| base.powi(i as i32)).collect();
    if p != n_heads {
        let extra_base = 2f64.powf(-4.0 / p as f64);
        let remaining = (n_heads - p).min(p);
        slopes.extend((0..remaining).map(|h| extra_base.powi(2 * h as i32 + 1)));
    }
    slopes
}

/// The ALiBi term for `p` new queries after `offset` cached positions:
/// `[rows, n_heads, p, keys]` with `keys = offset + p`, `rows` = `positions.len()`
/// (one row for every sequence, or one per sequence). `positions[r][j]` is the
/// position of key `j` of row `r` (its count of real tokens before it with padding),
/// and query `i` is key `offset + i`. f32.
pub(crate) fn alibi_bias(
    slopes: &[f64],
    positions: &[Vec<u32>],
    offset: usize,
    p: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let keys = offset + p;
    let mut data = Vec::with_capacity(positions.len() * slopes.len() * p * keys);
    for row in positions {
        for &m in slopes {
            for i in 0..p {
                let qi = f64::from(row[offset + i]);
                data.extend(row.iter().map(|&kj| (m * (f64::from(kj) - qi)) as f32));
            }
        }
    }
    Tensor::from_vec(data, (positions.len(), slopes.len(), p, keys), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hugging Face's `build_alibi_tensor` slopes, written out as it computes them
    /// (`closest_power_of_2`, `base`, `extra_base`, odd powers), for head counts that
    /// are and are not powers of two.
    #[test]
    fn slopes_are_hugging_faces() {
        let hf = |n: usize| -> Vec<f64> {
            let cp = 2f64.powf((n as f64).log2().floor());
            let base = 2f64.powf(-(2f64.powf(-(cp.log2() - 3.0))));
            let mut s: Vec<f64> = (1..=cp as i32).map(|i| base.powi(i)).collect();
            if cp as usize != n {
                let extra = 2f64.powf(-(2f64.powf(-((2.0 * cp).log2() - 3.0))));
                let rem = (n - cp as usize).min(cp as usize);
                s.extend((0..rem).map(|k| extra.powi(2 * k as i32 + 1)));
            }
            s
        };
        for n in [1, 2, 3, 4, 5, 6, 8, 12, 16, 32, 112] {
            let ours = alibi_slopes(n);
            let want = hf(n);
            assert_eq!(ours.len(), n);
            for (a, b) in ours.iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "{n} heads: {ours:?} vs {want:?}");
            }
        }
        // 6 heads: 4 of the power-of-two sequence 2^(-2 (h+1)), then 2^-1 and 2^-3.
        let six = alibi_slopes(6);
        let want = [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125];
        for (a, b) in six.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{six:?}");
        }
        // TransformerLens's formula 2^(-8 (h+1) / 6) differs there.
        assert!((six[0] - 2f64.powf(-8.0 / 6.0)).abs() > 0.1);
    }

    #[test]
    fn bias_is_slope_times_distance() {
        let slopes = alibi_slopes(2);
        let rows = vec![vec![0u32, 1, 2, 3]];
        // Two new queries after two cached positions: queries are positions 2 and 3.
        let t = alibi_bias(&slopes, &rows, 2, 2, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), [1, 2, 2, 4]);
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Head 1 (slope 2^-8), query position 2, key 0: -2 * 2^-8.
        assert!((v[8] - (-2.0 / 256.0)).abs() < 1e-9, "{v:?}");
        // Head 0 (slope 2^-4), query position 3, key 3: 0.
        assert_eq!(v[4 + 3], 0.0);
    }
}

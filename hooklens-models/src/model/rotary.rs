//! Rotary position embeddings as TransformerLens applies them for the bundled
//! families (`rotary_adjacent_pairs: false`): the first `rotary_dim` dimensions of
//! each head are rotated in pairs `(i, i + rotary_dim/2)` by the angle
//! `position * inv_freq[i]`, `inv_freq[i] = base^(-2i/rotary_dim)` (Llama 3.1's
//! NTK-by-parts rescales them, linear scaling divides them by a factor); the rest of
//! the head passes through. Gemma 3's sliding-window layers have a base of their own
//! ([`Rotary::local`]), unscaled. GPT-J's variant (`rotary_adjacent_pairs`) rotates the
//! adjacent pairs `(2i, 2i + 1)` by the same angles instead.

use candle_core::{DType, Device, Tensor};

use crate::config::{NtkByPartsRope, TransformerConfig};

/// The inverse frequencies of one model, `[rotary_dim / 2]`.
#[derive(Clone, Debug)]
pub(crate) struct Rotary {
    inv_freq: Vec<f64>,
    rotary_dim: usize,
    /// Pairs `(2i, 2i + 1)` (GPT-J) instead of `(i, i + rotary_dim/2)`.
    adjacent: bool,
    /// cos and sin are multiplied by this (YaRN's `attention_factor`; else 1).
    mscale: f64,
}

/// cos and sin of the angles at some positions, `[1 or batch, pos, 1, rotary_dim]`,
/// each half repeated (`(2 d)`), or each angle twice in a row for adjacent pairs
/// (`(d 2)`), ready to broadcast over heads.
#[derive(Clone, Debug)]
pub(crate) struct RotaryTables {
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
}

impl RotaryTables {
    /// The tables of positions `start..start + len` of each row (a view).
    pub(crate) fn narrow(&self, start: usize, len: usize) -> candle_core::Result<Self> {
        Ok(RotaryTables {
            cos: self.cos.narrow(1, start, len)?,
            sin: self.sin.narrow(1, start, len)?,
        })
    }
}

impl Rotary {
    /// The rotary of `cfg`, or `None` for learned positions.
    pub(crate) fn new(cfg: &TransformerConfig) -> Option<Self> {
        if !cfg.is_rotary() {
            return None;
        }
        let rotary_dim = cfg.rotary_dim?;
        let half = rotary_dim / 2;
        if let Some(y) = &cfg.yarn_rope {
            let inv_freq = (0..half).map(|i| yarn(cfg.rotary_base, i, rotary_dim, y)).collect();
            return Some(Rotary {
                inv_freq,
                rotary_dim,
                adjacent: cfg.rotary_adjacent_pairs,
                mscale: y.attention_factor,
            });
        }
        let inv_freq = (0..half)
            .map(|i| {
                let f = 1.0 / cfg.rotary_base.powf(2.0 * i as f64 / rotary_dim as f64);
                let f = match &cfg.ntk_by_parts_rope {
                    Some(n) => ntk_by_parts(f, n),
                    None => f,
                };
                match cfg.rotary_linear_factor {
                    Some(factor) => f / factor,
                    None => f,
                }
            })
            .collect();
        Some(Rotary {
            inv_freq,
            rotary_dim,
            adjacent: cfg.rotary_adjacent_pairs,
            mscale: 1.0,
        })
    }

    /// The rotary of `cfg`'s sliding-window layers when they have a base of their own
    /// (`rotary_base_local`, never scaled, as Hugging Face's Gemma 3), else `None`:
    /// those layers then use [`Rotary::new`]'s.
    pub(crate) fn local(cfg: &TransformerConfig) -> Option<Self> {
        let base = cfg.rotary_base_local?;
        Rotary::new(&TransformerConfig {
            rotary_base: base,
            ntk_by_parts_rope: None,
            rotary_linear_factor: None,
            yarn_rope: None,
            ..cfg.clone()
        })
    }

    /// The tables for `rows` of positions (one row for all sequences, or one per
    /// sequence), each row `pos` long.
    pub(crate) fn tables(&self, rows: &[Vec<u32>], dtype: DType, device: &Device) -> candle_core::Result<RotaryTables> {
        let n_rows = rows.len();
        let pos = rows.first().map_or(0, |r| r.len());
        let r = self.rotary_dim;
        let half = r / 2;
        let mut cos = Vec::with_capacity(n_rows * pos * r);
        let mut sin = Vec::with_capacity(n_rows * pos * r);
        // f32 angles `position / freq`, as TransformerLens computes them.
        let freq: Vec<f32> = self.inv_freq.iter().map(|f| (1.0 / f) as f32).collect();
        // YaRN's cos/sin scale applies to either pairing of the dimensions.
        let m = self.mscale as f32;
        for row in rows {
            for &p in row {
                if self.adjacent {
                    // `(d 2)`: each angle for both members of its pair.
                    for f in &freq {
                        let angle = p as f32 / f;
                        cos.extend([angle.cos() * m; 2]);
                        sin.extend([angle.sin() * m; 2]);
                    }
                    continue;
                }
                let start = cos.len();
                for f in &freq {
                    let angle = p as f32 / f;
                    cos.push(angle.cos() * m);
                    sin.push(angle.sin() * m);
                }
                // `(2 d)`: the first half repeated.
                cos.extend_from_within(start..start + half);
                sin.extend_from_within(start..start + half);
            }
        }
        let shape = (n_rows, pos, 1, r);
        Ok(RotaryTables {
            cos: Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?,
        })
    }

    /// `x` `[batch, pos, heads, d_head]` rotated by `t` -> the same shape, a new tensor.
    pub(crate) fn apply(&self, x: &Tensor, t: &RotaryTables) -> candle_core::Result<Tensor> {
        let d_head = x.dim(3)?;
        let r = self.rotary_dim;
        let half = r / 2;
        let x_rot = x.narrow(3, 0, r)?;
        let flipped = if self.adjacent {
            // GPT-J's `rotate_every_two`: (x0, x1, x2, x3, ..) -> (-x1, x0, -x3, x2, ..).
            let (b, p, h, _) = x.dims4()?;
            let pairs = x_rot.contiguous()?.reshape((b, p, h, half, 2))?;
            let even = pairs.narrow(4, 0, 1)?;
            let odd = pairs.narrow(4, 1, 1)?;
            Tensor::cat(&[&odd.neg()?, &even], 4)?.reshape((b, p, h, r))?
        } else {
            let x1 = x_rot.narrow(3, 0, half)?;
            let x2 = x_rot.narrow(3, half, half)?;
            Tensor::cat(&[&x2.neg()?, &x1], 3)?
        };
        let rotated = (x_rot.broadcast_mul(&t.cos)? + flipped.broadcast_mul(&t.sin)?)?;
        if r == d_head {
            Ok(rotated)
        } else {
            Tensor::cat(&[&rotated, &x.narrow(3, r, d_head - r)?], 3)
        }
    }
}

/// YaRN's inverse frequency `i` of `dim` (Hugging Face's `_compute_yarn_parameters`):
/// `base^(-2i/dim)` where a pair turns more than `beta_fast` times over the original
/// context, that divided by `factor` where less than `beta_slow`, linear in between.
fn yarn(base: f64, i: usize, dim: usize, y: &crate::config::YarnRope) -> f64 {
    let d = dim as f64;
    let correction =
        |rotations: f64| d * (y.original_ctx_len / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln());
    let (mut low, mut high) = (correction(y.beta_fast), correction(y.beta_slow));
    if y.truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
    if low == high {
        high += 0.001;
    }
    // Hugging Face computes the ramp in f32.
    let ramp = (((i as f32 - low as f32) / (high - low) as f32).clamp(0.0, 1.0)) as f64;
    let extrapolation = 1.0 - ramp;
    let pos_freq = base.powf(2.0 * i as f64 / d);
    let (kept, divided) = (1.0 / pos_freq, 1.0 / (y.factor * pos_freq));
    divided * (1.0 - extrapolation) + kept * extrapolation
}

/// Llama 3.1's rescaling of one inverse frequency (Hugging Face's `rope_type: llama3`).
fn ntk_by_parts(inv_freq: f64, n: &NtkByPartsRope) -> f64 {
    let low_freq_wavelen = n.original_ctx_len / n.low_freq_factor;
    let high_freq_wavelen = n.original_ctx_len / n.high_freq_factor;
    let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
    if wavelen < high_freq_wavelen {
        inv_freq
    } else if wavelen > low_freq_wavelen {
        inv_freq / n.factor
    } else {
        let smooth = (n.original_ctx_len / wavelen - n.low_freq_factor) / (n.high_freq_factor - n.low_freq_factor);
        (1.0 - smooth) * inv_freq / n.factor + smooth * inv_freq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rotating by position p then taking dot products depends only on the distance:
    /// <R(p) q, R(p') k> = <R(p + s) q, R(p' + s) k>.
    #[test]
    fn scores_depend_on_relative_position() {
        let mut cfg = TransformerConfig::new(1, 32, 2, 16, 64);
        cfg.positional_embedding_type = crate::config::PositionalEmbeddingType::Rotary;
        cfg.rotary_dim = Some(8);
        let rot = Rotary::new(&cfg).unwrap();
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 1, 1, 16), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, 1, 1, 16), &dev).unwrap();
        let dot = |pq: u32, pk: u32| -> f32 {
            let tq = rot.tables(&[vec![pq]], DType::F32, &dev).unwrap();
            let tk = rot.tables(&[vec![pk]], DType::F32, &dev).unwrap();
            let a = rot.apply(&q, &tq).unwrap();
            let b = rot.apply(&k, &tk).unwrap();
            (a * b).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
        };
        assert!((dot(5, 2) - dot(15, 12)).abs() < 1e-4);
        assert!((dot(5, 2) - dot(5, 3)).abs() > 1e-4);
        // The dimensions past rotary_dim pass through.
        let t = rot.tables(&[vec![7]], DType::F32, &dev).unwrap();
        let out = rot.apply(&q, &t).unwrap();
        let tail = (out.narrow(3, 8, 8).unwrap() - q.narrow(3, 8, 8).unwrap()).unwrap();
        assert_eq!(tail.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }

    /// Linear scaling by `f` turns position `f * p` into position `p`; the local
    /// rotary has its own base and is never scaled.
    #[test]
    fn linear_scaling_interpolates_positions_and_local_layers_keep_their_base() {
        let mut cfg = TransformerConfig::new(1, 32, 2, 16, 64);
        cfg.positional_embedding_type = crate::config::PositionalEmbeddingType::Rotary;
        cfg.rotary_dim = Some(16);
        cfg.rotary_base = 1e6;
        let dev = Device::Cpu;
        let table = |rot: &Rotary, p: u32| -> Vec<f32> {
            let t = rot.tables(&[vec![p]], DType::F32, &dev).unwrap();
            t.cos.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let plain = Rotary::new(&cfg).unwrap();
        assert!(Rotary::local(&cfg).is_none(), "no local base: one table");
        cfg.rotary_linear_factor = Some(4.0);
        cfg.rotary_base_local = Some(1e4);
        let scaled = Rotary::new(&cfg).unwrap();
        for p in [1, 3, 7] {
            let (a, b) = (table(&scaled, 4 * p), table(&plain, p));
            let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff < 1e-5, "position {p}: {diff}");
        }
        let local = Rotary::local(&cfg).unwrap();
        cfg.rotary_base = 1e4;
        cfg.rotary_linear_factor = None;
        assert_eq!(table(&local, 5), table(&Rotary::new(&cfg).unwrap(), 5));
        assert_ne!(table(&local, 5), table(&scaled, 5));
    }

    /// Adjacent pairs (GPT-J's `rotate_every_two`) by hand: pair `(2i, 2i + 1)` turns
    /// by `p * base^(-2i / rotary_dim)`; dimensions past `rotary_dim` pass through.
    #[test]
    fn adjacent_pairs_rotate_as_gptj() {
        let mut cfg = TransformerConfig::new(1, 16, 2, 16, 64);
        cfg.positional_embedding_type = crate::config::PositionalEmbeddingType::Rotary;
        cfg.rotary_dim = Some(4);
        cfg.rotary_adjacent_pairs = true;
        let rot = Rotary::new(&cfg).unwrap();
        let dev = Device::Cpu;
        let x: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin()).collect();
        let t = Tensor::from_vec(x.clone(), (1, 1, 2, 8), &dev).unwrap();
        let pos = 5u32;
        let tables = rot.tables(&[vec![pos]], DType::F32, &dev).unwrap();
        let out = rot
            .apply(&t, &tables)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for head in 0..2 {
            let x = &x[head * 8..head * 8 + 8];
            let o = &out[head * 8..head * 8 + 8];
            for i in 0..2 {
                let angle = pos as f64 * 10000f64.powf(-(2.0 * i as f64) / 4.0);
                let (c, s) = (angle.cos() as f32, angle.sin() as f32);
                let (a, b) = (x[2 * i], x[2 * i + 1]);
                assert!((o[2 * i] - (a * c - b * s)).abs() < 1e-5, "head {head} pair {i}");
                assert!((o[2 * i + 1] - (b * c + a * s)).abs() < 1e-5, "head {head} pair {i}");
            }
            assert_eq!(&o[4..], &x[4..], "head {head}: the rest passes through");
        }
    }

    /// gpt-oss's YaRN table (factor 32, beta 32 / 1, original context 4096, no
    /// truncation, base 150000, head 16) as transformers computes it.
    #[test]
    fn yarn_matches_transformers() {
        let y = crate::config::YarnRope {
            factor: 32.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            original_ctx_len: 4096.0,
            truncate: false,
            attention_factor: 0.1 * 32f64.ln() + 1.0,
        };
        let want = [
            1.0,
            0.225418001,
            0.0508132726,
            0.00679495931,
            0.000456483918,
            1.8188337e-05,
            4.09997847e-06,
            9.24208962e-07,
        ];
        for (i, w) in want.iter().enumerate() {
            let got = super::yarn(150000.0, i, 16, &y);
            assert!((got - w).abs() <= 1e-6 * w, "{i}: {got} vs {w}");
        }
    }
}

//! The transcoders' reconstruction of every MLP output, built layer by layer: `b_dec`,
//! each active feature's decoder vector (one per layer it writes to) times its
//! activation, and the skip connection.

use hooklens_core::Result;

use super::transcoders::Transcoders;
use crate::ops::slice_gemm::{gemm, View};

/// The reconstructions of every output layer, `[rows, d_model]` each.
pub(crate) struct Reconstruction {
    layers: Vec<Vec<f32>>,
}

impl Reconstruction {
    /// `b_dec` on each of `rows` rows, for every layer.
    pub(crate) fn new(tc: &Transcoders, rows: usize) -> Self {
        Reconstruction {
            layers: (0..tc.n_layers())
                .map(|o| (0..rows).flat_map(|_| tc.b_dec(o).iter().copied()).collect())
                .collect(),
        }
    }

    /// Adds layer `l`'s features, `acts` `[rows, d_transcoder]`, to every layer they write
    /// to (their decoder rows read once per distinct feature), then the skip connection
    /// of `x` `[rows, d_model]`, layer `l`'s transcoder input.
    pub(crate) fn add_layer(&mut self, tc: &Transcoders, l: usize, acts: &[f32], x: &[f32]) -> Result<()> {
        let (d, f) = (tc.d_model(), tc.d_transcoder());
        let rows = acts.len() / f;
        let n_out = tc.n_out(l);
        let mut feats: Vec<usize> = (0..rows * f).filter(|&i| acts[i] != 0.0).map(|i| i % f).collect();
        feats.sort_unstable();
        feats.dedup();
        if !feats.is_empty() {
            let dec = tc.decoder_rows(l, &feats)?;
            for r in 0..rows {
                for (k, &j) in feats.iter().enumerate() {
                    let a = acts[r * f + j];
                    if a == 0.0 {
                        continue;
                    }
                    for o in 0..n_out {
                        let src = &dec[(k * n_out + o) * d..(k * n_out + o + 1) * d];
                        let dst = &mut self.layers[l + o][r * d..(r + 1) * d];
                        dst.iter_mut().zip(src).for_each(|(x, s)| *x += a * s);
                    }
                }
            }
        }
        if let Some(s) = tc.skip(l) {
            gemm(
                View::row_major(x, rows, d),
                View::row_major(s, d, d),
                1.0,
                &mut self.layers[l],
                d,
            );
        }
        Ok(())
    }

    /// Layer `l`'s reconstruction, `[rows, d_model]`.
    pub(crate) fn layer(&self, l: usize) -> &[f32] {
        &self.layers[l]
    }

    /// Every layer's, one after the other: `[n_layers, rows, d_model]`.
    pub(crate) fn into_flat(self) -> Vec<f32> {
        self.layers.concat()
    }
}

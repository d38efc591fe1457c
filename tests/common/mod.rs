//! A small derived model for the facade's tests: an embedding, a stack of residual
//! MLP blocks and a final scale, with TransformerLens-style hook names.

// Each test binary uses a different part of this module.
#![allow(dead_code, unused_imports)]

use candle_core::{DType, Device, Tensor};
use hooklens::{HookPoint, Hooked};
pub use hooklens_testutil::{max_abs_diff, TempDir};

/// `[d_in, d_out]` weights from a fixed formula, so every test sees the same model.
fn weight(d_in: usize, d_out: usize, seed: f64, dtype: DType) -> Tensor {
    let n = d_in * d_out;
    let v: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37 + seed).sin() * 0.3).collect();
    Tensor::from_vec(v, (d_in, d_out), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

#[derive(Hooked)]
pub struct Mlp {
    pub hook_pre: HookPoint,
    pub hook_post: HookPoint,
    w_in: Tensor,
    w_out: Tensor,
}

#[derive(Hooked)]
pub struct Block {
    pub mlp: Mlp,
    pub hook_resid_pre: HookPoint,
    pub hook_mlp_out: HookPoint,
    pub hook_resid_post: HookPoint,
}

#[derive(Hooked)]
pub struct TinyModel {
    pub hook_embed: HookPoint,
    pub blocks: Vec<Block>,
    pub hook_final: HookPoint,
    w_embed: Tensor,
    pub d_model: usize,
}

impl TinyModel {
    pub fn new(n_layers: usize, d_model: usize) -> Self {
        Self::with_dtype(n_layers, d_model, DType::F32)
    }

    pub fn with_dtype(n_layers: usize, d_model: usize, dtype: DType) -> Self {
        let blocks = (0..n_layers)
            .map(|l| Block {
                mlp: Mlp {
                    hook_pre: HookPoint::new(),
                    hook_post: HookPoint::new(),
                    w_in: weight(d_model, 2 * d_model, l as f64 + 0.5, dtype),
                    w_out: weight(2 * d_model, d_model, l as f64 + 1.5, dtype),
                },
                hook_resid_pre: HookPoint::new(),
                hook_mlp_out: HookPoint::new(),
                hook_resid_post: HookPoint::new(),
            })
            .collect();
        TinyModel {
            hook_embed: HookPoint::new(),
            blocks,
            hook_final: HookPoint::new(),
            w_embed: weight(d_model, d_model, 9.0, dtype),
            d_model,
        }
    }

    /// `[batch, pos, d_model]` -> `[batch, pos, d_model]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let embed = self.hook_embed.forward(&x.broadcast_matmul(&self.w_embed)?)?;
        let mut resid = embed;
        for block in &self.blocks {
            resid = block.hook_resid_pre.forward(&resid)?;
            let pre = block.mlp.hook_pre.forward(&resid.broadcast_matmul(&block.mlp.w_in)?)?;
            let post = block.mlp.hook_post.forward(&pre.tanh()?)?;
            let out = block.hook_mlp_out.forward(&post.broadcast_matmul(&block.mlp.w_out)?)?;
            resid = block.hook_resid_post.forward(&(resid + out)?)?;
        }
        self.hook_final.forward(&resid)
    }

    /// The scalar the gradient tests back-propagate: the mean square of the output.
    pub fn loss(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward(x)?.sqr()?.mean_all()
    }

    /// A deterministic input `[batch, pos, d_model]`.
    pub fn input(&self, batch: usize, pos: usize, seed: f64) -> Tensor {
        let n = batch * pos * self.d_model;
        let v: Vec<f64> = (0..n).map(|i| (i as f64 * 0.11 + seed).cos()).collect();
        let dtype = self.w_embed.dtype();
        Tensor::from_vec(v, (batch, pos, self.d_model), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }
}

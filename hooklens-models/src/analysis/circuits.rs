//! Weight analysis on GPT-2: unembedding directions, accumulated biases, QK and OV
//! circuits and composition scores (TransformerLens's `HookedTransformer` methods).

use candle_core::{DType, Tensor};
use hooklens_core::{Error, Result};

use super::cache_view::token_ids;
use super::factored_matrix::{composition_scores, FactoredMatrix};
use crate::HookedTransformer;

/// Which composition [`HookedTransformer::all_composition_scores`] measures: how an earlier
/// head's OV output feeds a later head's query (`Q`), key (`K`) or value (`V`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompositionMode {
    /// Q-composition: left `OV`, right `QK`.
    Q,
    /// K-composition: left `OV`, right `QKᵀ`.
    K,
    /// V-composition: left `OV`, right `OV`.
    V,
}

impl HookedTransformer {
    /// TransformerLens's `tokens_to_residual_directions`: the unembedding column of each
    /// token, `tokens` `[...]` (any integer dtype, a scalar included) -> `[..., d_model]`.
    /// The dot product of a final residual (after `ln_final`) with it is that token's
    /// logit, less `b_U`.
    pub fn tokens_to_residual_directions(&self, tokens: &Tensor) -> Result<Tensor> {
        let ids = token_ids(tokens, self.unembed.d_vocab()?)?;
        let flat = ids.flatten_all()?.to_device(self.device())?;
        let cols = self.unembed.token_directions(&flat)?; // [n, d_model]
        let mut shape = tokens.dims().to_vec();
        shape.push(self.cfg().d_model);
        Ok(cols.reshape(shape)?)
    }

    /// TransformerLens's `accumulated_bias`: the sum of the output biases written to the
    /// residual stream before the input of `layer` (`0..=n_layers`): every `b_O` and,
    /// with `include_mlp_biases`, every `b_out` of earlier blocks, plus `layer`'s own
    /// `b_O` with `mlp_input`. `[d_model]`.
    pub fn accumulated_bias(&self, layer: usize, mlp_input: bool, include_mlp_biases: bool) -> Result<Tensor> {
        let n = self.cfg().n_layers;
        if layer > n {
            return Err(Error::invalid(format!("layer {layer} is out of range 0..={n}")));
        }
        if mlp_input && layer == n {
            return Err(Error::invalid(
                "accumulated_bias with mlp_input needs a layer below n_layers (no attention bias beyond the last block)",
            ));
        }
        let d_model = self.cfg().d_model;
        let mut acc = Tensor::zeros(d_model, self.dtype(), self.device())?;
        for block in &self.blocks[..layer] {
            acc = (acc + &block.attn.b_o)?;
            if include_mlp_biases {
                acc = (acc + &block.mlp.b_out)?;
            }
        }
        if mlp_input {
            acc = (acc + &self.blocks[layer].attn.b_o)?;
        }
        Ok(acc)
    }

    /// TransformerLens's `QK`: every head's bilinear attention form `W_Q · W_Kᵀ`,
    /// factored, `[n_layers, n_heads, d_model, d_model]` (rank `d_head`).
    pub fn qk_circuit(&self) -> Result<FactoredMatrix> {
        let w_k = self.w_k()?;
        FactoredMatrix::new(self.w_q()?, w_k.transpose(2, 3)?.contiguous()?)
    }

    /// TransformerLens's `OV`: every head's output-value map `W_V · W_O`, factored,
    /// `[n_layers, n_heads, d_model, d_model]` (rank `d_head`).
    pub fn ov_circuit(&self) -> Result<FactoredMatrix> {
        FactoredMatrix::new(self.w_v()?, self.w_o()?)
    }

    /// TransformerLens's `all_composition_scores`: for every pair of heads,
    /// `‖W_A·W_B‖_F / (‖W_A‖_F ‖W_B‖_F)` with `W_A` the earlier head's OV circuit and `W_B`
    /// the later head's QK (`Q`), QKᵀ (`K`) or OV (`V`) circuit. `[n_layers, n_heads,
    /// n_layers, n_heads]`, zero unless the first head's layer is strictly below the second's.
    pub fn all_composition_scores(&self, mode: CompositionMode) -> Result<Tensor> {
        let left = self.ov_circuit()?;
        let right = match mode {
            CompositionMode::Q => self.qk_circuit()?,
            CompositionMode::K => self.qk_circuit()?.t()?,
            CompositionMode::V => self.ov_circuit()?,
        };
        let scores = composition_scores(&left, &right)?; // [L, H, L, H]
        let n = self.cfg().n_layers;
        let h = self.cfg().n_heads;
        let mut mask = Vec::with_capacity(n * h * n * h);
        for l1 in 0..n {
            for _ in 0..h {
                for l2 in 0..n {
                    mask.extend(std::iter::repeat_n(u8::from(l1 < l2), h));
                }
            }
        }
        let mask = Tensor::from_vec(mask, (n, h, n, h), scores.device())?;
        Ok(mask.where_cond(&scores, &scores.zeros_like()?)?)
    }

    /// TransformerLens's `all_head_labels`: `"L{l}H{h}"` for every head, layer-major.
    pub fn all_head_labels(&self) -> Vec<String> {
        let (n, h) = (self.cfg().n_layers, self.cfg().n_heads);
        (0..n).flat_map(|l| (0..h).map(move |i| format!("L{l}H{i}"))).collect()
    }
}

/// Token ids as a tensor for [`HookedTransformer::tokens_to_residual_directions`] and
/// `logit_attrs`: `[n]` u32 on the CPU.
pub fn token_tensor(ids: &[u32]) -> Result<Tensor> {
    Ok(Tensor::new(ids, &candle_core::Device::Cpu)?.to_dtype(DType::U32)?)
}

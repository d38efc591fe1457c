//! The pieces of the weight conversion that families share: a Hugging Face `Linear`
//! weight in the model's layout, and the weights finished with their unembedding.

use candle_core::Tensor;
use hooklens_core::Result;

use crate::config::TransformerConfig;
use crate::loading::TensorSource;
use crate::params::{LayerWeights, NormParams, TransformerWeights, UnembedFactors};

/// A Hugging Face `Linear` weight `[out, in]` as the model's `[in, out]`, contiguous.
pub(crate) fn linear_weight(src: &dyn TensorSource, name: &str, out: usize, inp: usize) -> Result<Tensor> {
    Ok(crate::ops::transposed(&src.get(name, &[out, inp])?)?)
}

/// The weights with the unembedding: `W_U` is `W_E` transposed (a view) when `tied`,
/// else the tensor `lm_head` `[d_vocab, d_model]` transposed; `b_U` is zero. A tied
/// config whose checkpoint holds an `lm_head` that differs from the embedding is
/// untied, as Hugging Face does (transformers 5 `tie_weights`: "both are present in
/// the checkpoints with different values, so we will NOT tie them"); an `lm_head` equal
/// to the embedding (torch `.bin` files hold both) stays tied.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish(
    src: &dyn TensorSource,
    cfg: &TransformerConfig,
    w_e: Tensor,
    w_pos: Option<Tensor>,
    layers: Vec<LayerWeights>,
    ln_final: Option<NormParams>,
    lm_head: &str,
    tied: bool,
) -> Result<TransformerWeights> {
    let (w_u, tied) = match untied_head(src, lm_head, &w_e, tied)? {
        Some(head) => (head.t()?, false),
        None => (w_e.t()?, true),
    };
    with_unembed(src, cfg, w_e, w_pos, layers, ln_final, w_u, tied)
}

/// The `lm_head` `[d_vocab, width]` (`width` that of `w_e`, `[d_vocab, width]`) the
/// unembedding must use instead of the embedding: the checkpoint's when `tied` is false
/// (it must be there), or when it is there and differs from `w_e` (see [`finish`]);
/// `None`: the unembedding is the embedding's.
pub(crate) fn untied_head(src: &dyn TensorSource, lm_head: &str, w_e: &Tensor, tied: bool) -> Result<Option<Tensor>> {
    let shape = w_e.dims().to_vec();
    if !tied {
        return Ok(Some(src.get(lm_head, &shape)?));
    }
    if !src.contains(lm_head) {
        return Ok(None);
    }
    let head = src.get(lm_head, &shape)?;
    let differing = head
        .ne(w_e)?
        .to_dtype(candle_core::DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok((differing > 0.0).then_some(head))
}

/// The weights with the unembedding `w_u` `[d_model, d_vocab]` given (`tied`: a view
/// of `w_e`'s storage); `b_U` is zero.
#[allow(clippy::too_many_arguments)]
pub(crate) fn with_unembed(
    src: &dyn TensorSource,
    cfg: &TransformerConfig,
    w_e: Tensor,
    w_pos: Option<Tensor>,
    layers: Vec<LayerWeights>,
    ln_final: Option<NormParams>,
    w_u: Tensor,
    tied: bool,
) -> Result<TransformerWeights> {
    let v = cfg.d_vocab;
    let b_u = Tensor::zeros(v, w_e.dtype(), w_e.device())?;
    Ok(TransformerWeights {
        w_e,
        w_pos,
        embed_ln: None,
        layers,
        ln_final,
        w_u,
        unembed_factors: UnembedFactors::default(),
        tied,
        b_u,
        exclusive: src.fresh(),
        moe: Vec::new(),
        attn_sinks: Vec::new(),
    })
}

//! What an attribution graph explains: its logit nodes. circuit-tracer's
//! `AttributionTargets`: the most probable next tokens until their probabilities add up
//! to `desired_logit_prob` (at most `max_n_logits`), chosen token ids or strings, or
//! custom directions in the residual stream.

use candle_core::{DType, IndexOp, Tensor, D};
use hooklens_core::{Error, Result};

use crate::model::HookedTransformer;

/// One logit node: the token it stands for (or a custom target's label).
#[derive(Clone, Debug, PartialEq)]
pub struct LogitTarget {
    /// The token's text (empty when there is no tokenizer), or a custom target's label.
    pub token: String,
    /// The vocabulary index; a custom target gets `d_vocab + its position in the list`,
    /// as circuit-tracer's virtual indices.
    pub vocab_idx: usize,
}

/// A target that is not a single token: a direction read after the final norm at the
/// last position, with the probability (weight) it carries in pruning.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomTarget {
    /// Its label in the graph.
    pub label: String,
    /// Its weight among the targets (circuit-tracer: its probability).
    pub probability: f32,
    /// The direction `[d_model]`.
    pub direction: Vec<f32>,
}

/// How the logit nodes are chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// The most probable tokens at the last position, in descending probability, up to
    /// the first whose cumulative probability reaches `desired_logit_prob`, at most
    /// `max_n_logits` (circuit-tracer's default).
    Salient {
        /// At most this many.
        max_n_logits: usize,
        /// Stop once the probabilities add up to this.
        desired_logit_prob: f32,
    },
    /// These token ids, in this order.
    TokenIds(Vec<u32>),
    /// These token strings (each must be one token of the model's tokenizer).
    Strings(Vec<String>),
    /// Custom directions.
    Custom(Vec<CustomTarget>),
}

impl Default for Targets {
    fn default() -> Self {
        Targets::Salient {
            max_n_logits: 10,
            desired_logit_prob: 0.95,
        }
    }
}

/// The chosen targets with their probabilities and the demeaned unembedding vectors
/// they read.
pub(crate) struct ResolvedTargets {
    pub(crate) targets: Vec<LogitTarget>,
    pub(crate) probabilities: Vec<f32>,
    /// `[k, d_model]`: `W_U[:, token] - mean over the vocabulary of W_U's columns`.
    pub(crate) vectors: Vec<f32>,
}

/// Resolves `spec` against the model's last-position `logits` `[d_vocab]`.
pub(crate) fn resolve(model: &HookedTransformer, logits_last: &Tensor, spec: &Targets) -> Result<ResolvedTargets> {
    let probs = candle_nn::ops::softmax(&logits_last.to_dtype(DType::F32)?, D::Minus1)?;
    let probs_v = probs.to_vec1::<f32>()?;
    let d_vocab = probs_v.len();
    let ids: Vec<usize> = match spec {
        Targets::Salient {
            max_n_logits,
            desired_logit_prob,
        } => salient_ids(&probs_v, *max_n_logits, *desired_logit_prob)?,
        Targets::TokenIds(ids) => checked_ids(ids, d_vocab)?,
        Targets::Strings(strings) => {
            let mut out = Vec::with_capacity(strings.len());
            for s in strings {
                out.push(model.to_single_token(s)? as usize);
            }
            out
        }
        Targets::Custom(custom) => return custom_targets(custom, model.cfg().d_model, d_vocab),
    };
    if ids.is_empty() {
        return Err(Error::invalid("no attribution targets: give at least one token"));
    }
    token_targets(model, &probs, &ids)
}

/// circuit-tracer's salient logits: the most probable token ids of `probs` (`[d_vocab]`),
/// at most `max_n_logits`, up to the first whose cumulative probability reaches
/// `desired_logit_prob`.
fn salient_ids(probs: &[f32], max_n_logits: usize, desired_logit_prob: f32) -> Result<Vec<usize>> {
    if max_n_logits == 0 {
        return Err(Error::invalid("max_n_logits must be at least 1"));
    }
    if !(desired_logit_prob.is_finite() && desired_logit_prob > 0.0 && desired_logit_prob <= 1.0) {
        return Err(Error::invalid(format!(
            "desired_logit_prob must be in (0, 1], got {desired_logit_prob}"
        )));
    }
    if probs.iter().any(|p| !p.is_finite()) {
        return Err(Error::invalid(
            "the model's last-position logits are not finite: no logit targets can be chosen",
        ));
    }
    let d_vocab = probs.len();
    let mut order: Vec<usize> = (0..d_vocab).collect();
    // torch.topk: larger first; ties to the lower index.
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order.truncate(max_n_logits.min(d_vocab));
    let mut cum = 0.0f32;
    let mut cut = order.len();
    for (i, &id) in order.iter().enumerate() {
        cum += probs[id];
        if cum >= desired_logit_prob {
            cut = i + 1;
            break;
        }
    }
    order.truncate(cut);
    Ok(order)
}

/// `ids` as indices, each checked to be in the vocabulary of `d_vocab`.
fn checked_ids(ids: &[u32], d_vocab: usize) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        if id as usize >= d_vocab {
            return Err(Error::TokenOutOfVocab {
                id: id as i64,
                d_vocab,
                message: format!("attribution target token id {id} is outside the vocabulary of {d_vocab}"),
            });
        }
        out.push(id as usize);
    }
    Ok(out)
}

/// Custom targets as they are: their labels (with virtual indices from `d_vocab` on),
/// probabilities and directions (`[k, d_model]`), checked to be `d_model` wide and finite.
fn custom_targets(custom: &[CustomTarget], d: usize, d_vocab: usize) -> Result<ResolvedTargets> {
    let mut vectors = Vec::with_capacity(custom.len() * d);
    for c in custom {
        if c.direction.len() != d {
            return Err(Error::invalid(format!(
                "custom target `{}` has a direction of {} values; the model's d_model is {d}",
                c.label,
                c.direction.len()
            )));
        }
        if !c.probability.is_finite() || c.direction.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid(format!("custom target `{}` is not finite", c.label)));
        }
        vectors.extend_from_slice(&c.direction);
    }
    Ok(ResolvedTargets {
        targets: custom
            .iter()
            .enumerate()
            .map(|(i, c)| LogitTarget {
                token: c.label.clone(),
                vocab_idx: d_vocab + i,
            })
            .collect(),
        probabilities: custom.iter().map(|c| c.probability).collect(),
        vectors,
    })
}

/// Token targets `ids`: their text, their probabilities in `probs` (`[d_vocab]`) and
/// their demeaned unembedding columns (`[k, d_model]`).
fn token_targets(model: &HookedTransformer, probs: &Tensor, ids: &[usize]) -> Result<ResolvedTargets> {
    let text = |id: usize| model.to_single_str_token(id as u32).unwrap_or_default();
    // W_U [d_model, d_vocab]; the mean over the vocabulary is subtracted from each column.
    let w_u = model.unembed.w_u()?.to_dtype(DType::F32)?.contiguous()?;
    let mean = w_u.mean_keepdim(1)?;
    let id_t = Tensor::new(ids.iter().map(|&i| i as u32).collect::<Vec<_>>(), w_u.device())?;
    let cols = w_u.index_select(&id_t, 1)?.broadcast_sub(&mean)?.t()?.contiguous()?;
    let vectors = cols.flatten_all()?.to_vec1::<f32>()?;
    let probabilities = ids
        .iter()
        .map(|&i| probs.i(i).and_then(|p| p.to_scalar::<f32>()))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(ResolvedTargets {
        targets: ids
            .iter()
            .map(|&id| LogitTarget {
                token: text(id),
                vocab_idx: id,
            })
            .collect(),
        probabilities,
        vectors,
    })
}

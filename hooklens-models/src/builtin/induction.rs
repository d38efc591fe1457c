//! Repeated random tokens and induction scores: the classic setting for finding
//! induction heads (Olsson et al., 2022; TransformerLens's main demo).

use candle_core::{Device, IndexOp, Tensor};
use hooklens_core::{CacheOptions, HookedModel, Result};

use crate::model::HookedTransformer;
use crate::ops::SeededRng;

/// Draws a token id for random sequences: skewed towards low ids, which in GPT-2's
/// BPE are the earlier, more frequent merges, so common tokens get trained more often;
/// never `avoid` (the BOS/EOS id).
pub fn random_token(rng: &mut SeededRng, d_vocab: usize, avoid: u32) -> u32 {
    loop {
        let u = rng.uniform();
        let id = ((d_vocab as f64) * u * u * u) as u32;
        if id != avoid && (id as usize) < d_vocab {
            return id;
        }
    }
}

/// `[batch, 1 + prefix + window]` tokens: BOS, `prefix` random tokens, then `window`
/// consecutive tokens of them again, from a start drawn per sequence; what the built-in
/// model trains on. With the repeat a window of a longer prefix, "predict a token seen
/// earlier" and "predict a token not yet repeated" both leave most of the prefix to
/// choose from; only induction (the token after the earlier occurrence of this one)
/// predicts the repeat.
pub fn windowed_repeats(
    rng: &mut SeededRng,
    batch: usize,
    prefix: usize,
    window: usize,
    d_vocab: usize,
    bos: u32,
) -> Result<Tensor> {
    if window > prefix {
        return Err(hooklens_core::Error::invalid(format!(
            "a repeat window of {window} tokens does not fit in a prefix of {prefix}"
        )));
    }
    let mut ids = Vec::with_capacity(batch * (1 + prefix + window));
    for _ in 0..batch {
        let seq: Vec<u32> = (0..prefix).map(|_| random_token(rng, d_vocab, bos)).collect();
        let start = rng.below((prefix - window + 1) as u64) as usize;
        ids.push(bos);
        ids.extend_from_slice(&seq);
        ids.extend_from_slice(&seq[start..start + window]);
    }
    Ok(Tensor::from_vec(ids, (batch, 1 + prefix + window), &Device::Cpu)?)
}

/// `[batch, 1 + 2*half]` tokens: BOS, then `half` random tokens, then the same again.
pub fn repeated_tokens(rng: &mut SeededRng, batch: usize, half: usize, d_vocab: usize, bos: u32) -> Result<Tensor> {
    let mut ids = Vec::with_capacity(batch * (1 + 2 * half));
    for _ in 0..batch {
        let seq: Vec<u32> = (0..half).map(|_| random_token(rng, d_vocab, bos)).collect();
        ids.push(bos);
        ids.extend_from_slice(&seq);
        ids.extend_from_slice(&seq);
    }
    Ok(Tensor::from_vec(ids, (batch, 1 + 2 * half), &Device::Cpu)?)
}

/// Per-head induction scores `[n_layers, n_heads]` on `tokens` `[batch, 1 + 2*half]`: a BOS,
/// `half` random tokens, then the same `half` again (TransformerLens's repeated tokens):
/// the mean attention from each position of the repeat to the
/// token right after its earlier occurrence, where an induction head looks.
pub fn induction_scores(model: &HookedTransformer, tokens: &Tensor, half: usize) -> Result<Tensor> {
    // The earlier occurrence of token q is at q - half; induction attends one after it.
    mean_attention(model, tokens, (1 + half)..(1 + 2 * half), |q| q - half + 1)
}

/// Per-head previous-token scores `[n_layers, n_heads]` on any `tokens` `[batch, len]`
/// (len >= 2): the mean attention from each position after the first to the one just
/// before it, where the heads that induction heads compose with look.
pub fn previous_token_scores(model: &HookedTransformer, tokens: &Tensor) -> Result<Tensor> {
    let len = tokens.dim(1)?;
    if len < 2 {
        return Err(hooklens_core::Error::invalid(format!(
            "previous-token scores need at least 2 positions; got {len}"
        )));
    }
    mean_attention(model, tokens, 1..len, |q| q - 1)
}

/// `[n_layers, n_heads]`: each head's attention from query `q` to key `key_of(q)`,
/// averaged over the batch and `queries`.
fn mean_attention(
    model: &HookedTransformer,
    tokens: &Tensor,
    queries: std::ops::Range<usize>,
    key_of: impl Fn(usize) -> usize,
) -> Result<Tensor> {
    let (_, cache) = model.run_with_cache(CacheOptions::new().names("blocks.*.attn.hook_pattern"), |m| {
        m.forward(tokens)
    })?;
    let n_layers = model.cfg().n_layers;
    let mut rows = Vec::with_capacity(n_layers);
    for layer in 0..n_layers {
        // [batch, head, query, key]
        let pattern = cache.try_get(&format!("blocks.{layer}.attn.hook_pattern"))?;
        let per_query = queries
            .clone()
            .map(|q| Ok(pattern.i((.., .., q, key_of(q)))?))
            .collect::<Result<Vec<_>>>()?;
        // [queries, batch, head] -> [head]
        rows.push(Tensor::stack(&per_query, 0)?.mean(0)?.mean(0)?);
    }
    Ok(Tensor::stack(&rows, 0)?)
}

/// Mean next-token loss over the first and the second (repeated) half of repeated tokens
/// `[batch, 1 + 2*half]` (as `repeated_tokens` makes them): `(first, second)`.
pub fn half_losses(model: &HookedTransformer, tokens: &Tensor, half: usize) -> Result<(f32, f32)> {
    use crate::model::{ForwardOptions, ReturnType};
    let out = model.forward_with(
        tokens,
        &ForwardOptions::new().return_type(ReturnType::Loss).loss_per_token(true),
    )?;
    // [batch, pos - 1]: entry i is the loss of predicting token i + 1.
    let per_token = out.loss.ok_or_else(|| hooklens_core::Error::invalid("no loss"))?;
    let first = per_token.narrow(1, 1, half - 1)?.mean_all()?.to_scalar::<f32>()?;
    let second = per_token
        .narrow(1, half + 1, half - 1)?
        .mean_all()?
        .to_scalar::<f32>()?;
    Ok((first, second))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windowed_repeats_repeat_a_window_of_their_own_prefix() {
        let mut rng = SeededRng::new(4);
        let (prefix, window) = (12, 5);
        let t = windowed_repeats(&mut rng, 6, prefix, window, 50257, 50256).unwrap();
        assert_eq!(t.dims(), &[6, 1 + prefix + window]);
        let mut starts = std::collections::HashSet::new();
        for row in t.to_vec2::<u32>().unwrap() {
            assert_eq!(row[0], 50256);
            assert!(row[1..].iter().all(|&id| id != 50256 && id < 50257));
            let (seq, rep) = row[1..].split_at(prefix);
            let start = (0..=prefix - window)
                .find(|&s| seq[s..s + window] == *rep)
                .expect("the repeat is a window of the prefix");
            starts.insert(start);
        }
        assert!(starts.len() > 1, "the window's start is drawn per sequence: {starts:?}");
        let err = windowed_repeats(&mut rng, 1, 4, 5, 50257, 50256).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }
}

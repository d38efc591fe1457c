//! Sampling text from the model, as TransformerLens's `generate`.

use candle_core::{DType, Tensor};
use hooklens_core::{Error, Result};

use super::forward_options::ForwardOptions;
use super::kv_cache::KvCache;
use super::model::HookedTransformer;

/// The options of [`HookedTransformer::generate`] (TransformerLens's `generate` arguments).
/// The default samples 10 tokens at temperature 1 with seed 0, stopping at EOS, with a
/// KV cache.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// How many tokens to add at most.
    pub max_new_tokens: usize,
    /// Sample (`true`) or take the most likely token (`false`: greedy; temperature,
    /// top-k, top-p and the frequency penalty are then ignored, as in TransformerLens).
    pub do_sample: bool,
    /// Logits are divided by this before sampling; 0 means greedy.
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (ties with the k-th are kept).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p` (0 < p <= 1).
    pub top_p: Option<f64>,
    /// Subtract `freq_penalty * count` from the logit of each token already in the sequence.
    pub freq_penalty: f64,
    /// Seed of the sampler: the same seed, model and input give the same tokens.
    pub seed: u64,
    /// Stop a sequence at the EOS token (later positions are filled with EOS) and stop
    /// when every sequence has stopped.
    pub stop_at_eos: bool,
    /// The EOS token; the model's `eos_token_id` when `None`.
    pub eos_token_id: Option<u32>,
    /// Reuse keys and values of earlier positions (much faster; same result).
    pub use_kv_cache: bool,
    /// Attention mask of the prompt `[batch, pos]` (1 keep, 0 pad), for left-padded batches.
    pub attention_mask: Option<Tensor>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 10,
            do_sample: true,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            freq_penalty: 0.0,
            seed: 0,
            stop_at_eos: true,
            eos_token_id: None,
            use_kv_cache: true,
            attention_mask: None,
        }
    }
}

impl GenerateOptions {
    /// Greedy decoding of at most `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> Self {
        GenerateOptions {
            max_new_tokens,
            do_sample: false,
            ..Self::default()
        }
    }

    /// Sampling of at most `max_new_tokens` tokens at `temperature` with `seed`.
    pub fn sample(max_new_tokens: usize, temperature: f64, seed: u64) -> Self {
        GenerateOptions {
            max_new_tokens,
            temperature,
            seed,
            ..Self::default()
        }
    }
}

/// SplitMix64: small, fast and deterministic across platforms.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// Whether the next token is the argmax rather than a sample.
fn is_greedy(opts: &GenerateOptions) -> bool {
    !opts.do_sample || opts.temperature == 0.0
}

/// TransformerLens's `sample_logits` on one row of logits; `history` is the sequence
/// so far (for the frequency penalty).
fn sample_row(logits: &[f32], history: &[u32], opts: &GenerateOptions, rng: &mut Rng) -> Result<u32> {
    if is_greedy(opts) {
        return Ok(argmax(logits));
    }
    let mut l: Vec<f64> = logits.iter().map(|&x| x as f64 / opts.temperature).collect();
    if opts.freq_penalty != 0.0 {
        for &t in history {
            if let Some(v) = l.get_mut(t as usize) {
                *v -= opts.freq_penalty;
            }
        }
    }
    if let Some(k) = opts.top_k {
        if k < l.len() {
            let mut sorted = l.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[k - 1];
            for v in l.iter_mut() {
                if *v < kth {
                    *v = f64::NEG_INFINITY;
                }
            }
        }
    }
    if let Some(p) = opts.top_p {
        let mut order: Vec<usize> = (0..l.len()).collect();
        order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        let probs = softmax(&order.iter().map(|&i| l[i]).collect::<Vec<_>>());
        let mut cum = 0.0;
        // Keep tokens until the mass before them reaches p (the first is always kept).
        let mut remove = Vec::new();
        for (rank, &i) in order.iter().enumerate() {
            if rank > 0 && cum > p {
                remove.push(i);
            }
            cum += probs[rank];
        }
        for i in remove {
            l[i] = f64::NEG_INFINITY;
        }
    }
    let probs = softmax(&l);
    if probs.iter().any(|p| !p.is_finite()) {
        return Err(Error::invalid("generate: the logits are not finite, cannot sample"));
    }
    let u = rng.next_f64();
    let mut cum = 0.0;
    let mut last_positive = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            last_positive = i;
            cum += p;
            if u < cum {
                return Ok(i as u32);
            }
        }
    }
    Ok(last_positive as u32)
}

fn softmax(xs: &[f64]) -> Vec<f64> {
    let max = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = xs.iter().map(|&x| (x - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

impl HookedTransformer {
    /// Extends `tokens` `[batch, pos]` by up to `opts.max_new_tokens` tokens and returns
    /// `[batch, pos + n]` in the input's dtype. Hooks apply on every forward pass; with
    /// the KV cache each pass after the first runs only the newest position.
    pub fn generate(&self, tokens: &Tensor, opts: &GenerateOptions) -> Result<Tensor> {
        let input_dtype = tokens.dtype();
        let tokens = self.check_tokens(tokens)?;
        let (b, p) = tokens.dims2()?;
        let eos = self.check_generate_options(opts, p)?;
        let mut seqs: Vec<Vec<u32>> = tokens.to_vec2::<u32>()?;
        let mut finished = vec![false; b];
        let mut rng = Rng(opts.seed);
        let mut cache = KvCache::new();
        let mut mask_rows = prompt_mask_rows(opts, b, p)?;
        for step in 0..opts.max_new_tokens {
            let logits = if opts.use_kv_cache {
                let masked = mask_rows.is_some();
                self.cached_step_logits(step, &tokens, &seqs, masked, opts, &mut cache)?
            } else {
                self.full_sequence_logits(&seqs, mask_rows.as_deref())?
            };
            let n = logits.dim(1)?;
            let last = logits
                .narrow(1, n - 1, 1)?
                .squeeze(1)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            append_next_tokens(&last, step, &mut seqs, &mut finished, opts, eos, &mut rng)?;
            if let Some(rows) = mask_rows.as_mut() {
                for r in rows.iter_mut() {
                    r.push(1.0);
                }
            }
            if opts.stop_at_eos && finished.iter().all(|&f| f) {
                break;
            }
        }
        let len = seqs[0].len();
        Ok(Tensor::from_vec(seqs.concat(), (b, len), self.device())?.to_dtype(input_dtype)?)
    }

    /// The EOS token to stop at (`opts.eos_token_id`, else the config's), once the options
    /// are checked against a prompt of `p` positions.
    fn check_generate_options(&self, opts: &GenerateOptions, p: usize) -> Result<Option<u32>> {
        if opts.do_sample && !(opts.temperature >= 0.0 && opts.temperature.is_finite()) {
            return Err(Error::invalid(format!(
                "generate: temperature {} must be finite and >= 0",
                opts.temperature
            )));
        }
        if opts.top_k == Some(0) {
            return Err(Error::invalid("generate: top_k must be > 0"));
        }
        // Checked here: a NaN or infinite penalty would only surface later as "the
        // logits are not finite", which does not say which option was wrong.
        if !opts.freq_penalty.is_finite() {
            return Err(Error::invalid(format!(
                "generate: freq_penalty {} must be finite",
                opts.freq_penalty
            )));
        }
        if let Some(tp) = opts.top_p {
            if !(tp > 0.0 && tp <= 1.0) {
                return Err(Error::invalid(format!("generate: top_p {tp} must be in (0, 1]")));
            }
        }
        if opts.max_new_tokens > 0
            && p.checked_add(opts.max_new_tokens - 1)
                .is_none_or(|n| n > self.cfg().n_ctx)
        {
            return Err(Error::ContextTooLong {
                positions: p.saturating_add(opts.max_new_tokens),
                n_ctx: self.cfg().n_ctx,
                message: format!(
                    "generate: {p} prompt positions + {} new tokens exceed the context length n_ctx = {}",
                    opts.max_new_tokens,
                    self.cfg().n_ctx
                ),
            });
        }
        let eos = opts.eos_token_id.or(self.cfg().eos_token_id);
        if opts.stop_at_eos && eos.is_none() {
            return Err(Error::invalid(
                "generate: stop_at_eos needs an EOS token (the config has none; set eos_token_id)",
            ));
        }
        Ok(eos)
    }

    /// The logits `[batch, pos', d_vocab]` of one pass with the KV cache: the whole prompt
    /// `tokens` at step 0 (prefill), else only each sequence's newest token (`pos'` = 1).
    /// `masked`: whether the prompt has an attention mask (new positions are never masked).
    fn cached_step_logits(
        &self,
        step: usize,
        tokens: &Tensor,
        seqs: &[Vec<u32>],
        masked: bool,
        opts: &GenerateOptions,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let b = seqs.len();
        let (new, mask) = if step == 0 {
            (tokens.clone(), opts.attention_mask.clone())
        } else {
            let last: Vec<u32> = seqs.iter().map(|s| s[s.len() - 1]).collect();
            let mask = masked
                .then(|| Tensor::ones((b, 1), DType::F32, self.device()))
                .transpose()?;
            (Tensor::from_vec(last, (b, 1), self.device())?, mask)
        };
        let fo = ForwardOptions {
            attention_mask: mask,
            ..ForwardOptions::default()
        };
        self.last_logits(&new, &fo, Some(cache))
    }

    /// The logits `[batch, pos, d_vocab]` of one pass over the whole sequences so far
    /// (no KV cache), masked by `mask_rows` (`[batch][pos]`) when given.
    fn full_sequence_logits(&self, seqs: &[Vec<u32>], mask_rows: Option<&[Vec<f32>]>) -> Result<Tensor> {
        let (b, len) = (seqs.len(), seqs[0].len());
        let all = Tensor::from_vec(seqs.concat(), (b, len), self.device())?;
        let fo = ForwardOptions {
            attention_mask: mask_rows
                .map(|rows| Tensor::from_vec(rows.concat(), (b, len), self.device()))
                .transpose()?,
            ..ForwardOptions::default()
        };
        self.last_logits(&all, &fo, None)
    }
}

/// The prompt's attention mask as rows `[batch][pos]` of f32 (grown by one 1 per new
/// token), or `None` without a mask; checks its shape is `[b, p]`.
fn prompt_mask_rows(opts: &GenerateOptions, b: usize, p: usize) -> Result<Option<Vec<Vec<f32>>>> {
    match &opts.attention_mask {
        Some(m) => {
            if m.dims() != [b, p] {
                return Err(Error::invalid(format!(
                    "generate: attention_mask has shape {:?}, expected [{b}, {p}]",
                    m.dims()
                )));
            }
            Ok(Some(m.to_dtype(DType::F32)?.to_vec2::<f32>()?))
        }
        None => Ok(None),
    }
}

/// Appends to each sequence the token chosen from its row of `last` (`[batch][d_vocab]`
/// logits at the last position; `step`: how many tokens were added before), EOS again
/// once the sequence has finished, and marks the sequences that reach EOS as finished.
fn append_next_tokens(
    last: &[Vec<f32>],
    step: usize,
    seqs: &mut [Vec<u32>],
    finished: &mut [bool],
    opts: &GenerateOptions,
    eos: Option<u32>,
    rng: &mut Rng,
) -> Result<()> {
    for (i, row) in last.iter().enumerate() {
        // Sampling refuses non-finite logits; the argmax would pick token 0.
        if is_greedy(opts) {
            if let Some(t) = row.iter().position(|x| !x.is_finite()) {
                return Err(Error::invalid(format!(
                    "generate: the logits at position {} (batch row {i}, new token {step}) are not \
                     finite ({} for token {t}): cannot choose the next token",
                    seqs[i].len() - 1,
                    row[t]
                )));
            }
        }
        let mut next = sample_row(row, &seqs[i], opts, rng)?;
        if opts.stop_at_eos {
            let eos = eos.unwrap_or(0);
            if finished[i] {
                next = eos;
            }
            finished[i] |= next == eos;
        }
        seqs[i].push(next);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_and_top_p_restrict_the_choice() {
        let logits = [0.0f32, 5.0, 4.9, -1.0];
        let mut rng = Rng(1);
        let opts = GenerateOptions {
            top_k: Some(2),
            ..GenerateOptions::default()
        };
        for _ in 0..50 {
            let t = sample_row(&logits, &[], &opts, &mut rng).unwrap();
            assert!(t == 1 || t == 2);
        }
        let opts = GenerateOptions {
            top_p: Some(0.01),
            ..GenerateOptions::default()
        };
        for _ in 0..20 {
            assert_eq!(sample_row(&logits, &[], &opts, &mut rng).unwrap(), 1);
        }
        assert_eq!(
            sample_row(&logits, &[], &GenerateOptions::greedy(1), &mut rng).unwrap(),
            1
        );
    }

    #[test]
    fn frequency_penalty_moves_away_from_repeats() {
        let logits = [3.0f32, 3.0];
        let opts = GenerateOptions {
            freq_penalty: 100.0,
            ..GenerateOptions::default()
        };
        let mut rng = Rng(7);
        for _ in 0..20 {
            assert_eq!(sample_row(&logits, &[0, 0], &opts, &mut rng).unwrap(), 1);
        }
    }

    #[test]
    fn kv_decoding_on_the_small_matmul_path_equals_a_full_recompute() {
        use candle_core::{DType, Device, Tensor};
        use hooklens_testutil::max_abs_diff;

        use crate::model::{random_weights, ForwardOptions, HookedTransformer, KvCache, TransformerConfig};
        // Wide enough (256 x 768 weights) for the small-matmul path.
        let cfg = TransformerConfig::new(2, 256, 4, 1000, 32);
        let vb = candle_nn::VarBuilder::from_tensors(random_weights(&cfg, 5).unwrap(), DType::F32, &Device::Cpu);
        let model = HookedTransformer::load(vb, &cfg).unwrap();
        let ids: Vec<u32> = (0..12).map(|i| (i * 37 % 1000) as u32).collect();
        let tokens = Tensor::from_vec(ids, (1, 12), &Device::Cpu).unwrap();
        let full = model.forward(&tokens).unwrap();
        let mut cache = KvCache::new();
        let opts = ForwardOptions::new();
        let mut parts = vec![model
            .forward_with_kv(&tokens.narrow(1, 0, 8).unwrap(), &opts, &mut cache)
            .unwrap()
            .logits
            .unwrap()];
        for i in 8..12 {
            let step = model.forward_with_kv(&tokens.narrow(1, i, 1).unwrap(), &opts, &mut cache);
            parts.push(step.unwrap().logits.unwrap());
        }
        let cached = Tensor::cat(&parts, 1).unwrap();
        assert!(max_abs_diff(&cached, &full) < 1e-4, "{}", max_abs_diff(&cached, &full));
    }
}

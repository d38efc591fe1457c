//! The training data computed on the fly: a model run over a corpus (cut into sequences
//! as `hooklens harvest` cuts it), caching only the hook point(s) trained on; and the
//! cross-entropy loss recovered by an SAE spliced into that model.

use candle_core::{DType, Device, Tensor};
use hooklens_core::{CacheOptions, Error, HookPoint, HookSet, HookedModel, NamesFilter, Result};

use crate::corpus::{stop_layer, Corpus, CorpusSequences};
use crate::sae::{Sae, SaeSet};
use crate::{ForwardOptions, HookedTransformer, ReturnType};

/// Activations of `model` at one hook point (or, for a transcoder, at two: its input
/// and its target, row for row) over the sequences of a corpus, computed as they are
/// needed, `sequences_per_forward` sequences per forward pass. The sequences are those
/// `hooklens harvest` makes of the same file with the same context size, so training
/// on this source and on the shards of that harvest sees the same rows in the same
/// order. Deterministic: each pass over the corpus gives the same rows.
pub struct ModelActivations {
    model: HookedTransformer,
    corpus: Corpus,
    hook: String,
    d_in: usize,
    out: Option<(String, usize)>,
    context_size: usize,
    sequences_per_forward: usize,
    bos: u32,
    eos: u32,
    stop: Option<usize>,
    /// The sequences the cross-entropy metrics are measured on `[n, context_size]`.
    eval_tokens: Tensor,
}

impl std::fmt::Debug for ModelActivations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelActivations")
            .field("corpus", &self.corpus)
            .field("hook", &self.hook)
            .field("d_in", &self.d_in)
            .field("out", &self.out)
            .field("context_size", &self.context_size)
            .field("sequences_per_forward", &self.sequences_per_forward)
            .finish_non_exhaustive()
    }
}

/// The next-token cross-entropy of a model on the evaluation sequences three ways, and
/// SAELens's `ce_loss_score` from them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CeLoss {
    /// The model as it is (`ce_loss_without_sae`).
    pub clean: f64,
    /// With the SAE spliced in, without its error term (`ce_loss_with_sae`).
    pub with_sae: f64,
    /// With the SAE's point set to zero (`ce_loss_with_ablation`).
    pub zero_ablation: f64,
}

impl CeLoss {
    /// `(zero_ablation - with_sae) / (zero_ablation - clean)`: 1 when the SAE loses
    /// nothing, 0 when it is as bad as zeroing its point (SAELens's `ce_loss_score`;
    /// NaN when zero ablation costs nothing).
    pub fn score(&self) -> f64 {
        (self.zero_ablation - self.with_sae) / (self.zero_ablation - self.clean)
    }
}

impl ModelActivations {
    /// `model`'s activations at `hook` (a transcoder's input, with `hook_out` its
    /// target) over `corpus`, in sequences of `context_size` tokens (the model's
    /// `n_ctx` if `None`). Checks the hook points (an error suggesting the nearest
    /// names), the context size, and that the corpus makes at least one sequence; its
    /// first `sequences_per_forward` sequences are kept for the cross-entropy metrics
    /// ([`ModelActivations::ce_loss`]).
    pub fn new(
        model: HookedTransformer,
        corpus: Corpus,
        hook: &str,
        hook_out: Option<&str>,
        context_size: Option<usize>,
        sequences_per_forward: usize,
    ) -> Result<Self> {
        if sequences_per_forward == 0 {
            return Err(Error::invalid("sequences per forward pass must be at least 1"));
        }
        let n_ctx = model.cfg().n_ctx;
        let context_size = context_size.unwrap_or(n_ctx);
        if context_size < 2 || context_size > n_ctx {
            return Err(Error::invalid(format!(
                "context size {context_size} must be between 2 and the model's n_ctx = {n_ctx}"
            )));
        }
        if hook_out == Some(hook) {
            return Err(Error::invalid(format!(
                "a transcoder's input and output hooks are both `{hook}`; to reconstruct a hook, train an SAE"
            )));
        }
        let all = model.hook_names();
        for name in std::iter::once(hook).chain(hook_out) {
            if !all.iter().any(|n| n == name) {
                let near = hooklens_core::__internal::nearest_names(name, all.iter().map(String::as_str), 3);
                let hint = if near.is_empty() {
                    String::new()
                } else {
                    format!(" (did you mean `{}`?)", near.join("`, `"))
                };
                return Err(Error::invalid(format!(
                    "`{name}` is not a hook point of the model{hint}"
                )));
            }
        }
        let names: Vec<String> = std::iter::once(hook).chain(hook_out).map(String::from).collect();
        let stop = stop_layer(&names, model.cfg().n_layers);
        let bos = model.bos_token_id()?;
        let eos = model.cfg().eos_token_id.unwrap_or(bos);
        let mut src = ModelActivations {
            model,
            corpus,
            hook: hook.to_string(),
            d_in: 0,
            out: hook_out.map(|h| (h.to_string(), 0)),
            context_size,
            sequences_per_forward,
            bos,
            eos,
            stop,
            eval_tokens: Tensor::zeros((1, 1), DType::U32, &Device::Cpu)?,
        };
        // The widths, from a probe sequence.
        let probe = Tensor::from_vec(vec![bos; context_size], (1, context_size), &Device::Cpu)?;
        let acts = src.forward(&probe)?;
        src.d_in = acts[0].1;
        if let (Some((_, d)), Some((_, w))) = (src.out.as_mut(), acts.get(1)) {
            *d = *w;
        }
        let mut seqs = src.sequences()?;
        let mut eval = Vec::new();
        let mut n = 0;
        while n < sequences_per_forward {
            match seqs.next_sequence()? {
                Some(s) => eval.extend(s),
                None => break,
            }
            n += 1;
        }
        if n == 0 {
            return Err(Error::invalid(format!(
                "{}: fewer than {} tokens, not one sequence of {context_size} (BOS included)",
                src.corpus.path.display(),
                context_size - 1
            )));
        }
        drop(seqs);
        src.eval_tokens = Tensor::from_vec(eval, (n, context_size), &Device::Cpu)?;
        Ok(src)
    }

    /// The model.
    pub fn model(&self) -> &HookedTransformer {
        &self.model
    }

    /// The corpus.
    pub fn corpus(&self) -> &Corpus {
        &self.corpus
    }

    /// Tokens per sequence, BOS included.
    pub fn context_size(&self) -> usize {
        self.context_size
    }

    /// The hook point (a transcoder's input).
    pub fn hook(&self) -> &str {
        &self.hook
    }

    /// The activations' width (a transcoder's input width).
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// A transcoder's target hook point and its width.
    pub fn hook_out(&self) -> Option<(&str, usize)> {
        self.out.as_ref().map(|(h, d)| (h.as_str(), *d))
    }

    /// The corpus's sequences from its start.
    pub(crate) fn sequences(&self) -> Result<CorpusSequences<'_>> {
        CorpusSequences::open(
            &self.corpus,
            self.model.tokenizer()?,
            self.bos,
            self.eos,
            self.context_size,
        )
    }

    /// Sequences per forward pass.
    pub(crate) fn sequences_per_forward(&self) -> usize {
        self.sequences_per_forward
    }

    /// The hooks' activations for `tokens` `[batch, ctx]`, each as f32 values
    /// (`batch * ctx` rows) and its width.
    fn forward(&self, tokens: &Tensor) -> Result<Vec<(Vec<f32>, usize)>> {
        let mut fwd = ForwardOptions::new().return_type(ReturnType::None);
        if let Some(stop) = self.stop {
            fwd = fwd.stop_at_layer(stop as isize);
        }
        let names: Vec<String> = std::iter::once(self.hook.clone())
            .chain(self.out.as_ref().map(|(h, _)| h.clone()))
            .collect();
        let opts = CacheOptions::new()
            .names(NamesFilter::Names(names.clone()))
            .device(Device::Cpu);
        let tokens = tokens.to_device(self.model.device())?;
        let (_, cache) = self.model.run_with_cache(opts, |m| m.forward_with(&tokens, &fwd))?;
        names
            .iter()
            .map(|n| {
                let t = cache.try_get(n)?;
                let &[_, _, d] = t.dims() else {
                    return Err(Error::invalid(format!(
                        "`{n}` is {:?}; training reads [batch, pos, d] (per-head activations such as \
                         hook_z are not supported yet)",
                        t.dims()
                    )));
                };
                let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(Error::invalid(format!(
                        "`{n}` is not finite on the corpus's sequences (are the weights finite?)"
                    )));
                }
                Ok((v, d))
            })
            .collect()
    }

    /// The rows of `seqs` (each `context_size` tokens), `d_in` values each, or a
    /// transcoder's input and target side by side.
    pub(crate) fn rows(&self, seqs: Vec<u32>) -> Result<Vec<f32>> {
        let n = seqs.len() / self.context_size;
        let tokens = Tensor::from_vec(seqs, (n, self.context_size), &Device::Cpu)?;
        let mut acts = self.forward(&tokens)?;
        if acts.len() == 1 {
            return Ok(acts.remove(0).0);
        }
        let (target, d_out) = acts.remove(1);
        let (input, d_in) = acts.remove(0);
        Ok(super::activations::side_by_side(&input, d_in, &target, d_out))
    }

    /// The model's mean next-token loss on the evaluation sequences with `hooks`.
    fn loss(&self, hooks: HookSet) -> Result<f64> {
        let opts = ForwardOptions::new().return_type(ReturnType::Loss);
        let tokens = self.eval_tokens.to_device(self.model.device())?;
        let out = self.model.run_with_hooks(hooks, |m| m.forward_with(&tokens, &opts))?;
        let loss = out
            .loss
            .ok_or_else(|| Error::invalid("the forward returned no loss"))?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_scalar::<f32>()?;
        Ok(loss as f64)
    }

    /// The cross-entropy loss on the evaluation sequences (the corpus's first
    /// `sequences_per_forward`) clean, with `sae` spliced in (its reconstruction in the
    /// place of its point; a transcoder's in the place of its output point) and with
    /// that point zeroed: what SAELens's `ce_loss_score` compares. `sae` must be on the
    /// model's device.
    pub fn ce_loss(&self, sae: &Sae) -> Result<CeLoss> {
        let point = sae.cfg().spliced_at().to_string();
        let zero = HookSet::new().fwd(point, |x: &Tensor, _: &HookPoint| Ok(Some(x.zeros_like()?)));
        Ok(CeLoss {
            clean: self.loss(HookSet::new())?,
            with_sae: self.loss(SaeSet::from(sae).hooks()?)?,
            zero_ablation: self.loss(zero)?,
        })
    }
}

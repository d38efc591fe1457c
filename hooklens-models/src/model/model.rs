//! `HookedTransformer`: the one hooked model of every bundled family, with
//! TransformerLens's hook points.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use hooklens_core::{Error, HookPoint, HookedForward, Result};

use super::attention::{Attention, AttnContext, AttnMask, PastKv};
use super::block::Block;
use super::embed::{is_integer, Embed, PosEmbed};
use super::forward_options::{ForwardOptions, ForwardOutput, ReturnType};
use super::kv_cache::KvCache;
use super::load_options::LoadOptions;
use super::mlp::Mlp;
use super::norm::{Norm, NormKind};
use super::processing::{process, ProcessingOptions};
use super::rotary::{Rotary, RotaryTables};
use super::unembed::Unembed;
use crate::config::TransformerConfig;
use crate::loading::{open_checkpoint, open_checkpoint_file, read_dtype};
use crate::params::{LayerWeights, NormParams, TransformerWeights};

/// A transformer of any bundled family (GPT-2, GPT-NeoX / Pythia, Llama, Mistral,
/// Qwen 2 / 3, Gemma 1 / 2 / 3, Phi-3, OLMo 2, GPT-Neo, OPT, Phi, GPT-J, BLOOM, and the
/// mixtures of experts Mixtral, Qwen3-MoE, OLMoE and gpt-oss) with every activation
/// hooked under its TransformerLens name (`blocks.3.attn.hook_pattern`, ...), in TransformerLens's
/// registration order. The family's differences are all in its
/// [`TransformerConfig`]: which hook points exist follows from it (`hook_pos_embed`
/// only with learned positions and ALiBi (where it never fires), `attn.hook_rot_q` /
/// `hook_rot_k` only with rotary, `embed.ln.*` with a norm after the embedding,
/// no `hook_resid_mid` in a parallel block, `mlp.hook_pre_linear` in a gated MLP,
/// `ln1_post` / `ln2_post` with norms after attention and MLP, `attn.q_norm` /
/// `k_norm` with per-head q/k norms, `hook_normalized_resid_post` in post-LN blocks
/// and no `ln_final.*` without a final norm). Every MLP also has `mlp.hook_in` and
/// `mlp.hook_out` (its input and output), circuit-tracer's and SAELens's names for
/// where transcoders read and write, which TransformerLens 2.x lacks.
///
/// Load it with [`HookedTransformer::from_dir`] (weight processing as
/// TransformerLens's `from_pretrained` by default; the family is read from
/// `config.json`), run it with [`HookedTransformer::forward`] or
/// [`HookedTransformer::forward_with`], and use the hook API of
/// [`hooklens_core::HookedModel`] (`run_with_hooks`, `run_with_cache`, `add_hook`,
/// ...) on it.
///
/// Where it differs from TransformerLens, deliberately:
/// - TransformerLens applies `ln1` three times per block (to the q, k and v inputs, the
///   same tensor unless `use_split_qkv_input`), so `ln1` hooks fire three times. Here
///   they fire once on the fast no-gradient path (one fused q|k|v matmul), and three
///   times when gradients are wanted or the inputs are split, where it matters.
/// - `hook_tokens` carries u32 ids (TransformerLens: int64).
/// - `generate` applies `top_k` and then `top_p` when both are given
///   (TransformerLens ignores `top_p` then).
///
/// ```
/// use candle_core::Tensor;
/// use hooklens_core::{CacheOptions, HookSet, HookedModel};
/// use hooklens_models::{HookedTransformer, LoadOptions};
///
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/tiny-gpt2/model");
/// let model = HookedTransformer::from_dir(dir, &LoadOptions::default())?;
/// let tokens = Tensor::new(&[[511u32, 17, 301, 42]], model.device())?;
/// let (logits, cache) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))?;
/// assert_eq!(logits.dims(), [1, 4, 512]);
/// assert_eq!(cache.try_get("blocks.0.attn.hook_pattern")?.dims(), [1, 4, 4, 4]);
///
/// // Zero-ablate layer 0's MLP for one run.
/// let hooks = HookSet::new().fwd("blocks.0.hook_mlp_out", |x, _hp| Ok(Some(x.zeros_like()?)));
/// let ablated = model.run_with_hooks(hooks, |m| m.forward(&tokens))?;
/// assert_eq!(ablated.dims(), logits.dims());
/// # Ok::<(), hooklens_core::Error>(())
/// ```
#[derive(Debug, hooklens_derive::Hooked)]
#[hooked(crate = "hooklens_core", hint = "disabled_hook_hint")]
pub struct HookedTransformer {
    cfg: TransformerConfig,
    /// The tokenizer of the text methods (`to_tokens`, ...); GPT-2's BPE when `None`.
    /// Set by `from_pretrained` and `with_tokenizer` (see `text.rs`).
    pub(super) tokenizer: Option<std::sync::Arc<crate::tokenizer::Tokenizer>>,
    /// Token embedding.
    pub embed: Embed,
    /// Token embeddings `[batch, pos, d_model]`.
    pub hook_embed: HookPoint,
    /// Position embedding (learned positions only).
    pub pos_embed: Option<PosEmbed>,
    /// Position embeddings `[batch, pos, d_model]` (learned positions only).
    pub hook_pos_embed: Option<HookPoint>,
    /// The input tokens `[batch, pos]` (u32), with `use_hook_tokens`.
    pub hook_tokens: Option<HookPoint>,
    /// The transformer blocks.
    pub blocks: Vec<Block>,
    /// The final norm; none where the last block's output is unembedded as it is
    /// (`final_norm: false`: post-LN OPT, facebook/opt-350m, whose blocks end with a
    /// norm; OPT with `_remove_final_layer_norm`).
    pub ln_final: Option<Norm>,
    /// The unembedding.
    pub unembed: Unembed,
    /// The rotary embedding's frequencies, for rotary models.
    pub(crate) rotary: Option<Rotary>,
    /// The sliding-window layers' own frequencies (`rotary_base_local`, Gemma 3), if any.
    pub(crate) rotary_local: Option<Rotary>,
}

/// The GPT-2 name of [`HookedTransformer`]: a GPT-2 is one configuration of it.
#[deprecated(since = "0.2.0", note = "one model runs every family: use `HookedTransformer`")]
pub type HookedGpt2 = HookedTransformer;

/// `unknown_hook_hint` of the model: names of optional points that are switched off
/// get `Error::DisabledHook` with the flag that switches them on.
fn disabled_hook_hint(model: &HookedTransformer, name: &str) -> Option<Error> {
    model.cfg.disabled_flag_for(name).map(|flag| Error::DisabledHook {
        name: name.to_string(),
        flag: flag.to_string(),
    })
}

impl HookedTransformer {
    /// Loads `config.json` and `model.safetensors` (or the shards that
    /// `model.safetensors.index.json` lists) from `dir`, the layout of a Hugging Face
    /// model directory, with `opts`' dtype, device and processing. The family comes
    /// from `config.json`; an unsupported one is an error that lists the supported ones.
    pub fn from_dir(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such model directory"),
            ));
        }
        let cfg = crate::convert::config_from_hf_json(dir.join("config.json"))?;
        let src = open_checkpoint(dir, &opts.device, read_dtype(opts.dtype))?;
        let w = crate::convert::read_weights(
            src.as_ref(),
            &cfg,
            &dir.display().to_string(),
            opts.allow_unused_tensors,
        )?;
        drop(src);
        Self::build(cfg, w, &opts.processing, opts.dtype)
    }

    /// Loads a Hugging Face `config.json` and a safetensors checkpoint (read tensor by
    /// tensor; a `*.index.json` names a sharded one), with `opts`' dtype, device and
    /// processing. Errors name the file and, for a bad checkpoint, the tensor.
    pub fn from_files(config: impl AsRef<Path>, weights: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let cfg = crate::convert::config_from_hf_json(config)?;
        let src = open_checkpoint_file(weights.as_ref(), &opts.device, read_dtype(opts.dtype))?;
        let w = crate::convert::read_weights(
            src.as_ref(),
            &cfg,
            &weights.as_ref().display().to_string(),
            opts.allow_unused_tensors,
        )?;
        drop(src);
        Self::build(cfg, w, &opts.processing, opts.dtype)
    }

    /// Loads from a `VarBuilder` holding the Hugging Face tensor names of `cfg`'s
    /// family (GPT-2's with or without the `transformer.` prefix), with no weight
    /// processing, in the `VarBuilder`'s dtype and device. `cfg.normalization_type`
    /// must be `LN` or `RMS` (a checkpoint's norms have parameters).
    pub fn load(vb: VarBuilder, cfg: &TransformerConfig) -> Result<Self> {
        Self::load_with(vb, cfg, &ProcessingOptions::none())
    }

    /// [`HookedTransformer::load`] followed by weight processing.
    pub fn load_with(vb: VarBuilder, cfg: &TransformerConfig, processing: &ProcessingOptions) -> Result<Self> {
        if !cfg.normalization_type.has_params() {
            return Err(Error::invalid(
                "HookedTransformer::load reads a Hugging Face checkpoint, whose norms have parameters: \
                 give a config with normalization_type LN or RMS (processing with fold_ln makes it LNPre / RMSPre)",
            ));
        }
        let dtype = vb.dtype();
        let w = crate::convert::read_weights(&vb, cfg, "VarBuilder", false)?;
        Self::build(cfg.clone(), w, processing, dtype)
    }

    fn build(
        mut cfg: TransformerConfig,
        mut w: TransformerWeights,
        processing: &ProcessingOptions,
        dtype: DType,
    ) -> Result<Self> {
        cfg.validate()?;
        if !dtype.is_float() {
            return Err(Error::invalid(format!(
                "cannot load a model in {dtype:?}: use f32, f16, bf16 or f64"
            )));
        }
        // Without a final norm the last residual stream is unembedded as it is, whatever
        // norm a checkpoint may hold: none is folded into W_U either.
        if !cfg.final_norm {
            w.ln_final = None;
        }
        process(&mut w, &mut cfg, processing)?;
        let w = if dtype == DType::F32 { w } else { w.to_dtype(dtype)? };
        Self::from_weights(cfg, w)
    }

    fn from_weights(cfg: TransformerConfig, w: TransformerWeights) -> Result<Self> {
        let norms = ModelNorms::new(&cfg);
        let rotary = Rotary::new(&cfg);
        let rotary_local = Rotary::local(&cfg);
        let mut blocks = Vec::with_capacity(w.layers.len());
        let mut moes = super::moe::Moe::from_weights(&cfg, w.moe, w.layers.len())?.into_iter();
        let mut sinks = w.attn_sinks.into_iter();
        for l in w.layers {
            let (layer_sinks, moe) = (sinks.next(), moes.next().flatten());
            blocks.push(block_from_weights(&cfg, &norms, l, &rotary, layer_sinks, moe)?);
        }
        let model = HookedTransformer {
            embed: Embed {
                w_e: w.w_e,
                scale: cfg.embed_scale,
                // Never folded: a LayerNorm with its parameters whatever the blocks' are.
                ln: w
                    .embed_ln
                    .map(|p| Norm::with_kind(NormKind::Layer, Some(p), cfg.eps))
                    .transpose()?,
            },
            hook_embed: HookPoint::new(),
            // TransformerLens registers `hook_pos_embed` for ALiBi models too (it never fires).
            hook_pos_embed: optional_hook(w.w_pos.is_some() || cfg.is_alibi()),
            pos_embed: w.w_pos.map(|w_pos| PosEmbed { w_pos }),
            hook_tokens: cfg
                .use_hook_tokens
                .then(|| HookPoint::new().with_position_axis(Some(-1))),
            blocks,
            ln_final: cfg.final_norm.then(|| norms.norm(w.ln_final)).transpose()?,
            unembed: Unembed::factored(w.w_u, w.unembed_factors, w.b_u)?,
            rotary,
            rotary_local,
            cfg,
            tokenizer: None,
        };
        // Names every hook point now, so that `HookPoint::name` works from the start.
        model.rename();
        Ok(model)
    }

    /// The configuration (after processing: `normalization_type` is `LNPre` / `RMSPre`
    /// once norms are folded).
    pub fn cfg(&self) -> &TransformerConfig {
        &self.cfg
    }

    /// Switches `attn.hook_result` `[batch, pos, head, d_model]` on or off in every block
    /// (TransformerLens's `set_use_attn_result`). Hooks on removed points go with them.
    pub fn set_use_attn_result(&mut self, on: bool) {
        self.cfg.use_attn_result = on;
        for b in &mut self.blocks {
            toggle(&mut b.attn.hook_result, on);
        }
        self.rename();
    }

    /// Switches `hook_q_input`, `hook_k_input` and `hook_v_input` on or off in every
    /// block (TransformerLens's `set_use_split_qkv_input`).
    pub fn set_use_split_qkv_input(&mut self, on: bool) {
        self.cfg.use_split_qkv_input = on;
        for b in &mut self.blocks {
            toggle(&mut b.hook_q_input, on);
            toggle(&mut b.hook_k_input, on);
            toggle(&mut b.hook_v_input, on);
        }
        self.rename();
    }

    /// Switches `hook_attn_in` on or off in every block (TransformerLens's `set_use_attn_in`).
    pub fn set_use_attn_in(&mut self, on: bool) {
        self.cfg.use_attn_in = on;
        for b in &mut self.blocks {
            toggle(&mut b.hook_attn_in, on);
        }
        self.rename();
    }

    /// Switches `hook_mlp_in` on or off in every block (TransformerLens's `set_use_hook_mlp_in`).
    pub fn set_use_hook_mlp_in(&mut self, on: bool) {
        self.cfg.use_hook_mlp_in = on;
        for b in &mut self.blocks {
            toggle(&mut b.hook_mlp_in, on);
        }
        self.rename();
    }

    /// Switches `hook_tokens` on or off.
    pub fn set_use_hook_tokens(&mut self, on: bool) {
        self.cfg.use_hook_tokens = on;
        toggle(&mut self.hook_tokens, on);
        self.rename();
    }

    /// Switches every optional hook point on or off.
    pub fn set_all_optional_hooks(&mut self, on: bool) {
        self.set_use_attn_result(on);
        self.set_use_split_qkv_input(on);
        self.set_use_attn_in(on);
        self.set_use_hook_mlp_in(on);
        self.set_use_hook_tokens(on);
    }

    fn rename(&self) {
        let _ = hooklens_core::HookDict::build(self);
    }

    /// The device holding the weights.
    pub fn device(&self) -> &Device {
        self.embed.w_e.device()
    }

    /// The dtype of weights and activations.
    pub fn dtype(&self) -> DType {
        self.embed.w_e.dtype()
    }

    /// Logits `[batch, pos, d_vocab]` for `tokens` `[batch, pos]` (u8, u32 or i64; a
    /// 1-D `[pos]` is taken as batch 1). Ids outside the vocabulary, an empty input or
    /// more than `n_ctx` positions are errors.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let out = self.run(tokens, &ForwardOptions::default(), None, false)?;
        out.logits
            .ok_or_else(|| Error::invalid("forward returned no logits (internal error)"))
    }

    /// TransformerLens's `forward` with options: return type, per-token loss, attention
    /// mask, start / stop layer. `input` is tokens `[batch, pos]`, or a residual stream
    /// `[batch, pos, d_model]` with `start_at_layer`. See [`ForwardOptions`].
    pub fn forward_with(&self, input: &Tensor, opts: &ForwardOptions) -> Result<ForwardOutput> {
        self.run(input, opts, None, false)
    }

    /// [`HookedTransformer::forward_with`] on new tokens `[batch, new_pos]` after those already
    /// in `cache`, whose keys and values are reused and extended; positions continue
    /// from the cache. `opts.attention_mask`, if given, is `[batch, new_pos]` and
    /// extends the cache's mask. `start_at_layer` / `stop_at_layer` are not allowed here.
    pub fn forward_with_kv(
        &self,
        tokens: &Tensor,
        opts: &ForwardOptions,
        cache: &mut KvCache,
    ) -> Result<ForwardOutput> {
        if opts.start_at_layer.is_some() || opts.stop_at_layer.is_some() {
            return Err(Error::invalid(
                "start_at_layer / stop_at_layer cannot be combined with a KV cache",
            ));
        }
        self.run(tokens, opts, Some(cache), false)
    }

    /// Token ids as u32 `[batch, pos]` on the model's device, checked against the vocabulary.
    pub(crate) fn check_tokens(&self, tokens: &Tensor) -> Result<Tensor> {
        let tokens = match tokens.rank() {
            1 => tokens.unsqueeze(0)?,
            2 => tokens.clone(),
            r => {
                return Err(Error::invalid(format!(
                    "tokens must be [batch, pos] (or [pos]), got rank {r} with shape {:?}",
                    tokens.dims()
                )))
            }
        };
        if !is_integer(tokens.dtype()) {
            return Err(Error::invalid(format!(
                "tokens must be integers (u8, u32 or i64), got {:?}",
                tokens.dtype()
            )));
        }
        let (b, p) = tokens.dims2()?;
        if b == 0 || p == 0 {
            return Err(Error::invalid(format!("empty input: tokens have shape [{b}, {p}]")));
        }
        let ids = tokens.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
        let d_vocab = self.cfg.d_vocab as i64;
        if let Some(i) = ids.iter().position(|&t| t < 0 || t >= d_vocab) {
            return Err(Error::TokenOutOfVocab {
                id: ids[i],
                d_vocab: self.cfg.d_vocab,
                message: format!(
                    "token id {} at [{}, {}] is outside the vocabulary (d_vocab = {d_vocab})",
                    ids[i],
                    i / p,
                    i % p
                ),
            });
        }
        let ids: Vec<u32> = ids.into_iter().map(|t| t as u32).collect();
        Ok(Tensor::from_vec(ids, (b, p), self.device())?)
    }

    /// An attention mask `[batch, pos]` as 0/1 rows.
    fn mask_rows(&self, mask: &Tensor, b: usize, p: usize) -> Result<Vec<Vec<u8>>> {
        if mask.dims() != [b, p] {
            return Err(Error::invalid(format!(
                "attention_mask has shape {:?}, expected [{b}, {p}] (the input's batch and positions)",
                mask.dims()
            )));
        }
        let rows = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        Ok(rows
            .into_iter()
            .map(|r| r.into_iter().map(|v| u8::from(v != 0.0)).collect())
            .collect())
    }

    fn resolve_layer(&self, layer: isize, what: &str) -> Result<usize> {
        let n = self.cfg.n_layers as isize;
        let l = if layer < 0 { layer + n } else { layer };
        if (0..=n).contains(&l) {
            Ok(l as usize)
        } else {
            Err(Error::invalid(format!(
                "{what} = {layer} is out of range for a model with {n} layers"
            )))
        }
    }

    /// Logits `[batch, 1, d_vocab]` of the last position only, for generation (with
    /// the KV cache or without): every hook runs as in [`HookedTransformer::forward_with`],
    /// but the unembedding, the largest product of a prompt's forward, is applied to
    /// the one position whose logits are sampled.
    pub(crate) fn last_logits(
        &self,
        tokens: &Tensor,
        opts: &ForwardOptions,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.run(tokens, opts, cache, true)?
            .logits
            .ok_or_else(|| Error::invalid("the forward returned no logits (internal error)"))
    }

    fn run(
        &self,
        input: &Tensor,
        opts: &ForwardOptions,
        mut kv: Option<&mut KvCache>,
        last_only: bool,
    ) -> Result<ForwardOutput> {
        // `grad_mode` in the blocks and kernels below then counts this model's backward
        // hooks only: another model's leave this one on its fast path.
        let _forward = self.hook_embed.model_forward();
        let (start, stop) = self.layer_range(opts)?;
        let offset = kv.as_ref().map_or(0, |c| c.len);
        // Tokens (for the embedding or the loss) and the residual stream to start from.
        let (mut tokens, residual) = self.split_input(input, opts, start)?;
        let (b, p) = self.input_shape(residual.as_ref(), tokens.as_ref(), offset, kv.as_deref())?;
        // The attention mask over every position so far (cached and new), if any.
        let full_rows = self.full_mask_rows(opts, kv.as_deref(), b, p, offset)?;
        let residual = match residual {
            Some(r) => r,
            None => self.embed_tokens(&mut tokens, full_rows.as_deref(), b, p, offset)?,
        };
        let shared = self.layer_shared(b, p, offset, full_rows.as_deref())?;
        let (residual, new_kv) = self.run_blocks(residual, start.unwrap_or(0)..stop, &shared, kv.as_deref())?;
        if let Some(c) = kv.as_mut() {
            self.update_kv_cache(c, new_kv, full_rows.as_deref(), b, p, offset)?;
        }
        if opts.stop_at_layer.is_some() {
            return Ok(ForwardOutput {
                residual: Some(residual),
                ..Default::default()
            });
        }
        let residual = match &self.ln_final {
            Some(n) => n.forward(&residual)?,
            None => residual,
        };
        if opts.return_type == ReturnType::None {
            return Ok(ForwardOutput::default());
        }
        let logits = self.logits(&residual, p, last_only && opts.return_type == ReturnType::Logits)?;
        let loss = match opts.return_type {
            ReturnType::Loss | ReturnType::Both => {
                Some(self.loss(&logits, tokens.as_ref(), full_rows.as_deref(), offset, opts)?)
            }
            _ => None,
        };
        Ok(ForwardOutput {
            logits: matches!(opts.return_type, ReturnType::Logits | ReturnType::Both).then_some(logits),
            loss,
            residual: None,
        })
    }

    /// The first block to run (`None`: from the embedding) and the block to stop before.
    fn layer_range(&self, opts: &ForwardOptions) -> Result<(Option<usize>, usize)> {
        let start = opts
            .start_at_layer
            .map(|l| self.resolve_layer(l, "start_at_layer"))
            .transpose()?;
        let stop = opts
            .stop_at_layer
            .map(|l| self.resolve_layer(l, "stop_at_layer"))
            .transpose()?
            .unwrap_or(self.cfg.n_layers);
        if start.unwrap_or(0) > stop {
            return Err(Error::invalid(format!(
                "start_at_layer ({}) is after stop_at_layer ({stop})",
                start.unwrap_or(0)
            )));
        }
        Ok((start, stop))
    }

    /// `input` as tokens to embed, or (with `start_at_layer`) as a residual stream with
    /// the tokens `opts` gives for the loss.
    fn split_input(
        &self,
        input: &Tensor,
        opts: &ForwardOptions,
        start: Option<usize>,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if start.is_none() {
            return Ok((Some(self.check_tokens(input)?), None));
        }
        let (b, p, d) = input.dims3().map_err(|_| {
            Error::invalid(format!(
                "with start_at_layer the input is a residual stream [batch, pos, d_model], got shape {:?}",
                input.dims()
            ))
        })?;
        if d != self.cfg.d_model || b == 0 || p == 0 || input.dtype() != self.dtype() {
            return Err(Error::ShapeMismatch {
                what: "residual input".into(),
                expected: format!("[batch, pos, {}]", self.cfg.d_model),
                got: input.dims().to_vec(),
                message: format!(
                    "residual input has shape {:?} and dtype {:?}, expected [batch, pos, {}] and {:?}",
                    input.dims(),
                    input.dtype(),
                    self.cfg.d_model,
                    self.dtype()
                ),
            });
        }
        let tokens = opts.tokens.as_ref().map(|t| self.check_tokens(t)).transpose()?;
        Ok((tokens, Some(input.clone())))
    }

    /// The batch size and number of new positions, checked against the tokens, the
    /// context length and the KV cache.
    fn input_shape(
        &self,
        residual: Option<&Tensor>,
        tokens: Option<&Tensor>,
        offset: usize,
        kv: Option<&KvCache>,
    ) -> Result<(usize, usize)> {
        let (b, p) = match (residual, tokens) {
            (Some(r), _) => {
                let (b, p, _) = r.dims3()?;
                (b, p)
            }
            (None, Some(t)) => t.dims2()?,
            (None, None) => return Err(Error::invalid("forward: neither tokens nor a residual input")),
        };
        if let (Some(_), Some(t)) = (residual, tokens) {
            if t.dims2()? != (b, p) {
                return Err(Error::invalid(format!(
                    "tokens have shape {:?} but the residual input is [{b}, {p}, ..]",
                    t.dims()
                )));
            }
        }
        if offset + p > self.cfg.n_ctx {
            return Err(Error::ContextTooLong {
                positions: offset + p,
                n_ctx: self.cfg.n_ctx,
                message: format!(
                    "{p} positions{} exceed the context length n_ctx = {}",
                    if offset > 0 {
                        format!(" after {offset} cached ones")
                    } else {
                        String::new()
                    },
                    self.cfg.n_ctx
                ),
            });
        }
        if let Some(c) = kv {
            if !c.is_empty() && c.batch != b {
                return Err(Error::invalid(format!(
                    "batch size {b} differs from the KV cache's {}",
                    c.batch
                )));
            }
        }
        Ok((b, p))
    }

    /// The rows of the attention mask over the cached and the new positions, `None`
    /// when neither the cache nor `opts` has a mask.
    fn full_mask_rows(
        &self,
        opts: &ForwardOptions,
        kv: Option<&KvCache>,
        b: usize,
        p: usize,
        offset: usize,
    ) -> Result<Option<Vec<Vec<u8>>>> {
        let new_rows = opts
            .attention_mask
            .as_ref()
            .map(|m| self.mask_rows(m, b, p))
            .transpose()?;
        let cached_rows = kv
            .and_then(|c| c.mask.as_ref())
            .map(|m| self.mask_rows(m, b, offset))
            .transpose()?;
        Ok(match (cached_rows, new_rows) {
            (None, None) => None,
            (c, n) => Some(
                (0..b)
                    .map(|i| {
                        let mut row = c.as_ref().map_or_else(|| vec![1; offset], |c| c[i].clone());
                        row.extend(n.as_ref().map_or_else(|| vec![1; p], |n| n[i].clone()));
                        row
                    })
                    .collect(),
            ),
        })
    }

    /// The residual stream at the first block: `hook_tokens`, the token embedding and
    /// any learned positional embedding. `tokens` becomes what `hook_tokens` returned.
    fn embed_tokens(
        &self,
        tokens: &mut Option<Tensor>,
        full_rows: Option<&[Vec<u8>]>,
        b: usize,
        p: usize,
        offset: usize,
    ) -> Result<Tensor> {
        let mut toks = tokens
            .clone()
            .ok_or_else(|| Error::invalid("forward: no tokens to embed"))?;
        if let Some(hp) = &self.hook_tokens {
            let hooked = hp.forward(&toks)?;
            if hooked.id() != toks.id() {
                toks = self.check_tokens(&hooked)?;
                *tokens = Some(toks.clone());
            }
        }
        let embed = self.hook_embed.forward(&self.embed.forward(&toks)?)?;
        Ok(match (&self.pos_embed, &self.hook_pos_embed) {
            (Some(pos), Some(hook)) => {
                let pos_embed = match full_rows {
                    None => pos.forward(b, p, offset, None)?,
                    Some(rows) => {
                        let (ids, keep) = positions_from_mask(rows, offset, p);
                        let ids = Tensor::from_vec(ids, (b, p), self.device())?;
                        let keep = Tensor::from_vec(keep, (b, p), self.device())?;
                        pos.forward(b, p, offset, Some((&ids, &keep)))?
                    }
                };
                let pos_embed = hook.forward(&pos_embed)?;
                (embed + pos_embed)?
            }
            _ => embed,
        })
    }

    /// The masks (with any ALiBi biases) and rotary tables every layer of this forward reads.
    fn layer_shared(&self, b: usize, p: usize, offset: usize, full_rows: Option<&[Vec<u8>]>) -> Result<LayerShared> {
        let mut global = self.attn_mask(b, p, offset, full_rows, None)?;
        let mut local = match self.cfg.window_size {
            Some(w) if self.cfg.attn_types.is_some() => Some(self.attn_mask(b, p, offset, full_rows, Some(w))?),
            _ => None,
        };
        if self.cfg.is_alibi() {
            // ALiBi is part of the additive mask (-inf stays -inf): computed once per
            // forward, for every layer, from the real-token positions of each row.
            let k_rows = self.key_positions(full_rows, offset + p);
            let bias = super::alibi::alibi_bias(
                &super::alibi::alibi_slopes(self.cfg.n_heads),
                &k_rows,
                offset,
                p,
                self.device(),
            )?;
            for mask in std::iter::once(&mut global).chain(local.as_mut()) {
                mask.additive = mask.additive.broadcast_add(&bias)?;
            }
        }
        let rot = self.rotary_tables(full_rows, offset, p)?;
        Ok(LayerShared { global, local, rot })
    }

    /// Rotary angles for every key so far, shared by all layers, from the mask's
    /// real-token positions as TransformerLens does; the new queries' are the last `p`.
    fn rotary_tables(
        &self,
        full_rows: Option<&[Vec<u8>]>,
        offset: usize,
        p: usize,
    ) -> Result<Option<(QkTables, Option<QkTables>)>> {
        let Some(rot) = &self.rotary else {
            return Ok(None);
        };
        let k_rows = self.key_positions(full_rows, offset + p);
        let keys = rot.tables(&k_rows, self.dtype(), self.device())?;
        // Sliding-window layers with a base of their own (Gemma 3): a second
        // table, the same positions.
        let local = match &self.rotary_local {
            Some(local) => {
                let keys = local.tables(&k_rows, self.dtype(), self.device())?;
                Some((keys.narrow(offset, p)?, keys))
            }
            None => None,
        };
        Ok(Some(((keys.narrow(offset, p)?, keys), local)))
    }

    /// The residual stream after the blocks in `layers`, and their keys and values.
    fn run_blocks(
        &self,
        mut residual: Tensor,
        layers: std::ops::Range<usize>,
        shared: &LayerShared,
        kv: Option<&KvCache>,
    ) -> Result<(Tensor, Vec<PastKv>)> {
        let mut new_kv = Vec::with_capacity(layers.len());
        for (i, block) in self.blocks.iter().enumerate().take(layers.end).skip(layers.start) {
            let past = kv.and_then(|c| c.layers.get(i)).and_then(|l| l.as_ref());
            let ctx = shared.context(self.cfg.window_of(i));
            let (out, layer_kv) = block.forward(&residual, &ctx, past)?;
            residual = out;
            new_kv.push(layer_kv);
        }
        Ok((residual, new_kv))
    }

    /// Stores this forward's keys, values and mask rows in the cache.
    fn update_kv_cache(
        &self,
        c: &mut KvCache,
        new_kv: Vec<PastKv>,
        full_rows: Option<&[Vec<u8>]>,
        b: usize,
        p: usize,
        offset: usize,
    ) -> Result<()> {
        c.layers = new_kv.into_iter().map(Some).collect();
        c.len = offset + p;
        c.batch = b;
        c.mask = match full_rows {
            Some(rows) => Some(Tensor::from_vec(rows.concat(), (b, offset + p), self.device())?),
            None => None,
        };
        Ok(())
    }

    /// Logits of the final residual stream's `p` positions (of the last only with
    /// `last_only`), soft-capped where the config says.
    fn logits(&self, residual: &Tensor, p: usize, last_only: bool) -> Result<Tensor> {
        let logits = if last_only {
            self.unembed.forward(&residual.narrow(1, p - 1, 1)?)?
        } else {
            self.unembed.forward(residual)?
        };
        Ok(match self.cfg.output_logits_soft_cap {
            Some(cap) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        })
    }

    /// The next-token loss of `logits` on `tokens`, padding left out.
    fn loss(
        &self,
        logits: &Tensor,
        tokens: Option<&Tensor>,
        full_rows: Option<&[Vec<u8>]>,
        offset: usize,
        opts: &ForwardOptions,
    ) -> Result<Tensor> {
        let tokens = tokens
            .ok_or_else(|| Error::invalid("the loss needs tokens: pass ForwardOptions::tokens with start_at_layer"))?;
        let keep = full_rows.map(|rows| rows.iter().map(|r| r[offset..].to_vec()).collect::<Vec<_>>());
        lm_cross_entropy(logits, tokens, keep.as_deref(), opts.loss_per_token)
    }

    /// The position of every key so far (`k` of them): `0..k` in one row without a
    /// mask, else per sequence from the mask's real tokens, as TransformerLens does.
    fn key_positions(&self, rows: Option<&[Vec<u8>]>, k: usize) -> Vec<Vec<u32>> {
        match rows {
            None => vec![(0..k).map(|i| i as u32).collect()],
            Some(rows) => positions_from_mask(rows, 0, k)
                .0
                .chunks(k)
                .map(|c| c.to_vec())
                .collect(),
        }
    }

    /// The additive attention mask (0 / -inf) for `p` new queries after `offset` cached
    /// positions: `[p, offset+p]`, or `[batch, 1, p, offset+p]` with padding rows. With
    /// a `window`, query `i` sees key `j` only if `i - window < j` too.
    fn attn_mask(
        &self,
        b: usize,
        p: usize,
        offset: usize,
        rows: Option<&[Vec<u8>]>,
        window: Option<usize>,
    ) -> Result<AttnMask> {
        let k = offset + p;
        let causal = |i: usize, j: usize| j <= offset + i && window.is_none_or(|w| offset + i - j < w);
        let (data, shape): (Vec<f32>, Vec<usize>) = match rows {
            None => (
                (0..p)
                    .flat_map(|i| (0..k).map(move |j| if causal(i, j) { 0.0 } else { f32::NEG_INFINITY }))
                    .collect(),
                vec![p, k],
            ),
            Some(rows) => (
                rows.iter()
                    .flat_map(|row| {
                        (0..p).flat_map(move |i| {
                            (0..k).map(move |j| {
                                if causal(i, j) && row[j] != 0 {
                                    0.0
                                } else {
                                    f32::NEG_INFINITY
                                }
                            })
                        })
                    })
                    .collect(),
                vec![b, 1, p, k],
            ),
        };
        Ok(AttnMask {
            additive: Tensor::from_vec(data, shape, self.device())?,
            may_have_empty_rows: rows.is_some(),
        })
    }
}

/// Rotary tables for the new queries and for every key so far.
type QkTables = (RotaryTables, RotaryTables);

/// What every layer of one forward reads besides the residual stream: the attention
/// masks and rotary tables, global and for sliding-window layers.
struct LayerShared {
    global: AttnMask,
    /// The sliding-window mask, where the config has local layers.
    local: Option<AttnMask>,
    /// Global tables, and local ones where sliding-window layers have a base of their own.
    rot: Option<(QkTables, Option<QkTables>)>,
}

impl LayerShared {
    /// The context of a layer with sliding window `window` (`None`: a global layer).
    fn context(&self, window: Option<usize>) -> AttnContext<'_> {
        let mask = match (&self.local, window) {
            (Some(l), Some(_)) => l,
            _ => &self.global,
        };
        let tables = match (&self.rot, window) {
            (Some((_, Some(local))), Some(_)) => Some(local),
            (Some((global, _)), _) => Some(global),
            (None, _) => None,
        };
        AttnContext {
            mask,
            rot_q: tables.map(|(q, _)| q),
            rot_k: tables.map(|(_, k)| k),
        }
    }
}

/// A hook point where `on`, else none.
fn optional_hook(on: bool) -> Option<HookPoint> {
    on.then(HookPoint::new)
}

/// A hook point on `[batch, pos, head, ..]` activations.
fn per_head_hook() -> HookPoint {
    // Positions are the third axis from the end.
    HookPoint::new().with_position_axis(Some(-3))
}

/// A per-head hook point (see [`per_head_hook`]) where `on`, else none.
fn optional_per_head_hook(on: bool) -> Option<HookPoint> {
    on.then(per_head_hook)
}

/// The model's norms built from their parameters, all of the model's kind (RMS or
/// LayerNorm, as `cfg.normalization_type`).
struct ModelNorms<'a> {
    cfg: &'a TransformerConfig,
    kind: NormKind,
}

impl<'a> ModelNorms<'a> {
    /// The norms of a model configured by `cfg`.
    fn new(cfg: &'a TransformerConfig) -> Self {
        let kind = if cfg.normalization_type.is_rms() {
            NormKind::Rms
        } else {
            NormKind::Layer
        };
        ModelNorms { cfg, kind }
    }

    /// A norm of the model's kind with parameters `p` (none once folded).
    fn norm(&self, p: Option<NormParams>) -> candle_core::Result<Norm> {
        Norm::with_kind(self.kind, p, self.cfg.eps)
    }

    /// A block's norm before attention or the MLP, where the block has one.
    fn pre(&self, p: Option<NormParams>) -> candle_core::Result<Option<Norm>> {
        // A block that only normalises after attention and the MLP (OLMo 2) has no
        // norm before them, folded or not.
        // A post-LN block (OPT-350m) has both, after attention and after the MLP.
        (self.cfg.use_normalization_before || self.cfg.normalization_after_residual)
            .then(|| self.norm(p))
            .transpose()
    }

    /// A block's norm after attention or the MLP, where the checkpoint has one.
    fn post(&self, p: Option<NormParams>) -> candle_core::Result<Option<Norm>> {
        // Norms after attention / MLP are never folded, and are RMSNorms in the families
        // that have them (Gemma 2 / 3, OLMo 2), as TransformerLens's `normalization_layer_after`.
        p.map(|p| Norm::with_kind(self.kind, Some(p), self.cfg.eps)).transpose()
    }

    /// A per-head q or k norm, where the checkpoint has one; its hook points have no
    /// position axis.
    fn head(&self, p: Option<NormParams>) -> candle_core::Result<Option<Norm>> {
        // Per-head q/k norms are of the model's kind (Qwen 3's RMSNorm, Phi's
        // LayerNorm with a bias) and are never folded.
        p.map(|p| Norm::with_kind(self.kind, Some(p), self.cfg.eps).map(Norm::rows_without_positions))
            .transpose()
    }
}

/// The block built from layer weights `l` (with the layer's attention `sinks` and
/// mixture of experts `moe`, if any), with its hook points as `cfg` enables them.
fn block_from_weights(
    cfg: &TransformerConfig,
    norms: &ModelNorms,
    l: LayerWeights,
    rotary: &Option<Rotary>,
    sinks: Option<Tensor>,
    moe: Option<super::moe::Moe>,
) -> Result<Block> {
    Ok(Block {
        ln1: norms.pre(l.ln1)?,
        ln1_post: norms.post(l.ln1_post)?,
        ln2: norms.pre(l.ln2)?,
        ln2_post: norms.post(l.ln2_post)?,
        attn: Attention {
            biases_used: (nonzero(&l.b_qkv)?, nonzero(&l.b_o)?),
            w_qkv: l.w_qkv,
            b_qkv: l.b_qkv,
            w_o: l.w_o,
            b_o: l.b_o,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads(),
            d_head: cfg.d_head,
            scale: 1.0 / cfg.attn_scale(),
            soft_cap: cfg.attn_scores_soft_cap,
            rotary: rotary.clone(),
            qk_norm_over: cfg.qk_norm_over,
            q_norm: norms.head(l.q_norm)?,
            k_norm: norms.head(l.k_norm)?,
            sinks,
            hook_k: per_head_hook(),
            hook_q: per_head_hook(),
            hook_v: per_head_hook(),
            hook_z: per_head_hook(),
            hook_attn_scores: HookPoint::new(),
            hook_pattern: HookPoint::new(),
            hook_result: optional_per_head_hook(cfg.use_attn_result),
            hook_rot_k: optional_per_head_hook(rotary.is_some()),
            hook_rot_q: optional_per_head_hook(rotary.is_some()),
        },
        mlp: Mlp {
            b_in_used: nonzero(&l.b_in)?,
            b_out_used: nonzero(&l.b_out)?,
            hook_pre_linear: optional_hook(l.w_gate.is_some()),
            w_gate: l.w_gate,
            w_in: l.w_in,
            b_in: l.b_in,
            w_out: l.w_out,
            b_out: l.b_out,
            act_fn: cfg.act_fn,
            hook_in: HookPoint::new(),
            hook_pre: HookPoint::new(),
            hook_post: HookPoint::new(),
            hook_out: HookPoint::new(),
            moe,
        },
        hook_attn_in: optional_per_head_hook(cfg.use_attn_in),
        hook_q_input: optional_per_head_hook(cfg.use_split_qkv_input),
        hook_k_input: optional_per_head_hook(cfg.use_split_qkv_input),
        hook_v_input: optional_per_head_hook(cfg.use_split_qkv_input),
        hook_mlp_in: optional_hook(cfg.use_hook_mlp_in),
        hook_attn_out: HookPoint::new(),
        hook_mlp_out: HookPoint::new(),
        hook_resid_pre: HookPoint::new(),
        hook_resid_mid: optional_hook(!cfg.parallel_attn_mlp),
        hook_resid_post: HookPoint::new(),
        hook_normalized_resid_post: optional_hook(cfg.normalization_after_residual),
        post_ln: cfg.normalization_after_residual,
    })
}

/// Whether `b` is a bias worth adding: one with an element that is not zero, or one
/// that may change (a `Var` being trained, whose zeros now are not zeros later).
fn nonzero(b: &Tensor) -> Result<bool> {
    if b.is_variable() || b.track_op() {
        return Ok(true);
    }
    // A sparse (MoE) layer's dense MLP has no hidden units: nothing to add.
    if b.elem_count() == 0 {
        return Ok(false);
    }
    Ok(b.abs()?.max_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()? != 0.0)
}

/// Creates or drops an optional hook point; an existing one is kept (with its hooks).
fn toggle(point: &mut Option<HookPoint>, on: bool) {
    match (on, point.is_some()) {
        (true, false) => *point = Some(HookPoint::new()),
        (false, true) => *point = None,
        _ => {}
    }
}

/// TransformerLens's `get_offset_position_ids`: position = (number of real tokens up to
/// and including this one) - 1, at least 0; and the 0/1 keep mask, for the `p` new
/// positions after `offset`. `rows` hold every position so far.
fn positions_from_mask(rows: &[Vec<u8>], offset: usize, p: usize) -> (Vec<u32>, Vec<f32>) {
    let mut ids = Vec::with_capacity(rows.len() * p);
    let mut keep = Vec::with_capacity(rows.len() * p);
    for row in rows {
        let mut count: u32 = 0;
        for (j, &m) in row.iter().enumerate() {
            count += u32::from(m);
            if j >= offset {
                ids.push(count.saturating_sub(1));
                keep.push(f32::from(m));
            }
        }
    }
    (ids, keep)
}

/// TransformerLens's `lm_cross_entropy_loss`: `logits` `[batch, pos, vocab]`, `tokens`
/// `[batch, pos]`; the mean over predicted positions (a scalar) or per token
/// `[batch, pos-1]`. With a mask, positions where this or the next token is padding
/// count zero and are left out of the mean.
pub(crate) fn lm_cross_entropy(
    logits: &Tensor,
    tokens: &Tensor,
    keep: Option<&[Vec<u8>]>,
    per_token: bool,
) -> Result<Tensor> {
    let (b, p, _) = logits.dims3()?;
    if p < 2 {
        return Err(Error::invalid("the next-token loss needs at least 2 positions"));
    }
    let logits = logits.narrow(1, 0, p - 1)?.to_dtype(DType::F32)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?;
    let targets = tokens.narrow(1, 1, p - 1)?.contiguous()?.unsqueeze(2)?;
    let mut nll = log_probs.gather(&targets, 2)?.squeeze(2)?.neg()?;
    let mut n_tokens = (b * (p - 1)) as f64;
    if let Some(rows) = keep {
        let next: Vec<f32> = rows
            .iter()
            .flat_map(|r| (0..p - 1).map(move |i| f32::from(r[i] != 0 && r[i + 1] != 0)))
            .collect();
        n_tokens = next.iter().map(|&v| v as f64).sum();
        nll = (nll * Tensor::from_vec(next, (b, p - 1), logits.device())?)?;
    }
    if per_token {
        Ok(nll)
    } else {
        Ok((nll.sum_all()? / n_tokens)?)
    }
}

impl HookedForward for HookedTransformer {
    type Input = Tensor;
    type Output = Tensor;

    /// [`HookedTransformer::forward`]: tokens `[batch, pos]` -> logits `[batch, pos, d_vocab]`.
    fn forward_hooked(&self, input: &Tensor) -> Result<Tensor> {
        self.forward(input)
    }
}

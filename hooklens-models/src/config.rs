//! `TransformerConfig`: the hyperparameters of every bundled model family, under
//! TransformerLens's `HookedTransformerConfig` names. A GPT-2 is one way to fill it
//! ([`TransformerConfig`] is the same type); each family's converter in `convert/` fills it
//! from a Hugging Face `config.json`.

use hooklens_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// The activation function of the MLPs (TransformerLens's `act_fn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActFn {
    /// GPT-2's `gelu_new`: the tanh approximation (also Gemma's `gelu_pytorch_tanh`).
    GeluNew,
    /// The exact, erf-based GELU (candle's `Tensor::gelu_erf`).
    Gelu,
    /// `max(0, x)`.
    Relu,
    /// `x * sigmoid(x)` (Llama's `silu`).
    Silu,
}

impl ActFn {
    /// Parses a Hugging Face `activation_function` / `hidden_act` string.
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(ActFn::GeluNew),
            "gelu" => Some(ActFn::Gelu),
            "relu" => Some(ActFn::Relu),
            "silu" | "swish" => Some(ActFn::Silu),
            _ => None,
        }
    }
}

/// Which norm the model uses (TransformerLens's `normalization_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NormalizationType {
    /// LayerNorm with gain and bias: an unprocessed checkpoint.
    LN,
    /// LayerNorm without parameters: gains and biases were folded into the following
    /// weights (`fold_ln`).
    LNPre,
    /// RMSNorm with a gain: an unprocessed checkpoint of the Llama-like families.
    RMS,
    /// RMSNorm without a gain, after `fold_ln`.
    RMSPre,
}

impl NormalizationType {
    /// Whether this is an RMSNorm (`RMS` or `RMSPre`).
    pub fn is_rms(self) -> bool {
        matches!(self, NormalizationType::RMS | NormalizationType::RMSPre)
    }

    /// Whether the norms hold their parameters (`LN`, `RMS`), i.e. nothing was folded.
    pub fn has_params(self) -> bool {
        matches!(self, NormalizationType::LN | NormalizationType::RMS)
    }
}

/// How positions enter the model (TransformerLens's `positional_embedding_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionalEmbeddingType {
    /// A learned `W_pos` added to the embedding (`hook_pos_embed`).
    #[default]
    Standard,
    /// Rotary embeddings applied to queries and keys (`attn.hook_rot_q`, `attn.hook_rot_k`).
    Rotary,
    /// ALiBi (BLOOM): no position embedding; head `h` adds `m_h * (j - i)` to the
    /// scaled score of query `i` and key `j` (`hook_pos_embed` is registered, never fires).
    Alibi,
}

/// Whether a layer attends to every earlier position or to a sliding window of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttnType {
    /// Every earlier position.
    Global,
    /// Query `i` sees key `j` iff `i - window_size < j <= i`.
    Local,
}

/// Llama 3.1's rotary scaling ("NTK by parts"; Hugging Face `rope_type: "llama3"`,
/// TransformerLens `use_NTK_by_parts_rope` and its `NTK_*` fields).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NtkByPartsRope {
    /// `NTK_by_parts_factor`: how much low frequencies are slowed.
    pub factor: f64,
    /// `NTK_by_parts_low_freq_factor`.
    pub low_freq_factor: f64,
    /// `NTK_by_parts_high_freq_factor`.
    pub high_freq_factor: f64,
    /// `NTK_original_ctx_len`.
    pub original_ctx_len: f64,
}

/// A transformer's hyperparameters with TransformerLens's field names, plus the flags
/// that switch on TransformerLens's optional hook points. [`TransformerConfig::new`]
/// gives GPT-2's conventions; each family's converter sets what differs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransformerConfig {
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Attention (query) heads per block.
    pub n_heads: usize,
    /// Width of one head (`d_model / n_heads` for most families; Qwen 3 and Gemma set it).
    pub d_head: usize,
    /// Hidden width of the MLPs.
    pub d_mlp: usize,
    /// Vocabulary size.
    pub d_vocab: usize,
    /// Context length.
    pub n_ctx: usize,
    /// Norm epsilon.
    pub eps: f64,
    /// The MLP activation.
    pub act_fn: ActFn,
    /// The norm, and whether its parameters are still there (`LN`, `RMS`) or were folded
    /// (`LNPre`, `RMSPre`).
    pub normalization_type: NormalizationType,
    /// The beginning-of-sequence token id, if the checkpoint names one.
    pub bos_token_id: Option<u32>,
    /// The end-of-sequence token id, if the checkpoint names one (generation stops at it).
    pub eos_token_id: Option<u32>,
    /// Key/value heads for grouped-query attention (`None`: as many as query heads).
    #[serde(default)]
    pub n_key_value_heads: Option<usize>,
    /// Learned positions or rotary embeddings.
    #[serde(default)]
    pub positional_embedding_type: PositionalEmbeddingType,
    /// How many dimensions of each head rotary embeddings rotate (pairs `(i, i + rotary_dim/2)`).
    #[serde(default)]
    pub rotary_dim: Option<usize>,
    /// The rotary base (`rope_theta`).
    #[serde(default = "default_rotary_base")]
    pub rotary_base: f64,
    /// Llama 3.1's rotary scaling, if any.
    #[serde(default)]
    pub ntk_by_parts_rope: Option<NtkByPartsRope>,
    /// A gated MLP (`act(x @ W_gate) * (x @ W_in)`), as Llama's SwiGLU.
    #[serde(default)]
    pub gated_mlp: bool,
    /// Attention and MLP read the same residual (GPT-NeoX): no `hook_resid_mid`.
    #[serde(default)]
    pub parallel_attn_mlp: bool,
    /// A norm over each head's queries and keys before rotary, of the model's kind:
    /// RMSNorm (Qwen 3, Gemma 3; over the whole projection with `qk_norm_over`, OLMo 2)
    /// or LayerNorm with a bias (Phi's `qk_layernorm`).
    #[serde(default)]
    pub use_qk_norm: bool,
    /// Norms after attention and after the MLP too (`ln1_post`, `ln2_post`; Gemma 2).
    #[serde(default)]
    pub use_normalization_before_and_after: bool,
    /// Attention scores are divided by this (TransformerLens's `attn_scale`;
    /// `sqrt(d_head)` unless a family says otherwise).
    #[serde(default)]
    pub attn_scale: Option<f64>,
    /// `cap * tanh(scores / cap)` before the mask (Gemma 2).
    #[serde(default)]
    pub attn_scores_soft_cap: Option<f64>,
    /// `cap * tanh(logits / cap)` on the logits (Gemma 2).
    #[serde(default)]
    pub output_logits_soft_cap: Option<f64>,
    /// Per-layer global or sliding-window attention (`None`: all global).
    #[serde(default)]
    pub attn_types: Option<Vec<AttnType>>,
    /// The sliding window of local layers.
    #[serde(default)]
    pub window_size: Option<usize>,
    /// `W_U` is `W_E` transposed (`tie_word_embeddings`). GPT-2 checkpoints are tied
    /// when they hold no `lm_head.weight`, whatever this says; a tied config whose
    /// checkpoint holds an `lm_head` that differs from the embedding loads untied, as in
    /// Hugging Face (transformers 5).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Whether the attention projections have biases, as the Hugging Face class builds
    /// them (`attention_bias`; Qwen 2 always has q/k/v biases, Mistral and Phi-3 never).
    /// `Some(false)`: bias tensors in a checkpoint are not read (so a load reports them
    /// unused, as Hugging Face warns of them); `Some(true)`: they must be there; `None`
    /// (GPT-2, configs saved before this field): read where the checkpoint has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    /// The width of the checkpoint's token embedding where it differs from `d_model`
    /// (OPT's `word_embed_proj_dim`, facebook/opt-350m: the bias-free `project_in` /
    /// `project_out` around the blocks). Read by the converter only, which folds the
    /// projections into `W_E` and `W_U`: the model itself is `d_model` wide throughout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub word_embed_proj_dim: Option<usize>,
    /// The embedding is multiplied by this (Gemma's `sqrt(d_model)`; TransformerLens
    /// stores `W_E` already scaled, hooklens keeps the checkpoint's `W_E` so that a tied
    /// `W_U` stays a view of it: `hook_embed` holds the same values).
    #[serde(default)]
    pub embed_scale: Option<f64>,
    /// The Hugging Face class the model was converted from (`GPT2LMHeadModel`, ...).
    #[serde(default)]
    pub original_architecture: String,
    /// Whether text is tokenized with BOS first by default (TransformerLens's
    /// `default_prepend_bos`).
    #[serde(default = "default_true")]
    pub default_prepend_bos: bool,
    /// Compute attention output per head through `attn.hook_result` `[batch,pos,head,d_model]`.
    #[serde(default)]
    pub use_attn_result: bool,
    /// Give each head its own copy of the residual stream for q, k and v
    /// (`hook_q_input`, `hook_k_input`, `hook_v_input`, `[batch,pos,head,d_model]`).
    #[serde(default)]
    pub use_split_qkv_input: bool,
    /// Give each head its own copy of the attention input (`hook_attn_in`, `[batch,pos,head,d_model]`).
    #[serde(default)]
    pub use_attn_in: bool,
    /// Hook the input of the MLP (`hook_mlp_in`, `[batch,pos,d_model]`).
    #[serde(default)]
    pub use_hook_mlp_in: bool,
    /// Hook the input tokens (`hook_tokens`, `[batch,pos]`).
    #[serde(default)]
    pub use_hook_tokens: bool,
    /// The rotary base of the sliding-window (local) layers, when it differs from
    /// `rotary_base` (Gemma 3's `rope_local_base_freq`; TransformerLens's
    /// `rotary_base_local`). Local layers are never scaled: `rotary_linear_factor` and
    /// `ntk_by_parts_rope` apply to the `rotary_base` layers only.
    #[serde(default)]
    pub rotary_base_local: Option<f64>,
    /// Linear rotary scaling (Hugging Face `rope_type: "linear"`): the inverse
    /// frequencies of `rotary_base` are divided by this factor (positions interpolated).
    #[serde(default)]
    pub rotary_linear_factor: Option<f64>,
    /// Norms before attention and the MLP (`ln1`, `ln2`). False for OLMo 2, whose
    /// blocks only normalise the attention and MLP outputs (`ln1_post`, `ln2_post`, with
    /// `use_normalization_before_and_after`): its blocks have no `ln1` / `ln2` hooks.
    #[serde(default = "default_true")]
    pub use_normalization_before: bool,
    /// What the q/k norms (`use_qk_norm`) normalise: each head (Qwen 3, Gemma 3), or
    /// the whole projection of a position, every head together (OLMo 2).
    #[serde(default)]
    pub qk_norm_over: QkNormOver,
    /// Rotary embeddings rotate adjacent pairs `(2i, 2i + 1)` of the first `rotary_dim`
    /// dimensions (GPT-J's `rotate_every_two`) instead of `(i, i + rotary_dim/2)`.
    #[serde(default)]
    pub rotary_adjacent_pairs: bool,
    /// Post-LN blocks (OPT with `do_layer_norm_before: false`, facebook/opt-350m; the
    /// layout of TransformerLens's `BertBlock`): attention reads `hook_resid_pre` as it
    /// is, `ln1` normalises `hook_resid_mid` and that normalised stream is both the MLP's
    /// input and what the MLP's output is added to (`hook_resid_post`), and the block
    /// returns `ln2(hook_resid_post)` (`hook_normalized_resid_post`). The norms sit on the
    /// residual path itself, so `fold_ln` and `center_writing_weights` are skipped.
    #[serde(default)]
    pub normalization_after_residual: bool,
    /// A norm between the last block and the unembedding (`ln_final`). False where the
    /// blocks' output goes to the unembedding as it is: post-LN OPT (whose blocks end
    /// with a norm) and OPT with `_remove_final_layer_norm`; such a model has no
    /// `ln_final.*` hooks.
    #[serde(default = "default_true")]
    pub final_norm: bool,
    /// A LayerNorm with parameters right after the token embedding, inside `embed`
    /// (`embed.ln`, BLOOM's `word_embeddings_layernorm`); weight processing never folds it.
    #[serde(default)]
    pub post_embedding_ln: bool,
    /// Experts per MoE layer (TransformerLens's `num_experts`; Mixtral, Qwen3-MoE,
    /// OLMoE). `Some`: every block's MLP is a sparse mixture of `d_mlp`-wide gated
    /// experts (see [`crate::model::Moe`]); `None`: dense MLPs.
    #[serde(default)]
    pub num_experts: Option<usize>,
    /// Experts each token is routed to (TransformerLens's `experts_per_token`, Hugging
    /// Face's `num_experts_per_tok`); set with `num_experts`.
    #[serde(default)]
    pub experts_per_token: Option<usize>,
    /// Whether the mixing weights, the top-k router probabilities, are divided by their
    /// sum (Hugging Face's `norm_topk_prob`: Mixtral and Qwen3-MoE yes, OLMoE no). Only
    /// read with `num_experts`.
    #[serde(default = "default_true")]
    pub norm_topk_prob: bool,
    /// YaRN rotary scaling (Hugging Face `rope_type: "yarn"`; gpt-oss): inverse
    /// frequencies blended between the base's and those divided by `factor`, and cos /
    /// sin multiplied by `attention_factor`.
    #[serde(default)]
    pub yarn_rope: Option<YarnRope>,
    /// The router takes the top-k of its logits and its softmax is over those k only
    /// (gpt-oss): `hook_expert_weights` is then `[batch*pos, k]`, the mixing weights.
    /// Otherwise the softmax is over all experts before the top-k (Mixtral's).
    #[serde(default)]
    pub moe_softmax_after_topk: bool,
    /// gpt-oss's expert activation (`swiglu_limit`, `swiglu_alpha`); `None`:
    /// `act_fn(gate) * up`.
    #[serde(default)]
    pub moe_clamped_swiglu: Option<ClampedSwiglu>,
}

/// gpt-oss's expert activation: `g = min(gate, limit)`, `u = clamp(up, -limit, limit)`,
/// `(u + 1) * g * sigmoid(alpha * g)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClampedSwiglu {
    /// `swiglu_limit` (7 in gpt-oss).
    pub limit: f64,
    /// `swiglu_alpha` (1.702 in gpt-oss).
    pub alpha: f64,
}

/// YaRN rotary scaling, as Hugging Face's `_compute_yarn_parameters` reads it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct YarnRope {
    /// How much the context is extended.
    pub factor: f64,
    /// `beta_fast` (32 by default): rotations above which frequencies are kept.
    pub beta_fast: f64,
    /// `beta_slow` (1 by default): rotations below which frequencies are divided by `factor`.
    pub beta_slow: f64,
    /// `original_max_position_embeddings`.
    pub original_ctx_len: f64,
    /// Whether the correction range is rounded outwards to whole dimensions.
    pub truncate: bool,
    /// cos and sin are multiplied by this (`0.1 ln(factor) + 1` unless the config says).
    pub attention_factor: f64,
}

/// The rows of a q/k norm (`use_qk_norm`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QkNormOver {
    /// One RMS per head: gains `[d_head]`, rows `[batch*pos*heads, d_head]`.
    #[default]
    Heads,
    /// One RMS over all heads of a position, before the split into heads: gains
    /// `[heads*d_head]`, rows `[batch*pos, heads*d_head]` (OLMo 2).
    Projection,
}

/// The GPT-2 name of [`TransformerConfig`]: a GPT-2 is one way to fill it.
#[deprecated(since = "0.2.0", note = "one config describes every family: use `TransformerConfig`")]
pub type Gpt2Config = TransformerConfig;

fn default_rotary_base() -> f64 {
    10000.0
}

fn default_true() -> bool {
    true
}

/// The configuration flags and the hook names they switch on (suffixes).
pub(crate) const FLAGGED_HOOKS: &[(&str, &str)] = &[
    ("attn.hook_result", "use_attn_result"),
    ("hook_q_input", "use_split_qkv_input"),
    ("hook_k_input", "use_split_qkv_input"),
    ("hook_v_input", "use_split_qkv_input"),
    ("hook_attn_in", "use_attn_in"),
    ("hook_mlp_in", "use_hook_mlp_in"),
];

impl TransformerConfig {
    /// GPT-2 small (124M): 12 layers, d_model 768, 12 heads, vocabulary 50257, context 1024.
    pub fn gpt2_small() -> Self {
        Self::new(12, 768, 12, 50257, 1024)
    }

    /// A config with GPT-2's conventions (d_mlp = 4 d_model, gelu_new, eps 1e-5,
    /// LayerNorm with parameters, BOS = EOS = the last id) and every optional hook off.
    pub fn new(n_layers: usize, d_model: usize, n_heads: usize, d_vocab: usize, n_ctx: usize) -> Self {
        let last = u32::try_from(d_vocab.saturating_sub(1)).ok();
        TransformerConfig {
            n_layers,
            d_model,
            n_heads,
            d_head: d_model / n_heads.max(1),
            // Saturating: `validate` rejects a size this large instead of overflowing here.
            d_mlp: d_model.saturating_mul(4),
            d_vocab,
            n_ctx,
            eps: 1e-5,
            act_fn: ActFn::GeluNew,
            normalization_type: NormalizationType::LN,
            bos_token_id: last,
            eos_token_id: last,
            use_attn_result: false,
            use_split_qkv_input: false,
            use_attn_in: false,
            use_hook_mlp_in: false,
            use_hook_tokens: false,
            num_experts: None,
            experts_per_token: None,
            norm_topk_prob: true,
            yarn_rope: None,
            moe_softmax_after_topk: false,
            moe_clamped_swiglu: None,
            n_key_value_heads: None,
            positional_embedding_type: PositionalEmbeddingType::Standard,
            rotary_dim: None,
            rotary_base: default_rotary_base(),
            ntk_by_parts_rope: None,
            gated_mlp: false,
            parallel_attn_mlp: false,
            use_qk_norm: false,
            use_normalization_before_and_after: false,
            attn_scale: None,
            attn_scores_soft_cap: None,
            output_logits_soft_cap: None,
            attn_types: None,
            window_size: None,
            tie_word_embeddings: true,
            attention_bias: None,
            word_embed_proj_dim: None,
            embed_scale: None,
            original_architecture: "GPT2LMHeadModel".to_string(),
            default_prepend_bos: true,
            rotary_base_local: None,
            rotary_linear_factor: None,
            use_normalization_before: true,
            qk_norm_over: QkNormOver::Heads,
            rotary_adjacent_pairs: false,
            post_embedding_ln: false,
            normalization_after_residual: false,
            final_norm: true,
        }
    }

    /// The number of key/value heads: `n_key_value_heads`, or `n_heads`.
    pub fn n_kv_heads(&self) -> usize {
        self.n_key_value_heads.unwrap_or(self.n_heads)
    }

    /// The divisor of the attention scores: `attn_scale`, or `sqrt(d_head)`.
    pub fn attn_scale(&self) -> f64 {
        self.attn_scale.unwrap_or((self.d_head as f64).sqrt())
    }

    /// Whether layer `layer` attends through a sliding window (and its width).
    pub fn window_of(&self, layer: usize) -> Option<usize> {
        let local = self
            .attn_types
            .as_ref()
            .and_then(|t| t.get(layer))
            .is_some_and(|t| *t == AttnType::Local);
        if local {
            self.window_size
        } else {
            None
        }
    }

    /// Whether this is a GPT-2 (whose tokenizer, GPT-2's BPE, is built in).
    pub fn is_gpt2(&self) -> bool {
        self.original_architecture.starts_with("GPT2")
    }

    /// Whether positions enter through rotary embeddings (no `W_pos`, no `hook_pos_embed`).
    pub fn is_rotary(&self) -> bool {
        self.positional_embedding_type == PositionalEmbeddingType::Rotary
    }

    /// Whether positions enter as ALiBi biases on the attention scores (no `W_pos`).
    pub fn is_alibi(&self) -> bool {
        self.positional_embedding_type == PositionalEmbeddingType::Alibi
    }

    /// This config with every optional hook point switched on.
    pub fn with_all_hooks(mut self) -> Self {
        self.use_attn_result = true;
        self.use_split_qkv_input = true;
        self.use_attn_in = true;
        self.use_hook_mlp_in = true;
        self.use_hook_tokens = true;
        self
    }

    /// Checks that the sizes are consistent; every loader calls it.
    pub fn validate(&self) -> Result<()> {
        self.check_sizes()?;
        self.check_positions()?;
        self.check_scales()?;
        self.check_experts()?;
        self.check_norms()?;
        self.check_tensor_sizes()
    }

    /// `Ok` when the sizes are positive and the query heads group evenly over the
    /// key/value heads.
    fn check_sizes(&self) -> Result<()> {
        let fields = [
            ("n_layers", self.n_layers),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("d_head", self.d_head),
            ("d_mlp", self.d_mlp),
            ("d_vocab", self.d_vocab),
            ("n_ctx", self.n_ctx),
        ];
        if let Some((name, _)) = fields.iter().find(|(_, v)| *v == 0) {
            return Err(Error::invalid(format!("config: `{name}` must be positive")));
        }
        if self.word_embed_proj_dim == Some(0) {
            return Err(Error::invalid("config: `word_embed_proj_dim` must be positive"));
        }
        let kv = self.n_kv_heads();
        if kv == 0 || !self.n_heads.is_multiple_of(kv) {
            return Err(Error::invalid(format!(
                "config: n_heads = {} is not a multiple of n_key_value_heads = {kv}",
                self.n_heads
            )));
        }
        Ok(())
    }

    /// `Ok` when rotary embeddings have a usable `rotary_dim` and `attn_types` fits the
    /// layers (with a window for local attention).
    fn check_positions(&self) -> Result<()> {
        if let Some(r) = self.rotary_dim {
            if self.is_rotary() && (r == 0 || r % 2 != 0 || r > self.d_head) {
                return Err(Error::invalid(format!(
                    "config: rotary_dim = {r} must be even, positive and at most d_head = {}",
                    self.d_head
                )));
            }
        }
        if self.is_rotary() && self.rotary_dim.is_none() {
            return Err(Error::invalid("config: rotary embeddings need rotary_dim"));
        }
        if let Some(types) = &self.attn_types {
            if types.len() != self.n_layers {
                return Err(Error::invalid(format!(
                    "config: attn_types lists {} layers, the model has {}",
                    types.len(),
                    self.n_layers
                )));
            }
            if types.contains(&AttnType::Local) && self.window_size.is_none_or(|w| w == 0) {
                return Err(Error::invalid(
                    "config: local attention layers need a positive window_size",
                ));
            }
        }
        Ok(())
    }

    /// `Ok` when every optional base, factor, cap and scale that is set is positive and finite.
    fn check_scales(&self) -> Result<()> {
        for (what, cap) in [
            ("rotary_base_local", self.rotary_base_local),
            ("rotary_linear_factor", self.rotary_linear_factor),
            ("attn_scores_soft_cap", self.attn_scores_soft_cap),
            ("output_logits_soft_cap", self.output_logits_soft_cap),
            ("attn_scale", self.attn_scale),
        ] {
            if let Some(c) = cap {
                if !(c > 0.0 && c.is_finite()) {
                    return Err(Error::invalid(format!("config: {what} = {c} must be positive")));
                }
            }
        }
        Ok(())
    }

    /// `Ok` when `num_experts` and `experts_per_token` are both unset, or set consistently.
    fn check_experts(&self) -> Result<()> {
        match (self.num_experts, self.experts_per_token) {
            (None, None) => {}
            (Some(e), Some(k)) if e > 0 && (1..=e).contains(&k) => {}
            (Some(e), Some(k)) => {
                return Err(Error::invalid(format!(
                    "config: experts_per_token = {k} must be between 1 and num_experts = {e}"
                )))
            }
            _ => {
                return Err(Error::invalid(
                    "config: num_experts and experts_per_token are set together (a mixture of experts) or not at all",
                ))
            }
        }
        Ok(())
    }

    /// `Ok` when a post-LN layout has the blocks it needs and `eps` is positive and finite.
    fn check_norms(&self) -> Result<()> {
        if self.normalization_after_residual
            && (self.parallel_attn_mlp || !self.use_normalization_before || self.use_normalization_before_and_after)
        {
            return Err(Error::invalid(
                "config: normalization_after_residual (post-LN blocks) needs sequential blocks with ln1 and ln2 \
                 only (parallel_attn_mlp false, use_normalization_before true, \
                 use_normalization_before_and_after false)",
            ));
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::invalid(format!("config: eps = {} must be positive", self.eps)));
        }
        Ok(())
    }

    /// `Ok` when the largest weight matrices could be allocated.
    fn check_tensor_sizes(&self) -> Result<()> {
        let kv = self.n_kv_heads();
        // The largest weight matrices, in elements: beyond what an allocation can hold
        // (isize::MAX bytes of f64), loading would overflow a size computation or abort
        // on allocation instead of reporting the config.
        let limit = isize::MAX as usize / 8;
        for (what, a, b) in [
            ("d_vocab * d_model", self.d_vocab, self.d_model),
            (
                "d_vocab * word_embed_proj_dim",
                self.d_vocab,
                self.word_embed_proj_dim.unwrap_or(0),
            ),
            ("n_ctx * d_model", self.n_ctx, self.d_model),
            ("d_mlp * d_model", self.d_mlp, self.d_model),
            (
                "(n_heads + 2 * n_kv_heads) * d_head * d_model",
                self.n_heads
                    .saturating_add(kv.saturating_mul(2))
                    .saturating_mul(self.d_head),
                self.d_model,
            ),
        ] {
            if a.checked_mul(b).is_none_or(|n| n > limit) {
                return Err(Error::invalid(format!(
                    "config: {what} = {a} * {b} is too large for any tensor"
                )));
            }
        }
        Ok(())
    }

    /// The flag that switches on the hook point `name`, if `name` is an optional
    /// point of this architecture (layer in range) that is switched off.
    pub fn disabled_flag_for(&self, name: &str) -> Option<&'static str> {
        if name == "hook_tokens" {
            return (!self.use_hook_tokens).then_some("use_hook_tokens");
        }
        let rest = name.strip_prefix("blocks.")?;
        let (layer, suffix) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        if layer >= self.n_layers {
            return None;
        }
        let (_, flag) = FLAGGED_HOOKS.iter().find(|(s, _)| *s == suffix)?;
        let on = match *flag {
            "use_attn_result" => self.use_attn_result,
            "use_split_qkv_input" => self.use_split_qkv_input,
            "use_attn_in" => self.use_attn_in,
            "use_hook_mlp_in" => self.use_hook_mlp_in,
            _ => true,
        };
        (!on).then_some(*flag)
    }
}

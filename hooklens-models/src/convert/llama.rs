//! Llama 2 / 3.x (`LlamaForCausalLM`), and the Llama layout that Mistral, Qwen 2/3,
//! Gemma 1/2/3, OLMo 2 and (with fused projections) Phi-3 share: `model.embed_tokens`, `model.layers.{i}.self_attn.{q,k,v,o}_proj`,
//! `mlp.{gate,up,down}_proj`, RMSNorms, rotary on `(i, i + d_head/2)` pairs, and
//! `lm_head` unless the embeddings are tied. Hugging Face `Linear` weights are
//! `[out, in]`; the model multiplies `x @ w` with `[in, out]`.

use candle_core::{Device, Tensor};
use hooklens_core::Result;

use super::family::Family;
use super::hf_config::HfConfig;
use super::weights::{finish, linear_weight};
use crate::config::{ActFn, AttnType, NormalizationType, PositionalEmbeddingType, QkNormOver, TransformerConfig};
use crate::loading::TensorSource;
use crate::params::{LayerWeights, NormParams, TransformerWeights};

/// The Llama family.
pub(crate) const FAMILY: Family = Family {
    name: "Llama",
    model_types: &["llama"],
    classes: &["LlamaForCausalLM"],
    fields: &[LLAMA_FIELDS, &["mlp_bias"]],
    config,
    weights,
};

/// The fields [`llama_config`] reads.
pub(super) const LLAMA_FIELDS: &[&str] = &[
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "vocab_size",
    "max_position_embeddings",
    "head_dim",
    "num_key_value_heads",
    "rope_theta",
    "intermediate_size",
    "rms_norm_eps",
    "hidden_act",
    "bos_token_id",
    "eos_token_id",
    "tie_word_embeddings",
    "attention_bias",
];

/// The fields [`sliding_windows`] reads.
pub(super) const SLIDING_FIELDS: &[&str] = &["sliding_window", "use_sliding_window"];

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    let mut cfg = llama_config(hf, false, "hidden_act", ActFn::Silu)?;
    cfg.attention_bias = Some(attention_bias(hf)?);
    // LlamaMLP: `nn.Linear(.., bias=config.mlp_bias)` (the other Llama-layout classes
    // build their MLPs with `bias=False` whatever the config says).
    if hf.bool_or("mlp_bias", false)? {
        return Err(hf.bad("field `mlp_bias` is true: MLP biases in a gated MLP are not supported"));
    }
    Ok(cfg)
}

/// `attention_bias` (default false), for the classes that read it (Llama, Qwen 3,
/// Gemma 1/2: `nn.Linear(.., bias=config.attention_bias)` for q, k, v and o).
pub(super) fn attention_bias(hf: &HfConfig) -> Result<bool> {
    hf.bool_or("attention_bias", false)
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, origin: &str) -> Result<TransformerWeights> {
    read_llama_layout(src, cfg, origin, &LlamaLayout::default())
}

/// The config every Llama-layout family starts from: sizes, RMSNorm, rotary over the
/// whole head (`partial_rotary_factor` is not read: these Hugging Face classes rotate
/// `head_dim` dimensions whatever it says), gated MLP with the activation named by
/// `act_field` (`act_default` when absent), grouped-query attention, tied embeddings as
/// the config says (`tie_word_embeddings`, false unless `tied_default`). Attention
/// biases are left to each family (`attention_bias`).
pub(super) fn llama_config(
    hf: &HfConfig,
    tied_default: bool,
    act_field: &str,
    act_default: ActFn,
) -> Result<TransformerConfig> {
    let n_layers = hf.usize("num_hidden_layers")?;
    let d_model = hf.usize("hidden_size")?;
    let n_heads = hf.usize("num_attention_heads")?;
    let d_vocab = hf.usize("vocab_size")?;
    let n_ctx = hf.usize("max_position_embeddings")?;
    let d_head = match hf.opt_usize("head_dim")? {
        Some(h) => h,
        None => {
            if !d_model.is_multiple_of(n_heads) {
                return Err(hf.bad(format!(
                    "field `hidden_size` ({d_model}) is not a multiple of field `num_attention_heads` ({n_heads}), and there is no `head_dim`"
                )));
            }
            d_model / n_heads
        }
    };
    let n_kv = hf.opt_usize("num_key_value_heads")?.unwrap_or(n_heads);
    if !n_heads.is_multiple_of(n_kv) {
        return Err(hf.bad(format!(
            "field `num_attention_heads` ({n_heads}) is not a multiple of field `num_key_value_heads` ({n_kv})"
        )));
    }
    let rope = hf.rope("rope_theta", 10000.0)?;
    Ok(TransformerConfig {
        d_head,
        d_mlp: hf.usize("intermediate_size")?,
        eps: hf.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
        act_fn: hf.act_fn(&[act_field], act_default)?,
        normalization_type: NormalizationType::RMS,
        bos_token_id: hf.token("bos_token_id", d_vocab)?,
        eos_token_id: hf.token("eos_token_id", d_vocab)?,
        n_key_value_heads: Some(n_kv),
        positional_embedding_type: PositionalEmbeddingType::Rotary,
        rotary_dim: Some(d_head),
        rotary_base: rope.base,
        ntk_by_parts_rope: rope.ntk_by_parts,
        rotary_linear_factor: rope.linear_factor,
        gated_mlp: true,
        tie_word_embeddings: hf.bool_or("tie_word_embeddings", tied_default)?,
        ..TransformerConfig::new(n_layers, d_model, n_heads, d_vocab, n_ctx)
    })
}

/// Sliding windows as Mistral / Qwen 2 / Phi-3 declare them: `layer_types` when the
/// config lists them, else `sliding_window` in every layer from `first_layer` on
/// (none when it is null or `use_sliding_window` is false).
pub(super) fn sliding_windows(hf: &HfConfig, cfg: &mut TransformerConfig, first_layer: usize) -> Result<()> {
    let window = hf.opt_usize("sliding_window")?;
    if !hf.bool_or("use_sliding_window", true)? {
        return Ok(());
    }
    let types = match hf.layer_types(cfg.n_layers)? {
        Some(t) => t,
        None if window.is_some() => (0..cfg.n_layers)
            .map(|l| {
                if l >= first_layer {
                    AttnType::Local
                } else {
                    AttnType::Global
                }
            })
            .collect(),
        None => return Ok(()),
    };
    if types.contains(&AttnType::Local) {
        let w = window.ok_or_else(|| hf.bad("`layer_types` has sliding layers but `sliding_window` is missing"))?;
        cfg.window_size = Some(w);
        cfg.attn_types = Some(types);
    }
    Ok(())
}

/// What varies between the families that use the Llama layout.
#[derive(Default)]
pub(super) struct LlamaLayout {
    /// RMSNorm gains are stored as `w` and applied as `1 + w` (Gemma).
    pub(super) norm_plus_one: bool,
    /// `self_attn.q_norm` / `k_norm` over each head (Qwen 3).
    pub(super) qk_norm: bool,
    /// Attention biases are on q, k and v only, never on `o_proj` (Qwen 2); elsewhere
    /// `attention_bias` puts one on all four.
    pub(super) qkv_bias_only: bool,
    /// Gemma 2's four norms: `post_attention_layernorm` is the norm *after* attention,
    /// `pre_feedforward_layernorm` / `post_feedforward_layernorm` surround the MLP.
    pub(super) sandwich_norms: bool,
    /// OLMo 2's two norms: `post_attention_layernorm` after attention and
    /// `post_feedforward_layernorm` after the MLP, none before either
    /// (`use_normalization_before: false`). The q/k norms' length follows
    /// `qk_norm_over` (a whole projection's for OLMo 2).
    pub(super) post_norms_only: bool,
    /// Phi-3's fused projections: `self_attn.qkv_proj` stacks all query heads, then all
    /// key heads, then all value heads; `mlp.gate_up_proj` the gate over the up projection.
    pub(super) fused_projections: bool,
    /// No dense MLP: the family's mixture of experts is read by its converter (the
    /// layers' dense MLP tensors are left empty, `d_mlp` 0 columns).
    pub(super) sparse_mlp: bool,
}

/// Reads a Llama-layout checkpoint.
pub(super) fn read_llama_layout(
    src: &dyn TensorSource,
    cfg: &TransformerConfig,
    _origin: &str,
    layout: &LlamaLayout,
) -> Result<TransformerWeights> {
    let (d, v) = (cfg.d_model, cfg.d_vocab);
    let w_e = src.get("model.embed_tokens.weight", &[v, d])?;
    let reader = LayoutReader {
        src,
        cfg,
        layout,
        device: w_e.device().clone(),
    };
    let mut layers = Vec::new();
    for i in 0..cfg.n_layers {
        layers.push(reader.layer(&format!("model.layers.{i}"))?);
    }
    let ln_final = Some(reader.norm("model.norm", d)?);
    finish(
        src,
        cfg,
        w_e,
        None,
        layers,
        ln_final,
        "lm_head.weight",
        cfg.tie_word_embeddings,
    )
}

/// A block's norms `(ln1, ln1_post, ln2, ln2_post)`: before and after attention, before
/// and after the MLP.
type BlockNorms = (
    Option<NormParams>,
    Option<NormParams>,
    Option<NormParams>,
    Option<NormParams>,
);

/// One Llama-layout checkpoint being read, with what every layer's tensors depend on.
struct LayoutReader<'a> {
    src: &'a dyn TensorSource,
    cfg: &'a TransformerConfig,
    layout: &'a LlamaLayout,
    /// The embeddings' device, where the zero biases go.
    device: Device,
}

impl LayoutReader<'_> {
    /// The RMSNorm `{name}.weight`: a gain `[len]` (stored `w` read as `1 + w` for Gemma) and
    /// no bias.
    fn norm(&self, name: &str, len: usize) -> Result<NormParams> {
        let w = self.src.get(&format!("{name}.weight"), &[len])?;
        let w = if self.layout.norm_plus_one { (w + 1.0)? } else { w };
        Ok((w, None))
    }

    /// Zeros `[n]` in the checkpoint's dtype, for the biases the layout does not have.
    fn zeros(&self, n: usize) -> Result<Tensor> {
        Ok(Tensor::zeros(n, self.src.dtype(), &self.device)?)
    }

    /// The layer under prefix `p` (`model.layers.{i}`).
    fn layer(&self, p: &str) -> Result<LayerWeights> {
        let (cfg, layout, src) = (self.cfg, self.layout, self.src);
        let (d, h, dh, mlp) = (cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp);
        let w_qkv = self.qkv_weight(p)?;
        let (w_gate, w_in) = self.gate_and_up_weights(p)?;
        // Qwen 2 has q/k/v biases, and the families with `attention_bias: true` q/k/v/o
        // biases; with `attention_bias: false` Hugging Face builds none, and bias tensors
        // in the checkpoint stay unread.
        let read_bias = match cfg.attention_bias {
            Some(b) => b,
            None => src.contains(&format!("{p}.self_attn.q_proj.bias")),
        };
        let b_qkv = self.qkv_bias(p, read_bias)?;
        let (ln1, ln1_post, ln2, ln2_post) = self.block_norms(p)?;
        let (q_norm, k_norm) = self.qk_norms(p)?;
        Ok(LayerWeights {
            ln1,
            ln1_post,
            ln2,
            ln2_post,
            w_qkv,
            b_qkv,
            q_norm,
            k_norm,
            w_o: linear_weight(src, &format!("{p}.self_attn.o_proj.weight"), d, h * dh)?,
            b_o: if read_bias
                && !layout.qkv_bias_only
                && (cfg.attention_bias.is_some() || src.contains(&format!("{p}.self_attn.o_proj.bias")))
            {
                src.get(&format!("{p}.self_attn.o_proj.bias"), &[d])?
            } else {
                self.zeros(d)?
            },
            w_gate: (!layout.sparse_mlp).then_some(w_gate),
            w_in,
            b_in: self.zeros(if layout.sparse_mlp { 0 } else { mlp })?,
            w_out: if layout.sparse_mlp {
                self.zeros(0)?.reshape((0, d))?
            } else {
                linear_weight(src, &format!("{p}.mlp.down_proj.weight"), d, mlp)?
            },
            b_out: self.zeros(d)?,
        })
    }

    /// The query, key and value weights side by side: `[d_model, (n_heads + 2 n_kv) d_head]`.
    fn qkv_weight(&self, p: &str) -> Result<Tensor> {
        let (src, cfg) = (self.src, self.cfg);
        let (d, h, kv, dh) = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads(), cfg.d_head);
        if self.layout.fused_projections {
            // [q; k; v] rows are already the model's q | k | v columns once transposed.
            linear_weight(src, &format!("{p}.self_attn.qkv_proj.weight"), (h + 2 * kv) * dh, d)
        } else {
            let q = linear_weight(src, &format!("{p}.self_attn.q_proj.weight"), h * dh, d)?;
            let k = linear_weight(src, &format!("{p}.self_attn.k_proj.weight"), kv * dh, d)?;
            let vv = linear_weight(src, &format!("{p}.self_attn.v_proj.weight"), kv * dh, d)?;
            Ok(Tensor::cat(&[&q, &k, &vv], 1)?)
        }
    }

    /// The MLP's gate and up projections, each `[d_model, d_mlp]` (`[d_model, 0]` when the
    /// layout's MLP is sparse).
    fn gate_and_up_weights(&self, p: &str) -> Result<(Tensor, Tensor)> {
        let (src, d, mlp) = (self.src, self.cfg.d_model, self.cfg.d_mlp);
        Ok(if self.layout.sparse_mlp {
            (self.zeros(0)?.reshape((d, 0))?, self.zeros(0)?.reshape((d, 0))?)
        } else if self.layout.fused_projections {
            // [gate; up] rows: once transposed, the gate's columns then the up projection's.
            let gate_up = linear_weight(src, &format!("{p}.mlp.gate_up_proj.weight"), 2 * mlp, d)?;
            (
                gate_up.narrow(1, 0, mlp)?.contiguous()?,
                gate_up.narrow(1, mlp, mlp)?.contiguous()?,
            )
        } else {
            (
                linear_weight(src, &format!("{p}.mlp.gate_proj.weight"), mlp, d)?,
                linear_weight(src, &format!("{p}.mlp.up_proj.weight"), mlp, d)?,
            )
        })
    }

    /// The query, key and value biases concatenated, `[(n_heads + 2 n_kv) d_head]`: read
    /// when `read_bias`, else zeros.
    fn qkv_bias(&self, p: &str, read_bias: bool) -> Result<Tensor> {
        let (src, cfg) = (self.src, self.cfg);
        let (h, kv, dh) = (cfg.n_heads, cfg.n_kv_heads(), cfg.d_head);
        if read_bias {
            Ok(Tensor::cat(
                &[
                    &src.get(&format!("{p}.self_attn.q_proj.bias"), &[h * dh])?,
                    &src.get(&format!("{p}.self_attn.k_proj.bias"), &[kv * dh])?,
                    &src.get(&format!("{p}.self_attn.v_proj.bias"), &[kv * dh])?,
                ],
                0,
            )?)
        } else {
            self.zeros((h + 2 * kv) * dh)
        }
    }

    /// The block's norms, each `[d_model]` where the layout has it.
    fn block_norms(&self, p: &str) -> Result<BlockNorms> {
        let d = self.cfg.d_model;
        let norm = |name: &str| self.norm(&format!("{p}.{name}"), d);
        Ok(if self.layout.post_norms_only {
            (
                None,
                Some(norm("post_attention_layernorm")?),
                None,
                Some(norm("post_feedforward_layernorm")?),
            )
        } else if self.layout.sandwich_norms {
            (
                Some(norm("input_layernorm")?),
                Some(norm("post_attention_layernorm")?),
                Some(norm("pre_feedforward_layernorm")?),
                Some(norm("post_feedforward_layernorm")?),
            )
        } else {
            (
                Some(norm("input_layernorm")?),
                None,
                Some(norm("post_attention_layernorm")?),
                None,
            )
        })
    }

    /// The q and k norms `(q_norm, k_norm)` where the layout has them (Qwen 3, OLMo 2).
    fn qk_norms(&self, p: &str) -> Result<(Option<NormParams>, Option<NormParams>)> {
        if !self.layout.qk_norm {
            return Ok((None, None));
        }
        let (h, kv, dh) = (self.cfg.n_heads, self.cfg.n_kv_heads(), self.cfg.d_head);
        // Per-head q/k norms have `head_dim` gains, whole-projection ones (OLMo 2) a
        // gain per column of the projection.
        let (q_norm_len, k_norm_len) = match self.cfg.qk_norm_over {
            QkNormOver::Heads => (dh, dh),
            QkNormOver::Projection => (h * dh, kv * dh),
        };
        Ok((
            Some(self.norm(&format!("{p}.self_attn.q_norm"), q_norm_len)?),
            Some(self.norm(&format!("{p}.self_attn.k_norm"), k_norm_len)?),
        ))
    }
}

//! OPT (`OPTForCausalLM`): learned positions whose table is offset by two (position
//! `p` is row `p + 2` of `embed_positions`; `W_pos` is rows 2 and on), sequential
//! blocks, biases everywhere, relu, tied embeddings. Names with the `model.` prefix
//! (`OPTForCausalLM`) or without (`OPTModel`) are read.
//!
//! Both layouts of the published checkpoints load (TransformerLens 2.16.1 reads only
//! the first):
//! - pre-LN (`do_layer_norm_before: true`, every size but 350m): `self_attn_layer_norm`
//!   before attention (`ln1`), the layer's `final_layer_norm` before the MLP (`ln2`), and
//!   `decoder.final_layer_norm` before the unembedding (`ln_final`; none with
//!   `_remove_final_layer_norm`).
//! - post-LN (`do_layer_norm_before: false`, facebook/opt-350m): each block normalises
//!   after its residual additions, `self_attn_layer_norm` after attention (`ln1`) and the
//!   layer's `final_layer_norm` after the MLP (`ln2`), and there is no final norm
//!   (`TransformerConfig::normalization_after_residual`, `final_norm: false`).
//!
//! `word_embed_proj_dim` apart from `hidden_size` (facebook/opt-350m: 512 and 1024)
//! puts bias-free linear maps around the decoder: `project_in` `[d_model, proj]` after
//! the token embedding (before the positions are added) and `project_out` `[proj,
//! d_model]` after the last block (after the final norm, if any), before the
//! unembedding, which is tied to the `[d_vocab, proj]` embedding. Both are folded here,
//! so that the model is `d_model` wide throughout: `W_E = embed_tokens @ project_in^T`
//! (a lookup followed by a linear map is a lookup in the product) and `W_U =
//! project_out^T @ lm_head^T` (nothing nonlinear lies between them). `hook_embed` is
//! therefore the embedding after `project_in`, and `W_U` is a matrix of its own (not a
//! view of `W_E`). The products are computed in f32 whatever the load dtype.

use candle_core::{DType, Device, Tensor};
use hooklens_core::Result;

use super::family::Family;
use super::hf_config::HfConfig;
use super::weights::{finish, linear_weight, untied_head, with_unembed};
use crate::config::{ActFn, NormalizationType, TransformerConfig};
use crate::loading::TensorSource;
use crate::params::{LayerWeights, NormParams, TransformerWeights};

/// The OPT family.
pub(crate) const FAMILY: Family = Family {
    name: "OPT",
    model_types: &["opt"],
    classes: &["OPTForCausalLM"],
    fields: &[OPT_FIELDS],
    config,
    weights,
};

/// OPT's offset into its position table (`OPTLearnedPositionalEmbedding.offset`).
const POSITION_OFFSET: usize = 2;

/// The fields this family reads.
const OPT_FIELDS: &[&str] = &[
    "_remove_final_layer_norm",
    "activation_function",
    "bos_token_id",
    "do_layer_norm_before",
    "enable_bias",
    "eos_token_id",
    "ffn_dim",
    "hidden_size",
    "layer_norm_elementwise_affine",
    "max_position_embeddings",
    "num_attention_heads",
    "num_hidden_layers",
    "tie_word_embeddings",
    "vocab_size",
    "word_embed_proj_dim",
];

fn config(hf: &HfConfig) -> Result<TransformerConfig> {
    let n_layers = hf.usize("num_hidden_layers")?;
    let d_model = hf.usize("hidden_size")?;
    let n_heads = hf.usize("num_attention_heads")?;
    let d_vocab = hf.usize("vocab_size")?;
    let n_ctx = hf.usize("max_position_embeddings")?;
    let d_head = hf.d_head(d_model, "hidden_size", n_heads, "num_attention_heads")?;
    let pre_ln = hf.bool_or("do_layer_norm_before", true)?;
    // Hugging Face builds the final norm only for pre-LN blocks, and not then with
    // `_remove_final_layer_norm` (kept for old checkpoints).
    let final_norm = pre_ln && !hf.bool_or("_remove_final_layer_norm", false)?;
    // `OPTConfig`: `word_embed_proj_dim` is `hidden_size` when absent or null, and the
    // projections exist only when it differs.
    let word_embed_proj_dim = match hf.opt_usize("word_embed_proj_dim")? {
        Some(0) => return Err(hf.bad("field `word_embed_proj_dim` is 0: it must be positive")),
        Some(w) if w != d_model => Some(w),
        _ => None,
    };
    if !hf.bool_or("layer_norm_elementwise_affine", true)? {
        return Err(hf.bad(
            "field `layer_norm_elementwise_affine` is false: OPT LayerNorms without parameters are not supported",
        ));
    }
    Ok(TransformerConfig {
        d_head,
        d_mlp: hf.usize("ffn_dim")?,
        // OPT's LayerNorms are `nn.LayerNorm(..)` with torch's default eps.
        eps: 1e-5,
        act_fn: hf.act_fn(&["activation_function"], ActFn::Relu)?,
        normalization_type: NormalizationType::LN,
        bos_token_id: hf.token("bos_token_id", d_vocab)?,
        eos_token_id: hf.token("eos_token_id", d_vocab)?,
        // OPTAttention / OPTDecoderLayer: `bias=config.enable_bias` on every linear layer.
        attention_bias: Some(hf.bool_or("enable_bias", true)?),
        tie_word_embeddings: hf.bool_or("tie_word_embeddings", true)?,
        normalization_after_residual: !pre_ln,
        final_norm,
        word_embed_proj_dim,
        ..TransformerConfig::new(n_layers, d_model, n_heads, d_vocab, n_ctx)
    })
}

fn weights(src: &dyn TensorSource, cfg: &TransformerConfig, _origin: &str) -> Result<TransformerWeights> {
    let (d, v, n_ctx) = (cfg.d_model, cfg.d_vocab, cfg.n_ctx);
    // `OPTForCausalLM` weights have the `model.` prefix, `OPTModel`'s none.
    let pre = if src.contains("decoder.embed_tokens.weight") && !src.contains("model.decoder.embed_tokens.weight") {
        ""
    } else {
        "model."
    };
    let proj = cfg.word_embed_proj_dim.filter(|&p| p != d);
    let w_e = src.get(&format!("{pre}decoder.embed_tokens.weight"), &[v, proj.unwrap_or(d)])?;
    let reader = OptReader {
        src,
        cfg,
        bias: cfg.attention_bias != Some(false),
        device: w_e.device().clone(),
    };
    let w_pos = src
        .get(
            &format!("{pre}decoder.embed_positions.weight"),
            &[n_ctx + POSITION_OFFSET, d],
        )?
        .narrow(0, POSITION_OFFSET, n_ctx)?
        .contiguous()?;
    let mut layers = Vec::new();
    for i in 0..cfg.n_layers {
        layers.push(reader.layer(&format!("{pre}decoder.layers.{i}"))?);
    }
    let ln_final = if cfg.final_norm {
        reader.ln(&format!("{pre}decoder.final_layer_norm"))?
    } else {
        None
    };
    let Some(proj) = proj else {
        return finish(
            src,
            cfg,
            w_e,
            Some(w_pos),
            layers,
            ln_final,
            "lm_head.weight",
            cfg.tie_word_embeddings,
        );
    };
    // `project_in` / `project_out` folded into W_E and W_U (see the module documentation).
    let project_in = src.get(&format!("{pre}decoder.project_in.weight"), &[d, proj])?;
    let project_out = src.get(&format!("{pre}decoder.project_out.weight"), &[proj, d])?;
    // `lm_head` `[d_vocab, proj]`: the embedding's unless the checkpoint has its own.
    let head = untied_head(src, "lm_head.weight", &w_e, cfg.tie_word_embeddings)?.unwrap_or_else(|| w_e.clone());
    // `[d_vocab, d_model]`, transposed to a view `[d_model, d_vocab]` as other untied
    // unembeddings are.
    let w_u = product_f32(&head, &project_out)?.t()?;
    let w_e = product_f32(&w_e, &project_in.t()?)?;
    with_unembed(src, cfg, w_e, Some(w_pos), layers, ln_final, w_u, false)
}

/// One OPT checkpoint being read, with what every layer's tensors depend on.
struct OptReader<'a> {
    src: &'a dyn TensorSource,
    cfg: &'a TransformerConfig,
    /// Whether the linear layers have biases (`enable_bias`); zeros stand in where not.
    bias: bool,
    /// The embeddings' device, where the zero biases go.
    device: Device,
}

impl OptReader<'_> {
    /// The LayerNorm `{name}`: gain and bias, each `[d_model]`.
    fn ln(&self, name: &str) -> Result<Option<NormParams>> {
        let d = self.cfg.d_model;
        Ok(Some((
            self.src.get(&format!("{name}.weight"), &[d])?,
            Some(self.src.get(&format!("{name}.bias"), &[d])?),
        )))
    }

    /// Zeros `[n]` in the checkpoint's dtype, for the biases a bias-free checkpoint lacks.
    fn zeros(&self, n: usize) -> Result<Tensor> {
        Ok(Tensor::zeros(n, self.src.dtype(), &self.device)?)
    }

    /// The bias `name` `[n]`, or zeros without biases.
    fn bias_or_zeros(&self, name: &str, n: usize) -> Result<Tensor> {
        if self.bias {
            self.src.get(name, &[n])
        } else {
            self.zeros(n)
        }
    }

    /// The layer under prefix `p` (`{pre}decoder.layers.{i}`).
    fn layer(&self, p: &str) -> Result<LayerWeights> {
        let (src, d, mlp) = (self.src, self.cfg.d_model, self.cfg.d_mlp);
        let a = format!("{p}.self_attn");
        let q = linear_weight(src, &format!("{a}.q_proj.weight"), d, d)?;
        let k = linear_weight(src, &format!("{a}.k_proj.weight"), d, d)?;
        let vv = linear_weight(src, &format!("{a}.v_proj.weight"), d, d)?;
        let b_qkv = if self.bias {
            Tensor::cat(
                &[
                    &src.get(&format!("{a}.q_proj.bias"), &[d])?,
                    &src.get(&format!("{a}.k_proj.bias"), &[d])?,
                    &src.get(&format!("{a}.v_proj.bias"), &[d])?,
                ],
                0,
            )?
        } else {
            self.zeros(3 * d)?
        };
        Ok(LayerWeights {
            // Pre-LN: the norms before attention and before the MLP; post-LN: after
            // attention and after the MLP, on the residual stream (the block puts them
            // there). Either way `self_attn_layer_norm` is the first and the layer's
            // `final_layer_norm` the second.
            ln1: self.ln(&format!("{p}.self_attn_layer_norm"))?,
            ln1_post: None,
            ln2: self.ln(&format!("{p}.final_layer_norm"))?,
            ln2_post: None,
            w_qkv: Tensor::cat(&[&q, &k, &vv], 1)?,
            b_qkv,
            q_norm: None,
            k_norm: None,
            w_o: linear_weight(src, &format!("{a}.out_proj.weight"), d, d)?,
            b_o: self.bias_or_zeros(&format!("{a}.out_proj.bias"), d)?,
            w_gate: None,
            w_in: linear_weight(src, &format!("{p}.fc1.weight"), mlp, d)?,
            b_in: self.bias_or_zeros(&format!("{p}.fc1.bias"), mlp)?,
            w_out: linear_weight(src, &format!("{p}.fc2.weight"), d, mlp)?,
            b_out: self.bias_or_zeros(&format!("{p}.fc2.bias"), d)?,
        })
    }
}

/// `a @ b` computed in f32 (half-precision checkpoints too: the sums run over
/// `word_embed_proj_dim` terms), in `a`'s dtype, contiguous.
fn product_f32(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    Ok(f32(a)?.matmul(&f32(b)?)?.to_dtype(a.dtype())?.contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::super::config_from_hf_str;
    use crate::config::{ActFn, TransformerConfig};

    const TINY: &str = r#"{"model_type": "opt", "architectures": ["OPTForCausalLM"],
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 128,
        "vocab_size": 512, "max_position_embeddings": 64, "do_layer_norm_before": true,
        "word_embed_proj_dim": 64, "activation_function": "relu"}"#;

    #[test]
    fn reads_hf_names_pre_ln() {
        let c = config_from_hf_str(TINY, "config.json").unwrap();
        assert_eq!((c.d_mlp, c.act_fn, c.eps), (128, ActFn::Relu, 1e-5));
        assert!(c.tie_word_embeddings);
        // A projection width equal to hidden_size is no projection.
        assert_eq!(c.word_embed_proj_dim, None);
        assert!(!c.normalization_after_residual && c.final_norm);
    }

    /// facebook/opt-350m's layout: post-LN blocks, no final norm, a narrower embedding.
    #[test]
    fn post_ln_and_projections_are_read() {
        let post = TINY
            .replace("\"do_layer_norm_before\": true", "\"do_layer_norm_before\": false")
            .replace("\"word_embed_proj_dim\": 64", "\"word_embed_proj_dim\": 32");
        let c = config_from_hf_str(&post, "c.json").unwrap();
        assert!(c.normalization_after_residual && !c.final_norm);
        assert_eq!((c.word_embed_proj_dim, c.d_model), (Some(32), 64));
        // Pre-LN with `_remove_final_layer_norm`: the blocks stay pre-LN, no final norm.
        let removed = TINY.replace("\"word_embed_proj_dim\": 64", "\"_remove_final_layer_norm\": true");
        let c = config_from_hf_str(&removed, "c.json").unwrap();
        assert!(!c.normalization_after_residual && !c.final_norm);
        // Absent or null: hidden_size, as `OPTConfig` has it.
        let null = TINY.replace("\"word_embed_proj_dim\": 64", "\"word_embed_proj_dim\": null");
        assert_eq!(config_from_hf_str(&null, "c.json").unwrap().word_embed_proj_dim, None);
        let zero = TINY.replace("\"word_embed_proj_dim\": 64", "\"word_embed_proj_dim\": 0");
        let e = config_from_hf_str(&zero, "c.json").unwrap_err();
        assert!(
            e.to_string().contains("word_embed_proj_dim") && e.to_string().contains("c.json"),
            "{e}"
        );
    }

    /// The new fields default for configs saved before them, and round-trip.
    #[test]
    fn post_ln_fields_default_and_round_trip() {
        let c = config_from_hf_str(TINY, "config.json").unwrap();
        let mut json: serde_json::Value = serde_json::to_value(&c).unwrap();
        let obj = json.as_object_mut().unwrap();
        assert!(!obj.contains_key("word_embed_proj_dim"), "skipped when None");
        obj.remove("normalization_after_residual");
        obj.remove("final_norm");
        let old: TransformerConfig = serde_json::from_value(json).unwrap();
        assert_eq!(old, c);
        let post = TINY
            .replace("\"do_layer_norm_before\": true", "\"do_layer_norm_before\": false")
            .replace("\"word_embed_proj_dim\": 64", "\"word_embed_proj_dim\": 32");
        let c = config_from_hf_str(&post, "c.json").unwrap();
        let back: TransformerConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        // Post-LN blocks need both norms of a sequential block.
        let mut bad = c.clone();
        bad.parallel_attn_mlp = true;
        let e = bad.validate().unwrap_err();
        assert!(e.to_string().contains("normalization_after_residual"), "{e}");
        let mut bad = c;
        bad.word_embed_proj_dim = Some(0);
        assert!(bad.validate().unwrap_err().to_string().contains("word_embed_proj_dim"));
    }
}

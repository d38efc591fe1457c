//! `Gpt2Config`: the hyperparameters of a GPT-2, under TransformerLens's names.

use std::path::Path;

use hooklens_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// The activation function of the MLPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActFn {
    /// GPT-2's `gelu_new`: the tanh approximation (candle's `Tensor::gelu`).
    GeluNew,
    /// The exact, erf-based GELU (candle's `Tensor::gelu_erf`).
    Gelu,
    /// `max(0, x)`.
    Relu,
}

impl ActFn {
    /// Parses a Hugging Face `activation_function` string.
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(ActFn::GeluNew),
            "gelu" => Some(ActFn::Gelu),
            "relu" => Some(ActFn::Relu),
            _ => None,
        }
    }
}

/// Which LayerNorm the model uses (TransformerLens's `normalization_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NormalizationType {
    /// LayerNorm with gain and bias: an unprocessed checkpoint.
    LN,
    /// LayerNorm without parameters: gains and biases were folded into the following
    /// weights (`fold_ln`).
    LNPre,
}

/// A GPT-2's hyperparameters with TransformerLens's field names, plus the flags that
/// switch on TransformerLens's optional hook points.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    /// Number of transformer blocks (HF `n_layer`).
    pub n_layers: usize,
    /// Width of the residual stream (HF `n_embd`).
    pub d_model: usize,
    /// Attention heads per block (HF `n_head`).
    pub n_heads: usize,
    /// Width of one head: `d_model / n_heads`.
    pub d_head: usize,
    /// Hidden width of the MLPs (HF `n_inner`, `4 * d_model` when null).
    pub d_mlp: usize,
    /// Vocabulary size (HF `vocab_size`).
    pub d_vocab: usize,
    /// Context length: the number of learned positions (HF `n_positions`).
    pub n_ctx: usize,
    /// LayerNorm epsilon (HF `layer_norm_epsilon`).
    pub eps: f64,
    /// The MLP activation.
    pub act_fn: ActFn,
    /// LayerNorm with parameters (`LN`) or without (`LNPre`, after `fold_ln`).
    pub normalization_type: NormalizationType,
    /// The beginning-of-sequence token id, if the checkpoint names one.
    pub bos_token_id: Option<u32>,
    /// The end-of-sequence token id, if the checkpoint names one (generation stops at it).
    pub eos_token_id: Option<u32>,
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

impl Gpt2Config {
    /// GPT-2 small (124M): 12 layers, d_model 768, 12 heads, vocabulary 50257, context 1024.
    pub fn gpt2_small() -> Self {
        Self::new(12, 768, 12, 50257, 1024)
    }

    /// A config with GPT-2's conventions (d_mlp = 4 d_model, gelu_new, eps 1e-5,
    /// LayerNorm with parameters, BOS = EOS = the last id) and every optional hook off.
    pub fn new(n_layers: usize, d_model: usize, n_heads: usize, d_vocab: usize, n_ctx: usize) -> Self {
        let last = u32::try_from(d_vocab.saturating_sub(1)).ok();
        Gpt2Config {
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
        }
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

    /// Reads a Hugging Face GPT-2 `config.json`. Unknown architectures, missing fields
    /// and values that cannot describe a GPT-2 are errors naming the file and field.
    pub fn from_hf_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_hf_str(&text, path)
    }

    /// [`Gpt2Config::from_hf_json`] on the text of a `config.json`; `path` is only
    /// used in error messages.
    pub fn from_hf_str(text: &str, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bad = |reason: String| Error::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let obj = json
            .as_object()
            .ok_or_else(|| bad("expected a JSON object at the top level".into()))?;

        let model_type = obj.get("model_type").and_then(|v| v.as_str());
        let archs: Vec<&str> = obj
            .get("architectures")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
            .unwrap_or_default();
        let gpt2_arch = |a: &&str| a.starts_with("GPT2");
        match model_type {
            Some("gpt2") => {}
            Some(other) => {
                return Err(bad(format!(
                    "field `model_type` is \"{other}\": only GPT-2 checkpoints (\"gpt2\") are supported"
                )))
            }
            None if archs.iter().any(gpt2_arch) => {}
            None => {
                return Err(bad(
                    "field `model_type` is missing and `architectures` names no GPT-2 model".into(),
                ))
            }
        }
        if let Some(a) = archs.iter().find(|a| !gpt2_arch(a)) {
            return Err(bad(format!(
                "field `architectures` names \"{a}\": only GPT-2 architectures (GPT2LMHeadModel, GPT2Model) are supported"
            )));
        }

        let int = |field: &str| -> Result<usize> {
            match obj.get(field) {
                None | Some(serde_json::Value::Null) => Err(bad(format!("field `{field}` is missing"))),
                Some(v) => match v.as_u64() {
                    Some(0) => Err(bad(format!("field `{field}` is 0: it must be a positive integer"))),
                    Some(n) => usize::try_from(n).map_err(|_| bad(format!("field `{field}` is too large: {n}"))),
                    None => Err(bad(format!("field `{field}` is {v}: expected a positive integer"))),
                },
            }
        };
        let opt_token = |field: &str| -> Result<Option<u32>> {
            match obj.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| bad(format!("field `{field}` is {v}: expected a token id"))),
            }
        };

        let n_layers = int("n_layer")?;
        let d_model = int("n_embd")?;
        let n_heads = int("n_head")?;
        let d_vocab = int("vocab_size")?;
        let n_ctx = int("n_positions")?;
        // Variants of the attention that neither this model nor TransformerLens implement.
        for (field, unsupported) in [
            ("scale_attn_weights", false),
            ("scale_attn_by_inverse_layer_idx", true),
            ("reorder_and_upcast_attn", true),
            ("add_cross_attention", true),
        ] {
            if obj.get(field).and_then(|v| v.as_bool()) == Some(unsupported) {
                return Err(bad(format!(
                    "field `{field}` is {unsupported}: this GPT-2 variant is not supported"
                )));
            }
        }
        if d_model % n_heads != 0 {
            return Err(bad(format!(
                "field `n_embd` ({d_model}) is not a multiple of field `n_head` ({n_heads})"
            )));
        }
        let d_mlp = match obj.get("n_inner") {
            // Checked: a nonsense `n_embd` must be an error, not an overflow.
            None | Some(serde_json::Value::Null) => d_model
                .checked_mul(4)
                .ok_or_else(|| bad(format!("field `n_embd` is too large: {d_model}")))?,
            Some(_) => int("n_inner")?,
        };
        let eps = match obj.get("layer_norm_epsilon") {
            None | Some(serde_json::Value::Null) => 1e-5,
            Some(v) => match v.as_f64() {
                Some(e) if e > 0.0 && e.is_finite() => e,
                _ => {
                    return Err(bad(format!(
                        "field `layer_norm_epsilon` is {v}: expected a positive number"
                    )))
                }
            },
        };
        let act_fn = match obj.get("activation_function") {
            None | Some(serde_json::Value::Null) => ActFn::GeluNew,
            Some(v) => v.as_str().and_then(ActFn::from_hf).ok_or_else(|| {
                bad(format!(
                    "field `activation_function` is {v}: expected \"gelu_new\", \"gelu\" or \"relu\""
                ))
            })?,
        };
        let bos_token_id = opt_token("bos_token_id")?;
        let eos_token_id = opt_token("eos_token_id")?;
        for (field, id) in [("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id)] {
            if let Some(id) = id {
                if id as usize >= d_vocab {
                    return Err(bad(format!(
                        "field `{field}` is {id}, outside the vocabulary of {d_vocab} tokens"
                    )));
                }
            }
        }
        let cfg = Gpt2Config {
            d_head: d_model / n_heads,
            d_mlp,
            eps,
            act_fn,
            bos_token_id,
            eos_token_id,
            ..Self::new(n_layers, d_model, n_heads, d_vocab, n_ctx)
        };
        // A config that parses is one the loaders accept: sizes whose tensors could not
        // exist are reported here, with the file's name.
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }

    /// Checks that the sizes are consistent; every loader calls it.
    pub fn validate(&self) -> Result<()> {
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
            return Err(Error::invalid(format!("Gpt2Config: `{name}` must be positive")));
        }
        if self.n_heads.checked_mul(self.d_head) != Some(self.d_model) {
            return Err(Error::invalid(format!(
                "Gpt2Config: n_heads * d_head = {} * {} must equal d_model = {}",
                self.n_heads, self.d_head, self.d_model
            )));
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::invalid(format!(
                "Gpt2Config: eps = {} must be positive",
                self.eps
            )));
        }
        // The largest weight matrices, in elements: beyond what an allocation can hold
        // (isize::MAX bytes of f64), loading would overflow a size computation or abort
        // on allocation instead of reporting the config.
        let limit = isize::MAX as usize / 8;
        for (what, a, b) in [
            ("d_vocab * d_model", self.d_vocab, self.d_model),
            ("n_ctx * d_model", self.n_ctx, self.d_model),
            ("d_mlp * d_model", self.d_mlp, self.d_model),
            ("3 * d_model * d_model", self.d_model.saturating_mul(3), self.d_model),
        ] {
            if a.checked_mul(b).is_none_or(|n| n > limit) {
                return Err(Error::invalid(format!(
                    "Gpt2Config: {what} = {a} * {b} is too large for any tensor"
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

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"{"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
        "bos_token_id": 511, "eos_token_id": 511, "layer_norm_epsilon": 1e-05, "model_type": "gpt2",
        "n_ctx": 64, "n_embd": 64, "n_head": 4, "n_inner": null, "n_layer": 2, "n_positions": 64,
        "vocab_size": 512}"#;

    #[test]
    fn reads_hf_names() {
        let c = Gpt2Config::from_hf_str(TINY, "config.json").unwrap();
        assert_eq!((c.n_layers, c.d_model, c.n_heads, c.d_head), (2, 64, 4, 16));
        assert_eq!((c.d_mlp, c.d_vocab, c.n_ctx), (256, 512, 64));
        assert_eq!(c.act_fn, ActFn::GeluNew);
        assert_eq!(c.eos_token_id, Some(511));
        c.validate().unwrap();
    }

    #[test]
    fn bad_fields_are_named() {
        let e = Gpt2Config::from_hf_str(&TINY.replace("\"n_head\": 4", "\"n_head\": 5"), "c.json").unwrap_err();
        assert!(
            e.to_string().contains("c.json") && e.to_string().contains("n_head"),
            "{e}"
        );
        let e = Gpt2Config::from_hf_str(&TINY.replace("\"n_layer\": 2,", ""), "c.json").unwrap_err();
        assert!(e.to_string().contains("`n_layer` is missing"), "{e}");
        let e = Gpt2Config::from_hf_str(&TINY.replace("\"gpt2\"", "\"llama\""), "c.json").unwrap_err();
        assert!(e.to_string().contains("model_type"), "{e}");
        let e = Gpt2Config::from_hf_str(&TINY.replace("gelu_new", "swish"), "c.json").unwrap_err();
        assert!(e.to_string().contains("activation_function"), "{e}");
        let variant = TINY.replace(
            "\"n_layer\": 2,",
            "\"n_layer\": 2, \"scale_attn_by_inverse_layer_idx\": true,",
        );
        let e = Gpt2Config::from_hf_str(&variant, "c.json").unwrap_err();
        assert!(e.to_string().contains("scale_attn_by_inverse_layer_idx"), "{e}");
    }

    #[test]
    fn disabled_flags() {
        let c = Gpt2Config::new(2, 64, 4, 512, 64);
        assert_eq!(
            c.disabled_flag_for("blocks.1.attn.hook_result"),
            Some("use_attn_result")
        );
        assert_eq!(
            c.disabled_flag_for("blocks.0.hook_k_input"),
            Some("use_split_qkv_input")
        );
        assert_eq!(c.disabled_flag_for("blocks.2.hook_mlp_in"), None);
        assert_eq!(c.disabled_flag_for("hook_tokens"), Some("use_hook_tokens"));
        assert_eq!(c.with_all_hooks().disabled_flag_for("hook_tokens"), None);
    }
}

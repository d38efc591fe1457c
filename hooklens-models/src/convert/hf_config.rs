//! Reading the fields of a Hugging Face `config.json`, with errors that name the file
//! and the field. Both styles of rotary settings are read: `rope_theta` +
//! `rope_scaling` (transformers 4) and `rope_parameters` (transformers 5).
//!
//! Only the fields some family reads are parsed (this file's [`COMMON_FIELDS`] and each
//! family's `fields`); the rest of the file is skipped unparsed, so that a config full
//! of other data costs no more memory than its text.

use std::path::{Path, PathBuf};

use hooklens_core::{Error, Result};
use serde_json::{Map, Value};

use crate::config::{AttnType, NtkByPartsRope};
use crate::loading::KnownFields;

/// The fields the readers of this file look up themselves, whatever the family.
pub(super) const COMMON_FIELDS: &[&str] = &[
    "model_type",
    "architectures",
    "rope_parameters",
    "rope_scaling",
    "partial_rotary_factor",
    "layer_types",
];

/// A parsed `config.json` and where it came from.
pub(crate) struct HfConfig {
    path: PathBuf,
    obj: Map<String, Value>,
}

impl HfConfig {
    /// Parses `text`; `path` names the file in errors.
    pub(crate) fn parse(text: &str, path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let keep = |k: &str| super::is_known_field(k);
        // A multimodal checkpoint's language model is configured in `text_config`.
        let known = KnownFields {
            keep: &keep,
            nested: &["text_config"],
        };
        match known.parse(text).map_err(|e| bad(format!("not valid JSON: {e}")))? {
            Some(obj) => Ok(HfConfig {
                path: path.to_path_buf(),
                obj,
            }),
            None => Err(bad("expected a JSON object at the top level".into())),
        }
    }

    /// This config with `defaults` for the fields it leaves out (a field set to null is
    /// kept): the defaults of the family's Hugging Face config class where they differ
    /// from what the shared readers assume, so that a `config.json` without them is read
    /// as Hugging Face reads it.
    pub(crate) fn with_absent(&self, defaults: &[(&str, Value)]) -> HfConfig {
        let mut obj = self.obj.clone();
        for (k, v) in defaults {
            debug_assert!(super::is_known_field(k), "`{k}` is listed in no family's `fields`");
            obj.entry(k.to_string()).or_insert_with(|| v.clone());
        }
        HfConfig {
            path: self.path.clone(),
            obj,
        }
    }

    /// An error about this file.
    pub(crate) fn bad(&self, reason: impl Into<String>) -> Error {
        Error::BadFile {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// The raw value of `field`, `None` when absent or null. `field` must be one a
    /// family lists (else it was not kept when parsing).
    pub(crate) fn get(&self, field: &str) -> Option<&Value> {
        debug_assert!(
            super::is_known_field(field),
            "`{field}` is read from config.json but listed in no family's `fields`: it is never parsed"
        );
        self.obj.get(field).filter(|v| !v.is_null())
    }

    /// `model_type`, if present.
    pub(crate) fn model_type(&self) -> Option<&str> {
        self.get("model_type").and_then(|v| v.as_str())
    }

    /// The class names in `architectures`.
    pub(crate) fn architectures(&self) -> Vec<&str> {
        self.get("architectures")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
            .unwrap_or_default()
    }

    /// A required positive integer.
    pub(crate) fn usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?
            .ok_or_else(|| self.bad(format!("field `{field}` is missing")))
    }

    /// `d_model / n_heads`, the width of a head where the config has no `head_dim`; an
    /// error naming both fields (`model_field`, `heads_field`) when it does not divide.
    pub(crate) fn d_head(&self, d_model: usize, model_field: &str, n_heads: usize, heads_field: &str) -> Result<usize> {
        if !d_model.is_multiple_of(n_heads) {
            return Err(self.bad(format!(
                "field `{model_field}` ({d_model}) is not a multiple of field `{heads_field}` ({n_heads})"
            )));
        }
        Ok(d_model / n_heads)
    }

    /// An optional positive integer.
    pub(crate) fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(0) => Err(self.bad(format!("field `{field}` is 0: it must be a positive integer"))),
                Some(n) => usize::try_from(n)
                    .map(Some)
                    .map_err(|_| self.bad(format!("field `{field}` is too large: {n}"))),
                None => Err(self.bad(format!("field `{field}` is {v}: expected a positive integer"))),
            },
        }
    }

    /// An optional positive, finite number.
    pub(crate) fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x > 0.0 && x.is_finite() => Ok(Some(x)),
                _ => Err(self.bad(format!("field `{field}` is {v}: expected a positive number"))),
            },
        }
    }

    /// An optional boolean, `default` when absent.
    pub(crate) fn bool_or(&self, field: &str, default: bool) -> Result<bool> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.bad(format!("field `{field}` is {v}: expected true or false"))),
        }
    }

    /// A token id field (`bos_token_id`, ...): a number, or a list whose first entry is
    /// taken (Llama 3 lists several end-of-sequence ids); it must be inside the vocabulary.
    pub(crate) fn token(&self, field: &str, d_vocab: usize) -> Result<Option<u32>> {
        let v = match self.get(field) {
            None => return Ok(None),
            Some(Value::Array(a)) => match a.first() {
                None => return Ok(None),
                Some(v) => v,
            },
            Some(v) => v,
        };
        let id = v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.bad(format!("field `{field}` is {v}: expected a token id")))?;
        if id as usize >= d_vocab {
            return Err(self.bad(format!(
                "field `{field}` is {id}, outside the vocabulary of {d_vocab} tokens"
            )));
        }
        Ok(Some(id))
    }

    /// The activation named by the first of `fields` present, parsed by `ActFn::from_hf`.
    pub(crate) fn act_fn(&self, fields: &[&str], default: crate::config::ActFn) -> Result<crate::config::ActFn> {
        for field in fields {
            if let Some(v) = self.get(field) {
                return v.as_str().and_then(crate::config::ActFn::from_hf).ok_or_else(|| {
                    self.bad(format!(
                        "field `{field}` is {v}: expected \"gelu_new\", \"gelu_pytorch_tanh\", \"gelu\", \"relu\" or \"silu\""
                    ))
                });
            }
        }
        Ok(default)
    }

    /// The rotary base and its scaling (Llama 3.1's, or linear), from `rope_theta` /
    /// `rope_scaling` or from `rope_parameters`. Scalings no bundled family implements
    /// are errors that name them (a silently unscaled rotary would give wrong numbers
    /// past the original context).
    pub(crate) fn rope(&self, base_field: &str, default_base: f64) -> Result<RopeSettings> {
        // Hugging Face reads both as dicts (`rope_scaling.get(..)`, `rope_parameters.setdefault(..)`)
        // and refuses a config where either is anything else.
        let params = self.object("rope_parameters")?;
        let legacy = self.object("rope_scaling")?;
        let base = match params.and_then(|p| p.get("rope_theta")).filter(|v| !v.is_null()) {
            Some(v) => v.as_f64().filter(|x| *x > 0.0 && x.is_finite()).ok_or_else(|| {
                self.bad(format!(
                    "field `rope_parameters.rope_theta` is {v}: expected a positive number"
                ))
            })?,
            None => self.opt_f64(base_field)?.unwrap_or(default_base),
        };
        let params_kind = match params {
            Some(p) => self.rope_kind(p, "rope_parameters")?,
            None => "default",
        };
        let (scaling, field) = if params_kind != "default" {
            (params, "rope_parameters")
        } else {
            (legacy, "rope_scaling")
        };
        let unscaled = RopeSettings {
            base,
            ntk_by_parts: None,
            linear_factor: None,
        };
        let Some(s) = scaling else {
            return Ok(unscaled);
        };
        let kind = self.rope_kind(s, field)?;
        match kind {
            "default" => Ok(unscaled),
            // Hugging Face's `_compute_linear_scaling_rope_parameters`: the default
            // inverse frequencies divided by `factor`.
            "linear" => {
                let factor = s
                    .get("factor")
                    .and_then(|v| v.as_f64())
                    .filter(|x| *x > 0.0 && x.is_finite())
                    .ok_or_else(|| {
                        self.bad(format!(
                            "field `{field}`: rope scaling `linear` needs a positive `factor`"
                        ))
                    })?;
                Ok(RopeSettings {
                    linear_factor: Some(factor),
                    ..unscaled
                })
            }
            "llama3" => {
                let num = |k: &str| -> Result<f64> {
                    s.get(k)
                        .and_then(|v| v.as_f64())
                        .filter(|x| *x > 0.0 && x.is_finite())
                        .ok_or_else(|| self.bad(format!("rope scaling `llama3` needs a positive `{k}`")))
                };
                let rope = NtkByPartsRope {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_ctx_len: num("original_max_position_embeddings")?,
                };
                if rope.high_freq_factor <= rope.low_freq_factor {
                    return Err(self.bad("rope scaling `llama3`: high_freq_factor must exceed low_freq_factor"));
                }
                Ok(RopeSettings {
                    ntk_by_parts: Some(rope),
                    ..unscaled
                })
            }
            other => Err(self.bad(format!(
                "rope scaling `{other}` is not supported (supported: none, \"default\", \"linear\", \"llama3\")"
            ))),
        }
    }

    /// The object `field` (a multimodal config's `text_config`) as a config of its own,
    /// from the same file, with the top level's `inherit` fields where it lacks them.
    pub(crate) fn nested(&self, field: &str, inherit: &[&str]) -> Result<HfConfig> {
        let mut obj = self
            .object(field)?
            .ok_or_else(|| self.bad(format!("field `{field}` is missing")))?
            .clone();
        for k in inherit {
            if let Some(v) = self.obj.get(*k) {
                obj.entry(k.to_string()).or_insert_with(|| v.clone());
            }
        }
        Ok(HfConfig {
            path: self.path.clone(),
            obj,
        })
    }

    /// This config without `fields` (as if the file left them out), for a family that
    /// reads them itself (gpt-oss's YaRN rotary, which the shared readers refuse).
    pub(crate) fn without(&self, fields: &[&str]) -> HfConfig {
        let mut obj = self.obj.clone();
        for f in fields {
            obj.remove(*f);
        }
        HfConfig {
            path: self.path.clone(),
            obj,
        }
    }

    /// For a `rope_parameters` keyed by layer type (transformers 5 writes Gemma 3's as
    /// `{"sliding_attention": {..}, "full_attention": {..}}`): this config with
    /// `rope_parameters` replaced by the entry of `layer_type` and no legacy
    /// `rope_scaling`, so that [`HfConfig::rope`] reads that layer type's settings.
    /// `None` when `rope_parameters` is absent or not keyed by layer type.
    pub(crate) fn rope_parameters_of(&self, layer_type: &str) -> Result<Option<HfConfig>> {
        let Some(params) = self.object("rope_parameters")? else {
            return Ok(None);
        };
        if !params.contains_key("full_attention") && !params.contains_key("sliding_attention") {
            return Ok(None);
        }
        let entry = match params.get(layer_type) {
            Some(Value::Object(o)) => o.clone(),
            Some(v) => {
                return Err(self.bad(format!(
                    "field `rope_parameters.{layer_type}` is {} {v}: expected an object",
                    json_type(v)
                )))
            }
            None => return Err(self.bad(format!("field `rope_parameters` has no `{layer_type}` entry"))),
        };
        let mut obj = self.obj.clone();
        obj.insert("rope_parameters".into(), Value::Object(entry));
        obj.remove("rope_scaling");
        Ok(Some(HfConfig {
            path: self.path.clone(),
            obj,
        }))
    }

    /// The JSON object `field`, `None` when absent or null; any other type is an error
    /// naming the field and the type.
    pub(crate) fn object(&self, field: &str) -> Result<Option<&Map<String, Value>>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(v) => Err(self.bad(format!(
                "field `{field}` is {} {v}: expected an object (a JSON dict) or null",
                json_type(v)
            ))),
        }
    }

    /// The rotary type of the scaling object `s` (in `field`): `rope_type`, else the
    /// legacy `type`, else `"default"`; a value that is not a string is an error.
    fn rope_kind<'a>(&self, s: &'a Map<String, Value>, field: &str) -> Result<&'a str> {
        for key in ["rope_type", "type"] {
            match s.get(key) {
                None | Some(Value::Null) => continue,
                Some(Value::String(t)) => return Ok(t),
                Some(v) => {
                    return Err(self.bad(format!(
                        "field `{field}.{key}` is {} {v}: expected a string",
                        json_type(v)
                    )))
                }
            }
        }
        Ok("default")
    }

    /// The fraction of each head that rotary rotates: `partial_rotary_factor` inside
    /// `rope_parameters` or at the top level, else `legacy_field` (NeoX's `rotary_pct`),
    /// else `default`. Only the families whose Hugging Face class rotates part of the
    /// head read it (NeoX, Phi-3); Llama, Mistral, Qwen and Gemma rotate the whole head
    /// whatever it says (their `compute_default_rope_parameters` takes `dim = head_dim`).
    pub(crate) fn rotary_fraction(&self, legacy_field: Option<&str>, default: f64) -> Result<f64> {
        let nested = self
            .object("rope_parameters")?
            .and_then(|p| p.get("partial_rotary_factor"))
            .filter(|v| !v.is_null());
        let (field, v) = match nested {
            Some(v) => ("rope_parameters.partial_rotary_factor", Some(v)),
            None => match self.get("partial_rotary_factor") {
                Some(v) => ("partial_rotary_factor", Some(v)),
                None => match legacy_field {
                    Some(f) => (f, self.get(f)),
                    None => ("partial_rotary_factor", None),
                },
            },
        };
        match v {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|p| *p > 0.0 && *p <= 1.0)
                .ok_or_else(|| self.bad(format!("field `{field}` is {v}: expected a number in (0, 1]"))),
        }
    }

    /// Per-layer attention types from `layer_types` (`"full_attention"` /
    /// `"sliding_attention"`), if the config lists them.
    pub(crate) fn layer_types(&self, n_layers: usize) -> Result<Option<Vec<AttnType>>> {
        let Some(v) = self.get("layer_types") else {
            return Ok(None);
        };
        let list = v
            .as_array()
            .ok_or_else(|| self.bad(format!("field `layer_types` is {v}: expected a list")))?;
        if list.len() != n_layers {
            return Err(self.bad(format!(
                "field `layer_types` lists {} layers, the model has {n_layers}",
                list.len()
            )));
        }
        list.iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(AttnType::Global),
                Some("sliding_attention") => Ok(AttnType::Local),
                _ => Err(self.bad(format!(
                    "field `layer_types` has {t}: expected \"full_attention\" or \"sliding_attention\""
                ))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// The rotary settings of a `config.json` (see [`HfConfig::rope`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RopeSettings {
    /// `rope_theta` (or the family's base field).
    pub(crate) base: f64,
    /// Llama 3.1's scaling (`rope_type: "llama3"`).
    pub(crate) ntk_by_parts: Option<NtkByPartsRope>,
    /// Linear scaling (`rope_type: "linear"`): inverse frequencies divided by this.
    pub(crate) linear_factor: Option<f64>,
}

/// The JSON type of `v`, for messages ("a string", "a list", ...).
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_fields_a_family_reads_are_held() {
        // Megabytes of data no family reads: skipped unparsed, not held as values.
        let junk: String = (0..100_000).map(|i| format!("\"k{i}\": [{i}, {{}}],")).collect();
        let text = format!(
            r#"{{"model_type": "llama", "junk": {{{junk} "end": 0}}, "hidden_size": 64,
                "id2label": {{"0": "a"}}, "rope_theta": 5e5, "torch_dtype": "float32"}}"#
        );
        let hf = HfConfig::parse(&text, Path::new("config.json")).unwrap();
        let mut kept: Vec<&str> = hf.obj.keys().map(String::as_str).collect();
        kept.sort();
        assert_eq!(kept, ["hidden_size", "model_type", "rope_theta"]);
        assert_eq!(hf.usize("hidden_size").unwrap(), 64);
        // Skipped fields are still checked for being JSON.
        let bad = HfConfig::parse(r#"{"hidden_size": 64, "junk": [1, 2,]}"#, Path::new("c.json"));
        let msg = bad
            .err()
            .expect("malformed JSON in a skipped field is refused")
            .to_string();
        assert!(msg.contains("c.json") && msg.contains("not valid JSON"), "{msg}");
        let top = HfConfig::parse("[1]", Path::new("c.json"))
            .err()
            .expect("a list is not a config");
        assert!(top.to_string().contains("top level"), "{top}");
    }
}

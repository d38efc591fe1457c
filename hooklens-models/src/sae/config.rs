//! `SaeConfig`: an SAE's `cfg.json` as SAELens 6 reads it, including the flat configs
//! that SAELens before 6.0 wrote (converted as its `handle_pre_6_0_config` does).

use std::path::Path;

use hooklens_core::{Error, Result};
use serde_json::{Map, Value};

use crate::loading::KnownFields;

/// How an SAE turns its pre-activations into feature activations (SAELens's
/// `architecture`, grouped by the math: a BatchTopK SAE is saved for inference as
/// `jumprelu`).
#[derive(Clone, Debug, PartialEq)]
pub enum Architecture {
    /// `relu(x @ W_enc + b_enc)` (SAELens `standard`, and the transcoders).
    Standard,
    /// `relu(pre) * (pre > threshold)`, per feature (`jumprelu`).
    JumpRelu,
    /// `(x @ W_enc + b_gate > 0) * relu(x @ (W_enc * exp(r_mag)) + b_mag)` (`gated`).
    Gated,
    /// The `k` largest pre-activations of each position, through relu (`topk`).
    TopK {
        /// How many features may fire per position.
        k: usize,
        /// Whether pre-activations are ranked and kept multiplied by each feature's
        /// decoder norm (and the decoder divides it back out).
        rescale_acts_by_decoder_norm: bool,
    },
}

/// How the input is normalised before encoding (SAELens's `normalize_activations`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalization {
    /// None; also what `expected_average_only_in` and `covariance_whitening` do to a
    /// folder loaded from disk (SAELens folds a scale in only for named releases).
    None,
    /// `x * sqrt(d_in) / ||x||` per position; decoding divides by the same factor.
    ConstantNormRescale,
    /// `(x - mean) / (std + 1e-5)` per position (std with N - 1); decoding undoes it.
    LayerNorm,
}

/// An SAE's configuration (SAELens's `SAEConfig` and its `metadata`).
#[derive(Clone, Debug, PartialEq)]
pub struct SaeConfig {
    /// SAELens's architecture name, as written (`standard`, `topk`, `transcoder`, ...).
    pub architecture_name: String,
    /// The activation function's family.
    pub architecture: Architecture,
    /// Input width: the hook point's last dimension (for `hook_z` SAEs,
    /// `n_heads * d_head`).
    pub d_in: usize,
    /// Number of features.
    pub d_sae: usize,
    /// Output width of a transcoder (`None` for an SAE, whose output is `d_in` wide).
    pub d_out: Option<usize>,
    /// Whether `b_dec` is subtracted from the input before encoding.
    pub apply_b_dec_to_input: bool,
    /// Input normalisation.
    pub normalize_activations: Normalization,
    /// Whether the SAE reads `[.., n_heads, d_head]` activations flattened to
    /// `[.., n_heads * d_head]` (SAELens's `reshape_activations: "hook_z"`).
    pub reshape_hook_z: bool,
    /// The hook point the SAE reads (and, unless it is a transcoder, replaces).
    pub hook_name: String,
    /// A transcoder's output point: the one it replaces.
    pub hook_name_out: Option<String>,
    /// The head an SAE trained on one head's slice reads (`hook_head_index`).
    pub hook_head_index: Option<usize>,
    /// The model it was trained on, when the config says.
    pub model_name: Option<String>,
    /// Whether its training prompts started with BOS, when the config says.
    pub prepend_bos: Option<bool>,
    /// Its training context, when the config says.
    pub context_size: Option<usize>,
    /// Whether the weights have a skip term `W_skip` (`skip_transcoder`).
    pub skip: bool,
}

impl SaeConfig {
    /// Whether it is a transcoder: it reads `hook_name` and replaces `hook_name_out`.
    pub fn is_transcoder(&self) -> bool {
        self.hook_name_out.is_some() || self.d_out.is_some()
    }

    /// The hook point the SAE takes the place of when spliced in.
    pub fn spliced_at(&self) -> &str {
        self.hook_name_out.as_deref().unwrap_or(&self.hook_name)
    }

    /// The output width: `d_out` for a transcoder, else `d_in`.
    pub fn output_width(&self) -> usize {
        self.d_out.unwrap_or(self.d_in)
    }

    /// Parses a `cfg.json`'s text; `path` names the file in errors. Both SAELens 6
    /// configs and older flat ones are read.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        Self::from_json_str_with(text, path, None)
    }

    /// [`SaeConfig::from_json_str`] with `overrides` set over the file's top-level
    /// fields first, as SAELens applies a release's `config_overrides`.
    pub(crate) fn from_json_str_with(text: &str, path: &Path, overrides: Option<&Map<String, Value>>) -> Result<Self> {
        let bad = |reason: String| Error::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let keep = |k: &str| FIELDS.contains(&k);
        let known = KnownFields {
            keep: &keep,
            nested: &["metadata"],
        };
        let mut obj = match known.parse(text) {
            Ok(Some(obj)) => obj,
            Ok(None) => return Err(bad("expected a JSON object at the top level".into())),
            Err(e) => return Err(bad(format!("not valid JSON: {e}"))),
        };
        for (k, v) in overrides.into_iter().flatten() {
            obj.insert(k.clone(), v.clone());
        }
        parse(&obj).map_err(|e| match e {
            ParseError::Bad(reason) => bad(reason),
            ParseError::Unsupported(name, reason) => Error::UnsupportedArchitecture {
                name,
                supported: SUPPORTED.iter().map(|s| s.to_string()).collect(),
                message: bad(reason).to_string(),
            },
        })
    }

    /// Reads and parses `path` (a `cfg.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::loading::read_bounded(path, crate::loading::MAX_CONFIG_BYTES)?;
        Self::from_json_str(&text, path)
    }
}

/// The fields [`SaeConfig`] reads, at the top level or in `metadata`.
const FIELDS: &[&str] = &[
    "activation_fn",
    "activation_fn_kwargs",
    "activation_fn_str",
    "apply_b_dec_to_input",
    "architecture",
    "context_size",
    "d_in",
    "d_out",
    "d_sae",
    "hook_head_index",
    "hook_name",
    "hook_name_out",
    "hook_point",
    "hook_point_head_index",
    "k",
    "metadata",
    "model_name",
    "normalize_activations",
    "prepend_bos",
    "reshape_activations",
    "rescale_acts_by_decoder_norm",
    "sae_lens_version",
];

/// The architectures [`SaeConfig`] reads.
const SUPPORTED: &[&str] = &[
    "standard",
    "gated",
    "jumprelu",
    "topk",
    "transcoder",
    "skip_transcoder",
    "jumprelu_transcoder",
    "jumprelu_skip_transcoder",
];

/// Why a config was refused: malformed, or of an architecture hooklens does not run.
enum ParseError {
    Bad(String),
    Unsupported(String, String),
}

/// The version SAELens wrote, from the top level or `metadata`.
fn version(obj: &Map<String, Value>) -> Option<(u64, u64)> {
    let v = obj
        .get("sae_lens_version")
        .or_else(|| obj.get("metadata").and_then(|m| m.get("sae_lens_version")))?
        .as_str()?;
    let mut parts = v.split('.').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
}

fn parse(obj: &Map<String, Value>) -> std::result::Result<SaeConfig, ParseError> {
    let named = obj
        .get("architecture")
        .or_else(|| obj.get("metadata").and_then(|m| m.get("architecture")))
        .and_then(Value::as_str);
    if let Some(name) = named.filter(|n| !SUPPORTED.contains(n)) {
        return Err(ParseError::Unsupported(
            name.to_string(),
            format!(
                "architecture `{name}` is not supported (supported: {})",
                SUPPORTED.join(", ")
            ),
        ));
    }
    parse_fields(obj).map_err(ParseError::Bad)
}

/// A config's fields, read where its version keeps them.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    meta: Option<&'a Map<String, Value>>,
    /// Written by SAELens before 6.0 (or with no version): flat, with older names and defaults.
    legacy: bool,
}

impl<'a> Fields<'a> {
    fn new(obj: &'a Map<String, Value>) -> Self {
        Fields {
            obj,
            meta: obj.get("metadata").and_then(Value::as_object),
            legacy: version(obj).is_none_or(|(major, _)| major < 6),
        }
    }

    /// A field that is not null, from `metadata` first: a v6 config keeps the hook and
    /// model in `metadata`; a legacy one at the top.
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.meta
            .and_then(|m| m.get(name))
            .filter(|v| !v.is_null())
            .or_else(|| self.obj.get(name).filter(|v| !v.is_null()))
    }

    fn get_any(&self, names: &[&str]) -> Option<&'a Value> {
        names.iter().find_map(|n| self.get(n))
    }
}

fn uint(name: &str, v: &Value) -> std::result::Result<usize, String> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("`{name}` must be a non-negative integer, got {v}"))
}

fn boolean(name: &str, v: &Value) -> std::result::Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("`{name}` must be true or false, got {v}"))
}

fn string(name: &str, v: &Value) -> std::result::Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("`{name}` must be a string, got {v}"))
}

/// The hook points the SAE reads and replaces, and the head it reads.
struct Hooks {
    name: String,
    name_out: Option<String>,
    head_index: Option<usize>,
}

/// The architecture's name as written, with the `k` and rescaling a top-k one needs.
struct ArchitectureName {
    name: String,
    k: Option<usize>,
    rescale: Option<bool>,
}

fn parse_fields(obj: &Map<String, Value>) -> std::result::Result<SaeConfig, String> {
    let f = Fields::new(obj);
    let (d_in, d_sae) = read_widths(&f)?;
    let hooks = read_hooks(&f)?;
    let named = read_architecture_name(&f)?;
    let (architecture, transcoder, skip) = architecture_of(&named, d_sae)?;
    let d_out = read_d_out(&f, transcoder, &hooks)?;
    let apply_b_dec_to_input = read_apply_b_dec_to_input(&f, transcoder)?;
    let normalize_activations = read_normalization(&f)?;
    let reshape_hook_z = read_reshape_hook_z(&f, &hooks.name, transcoder)?;
    Ok(SaeConfig {
        architecture_name: named.name,
        architecture,
        d_in,
        d_sae,
        d_out,
        apply_b_dec_to_input,
        normalize_activations,
        reshape_hook_z,
        hook_name: hooks.name,
        hook_name_out: hooks.name_out,
        hook_head_index: hooks.head_index,
        model_name: f.get("model_name").and_then(Value::as_str).map(str::to_string),
        prepend_bos: f.get("prepend_bos").and_then(Value::as_bool),
        context_size: f.get("context_size").and_then(Value::as_u64).map(|n| n as usize),
        skip,
    })
}

/// `d_in` and `d_sae`, both positive.
fn read_widths(f: &Fields<'_>) -> std::result::Result<(usize, usize), String> {
    let d_in = uint("d_in", f.get("d_in").ok_or("no `d_in`")?)?;
    let d_sae = uint("d_sae", f.get("d_sae").ok_or("no `d_sae`")?)?;
    if d_in == 0 || d_sae == 0 {
        return Err(format!("`d_in` ({d_in}) and `d_sae` ({d_sae}) must be positive"));
    }
    Ok((d_in, d_sae))
}

fn read_hooks(f: &Fields<'_>) -> std::result::Result<Hooks, String> {
    let name = string(
        "hook_name",
        f.get_any(&["hook_name", "hook_point"])
            .ok_or("no `hook_name` (nor legacy `hook_point`)")?,
    )?;
    let name_out = f.get("hook_name_out").map(|v| string("hook_name_out", v)).transpose()?;
    let head_index = f
        .get_any(&["hook_head_index", "hook_point_head_index"])
        .map(|v| uint("hook_head_index", v))
        .transpose()?;
    Ok(Hooks {
        name,
        name_out,
        head_index,
    })
}

fn read_architecture_name(f: &Fields<'_>) -> std::result::Result<ArchitectureName, String> {
    let mut name = match f.get("architecture") {
        Some(v) => string("architecture", v)?,
        None if f.legacy => "standard".to_string(),
        None => return Err("no `architecture`".into()),
    };
    let mut k = f.get("k").map(|v| uint("k", v)).transpose()?;
    let mut rescale = f
        .get("rescale_acts_by_decoder_norm")
        .map(|v| boolean("rescale_acts_by_decoder_norm", v))
        .transpose()?;
    if f.legacy {
        // SAELens < 6 named top-k SAEs by their activation function.
        let act = f
            .get_any(&["activation_fn", "activation_fn_str"])
            .and_then(Value::as_str);
        if act == Some("topk") {
            name = "topk".into();
            let kwargs_k = f.get("activation_fn_kwargs").and_then(|kw| kw.get("k"));
            k = Some(uint(
                "activation_fn_kwargs.k",
                kwargs_k.ok_or("a topk activation without `activation_fn_kwargs.k`")?,
            )?);
            rescale = Some(false);
        }
    }
    Ok(ArchitectureName { name, k, rescale })
}

/// The architecture `named` runs, whether it is a transcoder, and whether it has a skip term.
fn architecture_of(named: &ArchitectureName, d_sae: usize) -> std::result::Result<(Architecture, bool, bool), String> {
    Ok(match named.name.as_str() {
        "standard" => (Architecture::Standard, false, false),
        "jumprelu" => (Architecture::JumpRelu, false, false),
        "gated" => (Architecture::Gated, false, false),
        "topk" => {
            let k = named.k.ok_or("a topk SAE needs `k`")?;
            if k == 0 || k > d_sae {
                return Err(format!("`k` is {k}: it must be between 1 and d_sae ({d_sae})"));
            }
            let rescale_acts_by_decoder_norm = named.rescale.unwrap_or(false);
            (
                Architecture::TopK {
                    k,
                    rescale_acts_by_decoder_norm,
                },
                false,
                false,
            )
        }
        "transcoder" => (Architecture::Standard, true, false),
        "skip_transcoder" => (Architecture::Standard, true, true),
        "jumprelu_transcoder" => (Architecture::JumpRelu, true, false),
        "jumprelu_skip_transcoder" => (Architecture::JumpRelu, true, true),
        other => {
            return Err(format!(
                "architecture `{other}` is not supported (supported: {})",
                SUPPORTED.join(", ")
            ))
        }
    })
}

/// A transcoder's output width; it must also name the point it replaces.
fn read_d_out(f: &Fields<'_>, transcoder: bool, hooks: &Hooks) -> std::result::Result<Option<usize>, String> {
    let d_out = if transcoder {
        Some(uint("d_out", f.get("d_out").ok_or("a transcoder needs `d_out`")?)?)
    } else {
        None
    };
    if transcoder && hooks.name_out.is_none() {
        return Err("a transcoder needs `hook_name_out` (the point it replaces)".into());
    }
    Ok(d_out)
}

fn read_apply_b_dec_to_input(f: &Fields<'_>, transcoder: bool) -> std::result::Result<bool, String> {
    let apply_b_dec_to_input = match f.get("apply_b_dec_to_input") {
        Some(v) => boolean("apply_b_dec_to_input", v)?,
        None => !transcoder && f.legacy,
    };
    if transcoder && apply_b_dec_to_input {
        return Err("`apply_b_dec_to_input` is true, which transcoders do not support (as in SAELens)".into());
    }
    Ok(apply_b_dec_to_input)
}

fn read_normalization(f: &Fields<'_>) -> std::result::Result<Normalization, String> {
    Ok(match f.get("normalize_activations") {
        None | Some(Value::Bool(false)) => Normalization::None,
        Some(Value::Bool(true)) => Normalization::None, // expected_average_only_in
        Some(Value::String(s)) => match s.as_str() {
            "none" | "expected_average_only_in" | "covariance_whitening" => Normalization::None,
            "constant_norm_rescale" => Normalization::ConstantNormRescale,
            "layer_norm" => Normalization::LayerNorm,
            other => {
                return Err(format!(
                    "`normalize_activations` `{other}` is not one of none, expected_average_only_in, \
                     constant_norm_rescale, layer_norm"
                ))
            }
        },
        Some(v) => return Err(format!("`normalize_activations` must be a string, got {v}")),
    })
}

fn read_reshape_hook_z(f: &Fields<'_>, hook_name: &str, transcoder: bool) -> std::result::Result<bool, String> {
    let reshape_hook_z = match f.get("reshape_activations") {
        Some(v) => match string("reshape_activations", v)?.as_str() {
            "none" => false,
            "hook_z" => true,
            other => return Err(format!("`reshape_activations` `{other}` is not `none` or `hook_z`")),
        },
        None => f.legacy && hook_name.contains("hook_z"),
    };
    if reshape_hook_z && transcoder {
        return Err("`reshape_activations: hook_z` is for SAEs, not transcoders".into());
    }
    Ok(reshape_hook_z)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> std::result::Result<SaeConfig, String> {
        SaeConfig::from_json_str(text, Path::new("cfg.json")).map_err(|e| e.to_string())
    }

    #[test]
    fn legacy_topk_activation_becomes_the_topk_architecture() {
        let c = cfg(r#"{"d_in": 8, "d_sae": 32, "hook_point": "blocks.0.attn.hook_z",
            "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4}}"#)
        .unwrap();
        assert_eq!(
            c.architecture,
            Architecture::TopK {
                k: 4,
                rescale_acts_by_decoder_norm: false
            }
        );
        assert!(c.apply_b_dec_to_input && c.reshape_hook_z);
        assert_eq!(c.hook_name, "blocks.0.attn.hook_z");
    }

    #[test]
    fn legacy_normalisation_flags_read_as_saelens_reads_them() {
        let base = r#""d_in": 8, "d_sae": 32, "hook_point": "blocks.0.hook_resid_pre""#;
        for (v, want) in [
            ("true", Normalization::None),
            ("null", Normalization::None),
            ("\"layer_norm\"", Normalization::LayerNorm),
        ] {
            let c = cfg(&format!("{{{base}, \"normalize_activations\": {v}}}")).unwrap();
            assert_eq!(c.normalize_activations, want, "{v}");
        }
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let v6 = r#""sae_lens_version": "6.1.0", "d_in": 8, "d_sae": 32, "metadata": {"hook_name": "h"}"#;
        let err = cfg(&format!("{{{v6}, \"architecture\": \"matching_pursuit\"}}")).unwrap_err();
        assert!(
            err.contains("matching_pursuit") && err.contains("not supported"),
            "{err}"
        );
        let err = cfg(&format!("{{{v6}}}")).unwrap_err();
        assert!(err.contains("no `architecture`"), "{err}");
        let err = cfg(&format!("{{{v6}, \"architecture\": \"topk\", \"k\": 33}}")).unwrap_err();
        assert!(err.contains("`k` is 33"), "{err}");
        let err = cfg(&format!("{{{v6}, \"architecture\": \"transcoder\", \"d_out\": 8}}")).unwrap_err();
        assert!(err.contains("hook_name_out"), "{err}");
        let err = cfg(r#"{"d_in": "x"}"#).unwrap_err();
        assert!(err.contains("cfg.json") && err.contains("`d_in`"), "{err}");
    }
}

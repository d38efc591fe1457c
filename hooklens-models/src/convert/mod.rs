//! One converter per model family: a Hugging Face `config.json` becomes a
//! [`TransformerConfig`], and the family's checkpoint tensors become the model's
//! weights (`x @ w` layout, q | k | v fused). This is the only code a new family adds:
//! the model, processing, analysis and tools are shared.
//!
//! The family is chosen from `config.json`: `model_type`, else `architectures`.
//!
//! ```
//! use hooklens_models::convert::{config_from_hf_str, synthetic_checkpoint, write_checkpoint};
//! use hooklens_core::HookedModel;
//! use hooklens_models::{HookedTransformer, LoadOptions};
//!
//! // A small Qwen 3: grouped-query attention, head_dim apart from hidden_size / heads.
//! let config = r#"{"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
//!     "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
//!     "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 64,
//!     "vocab_size": 100, "max_position_embeddings": 32, "rms_norm_eps": 1e-6,
//!     "rope_theta": 1000000.0, "tie_word_embeddings": true}"#;
//! let cfg = config_from_hf_str(config, "config.json")?;
//! assert!(cfg.use_qk_norm && !cfg.default_prepend_bos);
//! assert_eq!((cfg.n_heads, cfg.n_kv_heads(), cfg.d_head), (4, 2, 16));
//!
//! // Seeded random weights under Qwen 3's tensor names, written as a model folder.
//! let dir = std::env::temp_dir().join(format!("hooklens-doc-qwen3-{}", std::process::id()));
//! write_checkpoint(&dir, config, &synthetic_checkpoint(config, 0)?, candle_core::DType::F32, 1)?;
//! let model = HookedTransformer::from_dir(&dir, &LoadOptions::default())?;
//! assert!(model.hook_names().contains(&"blocks.1.attn.q_norm.hook_scale".to_string()));
//! std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), hooklens_core::Error>(())
//! ```

mod bloom;
mod family;
mod gemma;
mod gemma2;
mod gemma3;
mod gpt2;
mod gpt_neo;
mod gpt_oss;
mod gptj;
mod hf_config;
mod llama;
mod mistral;
mod mixtral;
mod moe;
mod mxfp4;
mod neox;
mod olmo2;
mod olmoe;
mod opt;
mod phi;
mod phi3;
mod qwen2;
mod qwen3;
mod qwen3_moe;
#[cfg_attr(not(feature = "bench-internals"), allow(dead_code))]
mod synthetic;
mod weights;

use std::path::Path;

use hooklens_core::{Error, Result};

use crate::config::TransformerConfig;
use crate::loading::TensorSource;
use crate::params::TransformerWeights;
use family::Family;
use hf_config::HfConfig;
/// Random checkpoints of any family from a `config.json`, for the tests (feature
/// `bench-internals`; not API).
#[cfg(feature = "bench-internals")]
pub use synthetic::{synthetic_checkpoint, write_checkpoint};

/// Every bundled family, GPT-2 first.
const FAMILIES: &[Family] = &[
    gpt2::FAMILY,
    neox::FAMILY,
    llama::FAMILY,
    mistral::FAMILY,
    qwen2::FAMILY,
    qwen3::FAMILY,
    gemma::FAMILY,
    gemma2::FAMILY,
    gemma3::FAMILY,
    gemma3::MULTIMODAL,
    phi3::FAMILY,
    olmo2::FAMILY,
    gpt_neo::FAMILY,
    opt::FAMILY,
    phi::FAMILY,
    gptj::FAMILY,
    bloom::FAMILY,
    mixtral::FAMILY,
    qwen3_moe::FAMILY,
    olmoe::FAMILY,
    gpt_oss::FAMILY,
];

/// Whether some family (or the shared readers) reads the `config.json` field `name`.
fn is_known_field(name: &str) -> bool {
    use std::collections::HashSet;
    use std::sync::OnceLock;
    static KNOWN: OnceLock<HashSet<&'static str>> = OnceLock::new();
    KNOWN
        .get_or_init(|| {
            let lists = FAMILIES.iter().flat_map(|f| f.fields.iter());
            hf_config::COMMON_FIELDS
                .iter()
                .chain(lists.flat_map(|l| l.iter()))
                .copied()
                .collect()
        })
        .contains(name)
}

/// The Hugging Face classes hooklens can load, one family after another.
pub fn supported_architectures() -> Vec<&'static str> {
    FAMILIES.iter().map(|f| f.classes[0]).collect()
}

/// [`Error::UnsupportedArchitecture`] for `name`, with the message of `bad` (which
/// names the file).
fn unsupported(name: &str, bad: Error) -> Error {
    Error::UnsupportedArchitecture {
        name: name.to_string(),
        supported: supported_architectures().into_iter().map(String::from).collect(),
        message: bad.to_string(),
    }
}

fn supported_list() -> String {
    FAMILIES
        .iter()
        .map(|f| format!("{} ({})", f.classes[0], f.model_types[0]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The family a config names, by `model_type`, else by `architectures`; an unknown
/// one is an error naming it and listing the supported ones.
fn family_of(hf: &HfConfig) -> Result<&'static Family> {
    let archs = hf.architectures();
    let by_type = hf
        .model_type()
        .map(|t| (t, FAMILIES.iter().find(|f| f.model_types.contains(&t))));
    let family = match by_type {
        Some((_, Some(f))) => f,
        Some((t, None)) => {
            return Err(unsupported(
                t,
                hf.bad(format!(
                    "field `model_type` is \"{t}\", an architecture hooklens does not support; supported: {}",
                    supported_list()
                )),
            ))
        }
        None => match archs
            .iter()
            .find_map(|a| FAMILIES.iter().find(|f| f.classes.contains(a)))
        {
            Some(f) => f,
            None => {
                return Err(unsupported(
                    &archs.join(", "),
                    hf.bad(format!(
                        "field `model_type` is missing and `architectures` ({archs:?}) names no supported model; supported: {}",
                        supported_list()
                    )),
                ))
            }
        },
    };
    if let Some(a) = archs.iter().find(|a| !family.classes.contains(a)) {
        let by = match hf.model_type() {
            Some(t) => format!("field `model_type` \"{t}\" names"),
            None => "the config names".to_string(),
        };
        return Err(hf.bad(format!(
            "field `architectures` names \"{a}\", but {by} {}, whose classes are {}; supported: {}",
            family.name,
            family.classes.join(", "),
            supported_list()
        )));
    }
    Ok(family)
}

/// The family that made `cfg` (by `original_architecture`).
fn family_of_config(cfg: &TransformerConfig) -> Result<&'static Family> {
    FAMILIES
        .iter()
        .find(|f| f.classes.contains(&cfg.original_architecture.as_str()))
        .ok_or_else(|| {
            Error::invalid(format!(
                "config: original_architecture \"{}\" is not one hooklens can load; supported: {}",
                cfg.original_architecture,
                supported_list()
            ))
        })
}

/// Reads a Hugging Face `config.json` of any supported family. Unknown families,
/// missing fields and values that cannot describe the model are errors naming the
/// file and the field.
pub fn config_from_hf_json(path: impl AsRef<Path>) -> Result<TransformerConfig> {
    let path = path.as_ref();
    let text = crate::loading::read_bounded(path, crate::loading::MAX_CONFIG_BYTES)?;
    config_from_hf_str(&text, path)
}

/// [`config_from_hf_json`] on the text of a `config.json`; `path` names it in errors.
pub fn config_from_hf_str(text: &str, path: impl AsRef<Path>) -> Result<TransformerConfig> {
    let hf = HfConfig::parse(text, path.as_ref())?;
    let family = family_of(&hf)?;
    let mut cfg = (family.config)(&hf)?;
    cfg.original_architecture = family.classes[0].to_string();
    // A config that parses is one the loaders accept: sizes whose tensors could not
    // exist are reported here, with the file's name.
    cfg.validate().map_err(|e| hf.bad(e.to_string()))?;
    Ok(cfg)
}

/// The Hugging Face readers as constructors of the config; they live here, with the
/// converters they call, so that the config imports nothing above it.
impl TransformerConfig {
    /// Reads a Hugging Face `config.json` of any supported family (see
    /// [`config_from_hf_json`]).
    pub fn from_hf_json(path: impl AsRef<Path>) -> Result<Self> {
        config_from_hf_json(path)
    }

    /// [`TransformerConfig::from_hf_json`] on the text of a `config.json`; `path` names
    /// it in errors.
    pub fn from_hf_str(text: &str, path: impl AsRef<Path>) -> Result<Self> {
        config_from_hf_str(text, path)
    }
}

/// Reads every tensor of `cfg`'s family from `src` into the model's layout.
/// Every tensor of `src` must be read, unless `allow_unused`.
pub(crate) fn read_weights(
    src: &dyn TensorSource,
    cfg: &TransformerConfig,
    origin: &str,
    allow_unused: bool,
) -> Result<TransformerWeights> {
    cfg.validate()?;
    let family = family_of_config(cfg)?;
    let recorded = crate::loading::UsedTensors::new(src);
    let w = (family.weights)(&recorded, cfg, origin)?;
    recorded.check_all_used(origin, allow_unused)?;
    Ok(w)
}

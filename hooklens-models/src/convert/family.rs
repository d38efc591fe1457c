//! What a model family is to the converters: how to recognise its `config.json`, and
//! its two conversions.

use hooklens_core::Result;

use super::hf_config::HfConfig;
use crate::config::TransformerConfig;
use crate::loading::TensorSource;
use crate::params::TransformerWeights;

/// A model family: how to recognise its `config.json`, and its two conversions.
pub(crate) struct Family {
    /// The family's name in messages and the README.
    pub(crate) name: &'static str,
    /// Hugging Face `model_type` values.
    pub(crate) model_types: &'static [&'static str],
    /// Hugging Face classes (`architectures`); the first is the one recorded in the config.
    pub(crate) classes: &'static [&'static str],
    /// The `config.json` fields `config` reads (lists shared with other families
    /// included): only these are parsed.
    pub(crate) fields: &'static [&'static [&'static str]],
    /// `config.json` -> the model's config.
    pub(crate) config: fn(&HfConfig) -> Result<TransformerConfig>,
    /// Checkpoint tensors -> the model's weights; `origin` names the source in errors.
    pub(crate) weights: fn(&dyn TensorSource, &TransformerConfig, &str) -> Result<TransformerWeights>,
}

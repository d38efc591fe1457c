//! An attribution graph: circuit-tracer's `Graph`, with its node order and its
//! `graph.safetensors` field names.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use hooklens_core::Result;

use super::replacement::ActiveFeatures;
use super::targets::LogitTarget;

/// The unpruned attribution graph of one prompt.
///
/// Nodes, in this order: the selected features (`active_features[selected_features[i]]`),
/// one error node per (layer, position) (layer-major), one token node per position, one
/// logit node per target. `adjacency[target * n + source]` is the direct effect of
/// `source` on `target` in the local replacement model (rows targets, columns sources).
#[derive(Clone, Debug)]
pub struct Graph {
    /// The prompt's text (decoded), when a tokenizer was there.
    pub input_string: String,
    /// The prompt.
    pub input_tokens: Vec<u32>,
    /// Every active feature (layer, position, feature) and its activation.
    pub active_features: ActiveFeatures,
    /// Indices into `active_features` of the feature nodes, ascending.
    pub selected_features: Vec<usize>,
    /// The logit nodes.
    pub logit_targets: Vec<LogitTarget>,
    /// Their probabilities at the last position.
    pub logit_probabilities: Vec<f32>,
    /// The model's vocabulary size.
    pub vocab_size: usize,
    /// The model's layers.
    pub n_layers: usize,
    /// The transcoders' scan identifier, if known.
    pub scan: Option<String>,
    /// `[n_nodes, n_nodes]` row-major, `[target, source]`.
    pub adjacency: Vec<f32>,
}

impl Graph {
    /// Positions in the prompt.
    pub fn n_pos(&self) -> usize {
        self.input_tokens.len()
    }

    /// Feature nodes.
    pub fn n_features(&self) -> usize {
        self.selected_features.len()
    }

    /// All nodes: features, errors, tokens and logits.
    pub fn n_nodes(&self) -> usize {
        self.n_features() + (self.n_layers + 1) * self.n_pos() + self.logit_targets.len()
    }

    /// The node index of the error node of (`layer`, `pos`).
    pub fn error_node(&self, layer: usize, pos: usize) -> usize {
        self.n_features() + layer * self.n_pos() + pos
    }

    /// The node index of the token node of `pos`.
    pub fn token_node(&self, pos: usize) -> usize {
        self.n_features() + self.n_layers * self.n_pos() + pos
    }

    /// The node index of logit target `k`.
    pub fn logit_node(&self, k: usize) -> usize {
        self.n_features() + (self.n_layers + 1) * self.n_pos() + k
    }

    /// The edge weight from `source` to `target`.
    pub fn edge(&self, target: usize, source: usize) -> f32 {
        self.adjacency[target * self.n_nodes() + source]
    }

    /// Writes the graph as `graph.safetensors` under circuit-tracer's `Graph` field
    /// names and dtypes: `adjacency_matrix` f32, `active_features` i64 `[n, 3]`,
    /// `activation_values` f32, `selected_features` i64, `logit_tokens` i64,
    /// `logit_probabilities` f32, `input_tokens` i64, `vocab_size` and `n_pos` i64 `[1]`.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let dev = Device::Cpu;
        let n = self.n_nodes();
        let af = &self.active_features;
        let mut feats = Vec::with_capacity(af.len() * 3);
        for i in 0..af.len() {
            feats.extend([af.layer[i] as i64, af.pos[i] as i64, af.feature[i] as i64]);
        }
        let i64s = |v: Vec<i64>| Tensor::from_vec(v.clone(), v.len(), &dev);
        let tensors = [
            ("adjacency_matrix", Tensor::from_slice(&self.adjacency, (n, n), &dev)?),
            ("active_features", Tensor::from_vec(feats, (af.len(), 3), &dev)?),
            ("activation_values", Tensor::from_slice(&af.value, af.len(), &dev)?),
            (
                "selected_features",
                i64s(self.selected_features.iter().map(|&i| i as i64).collect())?,
            ),
            (
                "logit_tokens",
                i64s(self.logit_targets.iter().map(|t| t.vocab_idx as i64).collect())?,
            ),
            (
                "logit_probabilities",
                Tensor::from_slice(&self.logit_probabilities, self.logit_probabilities.len(), &dev)?,
            ),
            (
                "input_tokens",
                i64s(self.input_tokens.iter().map(|&t| t as i64).collect())?,
            ),
            ("vocab_size", i64s(vec![self.vocab_size as i64])?),
            ("n_pos", i64s(vec![self.n_pos() as i64])?),
        ];
        let mut meta = HashMap::new();
        meta.insert("input_string".to_string(), self.input_string.clone());
        if let Some(scan) = &self.scan {
            meta.insert("scan".to_string(), scan.clone());
        }
        hooklens_core::__internal::save_safetensors(path.as_ref(), tensors.iter().map(|(k, t)| (*k, t)).collect(), meta)
    }
}

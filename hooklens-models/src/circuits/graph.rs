//! An attribution graph: circuit-tracer's `Graph`, with its node order and its
//! `graph.safetensors` field names.

use std::path::Path;

use hooklens_core::{Error, Result};

use super::replacement::ActiveFeatures;
use super::rows::Adjacency;
use super::targets::LogitTarget;

/// The unpruned attribution graph of one prompt.
///
/// Nodes, in this order: the selected features (`active_features[selected_features[i]]`),
/// one error node per (layer, position) (layer-major), one token node per position, one
/// logit node per target. `adjacency[target * n + source]` is the direct effect of
/// `source` on `target` in the local replacement model (rows targets, columns sources).
#[derive(Debug)]
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
    /// `[n_nodes, n_nodes]`, `[target, source]`: in memory, or in a temporary file when it
    /// exceeded the attribution's memory budget.
    pub adjacency: Adjacency,
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
    pub fn edge(&self, target: usize, source: usize) -> Result<f32> {
        let n = self.n_nodes();
        if target >= n || source >= n {
            return Err(Error::invalid(format!(
                "edge ({target}, {source}) of a graph of {n} nodes"
            )));
        }
        match self.adjacency.as_slice() {
            Some(a) => Ok(a[target * n + source]),
            None => Ok(self.adjacency.row(target)?[source]),
        }
    }

    /// Writes the graph as `graph.safetensors` under circuit-tracer's `Graph` field
    /// names and dtypes: `adjacency_matrix` f32, `active_features` i64 `[n, 3]`,
    /// `activation_values` f32, `selected_features` i64, `logit_tokens` i64,
    /// `logit_probabilities` f32, `input_tokens` i64, `vocab_size` and `n_pos` i64 `[1]`;
    /// `input_string` and `scan` in the metadata. The matrix is streamed row by row, so a
    /// graph held in a file is written without being read into memory.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let n = self.n_nodes();
        let small = self.small_tensors();
        let head = self.safetensors_header(n, &small);
        let io = |e: std::io::Error| Error::io(path, e);
        hooklens_core::__internal::write_atomically(path, |w| {
            w.write_all(&(head.len() as u64).to_le_bytes()).map_err(io)?;
            w.write_all(&head).map_err(io)?;
            match self.adjacency.as_slice() {
                Some(a) => w.write_all(&f32_bytes(a)).map_err(io)?,
                None => {
                    let mut row = vec![0.0f32; n];
                    for t in 0..n {
                        self.adjacency.read_row(t, &mut row)?;
                        w.write_all(&f32_bytes(&row)).map_err(io)?;
                    }
                }
            }
            for (_, _, _, bytes) in &small {
                w.write_all(bytes).map_err(io)?;
            }
            Ok(())
        })
    }

    /// Every tensor of `graph.safetensors` but the matrix, in name order.
    fn small_tensors(&self) -> Vec<SmallTensor> {
        let af = &self.active_features;
        let mut feats = Vec::with_capacity(af.len() * 3);
        for i in 0..af.len() {
            feats.extend([af.layer[i] as i64, af.pos[i] as i64, af.feature[i] as i64]);
        }
        vec![
            (
                "active_features",
                "I64",
                vec![af.len(), 3],
                i64_bytes(feats.into_iter()),
            ),
            ("activation_values", "F32", vec![af.len()], f32_bytes(&af.value)),
            (
                "input_tokens",
                "I64",
                vec![self.n_pos()],
                i64_bytes(self.input_tokens.iter().map(|&t| t as i64)),
            ),
            (
                "logit_probabilities",
                "F32",
                vec![self.logit_probabilities.len()],
                f32_bytes(&self.logit_probabilities),
            ),
            (
                "logit_tokens",
                "I64",
                vec![self.logit_targets.len()],
                i64_bytes(self.logit_targets.iter().map(|t| t.vocab_idx as i64)),
            ),
            ("n_pos", "I64", vec![1], i64_bytes(std::iter::once(self.n_pos() as i64))),
            (
                "selected_features",
                "I64",
                vec![self.selected_features.len()],
                i64_bytes(self.selected_features.iter().map(|&i| i as i64)),
            ),
            (
                "vocab_size",
                "I64",
                vec![1],
                i64_bytes(std::iter::once(self.vocab_size as i64)),
            ),
        ]
    }

    /// The safetensors header, padded: the metadata, the `[n, n]` matrix first in the
    /// data, then the `small` tensors in order.
    fn safetensors_header(&self, n: usize, small: &[SmallTensor]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut meta = serde_json::Map::new();
        meta.insert("input_string".into(), self.input_string.clone().into());
        if let Some(scan) = &self.scan {
            meta.insert("scan".into(), scan.clone().into());
        }
        header.insert("__metadata__".into(), meta.into());
        let adj_len = n * n * 4;
        header.insert(
            "adjacency_matrix".into(),
            serde_json::json!({"dtype": "F32", "shape": [n, n], "data_offsets": [0, adj_len]}),
        );
        let mut at = adj_len;
        for (name, dtype, shape, bytes) in small {
            header.insert(
                (*name).into(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [at, at + bytes.len()]}),
            );
            at += bytes.len();
        }
        let mut head = serde_json::Value::Object(header).to_string().into_bytes();
        // safetensors pads the header with spaces to a multiple of 8 bytes.
        while !head.len().is_multiple_of(8) {
            head.push(b' ');
        }
        head
    }
}

/// One tensor written whole: (name, dtype, shape, bytes); the matrix's bytes are
/// streamed instead, not held.
type SmallTensor = (&'static str, &'static str, Vec<usize>, Vec<u8>);

/// `v` as little-endian bytes.
fn i64_bytes(v: impl Iterator<Item = i64>) -> Vec<u8> {
    v.flat_map(|x| x.to_le_bytes()).collect()
}

/// `v` as little-endian bytes.
fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

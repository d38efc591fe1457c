//! The attribution-graph file that circuit-tracer's `create_graph_files` writes
//! (`graph_files/<slug>.json`), the format its front-end and Neuronpedia read.
//!
//! The structs follow circuit-tracer's pydantic models (`frontend/graph_models.py`) field
//! for field: the same JSON names, in the same order, and the same defaults for the
//! fields pydantic gives one (a missing field without a default is an error naming it).
//! [`GraphFile::to_json`] writes what `model_dump_json(indent=2)` writes, byte for byte
//! for a file read with [`GraphFile::from_json`]. Fields this format does not name are
//! ignored when reading, as pydantic ignores them.

use hooklens_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// One attribution graph, as `create_graph_files` writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphFile {
    /// What the graph is of: the prompt, its tokens, the transcoders.
    pub metadata: GraphMetadata,
    /// The front-end's view state (`qParams`).
    #[serde(rename = "qParams")]
    pub q_params: QParams,
    /// The nodes kept by pruning, in the graph's node order (features, errors, tokens,
    /// logits).
    pub nodes: Vec<GraphNode>,
    /// The edges kept by pruning between kept nodes.
    pub links: Vec<GraphLink>,
}

/// The `metadata` of a graph file (circuit-tracer's `Metadata`; `graph-metadata.json`
/// lists these).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphMetadata {
    /// The graph's name; the file is `<slug>.json`.
    pub slug: String,
    /// Which transcoder set the graph was made with (`"gemma-2-2b"`, or a name of one's
    /// own).
    pub scan: String,
    /// The transcoders used, when given one by one (else empty).
    pub transcoder_list: Vec<String>,
    /// Each prompt token, decoded alone.
    pub prompt_tokens: Vec<String>,
    /// The prompt.
    pub prompt: String,
    /// The cumulative-influence threshold nodes were pruned at (`null` if not given).
    #[serde(default)]
    pub node_threshold: Option<f64>,
    /// The file format's version: 1.
    #[serde(default = "schema_version_1")]
    pub schema_version: Option<i64>,
}

fn schema_version_1() -> Option<i64> {
    Some(1)
}

/// The front-end's view state of a graph file (circuit-tracer's `QParams`); JSON names
/// are camel case as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QParams {
    /// The `node_id`s pinned in the front-end (`pinnedIds`).
    #[serde(rename = "pinnedIds")]
    pub pinned_ids: Vec<String>,
    /// Groups of `node_id`s shown as one node (`supernodes`).
    pub supernodes: Vec<Vec<String>>,
    /// Which edges of the clicked node are shown (`linkType`: `"both"`, `"input"`,
    /// `"output"`).
    #[serde(rename = "linkType")]
    pub link_type: String,
    /// The `node_id` selected when the graph opens, or empty (`clickedId`).
    #[serde(rename = "clickedId")]
    pub clicked_id: String,
    /// The subgraph's node positions, or empty (`sg_pos`).
    pub sg_pos: String,
}

/// One node of the graph (circuit-tracer's `Node`).
///
/// The four kinds, as `create_graph_files` makes them (`n_layers` is the model's):
///
/// | kind | `feature_type` | `node_id` | `layer` | `feature` |
/// |---|---|---|---|---|
/// | transcoder feature | `"cross layer transcoder"` | `"{layer}_{feature}_{pos}"` | the layer | cantor pairing of layer and feature |
/// | reconstruction error | `"mlp reconstruction error"` | `"0_{layer}_{pos}"` (newer: `"{layer}_-1_{pos}"`) | the layer | `-1` |
/// | input token | `"embedding"` | `"E_{token_id}_{pos}"` | `"E"` | the position |
/// | output logit | `"logit"` | `"{n_layers + 1}_{token_id}_{pos}"` | `n_layers + 1` | the token id |
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphNode {
    /// The node's id, which links name.
    pub node_id: String,
    /// A number for the feature (see the table above).
    pub feature: i64,
    /// The layer as a string: a layer number, `"E"` for the embeddings, `n_layers + 1`
    /// for the logits.
    pub layer: String,
    /// The prompt position.
    pub ctx_idx: usize,
    /// The kind: `"cross layer transcoder"`, `"mlp reconstruction error"`,
    /// `"embedding"` or `"logit"`.
    pub feature_type: String,
    /// For a logit, the probability of its token (default 0).
    #[serde(default)]
    pub token_prob: f64,
    /// Whether this logit is the graph's first target (default false).
    #[serde(default)]
    pub is_target_logit: bool,
    /// Which run of the prompt (default 0).
    #[serde(default)]
    pub run_idx: usize,
    /// The position counted from the end (circuit-tracer writes 0; default 0).
    #[serde(default)]
    pub reverse_ctx_idx: usize,
    /// The front-end's id of the node (`jsNodeId`).
    #[serde(rename = "jsNodeId")]
    pub js_node_id: String,
    /// A label: for a logit `Output "token" (p=0.072)`, else usually empty (default
    /// empty).
    #[serde(default)]
    pub clerp: String,
    /// The node's cumulative influence on the logits, as pruning scored it (`null` for
    /// logits; default `null`).
    #[serde(default)]
    pub influence: Option<f64>,
    /// A feature's activation (`null` for the other kinds; default `null`).
    #[serde(default)]
    pub activation: Option<f64>,
}

/// One edge of the graph: `weight` is the direct effect of `source` on `target` (the
/// adjacency matrix's `A[target, source]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphLink {
    /// The `node_id` the edge comes from.
    pub source: String,
    /// The `node_id` the edge goes to.
    pub target: String,
    /// The edge's weight.
    pub weight: f64,
}

impl GraphFile {
    /// Reads a graph file's JSON. A malformed file or a missing field is an error that
    /// names it, with its line and column.
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| Error::invalid(format!("not an attribution graph file: {e}")))
    }

    /// The graph as JSON, as circuit-tracer writes it (`model_dump_json(indent=2)`:
    /// two-space indents, no final newline).
    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and numbers to a String cannot fail.
        serde_json::to_string_pretty(self).expect("a graph file serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> String {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/circuits/graph_files/public.json"
        );
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn the_reference_file_round_trips() {
        let text = reference();
        let graph = GraphFile::from_json(&text).unwrap();
        assert_eq!(graph.metadata.slug, "public");
        assert_eq!(graph.metadata.prompt_tokens.len(), 10);
        assert_eq!(graph.nodes.len(), 36);
        assert_eq!(graph.links.len(), 289);
        let logit = graph.nodes.iter().find(|n| n.is_target_logit).unwrap();
        assert_eq!((logit.layer.as_str(), logit.feature_type.as_str()), ("3", "logit"));
        let written = graph.to_json();
        assert_eq!(GraphFile::from_json(&written).unwrap(), graph);
        // The same bytes as circuit-tracer wrote: field order, indents, numbers.
        if let Some(at) = written.bytes().zip(text.bytes()).position(|(a, b)| a != b) {
            let around = |s: &str| s[at.saturating_sub(80)..(at + 40).min(s.len())].to_string();
            panic!("written:\n{}\n\nfile:\n{}", around(&written), around(&text));
        }
        assert_eq!(written.len(), text.len());
        // And the same JSON values as the file, field for field.
        let a: serde_json::Value = serde_json::from_str(&text).unwrap();
        let b: serde_json::Value = serde_json::from_str(&written).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn pydantic_defaults_fill_in_and_required_fields_are_named() {
        let minimal = r#"{"metadata": {"slug": "s", "scan": "x", "transcoder_list": [], "prompt_tokens": ["a"], "prompt": "a"},
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": [{"node_id": "E_5_0", "feature": 0, "layer": "E", "ctx_idx": 0, "feature_type": "embedding", "jsNodeId": "E_5-0"}],
            "links": []}"#;
        let g = GraphFile::from_json(minimal).unwrap();
        assert_eq!(g.metadata.schema_version, Some(1));
        assert_eq!(g.metadata.node_threshold, None);
        let n = &g.nodes[0];
        assert_eq!(
            (n.token_prob, n.is_target_logit, n.clerp.as_str(), n.influence),
            (0.0, false, "", None)
        );
        let e = GraphFile::from_json(&minimal.replace(r#""node_id": "E_5_0", "#, ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `node_id`"), "{e}");
        let e = GraphFile::from_json(&minimal.replace(r#""links": []"#, r#""link": []"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `links`"), "{e}");
        let e = GraphFile::from_json("{\"metadata\": ").unwrap_err().to_string();
        assert!(e.starts_with("not an attribution graph file"), "{e}");
    }
}

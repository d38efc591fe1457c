//! The pruned graph as circuit-tracer's `create_graph_files` writes it: the
//! `<slug>.json` its front-end and Neuronpedia read, and `graph-metadata.json` beside it.

use std::path::Path;

use hooklens_core::{Error, Result};

use super::graph::Graph;
use super::graph_file::{GraphFile, GraphLink, GraphMetadata, GraphNode, QParams};
use super::prune::{prune, Pruned};

/// Cantor's pairing of two non-negative integers (the `feature` number of a feature node).
fn cantor(x: i64, y: i64) -> i64 {
    (x + y) * (x + y + 1) / 2 + y
}

/// What a graph file says of its graph beyond the graph itself.
#[derive(Clone, Debug)]
pub struct GraphFileOptions {
    /// The graph's name (the file is `<slug>.json`).
    pub slug: String,
    /// The transcoders' scan identifier; the graph's own when `None`.
    pub scan: Option<String>,
    /// Node pruning threshold (circuit-tracer's default 0.8).
    pub node_threshold: f64,
    /// Edge pruning threshold (0.98).
    pub edge_threshold: f64,
}

impl GraphFileOptions {
    /// circuit-tracer's defaults for `slug`.
    pub fn new(slug: impl Into<String>) -> Self {
        GraphFileOptions {
            slug: slug.into(),
            scan: None,
            node_threshold: 0.8,
            edge_threshold: 0.98,
        }
    }
}

/// The graph file of `graph`, pruned at `opts`' thresholds. `token_text(id)` decodes one
/// token alone (the prompt tokens and the logit targets' labels).
pub fn graph_file(graph: &Graph, opts: &GraphFileOptions, token_text: &dyn Fn(u32) -> String) -> Result<GraphFile> {
    let pruned = prune(graph, opts.node_threshold as f32, opts.edge_threshold as f32)?;
    graph_file_from(graph, &pruned, opts, token_text)
}

/// [`graph_file`] with the pruning already done.
pub fn graph_file_from(
    graph: &Graph,
    pruned: &Pruned,
    opts: &GraphFileOptions,
    token_text: &dyn Fn(u32) -> String,
) -> Result<GraphFile> {
    let scan =
        opts.scan.clone().or_else(|| graph.scan.clone()).ok_or_else(|| {
            Error::invalid("the graph has no scan identifier: give one (GraphFileOptions::scan, --scan)")
        })?;
    let n = graph.n_nodes();
    let mut nodes: Vec<Option<GraphNode>> = vec![None; n];
    for (i, slot) in nodes.iter_mut().enumerate() {
        if !pruned.node_mask[i] {
            continue;
        }
        *slot = Some(graph_node(graph, i, Some(pruned.cumulative_scores[i] as f64)));
    }
    let (links, connected) = kept_links(pruned, &nodes);
    let nodes: Vec<GraphNode> = nodes
        .into_iter()
        .enumerate()
        .filter_map(|(i, node)| {
            node.filter(|nd| connected[i] || nd.feature_type == "embedding" || nd.feature_type == "logit")
        })
        .collect();
    Ok(GraphFile {
        metadata: GraphMetadata {
            slug: opts.slug.clone(),
            scan,
            transcoder_list: Vec::new(),
            prompt_tokens: graph.input_tokens.iter().map(|&t| token_text(t)).collect(),
            prompt: graph.input_string.clone(),
            node_threshold: Some(opts.node_threshold),
            schema_version: Some(1),
        },
        q_params: QParams {
            pinned_ids: Vec::new(),
            supernodes: Vec::new(),
            link_type: "both".into(),
            clicked_id: String::new(),
            sg_pos: String::new(),
        },
        nodes,
        links,
    })
}

/// Node `i` of `graph` as the file describes it (a feature, an error, a token or a
/// logit, by the graph's node order); `influence` goes on all but logits.
fn graph_node(graph: &Graph, i: usize, influence: Option<f64>) -> GraphNode {
    let n_features = graph.n_features();
    let n_pos = graph.n_pos();
    let layers = graph.n_layers;
    let error_end = n_features + n_pos * layers;
    let token_end = error_end + n_pos;
    if i < n_features {
        let a = graph.selected_features[i];
        let af = &graph.active_features;
        let (layer, pos, feat) = (af.layer[a], af.pos[a], af.feature[a]);
        let mut node = blank_node(
            format!("{layer}_{feat}_{pos}"),
            cantor(layer as i64, feat as i64),
            layer.to_string(),
            pos,
            "cross layer transcoder",
            format!("{layer}_{feat}-0"),
        );
        node.influence = influence;
        node.activation = Some(af.value[a] as f64);
        node
    } else if i < error_end {
        let (layer, pos) = ((i - n_features) / n_pos, (i - n_features) % n_pos);
        let mut node = blank_node(
            format!("0_{layer}_{pos}"),
            -1,
            layer.to_string(),
            pos,
            "mlp reconstruction error",
            format!("{layer}_{pos}-0"),
        );
        node.influence = influence;
        node
    } else if i < token_end {
        let pos = i - error_end;
        let tok = graph.input_tokens[pos];
        let mut node = blank_node(
            format!("E_{tok}_{pos}"),
            pos as i64,
            "E".into(),
            pos,
            "embedding",
            format!("E_{tok}-{pos}"),
        );
        node.influence = influence;
        node
    } else {
        let k = i - token_end;
        let target = &graph.logit_targets[k];
        let layer = (layers + 1).to_string();
        let pos = n_pos - 1;
        let prob = graph.logit_probabilities[k] as f64;
        let mut node = blank_node(
            format!("{layer}_{}_{pos}", target.vocab_idx),
            target.vocab_idx as i64,
            layer,
            pos,
            "logit",
            format!("L_{}-{pos}", target.vocab_idx),
        );
        node.token_prob = prob;
        node.is_target_logit = k == 0;
        node.clerp = format!("Output \"{}\" (p={prob:.3})", target.token);
        node
    }
}

/// A node with these identifiers and every other field at its default.
fn blank_node(node_id: String, feature: i64, layer: String, ctx_idx: usize, kind: &str, js: String) -> GraphNode {
    GraphNode {
        node_id,
        feature,
        layer,
        ctx_idx,
        feature_type: kind.to_string(),
        token_prob: 0.0,
        is_target_logit: false,
        run_idx: 0,
        reverse_ctx_idx: 0,
        js_node_id: js,
        clerp: String::new(),
        influence: None,
        activation: None,
    }
}

/// The pruned edges between kept nodes (`nodes[i]` is `Some`), and which nodes
/// (`[n_nodes]`) an edge of them touches.
fn kept_links(pruned: &Pruned, nodes: &[Option<GraphNode>]) -> (Vec<GraphLink>, Vec<bool>) {
    // Edges between kept nodes, row-major over [target, source].
    let mut links = Vec::new();
    let mut connected = vec![false; nodes.len()];
    for &(t, s, weight) in &pruned.edges {
        if let (Some(src), Some(dst)) = (&nodes[s], &nodes[t]) {
            links.push(GraphLink {
                source: src.node_id.clone(),
                target: dst.node_id.clone(),
                weight: weight as f64,
            });
            connected[s] = true;
            connected[t] = true;
        }
    }
    (links, connected)
}

/// Writes `file` as `<dir>/<slug>.json` and adds it to `<dir>/graph-metadata.json` (a
/// graph of the same slug is replaced), as circuit-tracer does.
pub fn write_graph_files(file: &GraphFile, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(format!("{}.json", file.metadata.slug));
    hooklens_core::__internal::write_atomically(&path, |w| {
        w.write_all(file.to_json().as_bytes()).map_err(|e| Error::io(&path, e))
    })?;
    let meta_path = dir.join("graph-metadata.json");
    let mut meta: serde_json::Value = match std::fs::read_to_string(&meta_path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| Error::BadFile {
            path: meta_path.clone(),
            reason: format!("not a graph-metadata.json: {e}"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({ "graphs": [] }),
        Err(e) => return Err(Error::io(&meta_path, e)),
    };
    let graphs = meta
        .get_mut("graphs")
        .and_then(|g| g.as_array_mut())
        .ok_or_else(|| Error::BadFile {
            path: meta_path.clone(),
            reason: "no `graphs` list".into(),
        })?;
    graphs.retain(|g| g.get("slug").and_then(|s| s.as_str()) != Some(file.metadata.slug.as_str()));
    graphs.push(serde_json::to_value(&file.metadata).map_err(|e| Error::invalid(e.to_string()))?);
    let text = serde_json::to_string_pretty(&meta).map_err(|e| Error::invalid(e.to_string()))?;
    hooklens_core::__internal::write_atomically(&meta_path, |w| {
        w.write_all(text.as_bytes()).map_err(|e| Error::io(&meta_path, e))
    })
}

//! A page of an attribution graph (circuit tracing): its nodes by layer and prompt
//! position, and a node's strongest edges.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use hooklens_core::{Error, Result};

use crate::circuits::{GraphFile, GraphNode};

/// One self-contained HTML page of an attribution graph, from the JSON that
/// circuit-tracer's `create_graph_files` writes (see [`GraphFile`]).
///
/// The page draws each node in a grid: a column per prompt position (labelled with the
/// prompt's tokens), a row per layer with the input tokens at the bottom and the output
/// logits at the top; shapes and colours tell features, reconstruction errors, tokens and
/// logits apart. Hovering a node previews it and clicking selects it: the side panel shows
/// what it is (`layer L, feature F, position P` for a feature; the token and its
/// probability for a logit), its activation and influence, and its ten strongest incoming
/// and outgoing edges by |weight|, which are drawn on the graph (blue positive, red
/// negative, wider when stronger). The page opens on the node of the URL fragment
/// `#select=<node_id>`, else on `qParams.clickedId`, else on the target logit.
///
/// A file that is not valid JSON, lacks a field the format requires, has a link to a node
/// it does not list, or a node whose `layer` is not a number (nor `"E"` for a token) is an
/// error naming it.
///
/// ```
/// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/circuits/graph_files/public.json");
/// let json = std::fs::read_to_string(path)?;
/// let html = hooklens_models::viz::attribution_graph_html(&json)?;
/// assert!(html.starts_with("<!DOCTYPE html>") && !html.contains("https://"));
///
/// let err = hooklens_models::viz::attribution_graph_html(r#"{"metadata": {}}"#).unwrap_err();
/// assert!(err.to_string().contains("missing field `slug`"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn attribution_graph_html(graph_json: &str) -> Result<String> {
    graph_file_html(&GraphFile::from_json(graph_json)?)
}

/// [`attribution_graph_html`] of a graph already read (or made) as a [`GraphFile`].
pub fn graph_file_html(graph: &GraphFile) -> Result<String> {
    let meta = &graph.metadata;
    let (first, duplicates) = first_by_id(&graph.nodes);
    let kinds: Vec<Kind> = graph.nodes.iter().map(Kind::of).collect();
    let n_layers = layer_count(&graph.nodes, &kinds)?;
    let n_pos = graph
        .nodes
        .iter()
        .map(|n| n.ctx_idx + 1)
        .chain([meta.prompt_tokens.len()])
        .max()
        .unwrap_or(0);

    let mut nodes = Vec::with_capacity(graph.nodes.len());
    for (n, kind) in graph.nodes.iter().zip(&kinds) {
        nodes.push(node_json(n, *kind, n_layers, &meta.prompt_tokens)?);
    }
    let links = links_json(graph, &first)?;
    let clicked = &graph.q_params.clicked_id;
    let selected = if first.contains_key(clicked.as_str()) {
        Some(clicked.clone())
    } else {
        graph
            .nodes
            .iter()
            .zip(&kinds)
            .find(|(n, k)| **k == Kind::Logit && n.is_target_logit)
            .or_else(|| graph.nodes.iter().zip(&kinds).find(|(_, k)| **k == Kind::Logit))
            .map(|(n, _)| n.node_id.clone())
    };
    let title = format!("Attribution graph: {}", meta.slug);
    let data = serde_json::json!({
        "title": title,
        "slug": meta.slug,
        "scan": meta.scan,
        "transcoders": meta.transcoder_list,
        "prompt": meta.prompt,
        "tokens": meta.prompt_tokens,
        "node_threshold": meta.node_threshold,
        "schema_version": meta.schema_version,
        "n_layers": n_layers,
        "n_pos": n_pos,
        "duplicates": duplicates,
        "selected": selected,
        "nodes": nodes,
        "links": links,
    });
    Ok(super::page::fill(TEMPLATE, &title, &data))
}

/// The index of the first node of each `node_id`, and how many nodes repeat an id
/// already seen.
fn first_by_id(nodes: &[GraphNode]) -> (HashMap<&str, usize>, usize) {
    // Links name nodes by id; of two nodes sharing an id (circuit-tracer's ids can
    // collide), links are taken to mean the first.
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(nodes.len());
    let mut duplicates = 0usize;
    for (i, n) in nodes.iter().enumerate() {
        match first.entry(n.node_id.as_str()) {
            Entry::Occupied(_) => duplicates += 1,
            Entry::Vacant(e) => {
                e.insert(i);
            }
        }
    }
    (first, duplicates)
}

/// The model's layers, as the nodes' layers tell them (`kinds[i]` is node `i`'s).
fn layer_count(nodes: &[GraphNode], kinds: &[Kind]) -> Result<usize> {
    let mut n_layers = 0usize;
    for (n, kind) in nodes.iter().zip(kinds) {
        match kind {
            Kind::Token => {}
            Kind::Logit => {
                // circuit-tracer puts the logits at layer n_layers + 1.
                if let Ok(l) = n.layer.parse::<usize>() {
                    n_layers = n_layers.max(l.saturating_sub(1));
                }
            }
            Kind::Feature | Kind::Error => n_layers = n_layers.max(layer_number(n)? + 1),
        }
    }
    Ok(n_layers)
}

/// Node `n` as the page's script reads it: its row in the grid (tokens at 0, logits at
/// `n_layers + 1`), its token (from `prompt_tokens` or its label) and its fields.
fn node_json(n: &GraphNode, kind: Kind, n_layers: usize, prompt_tokens: &[String]) -> Result<serde_json::Value> {
    let row = match kind {
        Kind::Token => 0,
        Kind::Logit => n_layers + 1,
        Kind::Feature | Kind::Error => layer_number(n)? + 1,
    };
    let token = match kind {
        Kind::Token => prompt_tokens.get(n.ctx_idx).cloned(),
        Kind::Logit => logit_token(&n.clerp),
        _ => None,
    };
    Ok(serde_json::json!({
        "id": n.node_id,
        "kind": kind.name(),
        "type": n.feature_type,
        "row": row,
        "pos": n.ctx_idx,
        "layer": n.layer,
        "feature": if kind == Kind::Feature { feature_index(n) } else { n.feature },
        "act": n.activation,
        "infl": n.influence,
        "prob": n.token_prob,
        "target": n.is_target_logit,
        "clerp": n.clerp,
        "token": token,
    }))
}

/// Each link as `[source index, target index, weight]`, its ends looked up in `first`;
/// an error for an end that is not a node.
fn links_json(graph: &GraphFile, first: &HashMap<&str, usize>) -> Result<Vec<serde_json::Value>> {
    let mut links = Vec::with_capacity(graph.links.len());
    for (i, l) in graph.links.iter().enumerate() {
        let end = |id: &str, which: &str| {
            first.get(id).copied().ok_or_else(|| {
                Error::invalid(format!(
                    "attribution graph: link {i} has {which} `{id}`, which is not a node of the graph"
                ))
            })
        };
        links.push(serde_json::json!([
            end(&l.source, "source")?,
            end(&l.target, "target")?,
            l.weight
        ]));
    }
    Ok(links)
}

/// The page: its markup here, its style and script beside this file.
const TEMPLATE: &str = concat!(
    r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{TITLE}}</title>
<style>
"##,
    include_str!("graph.css"),
    r##"</style>
</head>
<body>
<h1 id="title"></h1>
<div id="meta"></div>
<div id="prompt-line">Prompt: <bdi id="prompt"></bdi></div>
<div id="legend"></div>
<div id="main">
  <div id="graph-wrap"><div id="graph-box"><svg id="graph"></svg><div id="tokens"></div></div></div>
  <aside id="panel"><div class="hint">Hover or click a node.</div></aside>
</div>
<script type="application/json" id="graph-data">{{DATA}}</script>
<script>
"##,
    include_str!("graph.js"),
    "</script>\n</body>\n</html>\n"
);

/// The four kinds of node the page draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Feature,
    Error,
    Token,
    Logit,
}

impl Kind {
    /// By `feature_type`; any type that is not an embedding, a logit or an error is drawn
    /// as a feature (a transcoder of another name).
    fn of(n: &GraphNode) -> Kind {
        match n.feature_type.as_str() {
            "embedding" => Kind::Token,
            "logit" => Kind::Logit,
            t if t.contains("error") => Kind::Error,
            _ => Kind::Feature,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Feature => "feature",
            Kind::Error => "error",
            Kind::Token => "token",
            Kind::Logit => "logit",
        }
    }
}

/// The layer number of a feature or error node.
fn layer_number(n: &GraphNode) -> Result<usize> {
    n.layer.parse().map_err(|_| {
        Error::invalid(format!(
            "attribution graph: node `{}` ({}) has layer `{}`, not a layer number",
            n.node_id, n.feature_type, n.layer
        ))
    })
}

/// A feature's index in its layer's transcoder: the middle of a `node_id`
/// `"{layer}_{feature}_{pos}"` (the `feature` field holds a pairing of layer and index),
/// else the `feature` field.
fn feature_index(n: &GraphNode) -> i64 {
    let parts: Vec<&str> = n.node_id.split('_').collect();
    match parts[..] {
        [l, f, p] if l == n.layer && p == n.ctx_idx.to_string() => f.parse().unwrap_or(n.feature),
        _ => n.feature,
    }
}

/// The token of a logit's label `Output "tok" (p=0.072)`.
fn logit_token(clerp: &str) -> Option<String> {
    let rest = clerp.strip_prefix("Output \"")?;
    let end = rest.rfind("\" (p=")?;
    Some(rest[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small graph with `tokens` as its prompt tokens: a token, a feature, an error and
    /// a logit, linked token -> feature -> logit and error -> logit.
    fn graph(tokens: &[&str]) -> serde_json::Value {
        let node = |id: &str, feature: i64, layer: &str, pos: usize, ty: &str| {
            serde_json::json!({"node_id": id, "feature": feature, "layer": layer, "ctx_idx": pos,
                "feature_type": ty, "jsNodeId": id, "influence": 0.5, "activation": 1.25})
        };
        let mut logit = node("3_7_1", 7, "3", 1, "logit");
        logit["clerp"] = serde_json::json!("Output \"</script><b>x\" (p=0.500)");
        logit["token_prob"] = serde_json::json!(0.5);
        logit["is_target_logit"] = serde_json::json!(true);
        serde_json::json!({
            "metadata": {"slug": "t</title><script>alert(1)</script>", "scan": "s", "transcoder_list": [],
                         "prompt_tokens": tokens, "prompt": tokens.concat(), "node_threshold": 0.8, "schema_version": 1},
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": [node("1_12_1", 14, "1", 1, "cross layer transcoder"), node("0_0_1", -1, "0", 1, "mlp reconstruction error"),
                      node("E_5_0", 0, "E", 0, "embedding"), logit],
            "links": [{"source": "E_5_0", "target": "1_12_1", "weight": -0.25},
                      {"source": "1_12_1", "target": "3_7_1", "weight": 1.5},
                      {"source": "0_0_1", "target": "3_7_1", "weight": 0.125}]
        })
    }

    /// The page's data: the JSON of its data element.
    fn page_data(html: &str) -> serde_json::Value {
        let open = "<script type=\"application/json\" id=\"graph-data\">";
        let start = html.find(open).unwrap() + open.len();
        let end = start + html[start..].find("</script>").unwrap();
        serde_json::from_str(&html[start..end]).unwrap()
    }

    #[test]
    fn token_text_cannot_leave_the_data_element() {
        let evil = "</script><script>alert(1)</script>";
        let g = graph(&[evil, "ab\u{202E}cd"]);
        let html = attribution_graph_html(&g.to_string()).unwrap();
        assert!(!html.contains("<script>alert"), "a token became markup");
        assert!(!html.contains("<b>x"), "a logit label became markup");
        assert!(!html.contains('\u{202E}'), "a bidi override is written raw");
        assert!(html.contains("<title>Attribution graph: t&lt;/title&gt;&lt;script&gt;"));
        // Exactly the page's own two script elements and one style.
        assert_eq!(html.matches("<script").count(), 2);
        assert_eq!(html.matches("</script>").count(), 2);
        let data = page_data(&html);
        assert_eq!(data["tokens"][0], evil);
        assert_eq!(data["tokens"][1], "ab\u{202E}cd");
        assert_eq!(data["nodes"][2]["token"], evil);
        assert_eq!(data["nodes"][3]["token"], "</script><b>x");
    }

    #[test]
    fn nodes_are_placed_and_described() {
        let html = attribution_graph_html(&graph(&["a", "b"]).to_string()).unwrap();
        let data = page_data(&html);
        assert_eq!(data["n_layers"], 2);
        assert_eq!(data["n_pos"], 2);
        assert_eq!(data["selected"], "3_7_1");
        let rows: Vec<_> = data["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["row"].clone())
            .collect();
        assert_eq!(rows, [2, 1, 0, 3]);
        // The feature's index in its layer, not circuit-tracer's pairing of layer and index.
        assert_eq!(data["nodes"][0]["feature"], 12);
        assert_eq!(data["nodes"][0]["kind"], "feature");
        assert_eq!(data["nodes"][1]["kind"], "error");
        assert_eq!(data["links"][0], serde_json::json!([2, 0, -0.25]));
    }

    #[test]
    fn bad_files_are_errors_that_say_why() {
        let err = |json: &str| attribution_graph_html(json).unwrap_err().to_string();
        assert!(err("").contains("not an attribution graph file"));
        assert!(err("[1, 2]").contains("not an attribution graph file"));
        assert!(err("{\"metadata\": {\"slug\": \"x\"").contains("EOF"));
        let mut g = graph(&["a", "b"]);
        g.as_object_mut().unwrap().remove("nodes");
        assert!(err(&g.to_string()).contains("missing field `nodes`"));
        let mut g = graph(&["a", "b"]);
        g["nodes"][0].as_object_mut().unwrap().remove("ctx_idx");
        assert!(err(&g.to_string()).contains("missing field `ctx_idx`"));
        let mut g = graph(&["a", "b"]);
        g["links"][1]["target"] = serde_json::json!("9_9_9");
        let e = err(&g.to_string());
        assert!(e.contains("link 1 has target `9_9_9`"), "{e}");
        let mut g = graph(&["a", "b"]);
        g["nodes"][1]["layer"] = serde_json::json!("x");
        let e = err(&g.to_string());
        assert!(
            e.contains("node `0_0_1` (mlp reconstruction error) has layer `x`"),
            "{e}"
        );
        let mut g = graph(&["a", "b"]);
        g["nodes"][0]["activation"] = serde_json::json!("high");
        assert!(err(&g.to_string()).contains("invalid type"));
    }

    #[test]
    fn the_reference_graph_makes_a_page() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/circuits/graph_files/public.json"
        );
        let html = attribution_graph_html(&std::fs::read_to_string(path).unwrap()).unwrap();
        let data = page_data(&html);
        assert_eq!(data["nodes"].as_array().unwrap().len(), 36);
        assert_eq!(data["links"].as_array().unwrap().len(), 289);
        assert_eq!(data["n_layers"], 2);
        assert_eq!(data["n_pos"], 10);
        assert_eq!(data["selected"], "3_35_9");
        assert!(!html.contains("http://") && !html.contains("https://"));
    }
}

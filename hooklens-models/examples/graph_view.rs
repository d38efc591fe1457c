//! The page of an attribution graph: reads the JSON that circuit-tracer's
//! `create_graph_files` writes and writes a self-contained HTML viewer of it.
//!
//! `cargo run -p hooklens-models --example graph_view -- GRAPH.json OUT.html`
//!
//! Open OUT.html in a browser; add `#select=<node_id>` to its URL to open on a node.

fn main() -> hooklens_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [graph, out] = &args[..] else {
        return Err(hooklens_core::Error::invalid(
            "usage: graph_view GRAPH.json OUT.html (GRAPH.json as circuit-tracer's create_graph_files writes it)",
        ));
    };
    let json = std::fs::read_to_string(graph).map_err(|e| hooklens_core::Error::io(graph, e))?;
    let html = hooklens_models::viz::attribution_graph_html(&json)?;
    std::fs::write(out, html).map_err(|e| hooklens_core::Error::io(out, e))?;
    eprintln!("wrote {out}");
    Ok(())
}

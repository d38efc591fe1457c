//! Pictures of a model at work, as single self-contained HTML files (scripts and styles
//! inlined, no network): every head's attention pattern ([`attention_html`]), the
//! logit lens ([`logit_lens`], [`logit_lens_html`]), an SAE's features on a prompt
//! ([`feature_activations`], [`features_html`]) and an attribution graph as
//! circuit-tracer writes it ([`attribution_graph_html`], read through [`GraphFile`]).
//!
//! Token strings come from the model's vocabulary and can hold anything, `</script>`
//! included; the pages never put them into markup. The data travels as JSON in a
//! `<script type="application/json">` element with every `<` escaped, and the page's
//! script shows it through `textContent` and canvas text only.

mod attention;
mod features;
mod graph;
mod logit_lens;
mod page;

pub use crate::circuits::{GraphFile, GraphLink, GraphMetadata, GraphNode, QParams};
pub use attention::{attention_html, attention_patterns, AttentionView};
pub use features::{feature_activations, features_html, FeatureView};
pub use graph::{attribution_graph_html, graph_file_html};
pub use logit_lens::{logit_lens, logit_lens_html, LogitLens};

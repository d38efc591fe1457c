//! Attribution graphs ("circuit tracing", Ameisen et al. 2025): which features cause an
//! output, as circuit-tracer computes them, on any [`HookedTransformer`] family.
//!
//! Each MLP is replaced by a transcoder (a per-layer set or a cross-layer transcoder, in
//! circuit-tracer's on-disk format, [`Transcoders`]); attention patterns and norm scales
//! are frozen at their values on the prompt ([`replacement_run`]), which makes the model
//! linear in the residual stream; [`attribute`] then computes the direct effect of every
//! active feature, error and token on every feature and on the top logits, with
//! circuit-tracer's node order and definitions, and [`prune`] keeps what carries most of
//! the influence.
//!
//! ```no_run
//! use hooklens_models::circuits::{attribute, prune, AttributionOptions, Transcoders};
//! use hooklens_models::{HookedTransformer, LoadOptions};
//!
//! let model = HookedTransformer::from_dir("model", &LoadOptions::no_processing())?;
//! let transcoders = Transcoders::from_dir("transcoders")?;
//! let tokens = model.encode("The capital of France is", true)?;
//! let graph = attribute(&model, &transcoders, &tokens, &AttributionOptions::new())?;
//! let kept = prune(&graph, 0.8, 0.98)?;
//! println!("{} nodes, {} kept", graph.n_nodes(), kept.node_mask.iter().filter(|&&k| k).count());
//! # Ok::<(), hooklens_core::Error>(())
//! ```
//!
//! [`HookedTransformer`]: crate::HookedTransformer

mod attribute;
mod frozen;
mod graph;
mod graph_file;
mod graph_files;
mod intervention;
mod prune;
mod reconstruction;
mod replacement;
mod replacement_model;
mod rows;
mod targets;
mod transcoder_config;
mod transcoders;

pub use attribute::{attribute, attribute_run, AttributionOptions, AttributionProgress};
pub use graph::Graph;
pub use graph_file::{GraphFile, GraphLink, GraphMetadata, GraphNode, QParams};
pub use graph_files::{graph_file, graph_file_from, write_graph_files, GraphFileOptions};
pub use intervention::{feature_intervention, FeatureIntervention};
pub use prune::{node_influence, prune, Pruned};
pub use replacement::{replacement_run, ActiveFeatures, ReplacementRun};
pub use replacement_model::{ReplacementBlock, ReplacementModel, TranscoderPoints};
pub use rows::Adjacency;
pub use targets::{CustomTarget, LogitTarget, Targets};
pub use transcoder_config::{TranscoderConfig, TranscoderKind};
pub use transcoders::{Activation, Transcoders};

//! Pruning an attribution graph by influence on the logits, as circuit-tracer's
//! `prune_graph`: keep the nodes carrying `node_threshold` of the total influence,
//! then the edges carrying `edge_threshold` of it, then drop the feature and error
//! nodes left without an outgoing edge and the features left without an incoming one.

use hooklens_core::{Error, Result};

use super::graph::Graph;

/// What pruning keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct Pruned {
    /// Per node, whether it is kept.
    pub node_mask: Vec<bool>,
    /// Per edge `[target, source]` (row-major, `n_nodes x n_nodes`), whether it is kept.
    pub edge_mask: Vec<bool>,
    /// Per node, the fraction of total influence carried by it and every node ranked
    /// above it (circuit-tracer's `cumulative_scores`).
    pub cumulative_scores: Vec<f32>,
    /// Per node, its influence on the logits (circuit-tracer's `compute_node_influence`).
    pub node_influence: Vec<f32>,
}

/// `|m|` with each row divided by its sum (at least 1e-10).
fn normalize(m: &[f32], n: usize) -> Vec<f32> {
    let mut out: Vec<f32> = m.iter().map(|v| v.abs()).collect();
    for row in out.chunks_mut(n) {
        let s: f32 = row.iter().sum::<f32>().max(1e-10);
        row.iter_mut().for_each(|v| *v /= s);
    }
    out
}

/// `w @ A + w @ A^2 + ...` until the terms vanish (the graph is acyclic).
fn influence(a: &[f32], n: usize, w: &[f32]) -> Result<Vec<f32>> {
    let step = |x: &[f32]| {
        let mut out = vec![0.0f32; n];
        for (i, &xi) in x.iter().enumerate() {
            if xi != 0.0 {
                out.iter_mut()
                    .zip(&a[i * n..(i + 1) * n])
                    .for_each(|(o, v)| *o += xi * v);
            }
        }
        out
    };
    let mut current = step(w);
    let mut total = current.clone();
    let mut iterations = 0;
    while current.iter().any(|&v| v != 0.0) {
        if iterations >= 1000 {
            return Err(Error::invalid(
                "influence did not converge after 1000 iterations: the graph has a cycle",
            ));
        }
        current = step(&current);
        total.iter_mut().zip(&current).for_each(|(t, c)| *t += c);
        iterations += 1;
    }
    Ok(total)
}

/// The score at which the scores sorted in descending order reach `threshold` of
/// their sum (circuit-tracer's `find_threshold`).
fn find_threshold(scores: &[f32], threshold: f32) -> f32 {
    let mut sorted = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let total: f32 = sorted.iter().sum();
    let mut cum = 0.0f32;
    let mut index = sorted.len();
    for (i, s) in sorted.iter().enumerate() {
        cum += s;
        if cum / total >= threshold {
            index = i;
            break;
        }
    }
    sorted[index.min(sorted.len() - 1)]
}

/// Each node's influence on the logits, weighted by their probabilities.
pub fn node_influence(graph: &Graph) -> Result<Vec<f32>> {
    let n = graph.n_nodes();
    let mut w = vec![0.0f32; n];
    let k = graph.logit_targets.len();
    w[n - k..].copy_from_slice(&graph.logit_probabilities);
    influence(&normalize(&graph.adjacency, n), n, &w)
}

/// Prunes `graph` (circuit-tracer's `prune_graph`; defaults 0.8 and 0.98).
pub fn prune(graph: &Graph, node_threshold: f32, edge_threshold: f32) -> Result<Pruned> {
    for (name, t) in [("node_threshold", node_threshold), ("edge_threshold", edge_threshold)] {
        if !(0.0..=1.0).contains(&t) {
            return Err(Error::invalid(format!("{name} must be between 0.0 and 1.0, got {t}")));
        }
    }
    let n = graph.n_nodes();
    let k = graph.logit_targets.len();
    let n_tokens = graph.n_pos();
    let n_features = graph.n_features();
    let mut w = vec![0.0f32; n];
    w[n - k..].copy_from_slice(&graph.logit_probabilities);
    let node_influence = influence(&normalize(&graph.adjacency, n), n, &w)?;
    let cut = find_threshold(&node_influence, node_threshold);
    let mut node_mask: Vec<bool> = node_influence.iter().map(|&v| v >= cut).collect();
    node_mask[n - k - n_tokens..].iter_mut().for_each(|m| *m = true);

    let mut pruned = graph.adjacency.clone();
    for t in 0..n {
        for s in 0..n {
            if !node_mask[t] || !node_mask[s] {
                pruned[t * n + s] = 0.0;
            }
        }
    }
    let normalized = normalize(&pruned, n);
    let mut pruned_influence = influence(&normalized, n, &w)?;
    pruned_influence.iter_mut().zip(&w).for_each(|(p, w)| *p += w);
    let edge_scores: Vec<f32> = normalized
        .chunks(n)
        .zip(&pruned_influence)
        .flat_map(|(row, inf)| row.iter().map(move |v| v * inf))
        .collect();
    let edge_cut = find_threshold(&edge_scores, edge_threshold);
    let mut edge_mask: Vec<bool> = edge_scores.iter().map(|&s| s >= edge_cut).collect();

    let keep_by_edges = |node_mask: &mut [bool], edge_mask: &[bool]| {
        // Feature and error nodes need an outgoing edge (a kept column entry) ...
        for s in 0..n - k - n_tokens {
            let out = (0..n).any(|t| edge_mask[t * n + s]);
            node_mask[s] &= out;
        }
        // ... and feature nodes an incoming one.
        for t in 0..n_features {
            let inc = edge_mask[t * n..(t + 1) * n].iter().any(|&e| e);
            node_mask[t] &= inc;
        }
    };
    let mut old = node_mask.clone();
    keep_by_edges(&mut node_mask, &edge_mask);
    while node_mask != old {
        old.clone_from(&node_mask);
        for t in 0..n {
            for s in 0..n {
                if !node_mask[t] || !node_mask[s] {
                    edge_mask[t * n + s] = false;
                }
            }
        }
        keep_by_edges(&mut node_mask, &edge_mask);
    }

    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| node_influence[b].total_cmp(&node_influence[a]));
    let total: f32 = node_influence.iter().sum();
    let mut cumulative_scores = vec![0.0f32; n];
    let mut cum = 0.0f32;
    for &i in &order {
        cum += node_influence[i];
        cumulative_scores[i] = cum / total;
    }
    Ok(Pruned {
        node_mask,
        edge_mask,
        cumulative_scores,
        node_influence,
    })
}

//! Pruning an attribution graph by influence on the logits, as circuit-tracer's
//! `prune_graph`: keep the nodes carrying `node_threshold` of the total influence,
//! then the edges carrying `edge_threshold` of it, then drop the feature and error
//! nodes left without an outgoing edge and the features left without an incoming one.
//!
//! The matrix is read row by row (only the rows an influence step needs), and the edge
//! scores are computed on the kept nodes only (every other edge scores 0), so pruning a
//! graph held in a file needs memory for the kept nodes' submatrix, not the whole one.

use hooklens_core::{Error, Result};

use super::graph::Graph;
use super::rows::Adjacency;

/// What pruning keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct Pruned {
    /// Per node, whether it is kept.
    pub node_mask: Vec<bool>,
    /// The kept edges `(target, source, weight)`, in row-major order of the matrix.
    pub edges: Vec<(usize, usize, f32)>,
    /// Per node, the fraction of total influence carried by it and every node ranked
    /// above it (circuit-tracer's `cumulative_scores`).
    pub cumulative_scores: Vec<f32>,
    /// Per node, its influence on the logits (circuit-tracer's `compute_node_influence`).
    pub node_influence: Vec<f32>,
}

impl Pruned {
    /// The kept edges as circuit-tracer's dense `edge_mask` `[n, n]` (row-major,
    /// `[target, source]`). With an edge threshold so high that edges of score 0 are
    /// kept, circuit-tracer's mask also marks every edge of a dropped node; here only
    /// edges between kept nodes are (the only ones its graph file shows).
    pub fn edge_mask(&self) -> Vec<bool> {
        let n = self.node_mask.len();
        let mut mask = vec![false; n * n];
        for &(t, s, _) in &self.edges {
            mask[t * n + s] = true;
        }
        mask
    }
}

/// Row sums of `|A|`, at least 1e-10 (circuit-tracer's `normalize_matrix` divisor).
fn row_sums(a: &Adjacency) -> Result<Vec<f32>> {
    let n = a.n();
    let mut sums = vec![0.0f32; n];
    let mut row = vec![0.0f32; n];
    for (t, s) in sums.iter_mut().enumerate() {
        let r: &[f32] = match a.as_slice() {
            Some(v) => &v[t * n..(t + 1) * n],
            None => {
                a.read_row(t, &mut row)?;
                &row
            }
        };
        *s = r.iter().map(|v| v.abs()).sum::<f32>().max(1e-10);
    }
    Ok(sums)
}

/// `w @ N + w @ N^2 + ...` until the terms vanish, `N` the row-normalised `|A|` (rows
/// of `n` values from `row(i)`, divided by `sums[i]`).
fn influence(
    n: usize,
    sums: &[f32],
    w: &[f32],
    row: &mut dyn FnMut(usize, &mut Vec<f32>) -> Result<()>,
) -> Result<Vec<f32>> {
    let mut buf = Vec::new();
    let mut step = |x: &[f32]| -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; n];
        for (i, &xi) in x.iter().enumerate() {
            if xi != 0.0 {
                row(i, &mut buf)?;
                let s = sums[i];
                out.iter_mut().zip(&buf).for_each(|(o, v)| *o += xi * (v.abs() / s));
            }
        }
        Ok(out)
    };
    let mut current = step(w)?;
    let mut total = current.clone();
    let mut iterations = 0;
    while current.iter().any(|&v| v != 0.0) {
        if iterations >= 1000 {
            return Err(Error::invalid(
                "influence did not converge after 1000 iterations: the graph has a cycle",
            ));
        }
        current = step(&current)?;
        total.iter_mut().zip(&current).for_each(|(t, c)| *t += c);
        iterations += 1;
    }
    Ok(total)
}

/// The score at which `scores`, plus `zeros` more scores of 0, sorted in descending
/// order reach `threshold` of their sum (circuit-tracer's `find_threshold`).
fn find_threshold(scores: &[f32], zeros: usize, threshold: f32) -> f32 {
    let mut sorted = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let total: f32 = sorted.iter().sum();
    let len = sorted.len() + zeros;
    let mut cum = 0.0f32;
    let mut index = len;
    for (i, s) in sorted.iter().enumerate() {
        cum += s;
        if cum / total >= threshold {
            index = i;
            break;
        }
    }
    let index = index.min(len.saturating_sub(1));
    sorted.get(index).copied().unwrap_or(0.0)
}

/// The logit weights of `graph`: its probabilities on the logit nodes, 0 elsewhere.
fn logit_weights(graph: &Graph) -> Vec<f32> {
    let n = graph.n_nodes();
    let k = graph.logit_targets.len();
    let mut w = vec![0.0f32; n];
    w[n - k..].copy_from_slice(&graph.logit_probabilities);
    w
}

/// A row reader over the adjacency matrix.
fn reader(a: &Adjacency) -> impl FnMut(usize, &mut Vec<f32>) -> Result<()> + '_ {
    let n = a.n();
    move |i, buf| {
        buf.resize(n, 0.0);
        match a.as_slice() {
            Some(v) => {
                buf.copy_from_slice(&v[i * n..(i + 1) * n]);
                Ok(())
            }
            None => a.read_row(i, buf),
        }
    }
}

/// Each node's influence on the logits, weighted by their probabilities.
pub fn node_influence(graph: &Graph) -> Result<Vec<f32>> {
    let sums = row_sums(&graph.adjacency)?;
    influence(
        graph.n_nodes(),
        &sums,
        &logit_weights(graph),
        &mut reader(&graph.adjacency),
    )
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
    let w = logit_weights(graph);
    let node_influence = node_influence(graph)?;
    let cut = find_threshold(&node_influence, 0, node_threshold);
    let mut node_mask: Vec<bool> = node_influence.iter().map(|&v| v >= cut).collect();
    node_mask[n - k - n_tokens..].iter_mut().for_each(|m| *m = true);

    // The matrix restricted to the kept nodes: everything else is zeroed in circuit-tracer.
    let kept: Vec<usize> = (0..n).filter(|&i| node_mask[i]).collect();
    let m = kept.len();
    hooklens_core::__internal::check_memory(
        "the pruned graph",
        (m as u64) * (m as u64) * 8,
        "raise node_threshold's strictness (a lower value keeps fewer nodes)",
    )?;
    let mut sub = vec![0.0f32; m * m];
    let mut row = Vec::new();
    let mut read = reader(&graph.adjacency);
    for (a, &t) in kept.iter().enumerate() {
        read(t, &mut row)?;
        for (b, &s) in kept.iter().enumerate() {
            sub[a * m + b] = row[s];
        }
    }
    let sub_sums: Vec<f32> = sub
        .chunks(m.max(1))
        .take(m)
        .map(|r| r.iter().map(|v| v.abs()).sum::<f32>().max(1e-10))
        .collect();
    let sub_w: Vec<f32> = kept.iter().map(|&i| w[i]).collect();
    let mut sub_reader = |i: usize, buf: &mut Vec<f32>| -> Result<()> {
        buf.clear();
        buf.extend_from_slice(&sub[i * m..(i + 1) * m]);
        Ok(())
    };
    let mut pruned_influence = influence(m, &sub_sums, &sub_w, &mut sub_reader)?;
    pruned_influence.iter_mut().zip(&sub_w).for_each(|(p, w)| *p += w);
    let scores: Vec<f32> = (0..m * m)
        .map(|i| (sub[i].abs() / sub_sums[i / m]) * pruned_influence[i / m])
        .collect();
    let edge_cut = find_threshold(&scores, n * n - m * m, edge_threshold);
    // Kept edges as (target, source) node pairs, row-major.
    let mut edges: Vec<(usize, usize, f32)> = (0..m * m)
        .filter(|&i| scores[i] >= edge_cut)
        .map(|i| (kept[i / m], kept[i % m], sub[i]))
        .collect();

    let keep_by_edges = |node_mask: &mut [bool], edges: &[(usize, usize, f32)]| {
        let mut out = vec![false; n];
        let mut inc = vec![false; n];
        for &(t, s, _) in edges {
            out[s] = true;
            inc[t] = true;
        }
        // Feature and error nodes need an outgoing edge, feature nodes an incoming one.
        for s in 0..n - k - n_tokens {
            node_mask[s] &= out[s];
        }
        for t in 0..n_features {
            node_mask[t] &= inc[t];
        }
    };
    let mut old = node_mask.clone();
    keep_by_edges(&mut node_mask, &edges);
    while node_mask != old {
        old.clone_from(&node_mask);
        edges.retain(|&(t, s, _)| node_mask[t] && node_mask[s]);
        keep_by_edges(&mut node_mask, &edges);
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
        edges,
        cumulative_scores,
        node_influence,
    })
}

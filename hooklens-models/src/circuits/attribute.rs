//! Attribution: the direct effect of every active feature, error and token on every
//! selected feature and logit target, with circuit-tracer's definitions and node order.
//!
//! Rows are computed in batches, one backward sweep of the frozen model per batch
//! ([`super::frozen`]): the logit rows first, then the feature rows, all at once when
//! every feature is kept, else in circuit-tracer's order of influence on the logits,
//! re-ranked every `update_interval` batches.

use hooklens_core::{Error, Result};

use super::frozen::{to_vec, Injection};
use super::graph::Graph;
use super::replacement::{replacement_run, ReplacementRun};
use super::rows::{Adjacency, Rows};
use super::targets::{resolve, Targets};
use super::transcoders::Transcoders;
use crate::model::HookedTransformer;
use crate::ops::slice_gemm::{gemm, View};

/// How far an attribution has come, for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttributionProgress {
    /// Rows (targets) computed so far.
    pub rows_done: usize,
    /// Rows to compute in all (logits plus selected features).
    pub rows_total: usize,
}

/// The settings of [`attribute`], with circuit-tracer's defaults (builder style).
pub struct AttributionOptions {
    /// Which logit nodes to explain.
    pub targets: Targets,
    /// Rows per backward sweep (circuit-tracer's `batch_size`, 512).
    pub batch_size: usize,
    /// At most this many feature nodes, chosen by influence (`max_feature_nodes`; all
    /// active features when `None`).
    pub max_feature_nodes: Option<usize>,
    /// Batches between re-rankings when features are chosen (`update_interval`, 4).
    pub update_interval: usize,
    /// Called after each batch.
    pub progress: Option<Box<dyn Fn(AttributionProgress) + Send + Sync>>,
    /// The most bytes the edge rows and the adjacency matrix may take in memory; past it
    /// both go to temporary files in `spill_dir` (default: half the available memory).
    pub memory_budget: Option<u64>,
    /// Where rows past the memory budget go (default: the system's temporary folder).
    pub spill_dir: Option<std::path::PathBuf>,
}

impl Default for AttributionOptions {
    fn default() -> Self {
        AttributionOptions {
            targets: Targets::default(),
            batch_size: 512,
            max_feature_nodes: None,
            update_interval: 4,
            progress: None,
            memory_budget: None,
            spill_dir: None,
        }
    }
}

impl std::fmt::Debug for AttributionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttributionOptions")
            .field("targets", &self.targets)
            .field("batch_size", &self.batch_size)
            .field("max_feature_nodes", &self.max_feature_nodes)
            .field("update_interval", &self.update_interval)
            .field("memory_budget", &self.memory_budget)
            .field("spill_dir", &self.spill_dir)
            .finish()
    }
}

impl AttributionOptions {
    /// circuit-tracer's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The salient logits: at most `max_n_logits`, until `desired_logit_prob`.
    pub fn salient(mut self, max_n_logits: usize, desired_logit_prob: f32) -> Self {
        self.targets = Targets::Salient {
            max_n_logits,
            desired_logit_prob,
        };
        self
    }

    /// These targets.
    pub fn targets(mut self, targets: Targets) -> Self {
        self.targets = targets;
        self
    }

    /// Rows per backward sweep.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// At most `n` feature nodes.
    pub fn max_feature_nodes(mut self, n: usize) -> Self {
        self.max_feature_nodes = Some(n);
        self
    }

    /// Batches between re-rankings.
    pub fn update_interval(mut self, n: usize) -> Self {
        self.update_interval = n;
        self
    }

    /// Hold at most `bytes` of edge rows and adjacency matrix in memory; a graph whose
    /// matrix is larger is built in temporary files (see [`AttributionOptions::spill_dir`]).
    pub fn memory_budget(mut self, bytes: u64) -> Self {
        self.memory_budget = Some(bytes);
        self
    }

    /// The folder for the temporary files of a graph past the memory budget.
    pub fn spill_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.spill_dir = Some(dir.into());
        self
    }

    /// A callback after each batch.
    pub fn progress(mut self, f: impl Fn(AttributionProgress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    fn check(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::invalid("batch_size must be at least 1"));
        }
        if self.update_interval == 0 {
            return Err(Error::invalid("update_interval must be at least 1"));
        }
        if self.max_feature_nodes == Some(0) {
            return Err(Error::invalid(
                "max_feature_nodes must be at least 1 (or unset for all)",
            ));
        }
        Ok(())
    }
}

/// The source side of the rows: what each source node writes, grouped by where.
struct Sources {
    /// Row width: features, errors, tokens (the logit columns are always zero).
    width: usize,
    n_active: usize,
    /// Per output layer, per position: (feature columns, their decoder vectors
    /// `[n, d_model]` scaled by the activation).
    decoders: Vec<Vec<(Vec<usize>, Vec<f32>)>>,
    /// The prompt's token embeddings as `hook_embed` holds them, `[n_pos, d_model]`.
    tokens: Vec<f32>,
    /// Encoder rows of the active features `[n_active, d_model]`.
    encoders: Vec<f32>,
}

impl Sources {
    fn new(model: &HookedTransformer, tc: &Transcoders, run: &ReplacementRun) -> Result<Self> {
        let (l_n, p_n, d) = (run.n_layers(), run.n_pos(), run.d_model());
        let a = &run.active;
        let mut decoders: Vec<Vec<(Vec<usize>, Vec<f32>)>> = vec![vec![(Vec::new(), Vec::new()); p_n]; l_n];
        let mut encoders = Vec::with_capacity(a.len() * d);
        let mut start = 0;
        for l in 0..l_n {
            let end = start + a.layer[start..].iter().take_while(|&&x| x == l).count();
            let feats = &a.feature[start..end];
            let rows = tc.decoder_rows(l, feats)?;
            let n_out = tc.n_out(l);
            let w_enc = tc.w_enc(l);
            for (i, idx) in (start..end).enumerate() {
                encoders.extend_from_slice(&w_enc[a.feature[idx] * d..(a.feature[idx] + 1) * d]);
                for o in 0..n_out {
                    let (cols, vecs) = &mut decoders[l + o][a.pos[idx]];
                    cols.push(idx);
                    let v = a.value[idx];
                    vecs.extend(rows[(i * n_out + o) * d..(i * n_out + o + 1) * d].iter().map(|x| x * v));
                }
            }
            start = end;
        }
        let ids = candle_core::Tensor::new(run.tokens.as_slice(), model.embed.w_e.device())?;
        // What `hook_embed` holds: `W_E` rows times the family's embedding scale
        // (Gemma's sqrt(d_model), which TransformerLens folds into its `W_E`), then the
        // embedding's LayerNorm where the family has one (BLOOM).
        let tokens = if model.embed.ln.is_some() {
            to_vec(&model.embed.forward(&ids.unsqueeze(0)?)?.squeeze(0)?)?
        } else {
            let mut tokens = to_vec(&model.embed.w_e.index_select(&ids, 0)?)?;
            if let Some(s) = model.embed.scale {
                tokens.iter_mut().for_each(|v| *v = (*v as f64 * s) as f32);
            }
            tokens
        };
        Ok(Sources {
            width: a.len() + (l_n + 1) * p_n,
            n_active: a.len(),
            decoders,
            tokens,
            encoders,
        })
    }
}

/// The rows of one batch of targets, `[rows, width]`.
fn compute_batch(
    run: &ReplacementRun,
    tc: &Transcoders,
    src: &Sources,
    layers: &[usize],
    positions: &[usize],
    vectors: &[f32],
) -> Vec<f32> {
    let (l_n, p_n, d) = (run.n_layers(), run.n_pos(), run.d_model());
    let rows = layers.len();
    let w = src.width;
    let mut out = vec![0.0f32; rows * w];
    let inject = Injection {
        layer: layers,
        pos: positions,
        vectors,
    };
    let mut at_output = |l: usize, g: &[f32], p: usize| {
        for pos in 0..p {
            // Errors of (l, pos).
            let err = &run.error[(l * p_n + pos) * d..(l * p_n + pos + 1) * d];
            let col = src.n_active + l * p_n + pos;
            for b in 0..rows {
                let gv = &g[(b * p + pos) * d..(b * p + pos + 1) * d];
                out[b * w + col] = gv.iter().zip(err).map(|(x, y)| x * y).sum();
            }
            // Features writing at (l, pos).
            let (cols, vecs) = &src.decoders[l][pos];
            if cols.is_empty() {
                continue;
            }
            let n_e = cols.len();
            let mut tmp = vec![0.0f32; rows * n_e];
            let gview = View {
                data: g,
                offset: pos * d,
                rows,
                cols: d,
                rs: p * d,
                cs: 1,
            };
            gemm(gview, View::row_major(vecs, n_e, d).t(), 0.0, &mut tmp, n_e);
            for b in 0..rows {
                for (e, &c) in cols.iter().enumerate() {
                    out[b * w + c] += tmp[b * n_e + e];
                }
            }
        }
    };
    let (g_embed, p) = run.frozen.backward(&inject, &|l| tc.skip(l), &mut at_output);
    for pos in 0..p {
        let tv = &src.tokens[pos * d..(pos + 1) * d];
        let col = src.n_active + l_n * p_n + pos;
        for b in 0..rows {
            let gv = &g_embed[(b * p + pos) * d..(b * p + pos + 1) * d];
            out[b * w + col] = gv.iter().zip(tv).map(|(x, y)| x * y).sum();
        }
    }
    out
}

/// circuit-tracer's `compute_partial_influences`: each node's influence on the logits
/// through the rows computed so far. `rows` `[n_rows, width]` (logit columns omitted:
/// they are zero), `row_node[r]` the node of row `r`, `n_total` the node count. Row sums
/// are taken once; each step reads only the rows it needs.
fn partial_influences(rows: &Rows, row_node: &[usize], logit_p: &[f32], n_total: usize) -> Result<Vec<f32>> {
    let width = rows.width();
    let n_rows = row_node.len();
    let mut buf = vec![0.0f32; width];
    let mut sums = Vec::with_capacity(n_rows);
    for r in 0..n_rows {
        rows.read(r, &mut buf)?;
        sums.push(buf.iter().map(|v| v.abs()).sum::<f32>().max(1e-8));
    }
    let mut prod = vec![0.0f32; n_total];
    let k = logit_p.len();
    prod[n_total - k..].copy_from_slice(logit_p);
    let mut influences = vec![0.0f32; n_total];
    for _ in 0..128 {
        let mut next = vec![0.0f32; n_total];
        for (r, &node) in row_node.iter().enumerate() {
            let x = prod[node];
            if x != 0.0 {
                let row: &[f32] = match rows.as_slice() {
                    Some(v) => &v[r * width..(r + 1) * width],
                    None => {
                        rows.read(r, &mut buf)?;
                        &buf
                    }
                };
                let s = sums[r];
                next[..width]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(o, v)| *o += x * (v.abs() / s));
            }
        }
        if next.iter().all(|&v| v == 0.0) {
            return Ok(influences);
        }
        influences.iter_mut().zip(&next).for_each(|(i, v)| *i += v);
        prod = next;
    }
    Err(Error::invalid(
        "feature influences did not converge after 128 iterations",
    ))
}

/// The attribution graph of `tokens` (`[n_pos]`, position 0 a BOS or other special
/// token: its features are not nodes) for `model` with `transcoders`, as circuit-tracer's
/// `attribute`. The model must be loaded without weight processing.
pub fn attribute(
    model: &HookedTransformer,
    transcoders: &Transcoders,
    tokens: &[u32],
    opts: &AttributionOptions,
) -> Result<Graph> {
    opts.check()?;
    let run = replacement_run(model, transcoders, tokens)?;
    attribute_run(model, transcoders, &run, opts)
}

/// [`attribute`] on a [`ReplacementRun`] already computed.
pub fn attribute_run(
    model: &HookedTransformer,
    transcoders: &Transcoders,
    run: &ReplacementRun,
    opts: &AttributionOptions,
) -> Result<Graph> {
    opts.check()?;
    let (l_n, p_n) = (run.n_layers(), run.n_pos());
    let last = candle_core::IndexOp::i(&run.logits, p_n - 1)?;
    let targets = resolve(model, &last, &opts.targets)?;
    let k = targets.targets.len();
    let src = Sources::new(model, transcoders, run)?;
    let n_active = src.n_active;
    let width = src.width;
    let logit_offset = width;
    let n_total = logit_offset + k;
    let max_feat = opts.max_feature_nodes.unwrap_or(n_active).min(n_active);
    let rows_total = k + max_feat;
    let n_nodes_max = max_feat + (l_n + 1) * p_n + k;
    let spill = spills(opts, rows_total, width, n_nodes_max);
    let spill_dir = opts.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut sweep = Sweep {
        run,
        tc: transcoders,
        src: &src,
        opts,
        rows: new_rows(spill, &spill_dir, width, rows_total)?,
        row_node: Vec::with_capacity(rows_total),
        rows_total,
    };
    sweep.logit_rows(&targets.vectors, k, logit_offset)?;
    let visited = sweep.feature_rows(max_feat, &targets.probabilities, n_total)?;
    // Assemble the square matrix in node order.
    let selected: Vec<usize> = (0..n_active).filter(|&i| visited[i]).collect();
    let n_sel = selected.len();
    let n_nodes = n_sel + (l_n + 1) * p_n + k;
    let col_of = matrix_columns(&selected, n_active, width);
    let raw_of = matrix_rows(
        &selected,
        &sweep.row_node,
        n_active,
        logit_offset,
        n_sel + (l_n + 1) * p_n,
        n_nodes,
    );
    let adjacency = new_rows(spill, &spill_dir, n_nodes, n_nodes)?;
    let adjacency = copy_rows(&sweep.rows, &raw_of, &col_of, adjacency)?;
    drop(sweep);
    let input_string = model
        .to_string(&candle_core::Tensor::new(
            run.tokens.as_slice(),
            &candle_core::Device::Cpu,
        )?)
        .unwrap_or_default();
    Ok(Graph {
        input_string,
        input_tokens: run.tokens.clone(),
        active_features: run.active.clone(),
        selected_features: selected,
        logit_targets: targets.targets,
        logit_probabilities: targets.probabilities,
        vocab_size: model.cfg().d_vocab,
        n_layers: l_n,
        scan: transcoders.scan().map(str::to_string),
        adjacency: Adjacency { rows: adjacency },
    })
}

/// Whether the rows and the matrix go to temporary files: they stay in memory when both
/// fit the budget together (the assembly holds both).
fn spills(opts: &AttributionOptions, rows_total: usize, width: usize, n_nodes_max: usize) -> bool {
    let need = (rows_total as u64) * (width as u64) * 4 + (n_nodes_max as u64).pow(2) * 4;
    let budget = opts
        .memory_budget
        .unwrap_or_else(|| hooklens_core::__internal::available_memory().map_or(u64::MAX, |m| m / 2));
    need > budget
}

/// An empty store of rows `width` wide: a temporary file in `spill_dir` when `spill`,
/// else memory for `n_rows` rows.
fn new_rows(spill: bool, spill_dir: &std::path::Path, width: usize, n_rows: usize) -> Result<Rows> {
    if spill {
        Rows::in_file(width, spill_dir)
    } else {
        Ok(Rows::in_memory(width, n_rows))
    }
}

/// The rows of the attribution as they are computed, and the node each row is of.
struct Sweep<'a> {
    run: &'a ReplacementRun,
    tc: &'a Transcoders,
    src: &'a Sources,
    opts: &'a AttributionOptions,
    /// The rows so far, `[row_node.len(), src.width]`.
    rows: Rows,
    /// Each row's node: an index into `run.active`, or `logit_offset + j` for logit `j`.
    row_node: Vec<usize>,
    /// Rows to compute in all, for the progress reports.
    rows_total: usize,
}

impl Sweep<'_> {
    /// Computes and keeps the rows of one batch of targets (of nodes `nodes`), then
    /// reports progress.
    fn push(
        &mut self,
        layers: &[usize],
        positions: &[usize],
        vectors: &[f32],
        nodes: impl IntoIterator<Item = usize>,
    ) -> Result<()> {
        self.rows
            .push(&compute_batch(self.run, self.tc, self.src, layers, positions, vectors))?;
        self.row_node.extend(nodes);
        if let Some(f) = &self.opts.progress {
            f(AttributionProgress {
                rows_done: self.row_node.len(),
                rows_total: self.rows_total,
            })
        }
        Ok(())
    }

    /// Computes the rows of the `k` logit targets, `vectors` `[k, d_model]`.
    fn logit_rows(&mut self, vectors: &[f32], k: usize, logit_offset: usize) -> Result<()> {
        let (l_n, p_n, d) = (self.run.n_layers(), self.run.n_pos(), self.run.d_model());
        let batch_size = self.opts.batch_size;
        // Logit rows: read after the final norm at the last position.
        for i in (0..k).step_by(batch_size) {
            let n = batch_size.min(k - i);
            let layers = vec![l_n; n];
            let pos = vec![p_n - 1; n];
            self.push(
                &layers,
                &pos,
                &vectors[i * d..(i + n) * d],
                (i..i + n).map(|j| logit_offset + j),
            )?;
        }
        Ok(())
    }

    /// Computes the rows of `max_feat` active features: all of them, or else the most
    /// influential on the logits (probabilities `logit_p`, `n_total` nodes), re-ranked
    /// every `update_interval` batches. Which active features got a row, `[n_active]`.
    fn feature_rows(&mut self, max_feat: usize, logit_p: &[f32], n_total: usize) -> Result<Vec<bool>> {
        let (run, src, opts) = (self.run, self.src, self.opts);
        let (d, n_active) = (run.d_model(), src.n_active);
        let a = &run.active;
        let mut visited = vec![false; n_active];
        let mut n_visited = 0;
        while n_visited < max_feat {
            let pending: Vec<usize> = if max_feat == n_active {
                (0..n_active).collect()
            } else {
                let inf = partial_influences(&self.rows, &self.row_node, logit_p, n_total)?;
                let mut rank: Vec<usize> = (0..n_active).collect();
                rank.sort_by(|&x, &y| inf[y].total_cmp(&inf[x]).then(x.cmp(&y)));
                let queue = (opts.update_interval * opts.batch_size).min(max_feat - n_visited);
                rank.into_iter().filter(|&i| !visited[i]).take(queue).collect()
            };
            for batch in pending.chunks(opts.batch_size) {
                n_visited += batch.len();
                let layers: Vec<usize> = batch.iter().map(|&i| a.layer[i]).collect();
                let pos: Vec<usize> = batch.iter().map(|&i| a.pos[i]).collect();
                let mut vecs = Vec::with_capacity(batch.len() * d);
                for &i in batch {
                    vecs.extend_from_slice(&src.encoders[i * d..(i + 1) * d]);
                }
                for &i in batch {
                    visited[i] = true;
                }
                self.push(&layers, &pos, &vecs, batch.iter().copied())?;
            }
        }
        Ok(visited)
    }
}

/// The matrix column of each column of a row (`[width]`; `usize::MAX` for a feature not
/// selected).
fn matrix_columns(selected: &[usize], n_active: usize, width: usize) -> Vec<usize> {
    // Selected features keep their rank among the selected, the rest shift down.
    let n_sel = selected.len();
    let mut col_of = vec![usize::MAX; width];
    for (j, &f) in selected.iter().enumerate() {
        col_of[f] = j;
    }
    for (c, slot) in col_of.iter_mut().enumerate().skip(n_active) {
        *slot = n_sel + (c - n_active);
    }
    col_of
}

/// The computed row each matrix row copies (`[n_nodes]`: features by rank, then the
/// logits from `first_logit_row` on); `usize::MAX` for the error and token rows, which
/// are zero.
fn matrix_rows(
    selected: &[usize],
    row_node: &[usize],
    n_active: usize,
    logit_offset: usize,
    first_logit_row: usize,
    n_nodes: usize,
) -> Vec<usize> {
    let mut raw_of = vec![usize::MAX; n_nodes];
    let mut feat_row = vec![usize::MAX; n_active];
    for (j, &f) in selected.iter().enumerate() {
        feat_row[f] = j;
    }
    for (r, &node) in row_node.iter().enumerate() {
        let target = if node >= logit_offset {
            first_logit_row + (node - logit_offset)
        } else {
            feat_row[node]
        };
        raw_of[target] = r;
    }
    raw_of
}

/// `adjacency` with the square matrix pushed, `[raw_of.len(), raw_of.len()]`: row `i` is
/// row `raw_of[i]` of `rows` with its columns moved to `col_of`, or zero.
fn copy_rows(rows: &Rows, raw_of: &[usize], col_of: &[usize], mut adjacency: Rows) -> Result<Rows> {
    let mut raw = vec![0.0f32; rows.width()];
    let mut out = vec![0.0f32; raw_of.len()];
    for &r in raw_of {
        out.iter_mut().for_each(|v| *v = 0.0);
        if r != usize::MAX {
            rows.read(r, &mut raw)?;
            for (&j, &v) in col_of.iter().zip(&raw) {
                if j != usize::MAX {
                    out[j] = v;
                }
            }
        }
        adjacency.push(&out)?;
    }
    Ok(adjacency)
}

//! Activation patching: TransformerLens's `patching` module.
//!
//! Run the model on a corrupted input while one activation (or one slice of it: a
//! position, a head) is replaced by its value from a clean run, and measure a metric of
//! the output; sweep that over layers, positions and heads. Each patched run uses
//! per-run hooks (`run_with_hooks`), so nothing is attached to the model, and a sweep
//! can run its patched runs on several threads sharing the model.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use hooklens_core::{position_axis, ActivationCache, Error, HookSet, HookedModel, Result};

use super::act_name::act_name;
use crate::HookedTransformer;

/// An axis a sweep iterates over (TransformerLens's `index_axis_names`). The first axis
/// of every sweep is [`Axis::Layer`]: it picks the hook name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Axis {
    /// Blocks `0..n_layers`.
    Layer,
    /// Positions `0..pos` of the corrupted input.
    Pos,
    /// Heads `0..n_heads`.
    Head,
    /// Query (destination) positions of an attention pattern.
    DestPos,
    /// Key (source) positions of an attention pattern.
    SrcPos,
}

/// Which patches to make: every combination of some axes (the output has one dimension
/// per axis, TransformerLens's `index_axis_names`), or an explicit list of index rows
/// (the output is flat, one entry per row, TransformerLens's `index_df`). The first
/// entry of every index is the layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatchIndex {
    /// The cartesian product of these axes' ranges, last axis fastest.
    Axes(Vec<Axis>),
    /// These indices, in this order.
    Rows(Vec<Vec<usize>>),
}

/// A custom patch: `(corrupted activation, index, clean activation) -> patched activation`,
/// all of the activation's shape.
pub type CustomSetter = Arc<dyn Fn(&Tensor, &[usize], &Tensor) -> Result<Tensor> + Send + Sync>;

/// How a patch replaces part of the corrupted activation by the clean one
/// (TransformerLens's patch setters). `index[0]` is always the layer.
#[derive(Clone)]
pub enum PatchSetter {
    /// `index = [layer, pos]`: `act[:, pos, ...]` for `[batch, pos, ...]` activations.
    LayerPos,
    /// `index = [layer, pos, head]`: `act[:, pos, head]` for `[batch, pos, head, d]` (q, k, v, z, result).
    LayerPosHeadVector,
    /// `index = [layer, head]`: `act[:, :, head]` for `[batch, pos, head, d]`.
    LayerHeadVector,
    /// `index = [layer, head]`: `act[:, head]` for `[batch, head, dest, src]` (pattern, scores).
    LayerHeadPattern,
    /// `index = [layer, head, dest]`: `act[:, head, dest, :]`.
    LayerHeadPosPattern,
    /// `index = [layer, head, dest, src]`: `act[:, head, dest, src]`.
    LayerHeadDestSrcPattern,
    /// Any other patch.
    Custom(CustomSetter),
}

impl std::fmt::Debug for PatchSetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            PatchSetter::LayerPos => "LayerPos",
            PatchSetter::LayerPosHeadVector => "LayerPosHeadVector",
            PatchSetter::LayerHeadVector => "LayerHeadVector",
            PatchSetter::LayerHeadPattern => "LayerHeadPattern",
            PatchSetter::LayerHeadPosPattern => "LayerHeadPosPattern",
            PatchSetter::LayerHeadDestSrcPattern => "LayerHeadDestSrcPattern",
            PatchSetter::Custom(_) => "Custom(..)",
        };
        f.write_str(name)
    }
}

impl PatchSetter {
    /// A custom setter from a closure.
    pub fn custom<F>(f: F) -> Self
    where
        F: Fn(&Tensor, &[usize], &Tensor) -> Result<Tensor> + Send + Sync + 'static,
    {
        PatchSetter::Custom(Arc::new(f))
    }

    /// (tensor axis, position in the index) pairs that a built-in setter narrows.
    fn axes(&self) -> Option<&'static [(usize, usize)]> {
        Some(match self {
            PatchSetter::LayerPos => &[(1, 1)],
            PatchSetter::LayerPosHeadVector => &[(1, 1), (2, 2)],
            PatchSetter::LayerHeadVector => &[(2, 1)],
            PatchSetter::LayerHeadPattern => &[(1, 1)],
            PatchSetter::LayerHeadPosPattern => &[(1, 1), (2, 2)],
            PatchSetter::LayerHeadDestSrcPattern => &[(1, 1), (2, 2), (3, 3)],
            PatchSetter::Custom(_) => return None,
        })
    }

    /// Applies the patch: `corrupted` and `clean` have the same shape; so does the result.
    pub fn apply(&self, corrupted: &Tensor, index: &[usize], clean: &Tensor) -> Result<Tensor> {
        let Some(axes) = self.axes() else {
            let PatchSetter::Custom(f) = self else { unreachable!() };
            return f(corrupted, index, clean);
        };
        let need = axes.iter().map(|&(_, i)| i + 1).max().unwrap_or(1);
        if index.len() != need {
            return Err(Error::invalid(format!(
                "patch setter {self:?} takes an index of {need} entries (layer first), got {index:?}"
            )));
        }
        let dims = corrupted.dims();
        let mut ranges: Vec<Range<usize>> = dims.iter().map(|&d| 0..d).collect();
        let mut src = clean.clone();
        for &(axis, at) in axes {
            let i = index[at];
            if axis >= dims.len() || i >= dims[axis] {
                return Err(Error::invalid(format!(
                    "patch setter {self:?}: index {i} does not fit axis {axis} of an activation of shape {dims:?}"
                )));
            }
            ranges[axis] = i..i + 1;
            src = src.narrow(axis, i, 1)?;
        }
        Ok(corrupted.slice_assign(&ranges, &src)?)
    }
}

/// Where a sweep is: `done` of `total` patched runs finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Patched runs finished so far.
    pub done: usize,
    /// Patched runs in the sweep.
    pub total: usize,
}

/// A progress callback; called after every patched run (from worker threads when the
/// sweep is parallel).
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// A progress callback that draws a one-line bar on stderr, labelled `label`.
pub fn stderr_progress(label: impl Into<String>) -> ProgressFn {
    let label = label.into();
    Arc::new(move |p: Progress| {
        let width = 30;
        let filled = (p.done * width).checked_div(p.total).unwrap_or(width);
        let end = if p.done == p.total { "\n" } else { "" };
        eprint!(
            "\r{label} [{}{}] {}/{}{end}",
            "#".repeat(filled),
            " ".repeat(width - filled),
            p.done,
            p.total
        );
    })
}

/// The corrupted forward of a sweep: runs the model (hooks applying) and returns what
/// the metric reads, usually logits `[batch, pos, d_vocab]`.
pub type RunFn<'a, M> = Box<dyn Fn(&M) -> Result<Tensor> + Send + Sync + 'a>;

/// Sizes of the axes a sweep iterates over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchDims {
    /// Blocks.
    pub n_layers: usize,
    /// Heads per block.
    pub n_heads: usize,
    /// Batch size of the corrupted input.
    pub batch: usize,
    /// Positions of the corrupted input.
    pub n_pos: usize,
}

/// Activation patching of one corrupted input against one clean cache
/// (TransformerLens's `patching.get_act_patch_*(model, corrupted_tokens, clean_cache, metric)`).
///
/// ```no_run
/// # use hooklens_models::{HookedTransformer, LoadOptions};
/// # use hooklens_models::analysis::patching::Patching;
/// # use hooklens_core::{CacheOptions, HookedModel};
/// # fn main() -> hooklens_core::Result<()> {
/// # let model = HookedTransformer::from_dir("testdata/tiny-gpt2/model", &LoadOptions::default())?;
/// # let (clean, corrupted) = (candle_core::Tensor::zeros((1, 4), candle_core::DType::U32, &candle_core::Device::Cpu)?, candle_core::Tensor::ones((1, 4), candle_core::DType::U32, &candle_core::Device::Cpu)?);
/// let (_, clean_cache) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&clean))?;
/// let patching = Patching::gpt2(&model, &corrupted, &clean_cache)?;
/// let metric = |logits: &candle_core::Tensor| -> hooklens_core::Result<f64> {
///     Ok(logits.get(0)?.get(3)?.get(7)?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
/// };
/// let grid = patching.get_act_patch_resid_pre(&metric)?; // [n_layers, pos]
/// # Ok(()) }
/// ```
pub struct Patching<'a, M: HookedModel + Sync> {
    model: &'a M,
    run: RunFn<'a, M>,
    clean_cache: &'a ActivationCache,
    dims: PatchDims,
    threads: usize,
    progress: Option<ProgressFn>,
}

impl<'a> Patching<'a, HookedTransformer> {
    /// [`Patching::transformer`], under its name from the GPT-2-only releases.
    pub fn gpt2(
        model: &'a HookedTransformer,
        corrupted_tokens: &'a Tensor,
        clean_cache: &'a ActivationCache,
    ) -> Result<Self> {
        Self::transformer(model, corrupted_tokens, clean_cache)
    }

    /// Patching for a run of a bundled model (any family) on `corrupted_tokens`
    /// `[batch, pos]` against `clean_cache` (a full `run_with_cache` of the clean input,
    /// with its batch axis). The metric sees logits `[batch, pos, d_vocab]`.
    pub fn transformer(
        model: &'a HookedTransformer,
        corrupted_tokens: &'a Tensor,
        clean_cache: &'a ActivationCache,
    ) -> Result<Self> {
        let (batch, n_pos) = match corrupted_tokens.dims() {
            [b, p] => (*b, *p),
            [p] => (1, *p),
            d => {
                return Err(Error::invalid(format!(
                    "corrupted tokens must be [batch, pos], got shape {d:?}"
                )))
            }
        };
        let cfg = model.cfg();
        let dims = PatchDims {
            n_layers: cfg.n_layers,
            n_heads: cfg.n_heads,
            batch,
            n_pos,
        };
        Patching::new(
            model,
            dims,
            Box::new(move |m: &HookedTransformer| m.forward(corrupted_tokens)),
            clean_cache,
        )
    }
}

impl<'a, M: HookedModel + Sync> Patching<'a, M> {
    /// Patching for any hooked model: `run` is its corrupted forward (returning what the
    /// metric reads), `dims` the sizes of the swept axes. The clean cache must have its
    /// batch axis; its activations must have the corrupted run's batch and positions.
    pub fn new(model: &'a M, dims: PatchDims, run: RunFn<'a, M>, clean_cache: &'a ActivationCache) -> Result<Self> {
        if !clean_cache.has_batch_dim() {
            return Err(Error::invalid(
                "patching needs the clean cache with its batch axis (run_with_cache without remove_batch_dim)",
            ));
        }
        Ok(Patching {
            model,
            run,
            clean_cache,
            dims,
            threads: 1,
            progress: None,
        })
    }

    /// Runs the patched forwards on `n` threads sharing the model (default 1). Worth it
    /// when one forward does not already keep every core busy.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// Reports progress after every patched run.
    pub fn progress(mut self, f: ProgressFn) -> Self {
        self.progress = Some(f);
        self
    }

    /// The swept axes' sizes.
    pub fn dims(&self) -> PatchDims {
        self.dims
    }

    fn axis_len(&self, axis: Axis) -> usize {
        match axis {
            Axis::Layer => self.dims.n_layers,
            Axis::Head => self.dims.n_heads,
            Axis::Pos | Axis::DestPos | Axis::SrcPos => self.dims.n_pos,
        }
    }

    /// Checks that the clean activation fits the corrupted run: same batch, same positions.
    fn check_clean(&self, name: &str, clean: &Tensor) -> Result<()> {
        let d = clean.dims();
        let batch_ok = d.first() == Some(&self.dims.batch);
        // The axis the point declares (a user model's too), by its name if it declares none.
        let axis = match self.model.hook_point(name) {
            Ok(hp) => hp.position_axis(d.len()),
            Err(_) => position_axis(name, d.len()),
        };
        let pos_ok = match axis {
            Some(ax) => d[(d.len() as isize + ax) as usize] == self.dims.n_pos,
            None => true,
        };
        if !batch_ok || !pos_ok {
            return Err(Error::ShapeMismatch {
                what: format!("clean activation `{name}`"),
                expected: format!("batch {} and {} positions", self.dims.batch, self.dims.n_pos),
                got: d.to_vec(),
                message: format!(
                    "clean activation `{name}` has shape {d:?}, but the corrupted run has batch {} and {} positions: \
                     clean and corrupted inputs must have the same batch size and length",
                    self.dims.batch, self.dims.n_pos
                ),
            });
        }
        Ok(())
    }

    /// TransformerLens's `generic_activation_patch`: for every index, runs the corrupted
    /// forward with `setter` patching the clean value of `activation_name` (a short name
    /// such as `"resid_pre"` or `"z"`, made a hook name with the index's layer) into it,
    /// and records `metric` of the output. Output (f32, CPU): one axis per swept axis
    /// for [`PatchIndex::Axes`], `[n_rows]` for [`PatchIndex::Rows`].
    pub fn generic_activation_patch<F>(
        &self,
        metric: &F,
        setter: &PatchSetter,
        activation_name: &str,
        index: &PatchIndex,
    ) -> Result<Tensor>
    where
        F: Fn(&Tensor) -> Result<f64> + Sync,
    {
        let (rows, shape): (Vec<Vec<usize>>, Vec<usize>) = match index {
            PatchIndex::Axes(axes) => {
                if axes.first() != Some(&Axis::Layer) {
                    return Err(Error::invalid(format!(
                        "the first swept axis must be Axis::Layer (it picks the hook), got {axes:?}"
                    )));
                }
                let shape: Vec<usize> = axes.iter().map(|&a| self.axis_len(a)).collect();
                (every_index(&shape), shape)
            }
            PatchIndex::Rows(rows) => (rows.clone(), vec![rows.len()]),
        };
        let clean = self.clean_by_layer(activation_name, &rows)?;
        let values: Vec<f32> = self
            .patched_metrics(metric, setter, &rows, &clean)?
            .into_iter()
            .map(|v| v as f32)
            .collect();
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
    }

    /// The hook name and clean activation of `activation_name` for each layer that
    /// `rows` patch, keyed by layer.
    fn clean_by_layer(&self, activation_name: &str, rows: &[Vec<usize>]) -> Result<HashMap<usize, (String, Tensor)>> {
        // Hook names and clean activations per layer, checked before any run.
        let mut clean = HashMap::new();
        for row in rows {
            let Some(&layer) = row.first() else {
                return Err(Error::invalid(
                    "an empty patch index: the first entry must be the layer",
                ));
            };
            if layer >= self.dims.n_layers {
                return Err(Error::invalid(format!(
                    "layer {layer} in patch index {row:?} is out of range for {} layers",
                    self.dims.n_layers
                )));
            }
            if let Entry::Vacant(e) = clean.entry(layer) {
                let name = act_name(activation_name, Some(layer as isize), None)?;
                let act = self.clean_cache.try_get(&name)?.clone();
                self.check_clean(&name, &act)?;
                e.insert((name, act));
            }
        }
        Ok(clean)
    }

    /// The metric of each row's patched run, in the order of `rows`, run on up to
    /// `self.threads` threads; the first error stops the sweep and is returned.
    fn patched_metrics<F>(
        &self,
        metric: &F,
        setter: &PatchSetter,
        rows: &[Vec<usize>],
        clean: &HashMap<usize, (String, Tensor)>,
    ) -> Result<Vec<f64>>
    where
        F: Fn(&Tensor) -> Result<f64> + Sync,
    {
        let total = rows.len();
        let results = Mutex::new(vec![0f64; total]);
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        let worker = || loop {
            if first_error.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                return;
            }
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= total {
                return;
            }
            let row = &rows[i];
            let (name, clean_act) = &clean[&row[0]];
            let outcome = self.patched_metric(metric, setter, name, clean_act, row);
            match outcome {
                Ok(v) => results.lock().unwrap_or_else(|e| e.into_inner())[i] = v,
                Err(e) => {
                    let mut slot = first_error.lock().unwrap_or_else(|e| e.into_inner());
                    slot.get_or_insert(e);
                    return;
                }
            }
            let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(p) = &self.progress {
                p(Progress { done: finished, total });
            }
        };
        let threads = self.threads.min(total.max(1));
        if threads <= 1 {
            worker();
        } else {
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(worker);
                }
            });
        }
        if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        Ok(results.into_inner().unwrap_or_else(|e| e.into_inner()))
    }

    fn patched_metric<F>(
        &self,
        metric: &F,
        setter: &PatchSetter,
        name: &str,
        clean: &Tensor,
        row: &[usize],
    ) -> Result<f64>
    where
        F: Fn(&Tensor) -> Result<f64> + Sync,
    {
        let (setter, clean, index, hook_name) = (setter.clone(), clean.clone(), row.to_vec(), name.to_string());
        let hooks = HookSet::new().fwd(name, move |x: &Tensor, _hp| {
            if x.dims() != clean.dims() {
                return Err(Error::ShapeMismatch {
                    what: format!("corrupted activation `{hook_name}`"),
                    expected: format!("{:?}", clean.dims()),
                    got: x.dims().to_vec(),
                    message: format!(
                        "`{hook_name}`: the corrupted activation has shape {:?} but the clean one {:?}: clean and \
                         corrupted inputs must have the same batch size and length",
                        x.dims(),
                        clean.dims()
                    ),
                });
            }
            Ok(Some(setter.apply(x, &index, &clean)?))
        });
        let out = self.model.run_with_hooks(hooks, |m| (self.run)(m))?;
        metric(&out)
    }

    fn sweep<F>(&self, metric: &F, setter: PatchSetter, name: &str, axes: &[Axis]) -> Result<Tensor>
    where
        F: Fn(&Tensor) -> Result<f64> + Sync,
    {
        self.generic_activation_patch(metric, &setter, name, &PatchIndex::Axes(axes.to_vec()))
    }

    /// [`Patching::sweep`] of keys or values (`name` `"k"` / `"v"`, head last in `axes`).
    /// A grouped-query model caches `n_kv_heads` of them, each read by a group of query
    /// heads: each key/value head is patched once, and every query head gets the result
    /// of the head it reads, so the output keeps its `n_heads` axis. Otherwise a sweep.
    fn sweep_kv<F>(&self, metric: &F, setter: PatchSetter, name: &str, axes: &[Axis]) -> Result<Tensor>
    where
        F: Fn(&Tensor) -> Result<f64> + Sync,
    {
        let n_heads = self.dims.n_heads;
        let n_kv = match self.clean_cache.get(&act_name(name, Some(0), None)?) {
            Some(t) if t.rank() == 4 => t.dim(2)?,
            _ => n_heads,
        };
        if n_kv == n_heads || n_kv == 0 || !n_heads.is_multiple_of(n_kv) {
            return self.sweep(metric, setter, name, axes);
        }
        // Every index of the swept axes, with the head axis (last) over key/value heads.
        let lens: Vec<usize> = axes
            .iter()
            .map(|&a| if a == Axis::Head { n_kv } else { self.axis_len(a) })
            .collect();
        let rows = every_index(&lens);
        let flat = self.generic_activation_patch(metric, &setter, name, &PatchIndex::Rows(rows))?;
        let per_kv = flat.reshape(lens.as_slice())?;
        let group = n_heads / n_kv;
        let reads: Vec<u32> = (0..n_heads).map(|h| (h / group) as u32).collect();
        let reads = Tensor::new(reads.as_slice(), per_kv.device())?;
        Ok(per_kv.index_select(&reads, lens.len() - 1)?)
    }

    /// Patches the residual stream entering each block, one position at a time: `[n_layers, pos]`.
    pub fn get_act_patch_resid_pre<F: Fn(&Tensor) -> Result<f64> + Sync>(&self, metric: &F) -> Result<Tensor> {
        self.sweep(metric, PatchSetter::LayerPos, "resid_pre", &[Axis::Layer, Axis::Pos])
    }

    /// Patches the residual stream between attention and MLP, by position: `[n_layers, pos]`.
    pub fn get_act_patch_resid_mid<F: Fn(&Tensor) -> Result<f64> + Sync>(&self, metric: &F) -> Result<Tensor> {
        self.sweep(metric, PatchSetter::LayerPos, "resid_mid", &[Axis::Layer, Axis::Pos])
    }

    /// Patches each attention layer's output, by position: `[n_layers, pos]`.
    pub fn get_act_patch_attn_out<F: Fn(&Tensor) -> Result<f64> + Sync>(&self, metric: &F) -> Result<Tensor> {
        self.sweep(metric, PatchSetter::LayerPos, "attn_out", &[Axis::Layer, Axis::Pos])
    }

    /// Patches each MLP's output, by position: `[n_layers, pos]`.
    pub fn get_act_patch_mlp_out<F: Fn(&Tensor) -> Result<f64> + Sync>(&self, metric: &F) -> Result<Tensor> {
        self.sweep(metric, PatchSetter::LayerPos, "mlp_out", &[Axis::Layer, Axis::Pos])
    }

    /// Patches each head's output (`z`), by position: `[n_layers, pos, n_heads]`.
    pub fn get_act_patch_attn_head_out_by_pos<F: Fn(&Tensor) -> Result<f64> + Sync>(
        &self,
        metric: &F,
    ) -> Result<Tensor> {
        self.sweep(
            metric,
            PatchSetter::LayerPosHeadVector,
            "z",
            &[Axis::Layer, Axis::Pos, Axis::Head],
        )
    }

    /// Patches each head's queries, by position: `[n_layers, pos, n_heads]`.
    pub fn get_act_patch_attn_head_q_by_pos<F: Fn(&Tensor) -> Result<f64> + Sync>(&self, metric: &F) -> Result<Tensor> {
        self.sweep(
            metric,
            PatchSetter::LayerPosHeadVector,
            "q",
            &[Axis::Layer, Axis::Pos, Axis::Head],
        )
    }

    /// Patches each head's keys, by position: `[n_layers, pos, n_heads]` (grouped-query:
    /// the key head it reads, patched once per group).
    pub fn get_act_patch_attn_head_k_by_pos<F: Fn(&Tensor) -> Result<f64> + Sync>(&self, metric: &F) -> Result<Tensor> {
        self.sweep_kv(
            metric,
            PatchSetter::LayerPosHeadVector,
            "k",
            &[Axis::Layer, Axis::Pos, Axis::Head],
        )
    }

    /// Patches each head's values, by position: `[n_layers, pos, n_heads]` (grouped-query:
    /// the value head it reads, patched once per group).
    pub fn get_act_patch_attn_head_v_by_pos<F: Fn(&Tensor) -> Result<f64> + Sync>(&self, metric: &F) -> Result<Tensor> {
        self.sweep_kv(
            metric,
            PatchSetter::LayerPosHeadVector,
            "v",
            &[Axis::Layer, Axis::Pos, Axis::Head],
        )
    }

    /// Patches each head's attention pattern, one destination position at a time:
    /// `[n_layers, n_heads, dest_pos]`.
    pub fn get_act_patch_attn_head_pattern_by_pos<F: Fn(&Tensor) -> Result<f64> + Sync>(
        &self,
        metric: &F,
    ) -> Result<Tensor> {
        self.sweep(
            metric,
            PatchSetter::LayerHeadPosPattern,
            "pattern",
            &[Axis::Layer, Axis::Head, Axis::DestPos],
        )
    }

    /// Patches each single entry of each head's attention pattern:
    /// `[n_layers, n_heads, dest_pos, src_pos]`.
    pub fn get_act_patch_attn_head_pattern_dest_src_pos<F: Fn(&Tensor) -> Result<f64> + Sync>(
        &self,
        metric: &F,
    ) -> Result<Tensor> {
        self.sweep(
            metric,
            PatchSetter::LayerHeadDestSrcPattern,
            "pattern",
            &[Axis::Layer, Axis::Head, Axis::DestPos, Axis::SrcPos],
        )
    }

    /// Patches each head's output (`z`) at every position at once: `[n_layers, n_heads]`.
    pub fn get_act_patch_attn_head_out_all_pos<F: Fn(&Tensor) -> Result<f64> + Sync>(
        &self,
        metric: &F,
    ) -> Result<Tensor> {
        self.sweep(metric, PatchSetter::LayerHeadVector, "z", &[Axis::Layer, Axis::Head])
    }

    /// Patches each head's queries at every position: `[n_layers, n_heads]`.
    pub fn get_act_patch_attn_head_q_all_pos<F: Fn(&Tensor) -> Result<f64> + Sync>(
        &self,
        metric: &F,
    ) -> Result<Tensor> {
        self.sweep(metric, PatchSetter::LayerHeadVector, "q", &[Axis::Layer, Axis::Head])
    }

    /// Patches each head's keys at every position: `[n_layers, n_heads]`.
    pub fn get_act_patch_attn_head_k_all_pos<F: Fn(&Tensor) -> Result<f64> + Sync>(
        &self,
        metric: &F,
    ) -> Result<Tensor> {
        self.sweep_kv(metric, PatchSetter::LayerHeadVector, "k", &[Axis::Layer, Axis::Head])
    }

    /// Patches each head's values at every position: `[n_layers, n_heads]`.
    pub fn get_act_patch_attn_head_v_all_pos<F: Fn(&Tensor) -> Result<f64> + Sync>(
        &self,
        metric: &F,
    ) -> Result<Tensor> {
        self.sweep_kv(metric, PatchSetter::LayerHeadVector, "v", &[Axis::Layer, Axis::Head])
    }

    /// Patches each head's whole attention pattern: `[n_layers, n_heads]`.
    pub fn get_act_patch_attn_head_pattern_all_pos<F: Fn(&Tensor) -> Result<f64> + Sync>(
        &self,
        metric: &F,
    ) -> Result<Tensor> {
        self.sweep(
            metric,
            PatchSetter::LayerHeadPattern,
            "pattern",
            &[Axis::Layer, Axis::Head],
        )
    }

    /// Every head, all positions, for output, q, k, v and pattern, stacked in that order:
    /// `[5, n_layers, n_heads]`.
    pub fn get_act_patch_attn_head_all_pos_every<F: Fn(&Tensor) -> Result<f64> + Sync>(
        &self,
        metric: &F,
    ) -> Result<Tensor> {
        let parts = [
            self.get_act_patch_attn_head_out_all_pos(metric)?,
            self.get_act_patch_attn_head_q_all_pos(metric)?,
            self.get_act_patch_attn_head_k_all_pos(metric)?,
            self.get_act_patch_attn_head_v_all_pos(metric)?,
            self.get_act_patch_attn_head_pattern_all_pos(metric)?,
        ];
        Ok(Tensor::stack(&parts, 0)?)
    }

    /// Every head by position, for output, q, k, v and pattern (by destination position,
    /// transposed to match), stacked: `[5, n_layers, pos, n_heads]`.
    pub fn get_act_patch_attn_head_by_pos_every<F: Fn(&Tensor) -> Result<f64> + Sync>(
        &self,
        metric: &F,
    ) -> Result<Tensor> {
        let parts = [
            self.get_act_patch_attn_head_out_by_pos(metric)?,
            self.get_act_patch_attn_head_q_by_pos(metric)?,
            self.get_act_patch_attn_head_k_by_pos(metric)?,
            self.get_act_patch_attn_head_v_by_pos(metric)?,
            self.get_act_patch_attn_head_pattern_by_pos(metric)?
                .transpose(1, 2)?
                .contiguous()?,
        ];
        Ok(Tensor::stack(&parts, 0)?)
    }

    /// The residual stream entering each block, each attention output and each MLP
    /// output, by position, stacked in that order: `[3, n_layers, pos]`.
    pub fn get_act_patch_block_every<F: Fn(&Tensor) -> Result<f64> + Sync>(&self, metric: &F) -> Result<Tensor> {
        let parts = [
            self.get_act_patch_resid_pre(metric)?,
            self.get_act_patch_attn_out(metric)?,
            self.get_act_patch_mlp_out(metric)?,
        ];
        Ok(Tensor::stack(&parts, 0)?)
    }
}

/// Every index into an array of shape `lens`, last axis fastest (`[[]]` for no axes).
fn every_index(lens: &[usize]) -> Vec<Vec<usize>> {
    let mut rows: Vec<Vec<usize>> = vec![Vec::new()];
    for &len in lens {
        rows = rows
            .into_iter()
            .flat_map(|r| {
                (0..len).map(move |i| {
                    let mut r = r.clone();
                    r.push(i);
                    r
                })
            })
            .collect();
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn built_in_setters_patch_only_their_slice() {
        let dev = Device::Cpu;
        let corrupted = Tensor::zeros((2, 3, 4, 5), DType::F32, &dev).unwrap();
        let clean = Tensor::ones((2, 3, 4, 5), DType::F32, &dev).unwrap();
        let count = |t: Tensor| t.sum_all().unwrap().to_scalar::<f32>().unwrap();
        let cases: [(PatchSetter, Vec<usize>, f32); 6] = [
            (PatchSetter::LayerPos, vec![0, 1], 2. * 4. * 5.),
            (PatchSetter::LayerPosHeadVector, vec![0, 1, 2], 2. * 5.),
            (PatchSetter::LayerHeadVector, vec![0, 3], 2. * 3. * 5.),
            (PatchSetter::LayerHeadPattern, vec![0, 2], 2. * 4. * 5.),
            (PatchSetter::LayerHeadPosPattern, vec![0, 2, 3], 2. * 5.),
            (PatchSetter::LayerHeadDestSrcPattern, vec![0, 2, 3, 4], 2.),
        ];
        for (setter, index, want) in cases {
            let got = setter.apply(&corrupted, &index, &clean).unwrap();
            assert_eq!(count(got), want, "{setter:?}");
        }
        let patched = PatchSetter::LayerPos.apply(&corrupted, &[0, 2], &clean).unwrap();
        assert_eq!(
            patched
                .get(1)
                .unwrap()
                .get(2)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            20.
        );
        assert!(PatchSetter::LayerPos.apply(&corrupted, &[0, 3], &clean).is_err());
        assert!(PatchSetter::LayerPos.apply(&corrupted, &[0], &clean).is_err());
        let custom = PatchSetter::custom(|_c, _i, clean| Ok(clean.clone()));
        assert_eq!(count(custom.apply(&corrupted, &[0], &clean).unwrap()), 120.);
    }
}

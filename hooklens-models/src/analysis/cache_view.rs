//! `Analysis`: a GPT-2 and an activation cache of one of its runs, TransformerLens's
//! `ActivationCache` methods that need the model.

use candle_core::{DType, Tensor};
use hooklens_core::{ActivationCache, Error, Result, Slice};

use super::act_name::{act_name, act_name_in};
use crate::HookedTransformer;

/// A model and a cache of its activations: TransformerLens's `ActivationCache` with its
/// `model` (lookups by `(name, layer)`, residual decompositions, logit attribution).
///
/// Activations have TransformerLens's shapes, with the batch axis unless the cache was
/// made with `remove_batch_dim`; every method works either way (positions are axis
/// `-2` of residual-stream tensors). In shapes below, `...` is `batch, pos` (or `pos`,
/// or what a position slice left of them).
///
/// Every "up to layer" argument (`layer: Option<isize>` in the option structs) takes
/// `0..=n_layers`: `None` and `-1` mean `n_layers` (the unembedding's input), other
/// negative values count back from there (`-2` = `n_layers - 1`). Lookups by layer
/// ([`Analysis::get`]) count from the end as indices do (`-1` = the last block).
///
/// The cache is held by value: cloning an [`ActivationCache`] shares its tensors.
#[derive(Clone, Debug)]
pub struct Analysis<'a> {
    pub(crate) model: &'a HookedTransformer,
    pub(crate) cache: ActivationCache,
}

/// A stack of residual-stream components with one label per component (the first axis).
#[derive(Clone, Debug)]
pub struct LabeledStack {
    /// `[components, ..., d_model]` (or `[components, ...]` once projected onto a direction).
    pub stack: Tensor,
    /// One label per component, in order (`"0_pre"`, `"L1H3"`, `"embed"`, ...).
    pub labels: Vec<String>,
}

impl<'a> Analysis<'a> {
    /// The analysis of `cache`, recorded from `model` (TransformerLens's
    /// `ActivationCache(cache_dict, model)`).
    pub fn new(model: &'a HookedTransformer, cache: ActivationCache) -> Self {
        Analysis { model, cache }
    }

    /// The model.
    pub fn model(&self) -> &'a HookedTransformer {
        self.model
    }

    /// The cache (with head results added by [`Analysis::compute_head_results`]).
    pub fn cache(&self) -> &ActivationCache {
        &self.cache
    }

    /// The cache, giving up the analysis.
    pub fn into_cache(self) -> ActivationCache {
        self.cache
    }

    /// The model's number of blocks.
    pub fn n_layers(&self) -> usize {
        self.model.cfg().n_layers
    }

    /// Whether activations still have their batch axis.
    pub fn has_batch_dim(&self) -> bool {
        self.cache.has_batch_dim()
    }

    /// An activation by full hook name or shorthand (`"blocks.0.hook_resid_pre"`,
    /// `"embed"`, `"k6"`; TransformerLens's `cache[key]`).
    pub fn get_by_name(&self, key: &str) -> Result<&Tensor> {
        if let Some(t) = self.cache.get(key) {
            return Ok(t);
        }
        self.cache.try_get(&act_name(key, None, None)?)
    }

    /// An activation by `(name, layer, layer_type)` as [`act_name`] reads them, negative
    /// layers counting from the end (TransformerLens's `cache[("k", -1)]`).
    pub fn get(&self, name: &str, layer: Option<isize>, layer_type: Option<&str>) -> Result<&Tensor> {
        self.cache
            .try_get(&act_name_in(name, layer, layer_type, self.n_layers())?)
    }

    /// The activation `name` of block `layer` (no negative layers; an internal shortcut).
    pub(crate) fn at(&self, name: &str, layer: usize) -> Result<&Tensor> {
        self.cache.try_get(&act_name(name, Some(layer as isize), None)?)
    }

    /// `layer` as TransformerLens's "up to layer" arguments read it: `None` and `-1` mean
    /// `n_layers` (everything, up to the unembedding), other negative values count from
    /// there (`-2` = `n_layers - 1`); the result is in `[0, n_layers]`.
    pub(crate) fn upto(&self, layer: Option<isize>) -> Result<usize> {
        let n = self.n_layers() as isize;
        let l = match layer {
            None => n,
            Some(l) if l < 0 => n + 1 + l,
            Some(l) => l,
        };
        if l < 0 || l > n {
            return Err(Error::invalid(format!(
                "layer {layer:?} is out of range: expected 0..={n} (or -1 / None for {n}, the unembedding)"
            )));
        }
        Ok(l as usize)
    }

    /// TransformerLens's `apply_slice_to_batch_dim`: every activation sliced on its batch
    /// axis; an index (`Slice::Index`) removes the axis. An error on a cache without one.
    pub fn apply_slice_to_batch_dim(&self, batch_slice: &Slice) -> Result<Analysis<'a>> {
        if !self.cache.has_batch_dim() {
            if *batch_slice == Slice::All {
                return Ok(self.clone());
            }
            return Err(Error::invalid("cannot slice the batch axis of a cache without one"));
        }
        let keeps = !matches!(batch_slice, Slice::Index(_));
        let mut out = ActivationCache::new(keeps);
        for (name, t) in self.cache.iter() {
            out.insert(name, apply_slice(batch_slice, t, 0)?);
        }
        Ok(Analysis::new(self.model, out))
    }

    /// TransformerLens's `remove_batch_dim`: drops the batch axis of every activation
    /// (batch size 1 only; a no-op when already gone).
    pub fn remove_batch_dim(self) -> Result<Self> {
        Ok(Analysis {
            model: self.model,
            cache: self.cache.remove_batch_dim()?,
        })
    }

    /// TransformerLens's `stack_activation`: `name` (with `sublayer_type`, as [`act_name`]
    /// reads it) of every block before `layer` (`None`/`-1`: all blocks), stacked:
    /// `[layers, ...activation shape]`.
    pub fn stack_activation(&self, name: &str, layer: Option<isize>, sublayer_type: Option<&str>) -> Result<Tensor> {
        let upto = self.upto(layer)?;
        if upto == 0 {
            return Err(Error::invalid(format!(
                "stack_activation({name:?}) up to layer 0 stacks nothing"
            )));
        }
        let parts = (0..upto)
            .map(|l| self.get(name, Some(l as isize), sublayer_type).cloned())
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&parts, 0)?)
    }

    /// The residual stream entering `layer` (`0..=n_layers`): `resid_pre` of that block,
    /// or the last block's `resid_post` for `n_layers`. `[..., pos, d_model]`.
    pub(crate) fn resid_entering(&self, layer: usize) -> Result<Tensor> {
        let n = self.n_layers();
        if layer >= n {
            Ok(self.at("resid_post", n - 1)?.clone())
        } else {
            Ok(self.at("resid_pre", layer)?.clone())
        }
    }

    /// An empty stack `[0, ...shape of the sliced embedding]`, for decompositions with
    /// no component (TransformerLens uses `hook_embed`'s shape the same way).
    pub(crate) fn empty_stack(&self, pos_slice: &Slice) -> Result<Tensor> {
        let embed = apply_slice(pos_slice, self.get_by_name("hook_embed")?, -2)?;
        let mut shape = vec![0];
        shape.extend_from_slice(embed.dims());
        Ok(Tensor::zeros(shape, embed.dtype(), embed.device())?)
    }
}

/// Moves axis `axis` of `t` to the front, keeping the others in order.
pub(crate) fn axis_to_front(t: &Tensor, axis: usize) -> Result<Tensor> {
    if axis == 0 {
        return Ok(t.clone());
    }
    let mut order: Vec<usize> = vec![axis];
    order.extend((0..t.rank()).filter(|&d| d != axis));
    Ok(t.permute(order)?)
}

/// Checks that `t` holds integer token ids below `d_vocab`, returning them as u32.
pub(crate) fn token_ids(t: &Tensor, d_vocab: usize) -> Result<Tensor> {
    if !matches!(t.dtype(), DType::U8 | DType::U32 | DType::I64) {
        return Err(Error::invalid(format!(
            "token ids must be an integer tensor (u8, u32 or i64), got {:?}",
            t.dtype()
        )));
    }
    let ids = t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
    if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= d_vocab) {
        return Err(Error::invalid(format!(
            "token id {bad} is outside the vocabulary (0..{d_vocab})"
        )));
    }
    Ok(t.to_dtype(DType::U32)?)
}

/// `slice.apply(t, dim)`, on a contiguous copy when the slice gathers (index lists,
/// strided ranges): candle's `index_select` needs contiguous input, and slices of
/// slices (a position index, then a neuron list) often are not.
pub(crate) fn apply_slice(slice: &Slice, t: &Tensor, dim: isize) -> Result<Tensor> {
    match slice {
        Slice::Indices(_) | Slice::Range { step: 2.., .. } => slice.apply(&t.contiguous()?, dim),
        _ => slice.apply(t, dim),
    }
}

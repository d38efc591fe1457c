//! A key-value cache for incremental decoding.

use candle_core::Tensor;

use super::attention::PastKv;

/// Keys and values of the positions seen so far, per layer (TransformerLens's
/// `HookedTransformerKeyValueCache`). Pass the same cache to successive
/// `forward_with_kv` calls to run only the new positions: keys and values are stored
/// after `hook_k` / `hook_v` (and any q/k norm), so hooks on earlier positions stay in
/// effect; as in TransformerLens, keys are stored before rotary, which is applied to
/// every key again at each step.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    /// Per layer, `[batch, pos, kv_head, d_head]` keys and values.
    pub(crate) layers: Vec<Option<PastKv>>,
    /// The attention mask of every cached position `[batch, pos]` (u8), if one was given.
    pub(crate) mask: Option<Tensor>,
    pub(crate) len: usize,
    pub(crate) batch: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The batch size of the cached sequences (0 while empty).
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The cached keys of `layer`, `[batch, pos, kv_head, d_head]` (TransformerLens's
    /// `past_keys` layout; before rotary in rotary models).
    pub fn keys(&self, layer: usize) -> Option<&Tensor> {
        self.layers.get(layer).and_then(|l| l.as_ref()).map(|(k, _)| k)
    }

    /// The cached values of `layer`, `[batch, pos, kv_head, d_head]`.
    pub fn values(&self, layer: usize) -> Option<&Tensor> {
        self.layers.get(layer).and_then(|l| l.as_ref()).map(|(_, v)| v)
    }
}

//! `ActivationCache`: activations by hook name, in firing order.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::nearest_names;
use crate::safetensors_writer::save_safetensors;
use crate::{Error, Keys, Result};

/// Activations recorded by `run_with_cache`, by TransformerLens hook name, in the
/// order they fired. Tensors share storage with the forward pass (no copies) unless
/// a device move was asked for.
///
/// It reads as a Rust map: `cache["name"]` (panics when absent, as `HashMap`'s index
/// does), [`get`](Self::get), [`try_get`](Self::try_get) (an error suggesting the
/// nearest names), [`keys`](Self::keys), [`values`](Self::values), [`iter`](Self::iter)
/// and `for (name, t) in &cache`, [`len`](Self::len), [`contains_key`](Self::contains_key);
/// `{:?}` prints each name with its shape, not the tensors.
///
/// ```
/// use hooklens::candle_core::{Device, Tensor};
/// use hooklens::{CacheOptions, HookPoint, Hooked, HookedModel};
///
/// #[derive(Hooked)]
/// struct Model {
///     hook_in: HookPoint,
///     hook_out: HookPoint,
/// }
///
/// let model = Model { hook_in: HookPoint::new(), hook_out: HookPoint::new() };
/// let x = Tensor::new(&[[1f32, -2.0, 3.0]], &Device::Cpu)?;
/// let (_, cache) = model.run_with_cache(CacheOptions::new(), |m| {
///     let h = m.hook_in.forward(&x)?;
///     m.hook_out.forward(&h.relu()?)
/// })?;
/// println!("{:?}", cache.keys());               // ["hook_in", "hook_out"]
/// println!("{cache:?}");                        // names and shapes
/// assert_eq!(cache.len(), 2);
/// assert_eq!(cache["hook_out"].to_vec2::<f32>()?, [[1.0, 0.0, 3.0]]);
/// assert!(cache.get("hook_mid").is_none());
/// for (name, t) in &cache {
///     assert_eq!(t.dims(), [1, 3], "{name}");
/// }
/// assert_eq!(format!("{cache:?}"), r#"ActivationCache {"hook_in": [1, 3], "hook_out": [1, 3]}"#);
/// # Ok::<(), hooklens::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct ActivationCache {
    names: Vec<String>,
    tensors: Vec<Tensor>,
    index: HashMap<String, usize>,
    has_batch_dim: bool,
}

/// Metadata keys in saved caches: the firing order is not kept by safetensors itself.
const ORDER_KEY: &str = "hooklens.order";
const BATCH_KEY: &str = "hooklens.has_batch_dim";

impl ActivationCache {
    /// An empty cache whose tensors have a leading batch axis if `has_batch_dim`.
    pub fn new(has_batch_dim: bool) -> Self {
        ActivationCache {
            has_batch_dim,
            ..Default::default()
        }
    }

    /// Adds or replaces `name`; a replaced entry keeps its place in the order.
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        let name = name.into();
        match self.index.get(&name) {
            Some(&i) => self.tensors[i] = t,
            None => {
                self.index.insert(name.clone(), self.names.len());
                self.names.push(name);
                self.tensors.push(t);
            }
        }
    }

    /// The activation named `name`, if cached.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The activation named `name`, or an error suggesting the nearest cached names.
    pub fn try_get(&self, name: &str) -> Result<&Tensor> {
        self.get(name).ok_or_else(|| Error::NotCached {
            name: name.to_string(),
            suggestions: nearest_names(name, self.keys(), 3),
        })
    }

    /// Whether `name` is cached.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Whether `name` is cached (the name a Rust map uses; as [`ActivationCache::contains`]).
    pub fn contains_key(&self, name: &str) -> bool {
        self.contains(name)
    }

    /// Names in firing order (`{:?}` prints them as a list).
    pub fn keys(&self) -> Keys<'_, String> {
        Keys::new(&self.names, String::as_str)
    }

    /// Activations in firing order.
    pub fn values(&self) -> std::slice::Iter<'_, Tensor> {
        self.tensors.iter()
    }

    /// `(name, activation)` in firing order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> + '_ {
        self.names.iter().map(String::as_str).zip(self.tensors.iter())
    }

    /// The number of cached activations.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether tensors still have their leading batch axis.
    pub fn has_batch_dim(&self) -> bool {
        self.has_batch_dim
    }

    /// Drops the batch axis of every tensor (`[1, ...]` -> `[...]`). An error if any
    /// activation has a batch larger than 1; a no-op if the axis is already gone.
    pub fn remove_batch_dim(self) -> Result<Self> {
        if !self.has_batch_dim {
            return Ok(self);
        }
        let mut tensors = Vec::with_capacity(self.tensors.len());
        for (name, t) in self.names.iter().zip(&self.tensors) {
            tensors.push(squeeze_batch(name, t)?);
        }
        Ok(ActivationCache {
            tensors,
            has_batch_dim: false,
            ..self
        })
    }

    /// A copy of the cache with every tensor on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let tensors = self
            .tensors
            .iter()
            .map(|t| t.to_device(device))
            .collect::<candle_core::Result<_>>()?;
        Ok(ActivationCache {
            tensors,
            ..self.clone()
        })
    }

    /// Saves every activation under its hook name as safetensors, a file Python's
    /// `safetensors` opens as is. Written to a temporary name in the same directory and
    /// renamed when complete, so an interrupted save never leaves a file that looks whole.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut metadata = HashMap::new();
        metadata.insert(
            ORDER_KEY.to_string(),
            serde_json::to_string(&self.names).unwrap_or_default(),
        );
        metadata.insert(BATCH_KEY.to_string(), self.has_batch_dim.to_string());
        let tensors: Vec<(&str, &Tensor)> = self.iter().collect();
        save_safetensors(path.as_ref(), tensors, metadata)
    }

    /// Loads a cache written by [`ActivationCache::save`] (or any safetensors file;
    /// without hooklens metadata, names come in sorted order with a batch axis assumed).
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |reason: String| Error::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let extra = meta.metadata().clone().unwrap_or_default();
        let mut map = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| bad(e.to_string()))?;
        let order: Vec<String> = match extra.get(ORDER_KEY) {
            Some(json) => serde_json::from_str(json).map_err(|e| bad(format!("bad `{ORDER_KEY}` metadata: {e}")))?,
            None => {
                let mut names: Vec<String> = map.keys().cloned().collect();
                names.sort();
                names
            }
        };
        let has_batch_dim = extra.get(BATCH_KEY).is_none_or(|v| v == "true");
        let mut cache = ActivationCache::new(has_batch_dim);
        for name in order {
            let t = map
                .remove(&name)
                .ok_or_else(|| bad(format!("metadata lists `{name}` but the file has no such tensor")))?;
            cache.insert(name, t);
        }
        let mut rest: Vec<_> = map.into_iter().collect();
        rest.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in rest {
            cache.insert(name, t);
        }
        Ok(cache)
    }
}

pub(crate) fn squeeze_batch(name: &str, t: &Tensor) -> Result<Tensor> {
    let batch = t.dims().first().copied().unwrap_or(0);
    if batch != 1 {
        return Err(Error::BatchNotOne {
            name: name.to_string(),
            batch,
        });
    }
    Ok(t.squeeze(0)?)
}

/// Names and shapes, in firing order: the tensors' values would bury the names.
impl std::fmt::Debug for ActivationCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActivationCache ")?;
        f.debug_map()
            .entries(self.iter().map(|(n, t)| (n, t.dims().to_vec())))
            .finish()
    }
}

impl std::ops::Index<&str> for ActivationCache {
    type Output = Tensor;

    /// Panics when `name` is not cached, like `HashMap`'s index; use
    /// [`ActivationCache::try_get`] for an error instead.
    fn index(&self, name: &str) -> &Tensor {
        match self.try_get(name) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }
}

impl<'a> IntoIterator for &'a ActivationCache {
    type Item = (&'a str, &'a Tensor);
    type IntoIter =
        std::iter::Zip<std::iter::Map<std::slice::Iter<'a, String>, fn(&String) -> &str>, std::slice::Iter<'a, Tensor>>;

    fn into_iter(self) -> Self::IntoIter {
        let as_str: fn(&String) -> &str = String::as_str;
        self.names.iter().map(as_str).zip(self.tensors.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn sample() -> ActivationCache {
        let mut c = ActivationCache::new(true);
        let d = Device::Cpu;
        c.insert(
            "hook_embed",
            Tensor::arange(0f32, 6., &d).unwrap().reshape((1, 2, 3)).unwrap(),
        );
        c.insert(
            "blocks.0.hook_resid_pre",
            Tensor::ones((1, 2, 3), DType::F32, &d).unwrap(),
        );
        c.insert("a_first_by_name", Tensor::zeros((1, 2), DType::F32, &d).unwrap());
        c
    }

    #[test]
    fn keeps_firing_order_and_indexes_by_name() {
        let c = sample();
        assert_eq!(
            c.keys().collect::<Vec<_>>(),
            ["hook_embed", "blocks.0.hook_resid_pre", "a_first_by_name"]
        );
        assert_eq!(c["hook_embed"].dims(), &[1, 2, 3]);
        let err = c.try_get("hook_embd").unwrap_err().to_string();
        assert!(err.contains("did you mean `hook_embed`"), "{err}");
    }

    #[test]
    fn remove_batch_dim_needs_batch_one() {
        let c = sample().remove_batch_dim().unwrap();
        assert!(!c.has_batch_dim());
        assert_eq!(c["hook_embed"].dims(), &[2, 3]);
        let mut big = ActivationCache::new(true);
        big.insert("x", Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap());
        assert!(matches!(
            big.remove_batch_dim(),
            Err(Error::BatchNotOne { batch: 2, .. })
        ));
    }

    #[test]
    fn save_and_load_round_trip_keeps_order_and_values() {
        let dir = std::env::temp_dir().join(format!("hooklens-cache-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cache.safetensors");
        let c = sample();
        c.save(&path).unwrap();
        let back = ActivationCache::load(&path, &Device::Cpu).unwrap();
        assert_eq!(back.keys().collect::<Vec<_>>(), c.keys().collect::<Vec<_>>());
        assert!(back.has_batch_dim());
        assert_eq!(
            hooklens_testutil::max_abs_diff(&back["hook_embed"], &c["hook_embed"]),
            0.0
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        std::fs::write(&path, b"not safetensors").unwrap();
        assert!(matches!(
            ActivationCache::load(&path, &Device::Cpu),
            Err(Error::BadFile { .. })
        ));
        let missing_dir = dir.join("missing").join("cache.safetensors");
        assert!(matches!(c.save(&missing_dir), Err(Error::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

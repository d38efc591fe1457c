//! Sharded checkpoints: `model.safetensors.index.json` names the shard file of every
//! tensor (`weight_map`); each shard is a safetensors file read tensor by tensor.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use hooklens_core::{Error, Result};

use super::bounded::{read_bounded, MAX_SHARD_INDEX_BYTES};
use super::safetensors::{SafetensorsFile, TensorSource};

/// The shards of one checkpoint, opened (headers read) up front so that a missing or
/// corrupt shard fails before any tensor is read.
pub(crate) struct ShardedSafetensors {
    index: PathBuf,
    shards: Vec<SafetensorsFile>,
    /// Tensor name -> shard.
    shard_of: HashMap<String, usize>,
}

/// What a `model.safetensors.index.json` says: its shard files, each once in order of
/// first mention, and the shard of every tensor.
pub(crate) struct ShardIndex {
    /// File names, relative to the index's folder.
    pub(crate) files: Vec<String>,
    /// Tensor name -> index into `files`.
    pub(crate) shard_of: HashMap<String, usize>,
}

/// The part of a `model.safetensors.index.json` that is read.
#[derive(serde::Deserialize)]
struct RawIndex {
    /// Tensor name -> shard file (in name order, as before: a `BTreeMap`).
    weight_map: Option<BTreeMap<String, String>>,
}

impl ShardIndex {
    /// Reads the index at `index`. A file name that leaves the index's folder, or an
    /// index that is not one, is an error naming the file.
    pub(crate) fn read(index: &Path) -> Result<Self> {
        let bad = |reason: String| Error::BadFile {
            path: index.to_path_buf(),
            reason,
        };
        let text = read_bounded(index, MAX_SHARD_INDEX_BYTES)?;
        // Typed: the rest of the file (`metadata`, ...) is skipped, not kept as values.
        let raw: RawIndex = serde_json::from_str(&text).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => bad(format!("not a safetensors index: {e}")),
            _ => bad(format!("not valid JSON: {e}")),
        })?;
        let map = raw
            .weight_map
            .ok_or_else(|| bad("no `weight_map` object: not a safetensors index".into()))?;
        let mut files: Vec<String> = Vec::new();
        let mut shard_of = HashMap::with_capacity(map.len());
        for (name, file) in map {
            let file = file.as_str();
            let plain = Path::new(file)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain || file.is_empty() {
                return Err(bad(format!(
                    "`weight_map.{name}` is \"{file}\": shards must be files inside the checkpoint's folder"
                )));
            }
            let i = match files.iter().position(|f| f == file) {
                Some(i) => i,
                None => {
                    files.push(file.to_string());
                    files.len() - 1
                }
            };
            shard_of.insert(name, i);
        }
        Ok(ShardIndex { files, shard_of })
    }
}

impl ShardedSafetensors {
    /// Opens the index at `index` and every shard it names (relative to its folder).
    /// A shard outside that folder, a tensor the index places in a shard that lacks
    /// it, or an unreadable shard is an error naming the file.
    pub(crate) fn open(index: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let ShardIndex { files, shard_of } = ShardIndex::read(index)?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let shards = files
            .iter()
            .map(|f| SafetensorsFile::open(&dir.join(f), device, dtype))
            .collect::<Result<Vec<_>>>()?;
        for (name, &i) in &shard_of {
            if !shards[i].contains(name) {
                return Err(Error::BadFile {
                    path: index.to_path_buf(),
                    reason: format!("the index places `{name}` in {}, which does not hold it", files[i]),
                });
            }
        }
        Ok(ShardedSafetensors {
            index: index.to_path_buf(),
            shards,
            shard_of,
        })
    }
}

impl TensorSource for ShardedSafetensors {
    fn contains(&self, name: &str) -> bool {
        self.shard_of.contains_key(name)
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        match self.shard_of.get(name) {
            Some(&i) => self.shards[i].get(name, shape),
            None => Err(Error::BadFile {
                path: self.index.clone(),
                reason: format!("tensor `{name}` is missing (expected shape {shape:?})"),
            }),
        }
    }

    fn get_u8(&self, name: &str, shape: &[usize]) -> Result<Vec<u8>> {
        match self.shard_of.get(name) {
            Some(&i) => self.shards[i].get_u8(name, shape),
            None => Err(Error::BadFile {
                path: self.index.clone(),
                reason: format!("tensor `{name}` is missing (expected u8 {shape:?})"),
            }),
        }
    }

    fn fresh(&self) -> bool {
        true
    }

    fn names(&self) -> Vec<String> {
        self.shards.iter().flat_map(|s| s.names()).collect()
    }

    fn load_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.load_bytes()).fold(0, u64::saturating_add)
    }

    fn dtype(&self) -> DType {
        self.shards.first().map_or(DType::F32, |s| s.dtype())
    }
}

//! The training data: activations at one hook point, read from the safetensors shards
//! `hooklens harvest` writes, and served in batches through a seeded shuffling buffer.

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use hooklens_core::{Error, Result};

use super::rng::Rng;

/// The finished shards `hooklens harvest` wrote into `dir` (`*-shard-*.safetensors`), in
/// the order of the input (names sort as worker, then shard number); possibly none. A
/// shard being written is a hidden temporary file and is not listed.
pub fn harvest_shards(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.contains("-shard-") && name.ends_with(".safetensors") && !name.starts_with('.')
        })
        .collect();
    files.sort();
    Ok(files)
}

/// A harvest's activations at one hook point: every finished shard in `dir`
/// (`*-shard-*.safetensors`, in name order: worker, then shard), each holding a tensor
/// named as the hook point, `[rows, context, d_in]`.
#[derive(Clone, Debug)]
pub struct HarvestActivations {
    hook: String,
    shards: Vec<(PathBuf, usize)>,
    d_in: usize,
}

impl HarvestActivations {
    /// Opens the shards of `dir` and checks that each has `hook`, all of one width;
    /// only the headers are read.
    pub fn open(dir: impl AsRef<Path>, hook: &str) -> Result<Self> {
        let dir = dir.as_ref();
        let files = harvest_shards(dir)?;
        if files.is_empty() {
            return Err(Error::invalid(format!(
                "{}: no harvest shards (*-shard-*.safetensors) in it",
                dir.display()
            )));
        }
        let mut shards = Vec::with_capacity(files.len());
        let mut width: Option<(usize, PathBuf)> = None;
        for file in files {
            let st = map(&file)?;
            let tensors = st.tensors();
            let Some((_, view)) = tensors.iter().find(|(n, _)| n == hook) else {
                let mut names: Vec<&str> = tensors
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .filter(|n| *n != "tokens")
                    .collect();
                names.sort();
                return Err(Error::invalid(format!(
                    "{}: no activations for hook `{hook}` (the shard has {})",
                    file.display(),
                    names.join(", ")
                )));
            };
            let shape = view.shape().to_vec();
            let (rows, d) = match shape.as_slice() {
                [rows, ctx, d] => (rows * ctx, *d),
                [rows, d] => (*rows, *d),
                other => {
                    return Err(Error::invalid(format!(
                        "{}: `{hook}` is {other:?}; training reads [rows, context, d_in] \
                         (per-head activations such as hook_z are not supported yet)",
                        file.display()
                    )))
                }
            };
            match &width {
                Some((w, first)) if *w != d => {
                    return Err(Error::invalid(format!(
                        "shards disagree on the width of `{hook}`: {} has {w}, {} has {d}",
                        first.display(),
                        file.display()
                    )))
                }
                Some(_) => {}
                None => width = Some((d, file.clone())),
            }
            shards.push((file, rows));
        }
        let d_in = width.map(|(w, _)| w).unwrap_or(0);
        if d_in == 0 || shards.iter().all(|(_, r)| *r == 0) {
            return Err(Error::invalid(format!(
                "{}: `{hook}` holds no activations",
                dir.display()
            )));
        }
        Ok(HarvestActivations {
            hook: hook.to_string(),
            shards,
            d_in,
        })
    }

    /// The hook point.
    pub fn hook(&self) -> &str {
        &self.hook
    }

    /// The activations' width.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// How many token activations the shards hold.
    pub fn tokens(&self) -> u64 {
        self.shards.iter().map(|(_, r)| *r as u64).sum()
    }

    /// Batches of `batch_size` activations `[batch_size, d_in]` (f32), shuffled through
    /// a buffer of `n_batches_in_buffer` batches of which half is served after each
    /// shuffle, as SAELens's activation store mixes its buffer. The shards are read
    /// again from the start when exhausted. The sequence is fixed by `seed`.
    pub(crate) fn batches(&self, batch_size: usize, n_batches_in_buffer: usize, seed: u64) -> Batches<'_> {
        Batches {
            src: self,
            rng: Rng::new(seed ^ 0x5348_5546_464c_4531),
            batch_size,
            capacity: batch_size * n_batches_in_buffer.max(2),
            next_shard: 0,
            current: Vec::new(),
            cursor: 0,
            buffer: Vec::new(),
            ready: Vec::new(),
            ready_pos: 0,
        }
    }

    fn load_shard(&self, i: usize) -> Result<Vec<f32>> {
        let (file, _) = &self.shards[i];
        let st = map(file)?;
        let t = st
            .load(&self.hook, &Device::Cpu)
            .map_err(|e| Error::invalid(format!("{}: reading `{}`: {e}", file.display(), self.hook)))?;
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
    }
}

fn map(file: &Path) -> Result<MmapedSafetensors> {
    // SAFETY: harvest writes a shard under a temporary name and renames it when
    // complete, and never writes a finished shard again, so the mapping does not change.
    unsafe { MmapedSafetensors::new(file) }
        .map_err(|e| Error::invalid(format!("{}: not a readable safetensors file: {e}", file.display())))
}

/// The batch iterator of [`HarvestActivations::batches`].
pub(crate) struct Batches<'a> {
    src: &'a HarvestActivations,
    rng: Rng,
    batch_size: usize,
    capacity: usize,
    next_shard: usize,
    current: Vec<f32>,
    cursor: usize,
    /// Activations waiting to be mixed, `d_in` values each.
    buffer: Vec<f32>,
    /// Shuffled activations being served.
    ready: Vec<f32>,
    ready_pos: usize,
}

impl Batches<'_> {
    /// The next batch `[batch_size, d_in]`.
    pub(crate) fn next_batch(&mut self) -> Result<Tensor> {
        let d = self.src.d_in;
        let want = self.batch_size * d;
        let mut out = Vec::with_capacity(want);
        while out.len() < want {
            if self.ready_pos == self.ready.len() {
                self.refill()?;
            }
            let take = (want - out.len()).min(self.ready.len() - self.ready_pos);
            out.extend_from_slice(&self.ready[self.ready_pos..self.ready_pos + take]);
            self.ready_pos += take;
        }
        Ok(Tensor::from_vec(out, (self.batch_size, d), &Device::Cpu)?)
    }

    /// Fills the buffer from the shards, shuffles it and moves its first half out to be
    /// served.
    fn refill(&mut self) -> Result<()> {
        let d = self.src.d_in;
        while self.buffer.len() < self.capacity * d {
            if self.cursor == self.current.len() {
                self.current = self.src.load_shard(self.next_shard)?;
                self.cursor = 0;
                self.next_shard = (self.next_shard + 1) % self.src.shards.len();
                continue;
            }
            let take = (self.capacity * d - self.buffer.len()).min(self.current.len() - self.cursor);
            self.buffer
                .extend_from_slice(&self.current[self.cursor..self.cursor + take]);
            self.cursor += take;
        }
        let n = self.buffer.len() / d;
        for i in (1..n).rev() {
            let j = self.rng.below(i + 1);
            if i != j {
                for c in 0..d {
                    self.buffer.swap(i * d + c, j * d + c);
                }
            }
        }
        let half = n / 2;
        self.ready = self.buffer.drain(..half * d).collect();
        self.ready_pos = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    pub(crate) fn write_shard(path: &Path, hook: &str, rows: usize, ctx: usize, d: usize, start: f32) {
        let v: Vec<f32> = (0..rows * ctx * d).map(|i| start + i as f32).collect();
        let t = Tensor::from_vec(v, (rows, ctx, d), &Device::Cpu).unwrap();
        let tokens = Tensor::zeros((rows, ctx), DType::I64, &Device::Cpu).unwrap();
        let map: HashMap<String, Tensor> = [(hook.to_string(), t), ("tokens".to_string(), tokens)].into();
        candle_core::safetensors::save(&map, path).unwrap();
    }

    #[test]
    fn every_activation_is_served_once_per_pass_and_seeded() {
        let dir = hooklens_testutil::TempDir::new("train-acts");
        write_shard(&dir.path("00000-of-00001-shard-000000.safetensors"), "h", 2, 4, 3, 0.0);
        write_shard(&dir.path("00000-of-00001-shard-000001.safetensors"), "h", 2, 4, 3, 24.0);
        let src = HarvestActivations::open(&dir.0, "h").unwrap();
        assert_eq!((src.d_in(), src.tokens()), (3, 16));
        let collect = |seed| {
            let mut b = src.batches(4, 2, seed);
            (0..4)
                .map(|_| b.next_batch().unwrap().to_vec2::<f32>().unwrap())
                .collect::<Vec<_>>()
        };
        let a = collect(1);
        assert_eq!(a, collect(1));
        assert_ne!(a, collect(2));
        // Rows stay whole (each row's first value is a multiple of 3).
        for row in a.iter().flatten() {
            assert_eq!(row[0] % 3.0, 0.0);
            assert_eq!(row[1], row[0] + 1.0);
        }
        let err = HarvestActivations::open(&dir.0, "nope").unwrap_err().to_string();
        assert!(
            err.contains("no activations for hook `nope`") && err.contains('h'),
            "{err}"
        );
        write_shard(&dir.path("00000-of-00001-shard-000002.safetensors"), "h", 1, 4, 5, 0.0);
        let err = HarvestActivations::open(&dir.0, "h").unwrap_err().to_string();
        assert!(err.contains("disagree on the width") && err.contains("has 5"), "{err}");
    }
}

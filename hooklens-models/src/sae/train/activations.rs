//! The training data as a harvest holds it: activations at one hook point, read from
//! the safetensors shards `hooklens harvest` writes. (A model's activations computed on
//! the fly are `model_source.rs`'s; `batches.rs` serves either through its shuffling
//! buffer.)

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use hooklens_core::{Error, Result};

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

/// A harvest's activations at one hook point (or, for a transcoder, at two: its input
/// and its target, row for row): every finished shard in `dir` (`*-shard-*.safetensors`,
/// in name order: worker, then shard), each holding a tensor named as the hook point,
/// `[rows, context, d_in]`.
#[derive(Clone, Debug)]
pub struct HarvestActivations {
    hook: String,
    shards: Vec<(PathBuf, usize)>,
    d_in: usize,
    /// A transcoder's target hook and its width.
    out: Option<(String, usize)>,
}

/// `hook`'s rows (positions) and width in one shard, or an error naming the shard's
/// tensors.
fn rows_and_width(st: &MmapedSafetensors, file: &Path, hook: &str) -> Result<(usize, usize)> {
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
    match shape.as_slice() {
        [rows, ctx, d] => Ok((rows * ctx, *d)),
        [rows, d] => Ok((*rows, *d)),
        other => Err(Error::invalid(format!(
            "{}: `{hook}` is {other:?}; training reads [rows, context, d_in] \
             (per-head activations such as hook_z are not supported yet)",
            file.display()
        ))),
    }
}

/// Checks that `hook` is `d` wide in `file` as in the first shard.
fn same_width(width: &mut Option<(usize, PathBuf)>, hook: &str, d: usize, file: &Path) -> Result<()> {
    match width {
        Some((w, first)) if *w != d => Err(Error::invalid(format!(
            "shards disagree on the width of `{hook}`: {} has {w}, {} has {d}",
            first.display(),
            file.display()
        ))),
        Some(_) => Ok(()),
        None => {
            *width = Some((d, file.to_path_buf()));
            Ok(())
        }
    }
}

impl HarvestActivations {
    /// Opens the shards of `dir` and checks that each has `hook`, all of one width;
    /// only the headers are read.
    pub fn open(dir: impl AsRef<Path>, hook: &str) -> Result<Self> {
        Self::open_with(dir.as_ref(), hook, None)
    }

    /// Opens a transcoder's data: `hook` (its input) and `hook_out` (its target) of the
    /// same harvest, which stores every hook it harvested in each shard, position for
    /// position; each shard must hold both, with the same number of positions.
    pub fn open_transcoder(dir: impl AsRef<Path>, hook: &str, hook_out: &str) -> Result<Self> {
        if hook == hook_out {
            return Err(Error::invalid(format!(
                "a transcoder's input and output hooks are both `{hook}`; to reconstruct a hook, train an SAE"
            )));
        }
        Self::open_with(dir.as_ref(), hook, Some(hook_out))
    }

    fn open_with(dir: &Path, hook: &str, hook_out: Option<&str>) -> Result<Self> {
        let files = harvest_shards(dir)?;
        if files.is_empty() {
            return Err(Error::invalid(format!(
                "{}: no harvest shards (*-shard-*.safetensors) in it",
                dir.display()
            )));
        }
        let mut shards = Vec::with_capacity(files.len());
        let mut width: Option<(usize, PathBuf)> = None;
        let mut width_out: Option<(usize, PathBuf)> = None;
        for file in files {
            let st = map(&file)?;
            let (rows, d) = rows_and_width(&st, &file, hook)?;
            same_width(&mut width, hook, d, &file)?;
            if let Some(h) = hook_out {
                let (rows_out, d_out) = rows_and_width(&st, &file, h)?;
                if rows_out != rows {
                    return Err(Error::invalid(format!(
                        "{}: `{hook}` has {rows} positions and `{h}` {rows_out}; a transcoder needs them row for row",
                        file.display()
                    )));
                }
                same_width(&mut width_out, h, d_out, &file)?;
            }
            shards.push((file, rows));
        }
        let d_in = width.map(|(w, _)| w).unwrap_or(0);
        let d_out = width_out.map(|(w, _)| w).unwrap_or(0);
        if d_in == 0 || (hook_out.is_some() && d_out == 0) || shards.iter().all(|(_, r)| *r == 0) {
            return Err(Error::invalid(format!(
                "{}: `{hook}` holds no activations",
                dir.display()
            )));
        }
        Ok(HarvestActivations {
            hook: hook.to_string(),
            shards,
            d_in,
            out: hook_out.map(|h| (h.to_string(), d_out)),
        })
    }

    /// The hook point (a transcoder's input).
    pub fn hook(&self) -> &str {
        &self.hook
    }

    /// The activations' width (a transcoder's input width).
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// A transcoder's target hook point and its width.
    pub fn hook_out(&self) -> Option<(&str, usize)> {
        self.out.as_ref().map(|(h, d)| (h.as_str(), *d))
    }

    /// The width of one served row: `d_in`, plus `d_out` for a transcoder (its input and
    /// target side by side).
    pub(crate) fn row_width(&self) -> usize {
        self.d_in + self.out.as_ref().map_or(0, |(_, d)| *d)
    }

    /// How many token activations the shards hold.
    pub fn tokens(&self) -> u64 {
        self.shards.iter().map(|(_, r)| *r as u64).sum()
    }

    fn load_hook(&self, file: &Path, st: &MmapedSafetensors, hook: &str) -> Result<Vec<f32>> {
        let t = st
            .load(hook, &Device::Cpu)
            .map_err(|e| Error::invalid(format!("{}: reading `{hook}`: {e}", file.display())))?;
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
    }

    /// How many shards there are.
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Shard `i`'s rows, `row_width` values each.
    pub(crate) fn load_shard(&self, i: usize) -> Result<Vec<f32>> {
        let (file, rows) = &self.shards[i];
        let st = map(file)?;
        let input = self.load_hook(file, &st, &self.hook)?;
        let Some((hook_out, d_out)) = &self.out else {
            return Ok(input);
        };
        let target = self.load_hook(file, &st, hook_out)?;
        debug_assert_eq!(input.len(), rows * self.d_in);
        Ok(side_by_side(&input, self.d_in, &target, *d_out))
    }
}

/// Rows of `input` (`d_in` wide) and `target` (`d_out` wide) side by side, row for row.
pub(crate) fn side_by_side(input: &[f32], d_in: usize, target: &[f32], d_out: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(input.len() + target.len());
    for (x, y) in input.chunks(d_in).zip(target.chunks(d_out)) {
        out.extend_from_slice(x);
        out.extend_from_slice(y);
    }
    out
}

fn map(file: &Path) -> Result<MmapedSafetensors> {
    // SAFETY: harvest writes a shard under a temporary name and renames it when
    // complete, and never writes a finished shard again, so the mapping does not change.
    unsafe { MmapedSafetensors::new(file) }
        .map_err(|e| Error::invalid(format!("{}: not a readable safetensors file: {e}", file.display())))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Tensor;

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

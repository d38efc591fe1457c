//! What hooklens's test suites would otherwise each write again: the largest absolute
//! difference of two tensors, the TransformerLens reference fixtures under `testdata/`,
//! a temporary directory removed on drop, the device the parity tests run on, and the
//! Hugging Face hub with no network ([`hub_standin`]).
//!
//! A dev-dependency only: nothing here is part of hooklens's public API.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};

pub mod hub_standin;

/// The largest absolute difference between two tensors of the same shape, compared in
/// f32 (so mixed dtypes and half precision compare as their values), on any device.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "max_abs_diff of tensors of different shapes");
    // An empty tensor has no largest element; nothing differs.
    if a.elem_count() == 0 {
        return 0.0;
    }
    let b = b.to_device(a.device()).unwrap();
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Checks `got` against a reference `want` as the fixtures' README asks: same shape,
/// within `rel` of `want`'s largest finite magnitude, and an infinity exactly where `want`
/// has one (the attention mask's `-inf`). `got` may live on any device.
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, rel: f32) {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let values = |t: &Tensor| {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (g, w) = (values(got), values(want));
    let scale = w
        .iter()
        .filter(|x| x.is_finite())
        .fold(0f32, |m, x| m.max(x.abs()))
        .max(1e-12);
    let mut worst = 0f32;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        if b.is_infinite() || a.is_infinite() {
            assert_eq!(a, b, "{name}: element {i}: got {a}, want {b}");
            continue;
        }
        assert!(a.is_finite(), "{name}: element {i} is {a}");
        worst = worst.max((a - b).abs());
    }
    assert!(worst <= rel * scale, "{name}: max abs diff {worst} > {rel} * {scale}");
}

/// The repository's `testdata/` folder: the TransformerLens reference fixtures.
pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

/// Every tensor of a safetensors file, by name, on the CPU; panics naming the file.
pub fn load_tensors(path: impl AsRef<Path>) -> HashMap<String, Tensor> {
    let path = path.as_ref();
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A reference file of a fixture, e.g. `reference("tiny-gpt2", "tl_processed.safetensors")`.
pub fn reference(fixture: &str, file: &str) -> HashMap<String, Tensor> {
    load_tensors(testdata().join(fixture).join(file))
}

/// The fixture's tokens (`tokens.safetensors`, entry `tokens`), i64 on the CPU.
pub fn reference_tokens(fixture: &str) -> Tensor {
    reference(fixture, "tokens.safetensors")
        .remove("tokens")
        .unwrap_or_else(|| panic!("{fixture}/tokens.safetensors has no `tokens`"))
}

/// The environment variable that moves the parity tests onto a GPU: `cpu` (the default),
/// `cuda`, `cuda:N` or `metal`. `scripts/gpu-check.sh` sets it.
pub const TEST_DEVICE_ENV: &str = "HOOKLENS_TEST_DEVICE";

/// The device named by [`TEST_DEVICE_ENV`]. A GPU that was asked for but cannot be opened
/// (a build without its feature, no driver) panics rather than falling back to the CPU, so
/// a GPU check can never pass by quietly testing the CPU.
pub fn test_device() -> Device {
    let name = std::env::var(TEST_DEVICE_ENV).unwrap_or_default();
    let device = match name.as_str() {
        "" | "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0),
        "metal" => Device::new_metal(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::new_cuda(n),
            None => panic!("{TEST_DEVICE_ENV}={other}: expected cpu, cuda, cuda:N or metal"),
        },
    };
    device.unwrap_or_else(|e| panic!("{TEST_DEVICE_ENV}={name}: {e}"))
}

/// The tolerance, on `device`, of a comparison made at `cpu_rel` on the CPU. GPU kernels
/// sum in other orders (tree reductions, split-K products), so a GPU run is held to at
/// most 1e-3 of the reference's largest magnitude: still far below what a wrong hook,
/// weight or mask gives, and above f32 rounding with candle's default of full-precision
/// (not TF32) f32 products.
pub fn tolerance_on(device: &Device, cpu_rel: f32) -> f32 {
    if device.is_cpu() {
        cpu_rel
    } else {
        cpu_rel.max(1e-3)
    }
}

/// A fresh, empty temporary directory for one test, removed (with its contents) when
/// dropped. Its name holds the tag, the process and a per-process counter, so tests
/// running in parallel, or two directories with one tag, never share one.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates the directory, named after `tag`.
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("hooklens-test-{tag}-{}-{n}", std::process::id()));
        // A directory left by an earlier process with the same id would not be empty.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        TempDir(dir)
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// [`TempDir::path`] as a string, for command-line arguments.
    pub fn s(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_abs_diff_is_the_largest_difference_across_dtypes() {
        let a = Tensor::new(&[1f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1.5f64, 2.0, 3.0], &Device::Cpu).unwrap();
        assert_eq!(max_abs_diff(&a, &b), 4.0);
        assert_eq!(max_abs_diff(&a, &a), 0.0);
    }

    #[test]
    #[should_panic(expected = "element 1")]
    fn assert_close_wants_infinities_where_the_reference_has_them() {
        let want = Tensor::new(&[1f32, f32::NEG_INFINITY], &Device::Cpu).unwrap();
        let got = Tensor::new(&[1f32, -1e9], &Device::Cpu).unwrap();
        assert_close("mask", &got, &want, 1e-4);
    }

    #[test]
    fn temp_dirs_are_distinct_and_removed_on_drop() {
        let (a, b) = (TempDir::new("same"), TempDir::new("same"));
        assert_ne!(&*a, &*b);
        std::fs::write(a.path("f"), b"x").unwrap();
        let kept = a.to_path_buf();
        drop(a);
        assert!(!kept.exists());
    }
}

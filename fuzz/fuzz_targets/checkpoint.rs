//! Checkpoint loading from untrusted bytes: a `config.json` and a safetensors file.
//!
//! Input layout: a little-endian `u16` length `n`, then `n` bytes of config JSON, then
//! the safetensors bytes. Both are written to files (the loader memory-maps a path) and
//! loaded through every entry point that reads them; each must return `Ok` or `Err`,
//! never panic or abort. A model that loads must also run one forward pass.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use hooklens_core::ActivationCache;
use hooklens_models::{TransformerConfig, HookedTransformer, LoadOptions};
use libfuzzer_sys::fuzz_target;

/// One directory per fuzzing process: libFuzzer runs inputs one at a time in a process,
/// so the two files can be overwritten each iteration. tmpfs when there is one, since
/// every input is written.
fn work_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("hooklens-fuzz-checkpoint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        dir
    })
}

fn forward_once(model: &HookedTransformer) {
    let tokens = Tensor::new(&[[0u32]], &Device::Cpu).expect("a tensor");
    // A loaded model may still fail at run time (e.g. a huge n_ctx cannot be masked),
    // but only with an error.
    let _ = model.forward(&tokens);
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = u16::from_le_bytes([data[0], data[1]]) as usize;
    let rest = &data[2..];
    let (config, weights) = rest.split_at(n.min(rest.len()));
    let dir = work_dir();
    let (config_path, weights_path) = (dir.join("config.json"), dir.join("model.safetensors"));
    std::fs::write(&config_path, config).expect("write config");
    std::fs::write(&weights_path, weights).expect("write weights");

    for opts in [LoadOptions::no_processing(), LoadOptions::default()] {
        if let Ok(model) = HookedTransformer::from_files(&config_path, &weights_path, &opts) {
            forward_once(&model);
        }
    }
    // The in-memory path: a VarBuilder over the same bytes.
    if let Ok(text) = std::str::from_utf8(config) {
        if let Ok(cfg) = TransformerConfig::from_hf_str(text, "config.json") {
            if let Ok(vb) = candle_nn::VarBuilder::from_buffered_safetensors(weights.to_vec(), DType::F32, &Device::Cpu)
            {
                if let Ok(model) = HookedTransformer::load(vb, &cfg) {
                    forward_once(&model);
                }
            }
        }
    }
    // The same bytes as a saved activation cache.
    let _ = ActivationCache::load(&weights_path, &Device::Cpu);
});

//! Reads back the shards `hooklens harvest` wrote: every worker's finished shards, in
//! order, one at a time (memory-mapped, so a shard is never read whole unless asked).
//!
//! `cargo run --release --example read_shards -- DIR [HOOK_NAME]`
//!
//! Prints each shard's tensors and, for HOOK_NAME (the first activation by default),
//! the mean L2 norm of its vectors at each shard, a typical first look before training
//! a sparse autoencoder on them. Only finished shards have their final names
//! (`IIIII-of-KKKKK-shard-NNNNNN.safetensors`); one being written is a hidden
//! temporary file, so listing the directory never sees half a shard.

use std::path::Path;

use hooklens::candle_core::safetensors::MmapedSafetensors;
use hooklens::candle_core::{DType, Device, D};
use hooklens::models::sae::train::harvest_shards;

fn main() -> hooklens::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: read_shards DIR [HOOK_NAME]   (DIR: the --out of `hooklens harvest`)");
        std::process::exit(2);
    };
    let files = harvest_shards(Path::new(dir))?;
    if files.is_empty() {
        return Err(hooklens::Error::invalid(format!(
            "{dir}: no *-shard-*.safetensors files"
        )));
    }
    let mut total_rows = 0;
    for file in &files {
        // SAFETY: finished shards are never written again (harvest writes new files
        // under temporary names and renames them), so the mapped file does not change.
        let st = unsafe { MmapedSafetensors::new(file) }?;
        let mut names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
        names.sort();
        let tokens = st.load("tokens", &Device::Cpu)?;
        let (rows, ctx) = tokens.dims2()?;
        total_rows += rows;
        let hook = match args.get(1) {
            Some(h) => h.clone(),
            None => names.iter().find(|n| *n != "tokens").cloned().unwrap_or_default(),
        };
        let acts = st.load(&hook, &Device::Cpu).map_err(|_| {
            hooklens::Error::invalid(format!("{}: no tensor `{hook}` (it has {names:?})", file.display()))
        })?;
        // The mean L2 norm over the last axis (d_model, or d_head for hook_z).
        let norm = acts
            .to_dtype(DType::F32)?
            .sqr()?
            .sum(D::Minus1)?
            .sqrt()?
            .mean_all()?
            .to_scalar::<f32>()?;
        println!(
            "{}: {rows} sequences x {ctx} tokens; {hook} {:?}, mean norm {norm:.3}",
            file.file_name().unwrap_or_default().to_string_lossy(),
            acts.dims()
        );
    }
    println!("{} shards, {total_rows} sequences in all", files.len());
    Ok(())
}

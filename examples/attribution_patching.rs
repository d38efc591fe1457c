//! Attribution patching next to activation patching, on `blocks.L.hook_resid_pre` for
//! every layer and position.
//!
//! `cargo run --release --example attribution_patching [-- MODEL]`
//!
//! MODEL is a directory or a Hugging Face id (default: the TransformerLens reference
//! checkpoint in testdata/, offline). The metric is the logit difference, at the last
//! position, between the clean run's top token and the corrupted run's top token.
//! Activation patching runs the corrupted prompt once per (layer, position) with the
//! clean activation patched in. Attribution patching approximates all of them from one
//! clean run and one corrupted forward+backward: `(clean - corrupted) . d metric / d act`.

use hooklens::candle_core::{DType, IndexOp, Tensor};
use hooklens::{CacheOptions, HookPoint, HookSet, HookedModel, HookedTransformer, LoadOptions};

fn metric(logits: &Tensor, good: u32, bad: u32) -> hooklens::candle_core::Result<Tensor> {
    let last = logits.i((0, logits.dim(1)? - 1))?;
    last.i(good as usize)? - last.i(bad as usize)?
}

fn argmax_last(logits: &Tensor) -> hooklens::candle_core::Result<u32> {
    logits.i((0, logits.dim(1)? - 1))?.argmax(0)?.to_scalar::<u32>()
}

fn pearson(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len() as f32;
    let (ma, mb) = (a.iter().sum::<f32>() / n, b.iter().sum::<f32>() / n);
    let cov: f32 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f32 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f32 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va.sqrt() * vb.sqrt()).max(f32::MIN_POSITIVE)
}

fn print_grid(title: &str, values: &[f32], n_layers: usize, n_pos: usize) {
    println!("{title}");
    print!("{:>8}", "layer");
    for p in 0..n_pos {
        print!("{:>8}", format!("pos {p}"));
    }
    println!();
    for l in 0..n_layers {
        print!("{l:>8}");
        for p in 0..n_pos {
            print!("{:>8.3}", values[l * n_pos + p]);
        }
        println!();
    }
}

fn main() -> hooklens::Result<()> {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/tiny-gpt2/model").to_string());
    let model = HookedTransformer::from_pretrained(&name, &LoadOptions::default())?;
    let n_layers = model.cfg().n_layers;

    // Two prompts of one length: the fixture's token rows, or two sentences for GPT-2.
    let (clean, corrupted) = if model.cfg().d_vocab >= 50257 {
        (
            model.to_tokens(
                "When Mary and John went to the store, John gave a drink to",
                true,
                hooklens::models::model::PaddingSide::Right,
            )?,
            model.to_tokens(
                "When Mary and John went to the store, Mary gave a drink to",
                true,
                hooklens::models::model::PaddingSide::Right,
            )?,
        )
    } else {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/tiny-gpt2/tokens.safetensors");
        let tokens = hooklens::candle_core::safetensors::load(path, model.device())?
            .remove("tokens")
            .ok_or_else(|| hooklens::Error::invalid("no `tokens` in the fixture"))?;
        (tokens.i(0..1)?, tokens.i(1..2)?)
    };
    if clean.dims() != corrupted.dims() {
        return Err(hooklens::Error::invalid(
            "clean and corrupted prompts must have the same length",
        ));
    }
    let n_pos = clean.dim(1)?;
    let names = "blocks.*.hook_resid_pre";

    let (clean_logits, clean_cache) = model.run_with_cache(CacheOptions::new().names(names), |m| m.forward(&clean))?;
    let good = argmax_last(&clean_logits)?;
    let bad = argmax_last(&model.forward(&corrupted)?)?;
    let bad = if bad == good {
        (good + 1) % model.cfg().d_vocab as u32
    } else {
        bad
    };
    let clean_metric = metric(&clean_logits, good, bad)?.to_scalar::<f32>()?;

    // One forward and backward on the corrupted prompt gives every gradient at once.
    let (corrupted_metric, corrupted_cache) = model.run_with_cache_bwd(
        CacheOptions::new().names(names),
        HookSet::new(),
        |m| -> hooklens::Result<Tensor> { Ok(metric(&m.forward(&corrupted)?, good, bad)?) },
    )?;
    let corrupted_metric = corrupted_metric.to_scalar::<f32>()?;

    let mut attribution = Vec::with_capacity(n_layers * n_pos);
    let mut patched = Vec::with_capacity(n_layers * n_pos);
    for layer in 0..n_layers {
        let hook = format!("blocks.{layer}.hook_resid_pre");
        let diff = (clean_cache.try_get(&hook)? - corrupted_cache.try_get(&hook)?)?;
        let grad = corrupted_cache.try_get(&format!("{hook}_grad"))?;
        // [1, pos, d_model] -> [pos]
        let per_pos = (diff * grad)?.sum(2)?.i(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        attribution.extend(per_pos);
        for pos in 0..n_pos {
            let clean_act = clean_cache.try_get(&hook)?.clone();
            let patch = HookSet::new().fwd(hook.as_str(), move |x: &Tensor, _: &HookPoint| {
                let row = clean_act.narrow(1, pos, 1)?;
                Ok(Some(x.slice_assign(&[0..x.dim(0)?, pos..pos + 1, 0..x.dim(2)?], &row)?))
            });
            let logits = model.run_with_hooks(patch, |m| m.forward(&corrupted))?;
            patched.push(metric(&logits, good, bad)?.to_scalar::<f32>()? - corrupted_metric);
        }
    }

    println!("model: {name}");
    println!("metric: logit[{good}] - logit[{bad}] at the last position");
    println!("clean metric {clean_metric:.4}, corrupted metric {corrupted_metric:.4}\n");
    print_grid(
        "activation patching (metric change, one run per cell):",
        &patched,
        n_layers,
        n_pos,
    );
    println!();
    print_grid(
        "attribution patching (gradient x difference, one backward):",
        &attribution,
        n_layers,
        n_pos,
    );
    println!(
        "\ncorrelation between the two grids: {:.3}",
        pearson(&patched, &attribution)
    );
    Ok(())
}

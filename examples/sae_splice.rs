//! An SAE spliced into a model, as SAELens's `HookedSAETransformer` does: its features
//! cached, one ablated, one steered with. On the SAELens reference files shipped in
//! `testdata/` (offline): `cargo run --release --example sae_splice`.
//!
//! Give it a model and an SAE folder (`-- MODEL SAE_DIR`) to run your own, e.g. `gpt2`
//! and a folder of `jbloom/GPT2-Small-SAEs-Reformatted`.

use hooklens::candle_core::{Device, Tensor};
use hooklens::{CacheOptions, HookedModel, HookedTransformer, LoadOptions, Sae, SaeModel, SaeSet};

fn main() -> hooklens::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let model_dir = args.get(1).map_or(root.join("tiny-gpt2/model"), Into::into);
    let sae_dir = args.get(2).map_or(root.join("saes/saes/standard"), Into::into);

    let model = HookedTransformer::from_dir(&model_dir, &LoadOptions::no_processing())?;
    let sae = Sae::from_dir(&sae_dir, &Device::Cpu)?; // cfg.json + sae_weights.safetensors
    let tokens = Tensor::new(&[[model.bos_token_id()?, 3, 17, 42, 3, 17]], &Device::Cpu)?;

    // SAELens's run_with_cache_with_saes: the SAE's points are named under the one it replaces.
    let acts_name = sae.hook_name("hook_sae_acts_post");
    let (_, cache) = model.run_with_cache_with_saes(&sae, CacheOptions::new(), |m| m.forward(&tokens))?;
    let acts = &cache[acts_name.as_str()]; // [batch, pos, d_sae]
    let top = Sae::top_features(&acts.get(0)?.get(5)?, 3)?;
    println!("{acts_name} {:?}; top features at position 5: {top:?}", acts.dims());

    // Ablate the strongest one there, the rest of the model as it was (error term on).
    let (feature, _) = top[0];
    let with_error = SaeSet::new().sae_with_error_term(&sae);
    let ablate = sae.zero_feature(feature, Some(&[5]))?;
    let loss = |logits: &Tensor| -> hooklens::Result<f32> { Ok(logits.get(0)?.get(5)?.max(0)?.to_scalar::<f32>()?) };
    let plain = model.forward(&tokens)?;
    let ablated = model.run_with_hooks_with_saes(with_error, ablate, |m| m.forward(&tokens))?;
    println!(
        "top logit at position 5: {:.4} plain, {:.4} with feature {feature} ablated",
        loss(&plain)?,
        loss(&ablated)?
    );

    // Steer: add 5 x its decoder row at every position, no SAE spliced in.
    let steered = model.run_with_hooks(sae.steer(feature, 5.0, None)?, |m| m.forward(&tokens))?;
    println!("top logit at position 5 steered: {:.4}", loss(&steered)?);
    Ok(())
}

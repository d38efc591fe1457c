//! A hooked GPT-2 with an activation cache and a zero-ablation hook.
//!
//! `cargo run --release --example gpt2_cache [-- MODEL]`
//!
//! MODEL is a model directory (`config.json` + `model.safetensors`) or a Hugging Face
//! id such as `gpt2`; by default the TransformerLens reference checkpoint shipped in
//! `testdata/tiny-gpt2/model`, so it runs offline. The tiny checkpoint has random
//! weights and a 512-token vocabulary, so it runs on fixed token ids instead of text.

use hooklens::candle_core::Tensor;
use hooklens::models::model::PaddingSide;
use hooklens::{CacheOptions, ForwardOptions, HookSet, HookedModel, HookedTransformer, LoadOptions, ReturnType};

const PROMPT: &str = "When Mary and John went to the store, John gave a drink to";
/// GPT-2's vocabulary size: below it, the model cannot read GPT-2 BPE ids.
const GPT2_VOCAB: usize = 50257;

fn main() -> hooklens::Result<()> {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/tiny-gpt2/model").to_string());
    let model = HookedTransformer::from_pretrained(&name, &LoadOptions::default())?;
    let cfg = model.cfg();
    println!(
        "{name}: {} layers, d_model {}, {} heads, vocabulary {}, {} hook points",
        cfg.n_layers,
        cfg.d_model,
        cfg.n_heads,
        cfg.d_vocab,
        model.hook_names().len()
    );

    let text = cfg.d_vocab >= GPT2_VOCAB;
    let tokens = if text {
        model.to_tokens(PROMPT, true, PaddingSide::Right)?
    } else {
        let bos = cfg.bos_token_id.unwrap_or(0);
        Tensor::new(&[[bos, 17, 301, 42, 7, 99, 256, 3]], model.device())?
    };
    let (_, n_pos) = tokens.dims2()?;

    // Every activation, by its TransformerLens name.
    let (logits, cache) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))?;
    println!("cached {} activations, logits {:?}", cache.len(), logits.dims());
    for name in [
        "hook_embed",
        "blocks.0.attn.hook_pattern",
        "blocks.0.mlp.hook_post",
        "ln_final.hook_scale",
    ] {
        println!("  {name:<28} {:?}", cache.try_get(name)?.dims());
    }
    let pattern = cache.try_get("blocks.0.attn.hook_pattern")?;
    let last_row = pattern.get(0)?.get(0)?.get(n_pos - 1)?.to_vec1::<f32>()?;
    let rounded: Vec<String> = last_row.iter().map(|p| format!("{p:.3}")).collect();
    println!(
        "layer 0 head 0, attention of the last position: [{}]",
        rounded.join(", ")
    );

    // The same forward with every head's output of layer 0 zero-ablated.
    let loss_opts = ForwardOptions::new().return_type(ReturnType::Both);
    let clean = model.forward_with(&tokens, &loss_opts)?;
    let ablate = HookSet::new().fwd("blocks.0.attn.hook_z", |z, _hp| Ok(Some(z.zeros_like()?)));
    let ablated = model.run_with_hooks(ablate, |m| m.forward_with(&tokens, &loss_opts))?;
    let loss = |o: &hooklens::models::ForwardOutput| -> hooklens::Result<f32> {
        let l = o.loss.as_ref().ok_or_else(|| hooklens::Error::invalid("no loss"))?;
        Ok(l.to_scalar::<f32>()?)
    };
    println!(
        "mean next-token loss: clean {:.4}, layer 0 attention zero-ablated {:.4}",
        loss(&clean)?,
        loss(&ablated)?
    );

    // The most likely next token, clean and ablated.
    for (label, out) in [("clean", &clean), ("ablated", &ablated)] {
        let last = out
            .logits
            .as_ref()
            .ok_or_else(|| hooklens::Error::invalid("no logits"))?
            .get(0)?
            .get(n_pos - 1)?;
        let top = last.argmax(0)?.to_scalar::<u32>()?;
        let shown = if text {
            format!("{:?}", model.to_single_str_token(top)?)
        } else {
            format!("id {top}")
        };
        println!("{label:>8}: next token {shown}");
    }
    Ok(())
}

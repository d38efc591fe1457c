//! Gradients at every hook point against TransformerLens's `tl_grads.safetensors`:
//! the gradient of the mean next-token loss, unprocessed model.

mod common;

use candle_core::Tensor;
use common::*;
use hooklens_core::{CacheOptions, HookPoint, HookSet, HookedModel};
use hooklens_models::{ForwardOptions, HookedTransformer, ReturnType};

fn loss(m: &HookedTransformer, tokens: &Tensor) -> hooklens_core::Result<Tensor> {
    let out = m.forward_with(tokens, &ForwardOptions::new().return_type(ReturnType::Loss))?;
    Ok(out.loss.expect("a loss was asked for"))
}

#[test]
fn every_hook_gradient_matches_transformer_lens() {
    let model = raw_model();
    let tokens = tokens();
    let reference = load_ref("tl_grads.safetensors");
    let (l, cache) = model
        .run_with_cache_bwd(CacheOptions::new(), HookSet::new(), |m| loss(m, &tokens))
        .unwrap();
    let want_loss = load_ref("tl_unprocessed.safetensors").remove("loss").unwrap();
    assert_close("loss", &l.reshape(1).unwrap(), &want_loss, 1e-4);
    assert_eq!(reference.len(), 38);
    for (name, want) in &reference {
        let got = cache.get(name).unwrap_or_else(|| panic!("`{name}` was not cached"));
        assert_close(name, got, want, 1e-3);
    }
    // mlp.hook_in / hook_out (not TransformerLens points): in a GPT-2 block the MLP
    // reads ln2's output and writes hook_mlp_out, so their gradients are those.
    for l in 0..2 {
        for (ours, theirs) in [("mlp.hook_in", "ln2.hook_normalized"), ("mlp.hook_out", "hook_mlp_out")] {
            let (ours, theirs) = (format!("blocks.{l}.{ours}_grad"), format!("blocks.{l}.{theirs}_grad"));
            assert_close(&ours, &cache[ours.as_str()], &reference[&theirs], 1e-3);
        }
    }
}

#[test]
fn a_plain_forward_stays_off_the_graph() {
    let model = raw_model();
    let l = loss(&model, &tokens()).unwrap();
    assert!(!l.track_op(), "no gradient asked, no graph recorded");
}

#[test]
fn zeroing_the_gradient_at_a_block_input_zeroes_everything_upstream() {
    let model = raw_model();
    let tokens = tokens();
    let zero = HookSet::new().bwd("blocks.1.hook_resid_pre", |g: &Tensor, _: &HookPoint| {
        Ok(Some(g.zeros_like()?))
    });
    let (_, cache) = model
        .run_with_cache_bwd(CacheOptions::new(), zero, |m| loss(m, &tokens))
        .unwrap();
    for name in model.hook_names() {
        let Some(g) = cache.get(&format!("{name}_grad")) else {
            continue;
        };
        let total = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        let upstream = name.starts_with("blocks.0.") || name.starts_with("hook_") || name == "blocks.1.hook_resid_pre";
        if upstream {
            assert_eq!(total, 0.0, "{name} is upstream of the zeroed gradient");
        } else {
            assert!(total > 0.0, "{name} keeps its gradient");
        }
    }
}

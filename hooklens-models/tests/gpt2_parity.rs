//! Parity with TransformerLens 2.16.1 on the tiny-gpt2 fixture: every cached hook,
//! logits, loss and loss per token, unprocessed and processed; on the device
//! `HOOKLENS_TEST_DEVICE` names (the CPU by default; `scripts/gpu-check.sh` runs it on CUDA).

mod common;

use common::*;
use hooklens_core::{CacheOptions, HookedModel};
use hooklens_models::{ForwardOptions, HookedTransformer, LoadOptions, ReturnType};

/// The fixture model loaded with `opts` on the test device.
fn model(opts: LoadOptions) -> HookedTransformer {
    HookedTransformer::from_dir(model_dir(), &on_test_device(opts)).unwrap()
}

fn check_against(model: &HookedTransformer, file: &str) {
    let tol = parity_tol(1e-4);
    let reference = load_ref(file);
    let tokens = tokens();
    let (logits, cache) = model
        .run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))
        .unwrap();

    let mut hook_names: Vec<&String> = reference
        .keys()
        .filter(|k| !matches!(k.as_str(), "logits" | "loss" | "loss_per_token"))
        .collect();
    hook_names.sort();
    assert_eq!(hook_names.len(), 38, "{file}: the fixture caches 38 hooks");
    for name in &hook_names {
        let got = cache
            .get(name)
            .unwrap_or_else(|| panic!("{file}: `{name}` was not cached"));
        assert_close(&format!("{file}: {name}"), got, &reference[*name], tol);
    }
    let fired: Vec<String> = cache.keys().map(String::from).collect();
    let mut ours = without_mlp_io(&fired);
    ours.sort();
    let theirs: Vec<&str> = hook_names.iter().map(|s| s.as_str()).collect();
    assert_eq!(ours, theirs, "{file}: the same hooks fire (and mlp.hook_in / hook_out)");
    // In a GPT-2 block the MLP reads ln2's output and writes hook_mlp_out.
    for l in 0..model.cfg().n_layers {
        for (ours, theirs) in [("mlp.hook_in", "ln2.hook_normalized"), ("mlp.hook_out", "hook_mlp_out")] {
            let (ours, theirs) = (format!("blocks.{l}.{ours}"), format!("blocks.{l}.{theirs}"));
            assert_close(
                &format!("{file}: {ours}"),
                &cache[ours.as_str()],
                &reference[&theirs],
                tol,
            );
        }
    }

    assert_close(&format!("{file}: logits"), &logits, &reference["logits"], tol);
    let out = model
        .forward_with(&tokens, &ForwardOptions::new().return_type(ReturnType::Both))
        .unwrap();
    assert_close(
        &format!("{file}: logits (both)"),
        out.logits.as_ref().unwrap(),
        &reference["logits"],
        tol,
    );
    let loss = out.loss.unwrap();
    assert_eq!(loss.rank(), 0, "the mean loss is a scalar");
    assert_close(
        &format!("{file}: loss"),
        &loss.reshape(1).unwrap(),
        &reference["loss"],
        tol,
    );
    let per_token = model
        .forward_with(
            &tokens,
            &ForwardOptions::new().return_type(ReturnType::Loss).loss_per_token(true),
        )
        .unwrap();
    assert!(per_token.logits.is_none());
    assert_close(
        &format!("{file}: loss_per_token"),
        per_token.loss.as_ref().unwrap(),
        &reference["loss_per_token"],
        tol,
    );
}

#[test]
fn unprocessed_matches_transformer_lens() {
    check_against(&model(LoadOptions::no_processing()), "tl_unprocessed.safetensors");
}

#[test]
fn processed_matches_transformer_lens() {
    let model = model(LoadOptions::default());
    assert_eq!(
        model.cfg().normalization_type,
        hooklens_models::model::NormalizationType::LNPre
    );
    check_against(&model, "tl_processed.safetensors");
}

#[test]
fn u32_tokens_and_1d_input_work_too() {
    let tol = parity_tol(1e-4);
    let model = model(LoadOptions::no_processing());
    let tokens = tokens();
    let reference = load_ref("tl_unprocessed.safetensors");
    let logits = model
        .forward(&tokens.to_dtype(candle_core::DType::U32).unwrap())
        .unwrap();
    assert_close("logits from u32", &logits, &reference["logits"], tol);
    let row = tokens.get(1).unwrap();
    let logits = model.forward(&row).unwrap();
    assert_close(
        "logits from 1-D",
        &logits.squeeze(0).unwrap(),
        &reference["logits"].get(1).unwrap(),
        tol,
    );
}

//! Parity with SAELens 6.54 (`testdata/saes/`, made by `make_sae_reference.py`): every
//! SAE alone (encode, decode, forward and its hooks), every splice run (every cached
//! tensor, names and firing order, logits and losses, with and without the error
//! term, each SAE alone and all together), steering; then splicing modes, errors, and
//! SAEs of other sizes on other families.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::Tensor;
use common::{assert_close, on_test_device, parity_tol, test_device};
use hooklens_core::{CacheOptions, HookedModel};
use hooklens_models::sae::{Sae, SaeModel, SaeSet};
use hooklens_models::{ForwardOptions, HookedTransformer, LoadOptions, ReturnType};
use serde_json::Value;

fn root() -> PathBuf {
    hooklens_testutil::testdata().join("saes")
}

fn runs() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("runs.json")).unwrap()).unwrap()
}

fn load(file: &str) -> HashMap<String, Tensor> {
    hooklens_testutil::reference("saes", file)
}

/// An SAE of the reference, on the test device (`HOOKLENS_TEST_DEVICE`).
fn sae(folder: &str) -> Sae {
    Sae::from_dir(root().join(folder), &test_device()).unwrap_or_else(|e| panic!("{folder}: {e}"))
}

/// The reference GPT-2 and its tokens, the model on the test device.
fn gpt2() -> (HookedTransformer, Tensor) {
    let model = HookedTransformer::from_dir(
        hooklens_testutil::testdata().join("tiny-gpt2/model"),
        &on_test_device(LoadOptions::no_processing()),
    )
    .unwrap();
    (model, hooklens_testutil::reference_tokens("tiny-gpt2"))
}

fn loss_of(m: &HookedTransformer, tokens: &Tensor, per_token: bool) -> Tensor {
    let opts = ForwardOptions::new()
        .return_type(ReturnType::Loss)
        .loss_per_token(per_token);
    m.forward_with(tokens, &opts).unwrap().loss.unwrap()
}

#[test]
fn every_sae_alone_matches_saelens() {
    let runs = runs();
    for (name, info) in runs["saes"].as_object().unwrap() {
        let unit = load(info["unit"].as_str().unwrap());
        for folder in info["folders"].as_array().unwrap() {
            let what = format!("{name} ({folder})");
            let sae = sae(folder.as_str().unwrap());
            let x = &unit["x"].to_device(&test_device()).unwrap();
            let (acts, norm) = sae.encode_with_norm(x).unwrap();
            assert_close(
                &format!("{what}: encode"),
                &acts,
                &unit["feature_acts"],
                parity_tol(1e-5),
            );
            let recons = sae
                .decode_with_norm(&unit["feature_acts"].to_device(&test_device()).unwrap(), &norm)
                .unwrap();
            assert_close(&format!("{what}: decode"), &recons, &unit["recons"], parity_tol(1e-5));
            let (out, cache) = sae.run_with_cache(CacheOptions::new(), |s| s.forward(x)).unwrap();
            assert_close(&format!("{what}: forward"), &out, &unit["out"], parity_tol(1e-5));
            for hook in ["hook_sae_input", "hook_sae_acts_pre", "hook_sae_recons"] {
                assert_close(&format!("{what}: {hook}"), &cache[hook], &unit[hook], parity_tol(1e-5));
            }
        }
    }
}

#[test]
fn every_splice_run_matches_saelens() {
    let runs = runs();
    let (model, tokens) = gpt2();
    let mut checked = 0;
    for run in runs["runs"].as_array().unwrap() {
        let what = run["name"].as_str().unwrap();
        let reference = load(run["reference"].as_str().unwrap());
        let saes: Vec<Sae> = run["saes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| sae(f.as_str().unwrap()))
            .collect();
        let set = SaeSet::from(&saes).use_error_term(run["use_error_term"].as_bool().unwrap());
        let (logits, cache) = model
            .run_with_cache_with_saes(set.clone(), CacheOptions::new(), |m| m.forward(&tokens))
            .unwrap();
        // SAELens adds `mlp.hook_in` (the MLP's input: ln2.hook_normalized here); hooklens
        // has no such point, so its values are checked at ln2.hook_normalized.
        let ours_name = |theirs: &str| theirs.replace("mlp.hook_in", "ln2.hook_normalized");
        let order: Vec<String> = run["cache_names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .filter(|n| !n.ends_with("mlp.hook_in"))
            .map(String::from)
            .collect();
        let fired: Vec<String> = cache.keys().map(String::from).collect();
        assert_eq!(fired, order, "{what}: names and firing order");
        for (name, want) in &reference {
            if matches!(name.as_str(), "logits" | "loss" | "loss_per_token") {
                continue;
            }
            assert_close(
                &format!("{what}: {name}"),
                &cache[ours_name(name).as_str()],
                want,
                parity_tol(1e-4),
            );
        }
        assert_close(
            &format!("{what}: logits"),
            &logits,
            &reference["logits"],
            parity_tol(1e-4),
        );
        let loss = model
            .run_with_saes(set.clone(), |m| {
                Ok::<_, hooklens_core::Error>(loss_of(m, &tokens, false))
            })
            .unwrap();
        assert_close(
            &format!("{what}: loss"),
            &loss.reshape(1).unwrap(),
            &reference["loss"],
            parity_tol(1e-4),
        );
        let per_token = model
            .run_with_saes(set, |m| Ok::<_, hooklens_core::Error>(loss_of(m, &tokens, true)))
            .unwrap();
        assert_close(
            &format!("{what}: loss_per_token"),
            &per_token,
            &reference["loss_per_token"],
            parity_tol(1e-4),
        );
        checked += 1;
    }
    assert_eq!(checked, runs["runs"].as_array().unwrap().len());
    assert!(checked >= 16, "every run of the reference: {checked}");
}

#[test]
fn steering_by_a_decoder_row_matches_saelens() {
    let runs = runs();
    let s = &runs["steering"];
    let reference = load(s["file"].as_str().unwrap());
    let sae = sae(s["sae"].as_str().unwrap());
    let feature = s["feature"].as_u64().unwrap() as usize;
    let coefficient = s["coefficient"].as_f64().unwrap();
    assert_close(
        "steering vector",
        &(sae.w_dec().get(feature).unwrap() * coefficient).unwrap(),
        &reference["steering_vector"],
        parity_tol(1e-6),
    );
    let (model, tokens) = gpt2();
    let hooks = sae.steer(feature, coefficient, None).unwrap();
    let (logits, cache) = model
        .run_with_cache_and_hooks(
            CacheOptions::new().names("ln_final.hook_normalized"),
            hooks.clone(),
            |m| m.forward(&tokens),
        )
        .unwrap();
    assert_close("steered logits", &logits, &reference["logits"], parity_tol(1e-4));
    assert_close(
        "steered ln_final",
        &cache["ln_final.hook_normalized"],
        &reference["ln_final.hook_normalized"],
        parity_tol(1e-4),
    );
    let loss = model
        .run_with_hooks(hooks, |m| Ok::<_, hooklens_core::Error>(loss_of(m, &tokens, false)))
        .unwrap();
    assert_close(
        "steered loss",
        &loss.reshape(1).unwrap(),
        &reference["loss"],
        parity_tol(1e-4),
    );
}

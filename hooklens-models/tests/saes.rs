//! Parity with SAELens 6.54 (`testdata/saes/`, made by `make_sae_reference.py`): every
//! SAE alone (encode, decode, forward and its hooks), every splice run (every cached
//! tensor, names and firing order, logits and losses, with and without the error
//! term, each SAE alone and all together), steering; then splicing modes, errors, and
//! SAEs of other sizes on other families.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use common::assert_close;
use hooklens_core::{CacheOptions, HookSet, HookedModel, ResetOptions};
use hooklens_models::sae::{Sae, SaeModel, SaeSet};
use hooklens_models::{ForwardOptions, HookedTransformer, LoadOptions, ReturnType};
use hooklens_testutil::max_abs_diff as max_diff;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/saes")
}

fn runs() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("runs.json")).unwrap()).unwrap()
}

fn load(file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(root().join(file), &Device::Cpu).unwrap()
}

fn sae(folder: &str) -> Sae {
    Sae::from_dir(root().join(folder), &Device::Cpu).unwrap_or_else(|e| panic!("{folder}: {e}"))
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
            let x = &unit["x"];
            let (acts, norm) = sae.encode_with_norm(x).unwrap();
            assert_close(&format!("{what}: encode"), &acts, &unit["feature_acts"], 1e-5);
            let recons = sae.decode_with_norm(&unit["feature_acts"], &norm).unwrap();
            assert_close(&format!("{what}: decode"), &recons, &unit["recons"], 1e-5);
            let (out, cache) = sae.run_with_cache(CacheOptions::new(), |s| s.forward(x)).unwrap();
            assert_close(&format!("{what}: forward"), &out, &unit["out"], 1e-5);
            for hook in ["hook_sae_input", "hook_sae_acts_pre", "hook_sae_recons"] {
                assert_close(&format!("{what}: {hook}"), &cache[hook], &unit[hook], 1e-5);
            }
        }
    }
}

#[test]
fn every_splice_run_matches_saelens() {
    let runs = runs();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/tiny-gpt2");
    let model = HookedTransformer::from_dir(dir.join("model"), &LoadOptions::no_processing()).unwrap();
    let tokens =
        candle_core::safetensors::load(dir.join("tokens.safetensors"), &Device::Cpu).unwrap()["tokens"].clone();
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
        let order: Vec<String> = run["cache_names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect();
        // SAELens's `HookedSAETransformer` adds `mlp.hook_in` as hooklens does, but not
        // circuit-tracer's `mlp.hook_out`.
        let fired: Vec<String> = cache
            .keys()
            .filter(|n| !n.ends_with(".mlp.hook_out"))
            .map(String::from)
            .collect();
        assert_eq!(fired, order, "{what}: names and firing order");
        assert_eq!(
            cache.len() - fired.len(),
            2,
            "{what}: mlp.hook_out of both blocks fired"
        );
        for (name, want) in &reference {
            if matches!(name.as_str(), "logits" | "loss" | "loss_per_token") {
                continue;
            }
            assert_close(&format!("{what}: {name}"), &cache[name.as_str()], want, 1e-4);
        }
        assert_close(&format!("{what}: logits"), &logits, &reference["logits"], 1e-4);
        let loss = model
            .run_with_saes(set.clone(), |m| {
                Ok::<_, hooklens_core::Error>(loss_of(m, &tokens, false))
            })
            .unwrap();
        assert_close(
            &format!("{what}: loss"),
            &loss.reshape(1).unwrap(),
            &reference["loss"],
            1e-4,
        );
        let per_token = model
            .run_with_saes(set, |m| Ok::<_, hooklens_core::Error>(loss_of(m, &tokens, true)))
            .unwrap();
        assert_close(
            &format!("{what}: loss_per_token"),
            &per_token,
            &reference["loss_per_token"],
            1e-4,
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
        1e-6,
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/tiny-gpt2");
    let model = HookedTransformer::from_dir(dir.join("model"), &LoadOptions::no_processing()).unwrap();
    let tokens =
        candle_core::safetensors::load(dir.join("tokens.safetensors"), &Device::Cpu).unwrap()["tokens"].clone();
    let hooks = sae.steer(feature, coefficient, None).unwrap();
    let (logits, cache) = model
        .run_with_cache_and_hooks(
            CacheOptions::new().names("ln_final.hook_normalized"),
            hooks.clone(),
            |m| m.forward(&tokens),
        )
        .unwrap();
    assert_close("steered logits", &logits, &reference["logits"], 1e-4);
    assert_close(
        "steered ln_final",
        &cache["ln_final.hook_normalized"],
        &reference["ln_final.hook_normalized"],
        1e-4,
    );
    let loss = model
        .run_with_hooks(hooks, |m| Ok::<_, hooklens_core::Error>(loss_of(m, &tokens, false)))
        .unwrap();
    assert_close("steered loss", &loss.reshape(1).unwrap(), &reference["loss"], 1e-4);
}

fn tiny() -> (HookedTransformer, Tensor) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/tiny-gpt2");
    let model = HookedTransformer::from_dir(dir.join("model"), &LoadOptions::no_processing()).unwrap();
    let tokens =
        candle_core::safetensors::load(dir.join("tokens.safetensors"), &Device::Cpu).unwrap()["tokens"].clone();
    (model, tokens)
}

const ACTS: &str = "blocks.0.hook_resid_pre.hook_sae_acts_post";

#[test]
fn splices_last_for_their_run_scope_or_until_reset() {
    let (model, tokens) = tiny();
    let sae = sae("saes/standard");
    let plain = model.forward(&tokens).unwrap();
    let spliced = model.run_with_saes(&sae, |m| m.forward(&tokens)).unwrap();
    assert!(
        max_diff(&plain, &spliced) > 1e-2,
        "the reconstruction changes the logits"
    );
    let names_in_run = model
        .run_with_saes(&sae, |m| Ok::<_, hooklens_core::Error>(m.hook_names()))
        .unwrap();
    assert!(names_in_run.iter().any(|n| n == ACTS));
    assert!(
        !names_in_run.iter().any(|n| n == "blocks.0.hook_resid_pre"),
        "the replaced point is gone"
    );
    assert!(
        model.hook_names().iter().any(|n| n == "blocks.0.hook_resid_pre"),
        "back after the run"
    );
    assert_eq!(max_diff(&model.forward(&tokens).unwrap(), &plain), 0.0);

    // A scope: every forward in it is spliced; gone when it drops, also by a panic.
    {
        let _scope = model.saes(&sae).unwrap();
        assert!(model.hook_names().iter().any(|n| n == ACTS));
        assert_eq!(max_diff(&model.forward(&tokens).unwrap(), &spliced), 0.0);
    }
    assert_eq!(max_diff(&model.forward(&tokens).unwrap(), &plain), 0.0);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _scope = model.saes(&sae).unwrap();
        panic!("inside the scope");
    }));
    assert!(panicked.is_err());
    assert!(
        !model.hook_names().iter().any(|n| n == ACTS),
        "a panic drops the scope's SAE"
    );

    // Model state: reset_hooks leaves it, reset_saes removes it (a transcoder's input
    // hook with it).
    let tc = self::sae("saes/transcoder");
    model.add_sae(SaeSet::new().sae(&sae).sae(&tc)).unwrap();
    model.reset_hooks(ResetOptions::new().keep_contexts());
    assert!(max_diff(&model.forward(&tokens).unwrap(), &plain) > 1e-2);
    assert!(model
        .hook_names()
        .iter()
        .any(|n| n == "blocks.0.hook_mlp_out.hook_sae_recons"));
    assert!(
        !model.list_hooks().is_empty(),
        "the transcoder reads its input by a hook"
    );
    assert_eq!(model.reset_saes(), 2);
    assert!(model.list_hooks().is_empty(), "its input hook went with it");
    assert_eq!(max_diff(&model.forward(&tokens).unwrap(), &plain), 0.0);
}

#[test]
fn a_run_with_saes_is_private_to_its_thread() {
    let (model, tokens) = tiny();
    let sae = sae("saes/standard");
    let plain = model.forward(&tokens).unwrap();
    let inside = std::sync::Arc::new(std::sync::Barrier::new(2));
    let release = std::sync::Arc::new(std::sync::Barrier::new(2));
    std::thread::scope(|s| {
        let (inside2, release2) = (inside.clone(), release.clone());
        let (model, sae, tokens) = (&model, &sae, &tokens);
        let other = s.spawn(move || {
            let hold = HookSet::new().fwd(ACTS, move |_, _| {
                inside2.wait();
                release2.wait();
                Ok(None)
            });
            model
                .run_with_hooks_with_saes(sae, hold, |m| m.forward(tokens))
                .unwrap()
        });
        inside.wait();
        // The other thread is inside its spliced run now.
        assert!(!model.hook_names().iter().any(|n| n == ACTS));
        assert_eq!(max_diff(&model.forward(tokens).unwrap(), &plain), 0.0);
        release.wait();
        assert!(max_diff(&other.join().unwrap(), &plain) > 1e-2);
    });
}

#[test]
fn feature_edits_act_on_the_spliced_sae() {
    let (model, tokens) = tiny();
    let sae = sae("saes/standard");
    let set = SaeSet::new().sae_with_error_term(&sae);
    let plain = model.forward(&tokens).unwrap();
    let (_, cache) = model
        .run_with_cache_with_saes(set.clone(), CacheOptions::new(), |m| m.forward(&tokens))
        .unwrap();
    let acts = &cache[ACTS];
    // The most active feature at position 3 of prompt 0.
    let (f, a) = Sae::top_features(&acts.get(0).unwrap().get(3).unwrap(), 1).unwrap()[0];
    assert!(a > 0.0);
    let edit = sae.zero_feature(f, Some(&[3])).unwrap();
    let (ablated, cache) = model
        .run_with_cache_and_hooks(CacheOptions::new(), set.hooks().unwrap().extend(edit), |m| {
            m.forward(&tokens)
        })
        .unwrap();
    let edited = &cache[ACTS];
    assert_eq!(
        edited
            .get(0)
            .unwrap()
            .get(3)
            .unwrap()
            .get(f)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    // Only that entry changed, and with the error term the output moves by exactly
    // `-a * W_dec[f]` at that position.
    let diff = (acts - edited)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let other = acts.i((1, 3, f)).unwrap().to_scalar::<f32>().unwrap();
    assert!(
        (diff - (a + other)).abs() < 1e-4 * a,
        "both prompts' position 3: {diff} vs {a} + {other}"
    );
    // recons + (x - recons) is x up to rounding.
    assert!(
        max_diff(&ablated.i((.., ..3)).unwrap(), &plain.i((.., ..3)).unwrap()) < 1e-5,
        "earlier positions untouched"
    );
    assert!(max_diff(&ablated, &plain) > 1e-3);
    let clamp = sae.clamp_feature(f, 10.0, None).unwrap();
    let (_, cache) = model
        .run_with_cache_and_hooks(
            CacheOptions::new().names(ACTS),
            set.hooks().unwrap().extend(clamp),
            |m| m.forward(&tokens),
        )
        .unwrap();
    let column = cache[ACTS]
        .i((.., .., f))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(column.iter().all(|v| *v == 10.0));

    // Feature logit attribution: W_dec[f] @ W_U.
    let w_u = model.w_u().unwrap();
    let dla = sae.feature_logit_attribution(&w_u, &[f, 0]).unwrap();
    assert_eq!(dla.dims(), [2, w_u.dim(1).unwrap()]);
    let want = sae
        .w_dec()
        .get(f)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .matmul(&w_u)
        .unwrap()
        .squeeze(0)
        .unwrap();
    assert!(max_diff(&dla.get(0).unwrap(), &want) < 1e-5);
}

/// Writes `saes/standard` again with `cfg.json` edited by `edit`.
fn edited_copy(dir: &Path, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let src = root().join("saes/standard");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(src.join("cfg.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cfg.json"), cfg.to_string()).unwrap();
    std::fs::copy(src.join("sae_weights.safetensors"), dir.join("sae_weights.safetensors")).unwrap();
    dir.to_path_buf()
}

#[test]
fn wrong_inputs_are_errors_that_say_what_and_where() {
    let (model, tokens) = tiny();
    let tmp = hooklens_testutil::TempDir::new("sae-errors");
    let err_of = |r: hooklens_core::Result<Tensor>| r.unwrap_err().to_string();

    // d_in 64 at a point whose activations are 10 wide.
    let dir = edited_copy(&tmp.join("pattern"), |c| {
        c["metadata"]["hook_name"] = "blocks.0.attn.hook_pattern".into()
    });
    let wrong = Sae::from_dir(&dir, &Device::Cpu).unwrap();
    let msg = err_of(model.run_with_saes(&wrong, |m| m.forward(&tokens)));
    assert!(
        msg.contains("blocks.0.attn.hook_pattern") && msg.contains("64") && msg.contains("[2, 4, 10, 10]"),
        "{msg}"
    );

    let dir = edited_copy(&tmp.join("nowhere"), |c| {
        c["metadata"]["hook_name"] = "blocks.9.hook_resid_pre".into()
    });
    let msg = err_of(model.run_with_saes(&Sae::from_dir(&dir, &Device::Cpu).unwrap(), |m| m.forward(&tokens)));
    assert!(msg.contains("blocks.9.hook_resid_pre"), "{msg}");

    let dir = edited_copy(&tmp.join("arch"), |c| c["architecture"] = "temporal".into());
    match Sae::from_dir(&dir, &Device::Cpu).unwrap_err() {
        hooklens_core::Error::UnsupportedArchitecture {
            name,
            supported,
            message,
        } => {
            assert_eq!(name, "temporal");
            assert!(supported.iter().any(|s| s == "jumprelu"));
            assert!(
                message.contains("temporal") && message.contains("cfg.json"),
                "{message}"
            );
        }
        other => panic!("not UnsupportedArchitecture: {other}"),
    }

    let dir = edited_copy(&tmp.join("wide"), |c| c["d_sae"] = 300.into());
    let msg = Sae::from_dir(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("W_enc") && msg.contains("300"), "{msg}");

    let msg = Sae::from_dir(tmp.join("absent"), &Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("absent") && msg.contains("cfg.json"), "{msg}");

    let sae = sae("saes/standard");
    let msg = sae.zero_feature(256, None).unwrap_err().to_string();
    assert!(msg.contains("feature 256") && msg.contains("d_sae = 256"), "{msg}");
    let msg = err_of(model.run_with_saes(SaeSet::new().sae(&sae).sae(&sae), |m| m.forward(&tokens)));
    assert!(msg.contains("blocks.0.hook_resid_pre") && msg.contains("one"), "{msg}");
    let msg =
        err_of(model.run_with_hooks_with_saes(&sae, sae.zero_feature(3, Some(&[10])).unwrap(), |m| m.forward(&tokens)));
    assert!(msg.contains("position 10") && msg.contains(ACTS), "{msg}");
}

/// An SAE with random weights, from a SAELens 6 `cfg.json` text.
fn random_sae(cfg: &str, seed: u64) -> Sae {
    use hooklens_models::sae::{SaeConfig, SaeWeights};
    let cfg = SaeConfig::from_json_str(cfg, Path::new("synthetic/cfg.json")).unwrap();
    let (d_in, d_sae, d_out) = (cfg.d_in, cfg.d_sae, cfg.output_width());
    // The project's seeded generator: candle's CPU device cannot be seeded.
    let rng = std::cell::RefCell::new(hooklens_models::model::SeededRng::new(seed));
    let r = |shape: &[usize], s: f64| rng.borrow_mut().normal_tensor(shape, s).unwrap();
    let w = SaeWeights {
        w_enc: r(&[d_in, d_sae], 0.3),
        b_enc: Some(r(&[d_sae], 0.1)),
        w_dec: r(&[d_sae, d_out], 0.2),
        b_dec: r(&[d_out], 0.1),
        threshold: matches!(cfg.architecture, hooklens_models::sae::Architecture::JumpRelu)
            .then(|| r(&[d_sae], 0.1).abs().unwrap()),
        gated: None,
        w_skip: None,
    };
    Sae::new(cfg, w).unwrap()
}

/// `relu(pre)` kept where `keep(pre)` (one row at a time), computed on plain vectors.
fn sparse_code(pre: &Tensor, keep: impl Fn(&[f32]) -> Vec<bool>) -> Tensor {
    let rows = pre.to_vec2::<f32>().unwrap();
    let out: Vec<Vec<f32>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .zip(keep(row))
                .map(|(v, k)| if k { v.max(0.0) } else { 0.0 })
                .collect()
        })
        .collect();
    Tensor::new(out, &Device::Cpu).unwrap()
}

#[test]
fn saes_of_other_sizes_match_their_math_on_every_family() {
    for family in [
        "llama",
        "gemma2",
        "neox",
        "qwen3",
        "gemma3",
        "olmo2",
        "mixtral",
        "qwen3_moe",
        "olmoe",
        "gpt_oss",
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata")
            .join(family)
            .join("model");
        let model = HookedTransformer::from_dir(&dir, &LoadOptions::no_processing()).unwrap();
        let c = model.cfg().clone();
        let tokens = Tensor::rand(0f32, c.d_vocab as f32, (3, 7), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::U32)
            .unwrap();
        let (plain, cache) = model
            .run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))
            .unwrap();
        let resid = if c.parallel_attn_mlp {
            "blocks.1.hook_resid_post"
        } else {
            "blocks.1.hook_resid_mid"
        };
        let (d_model, z_width) = (c.d_model, c.n_heads * c.d_head);
        // The transcoder reads ln2's output; OLMo 2 has no norm before its MLP, so there
        // it reads the MLP's input.
        let tc_in = if model.hook_names().iter().any(|n| n == "blocks.0.ln2.hook_normalized") {
            "blocks.0.ln2.hook_normalized"
        } else {
            "blocks.0.mlp.hook_in"
        };
        let meta = |hook: &str, out: &str| {
            format!(r#""metadata": {{"sae_lens_version": "6.54.12", "hook_name": "{hook}"{out}}}"#)
        };
        let cases = [
            (
                "standard",
                format!(
                    r#"{{"architecture": "standard", "d_in": {d_model}, "d_sae": 40, "apply_b_dec_to_input": true, {}}}"#,
                    meta(resid, "")
                ),
                resid.to_string(),
                resid.to_string(),
            ),
            (
                "topk hook_z",
                format!(
                    r#"{{"architecture": "topk", "k": 5, "rescale_acts_by_decoder_norm": true, "d_in": {z_width}, "d_sae": 72, "apply_b_dec_to_input": false, "reshape_activations": "hook_z", {}}}"#,
                    meta("blocks.0.attn.hook_z", "")
                ),
                "blocks.0.attn.hook_z".to_string(),
                "blocks.0.attn.hook_z".to_string(),
            ),
            (
                "jumprelu transcoder",
                format!(
                    r#"{{"architecture": "jumprelu_transcoder", "d_in": {d_model}, "d_out": {d_model}, "d_sae": 56, "apply_b_dec_to_input": false, {}}}"#,
                    meta(tc_in, r#", "hook_name_out": "blocks.0.hook_mlp_out""#)
                ),
                tc_in.to_string(),
                "blocks.0.hook_mlp_out".to_string(),
            ),
        ];
        for (i, (kind, cfg, input_at, output_at)) in cases.iter().enumerate() {
            let what = format!("{family}: {kind}");
            let sae = random_sae(cfg, 7 + i as u64);
            let w = sae.weights().clone();
            // The SAE's math, written out here on the plain model's activation.
            let x = &cache[input_at.as_str()];
            let lead: Vec<usize> = x.dims()[..2].to_vec();
            let x2 = x.reshape((lead[0] * lead[1], ())).unwrap();
            let sae_in = if sae.cfg().apply_b_dec_to_input {
                x2.broadcast_sub(&w.b_dec).unwrap()
            } else {
                x2.clone()
            };
            let pre = sae_in
                .matmul(&w.w_enc)
                .unwrap()
                .broadcast_add(w.b_enc.as_ref().unwrap())
                .unwrap();
            let norms = w.w_dec.sqr().unwrap().sum(1).unwrap().sqrt().unwrap();
            let (acts, decoder_in) = match *kind {
                "standard" => {
                    let a = pre.relu().unwrap();
                    (a.clone(), a)
                }
                "topk hook_z" => {
                    let ranked = pre.broadcast_mul(&norms).unwrap();
                    let a = sparse_code(&ranked, |row| {
                        let mut sorted = row.to_vec();
                        sorted.sort_by(|a, b| b.total_cmp(a));
                        row.iter().map(|v| *v >= sorted[4]).collect()
                    });
                    (a.clone(), a.broadcast_div(&norms).unwrap())
                }
                _ => {
                    let t = w.threshold.as_ref().unwrap().to_vec1::<f32>().unwrap();
                    let a = sparse_code(&pre, |row| row.iter().zip(&t).map(|(v, t)| v > t).collect());
                    (a.clone(), a)
                }
            };
            let recons = decoder_in.matmul(&w.w_dec).unwrap().broadcast_add(&w.b_dec).unwrap();
            let out_shape = cache[output_at.as_str()].dims().to_vec();
            let manual = recons.reshape(out_shape.clone()).unwrap();
            let replace = manual.clone();
            let hooks = HookSet::new().fwd(output_at.clone(), move |_, _| Ok(Some(replace.clone())));
            let by_hand = model.run_with_hooks(hooks, |m| m.forward(&tokens)).unwrap();

            let (spliced, spliced_cache) = model
                .run_with_cache_with_saes(&sae, CacheOptions::new(), |m| m.forward(&tokens))
                .unwrap();
            let acts_name = format!("{output_at}.hook_sae_acts_post");
            let mut acts_shape = lead.clone();
            acts_shape.push(sae.cfg().d_sae);
            assert_close(
                &format!("{what}: acts"),
                &spliced_cache[acts_name.as_str()],
                &acts.reshape(acts_shape).unwrap(),
                1e-4,
            );
            assert_close(
                &format!("{what}: output"),
                &spliced_cache[format!("{output_at}.hook_sae_output").as_str()],
                &manual,
                1e-4,
            );
            assert_close(&format!("{what}: logits"), &spliced, &by_hand, 1e-4);
            assert!(
                max_diff(&spliced, &plain) > 1e-3,
                "{what}: the splice changes the logits"
            );

            // With the error term the model is unchanged and the error is what the
            // reconstruction misses.
            let (kept, err_cache) = model
                .run_with_cache_with_saes(SaeSet::new().sae_with_error_term(&sae), CacheOptions::new(), |m| {
                    m.forward(&tokens)
                })
                .unwrap();
            assert_close(&format!("{what}: error term keeps the logits"), &kept, &plain, 1e-5);
            let error = &err_cache[format!("{output_at}.hook_sae_error").as_str()];
            let want = (&cache[output_at.as_str()] - &manual).unwrap();
            assert_close(&format!("{what}: error"), error, &want, 1e-4);
        }
    }
}

/// A transcoder in circuit-tracer's / SAELens's places, `blocks.L.mlp.hook_in` ->
/// `blocks.L.mlp.hook_out`: it reads the MLP's input (ln2's output after its gain) and
/// replaces the MLP's output, which then goes on through a post-MLP norm (Gemma 2 and
/// 3, OLMo 2). In a mixture-of-experts model the two points enclose the whole MoE block
/// (router and experts), which the transcoder replaces.
#[test]
fn a_transcoder_splices_at_mlp_hook_in_and_hook_out() {
    for family in [
        "llama",
        "gemma2",
        "gemma3",
        "olmo2",
        "mixtral",
        "qwen3_moe",
        "olmoe",
        "gpt_oss",
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata")
            .join(family)
            .join("model");
        let model = HookedTransformer::from_dir(&dir, &LoadOptions::no_processing()).unwrap();
        let d = model.cfg().d_model;
        let tokens = hooklens_testutil::reference_tokens(family);
        let (input_at, output_at) = ("blocks.1.mlp.hook_in", "blocks.1.mlp.hook_out");
        let cfg = format!(
            r#"{{"architecture": "transcoder", "d_in": {d}, "d_out": {d}, "d_sae": 48, "apply_b_dec_to_input": false,
                "metadata": {{"sae_lens_version": "6.54.12", "hook_name": "{input_at}", "hook_name_out": "{output_at}"}}}}"#
        );
        let sae = random_sae(&cfg, 31);
        let w = sae.weights().clone();
        let (plain, cache) = model
            .run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))
            .unwrap();
        let (spliced, sc) = model
            .run_with_cache_with_saes(&sae, CacheOptions::new(), |m| m.forward(&tokens))
            .unwrap_or_else(|e| panic!("{family}: {e}"));
        // The transcoder's math, written out on the cached MLP input.
        let x = &sc[input_at];
        assert_eq!(
            max_diff(x, &cache[input_at]),
            0.0,
            "{family}: upstream of the splice unchanged"
        );
        let (b, p) = (x.dim(0).unwrap(), x.dim(1).unwrap());
        let acts = x
            .reshape((b * p, d))
            .unwrap()
            .matmul(&w.w_enc)
            .unwrap()
            .broadcast_add(w.b_enc.as_ref().unwrap())
            .unwrap()
            .relu()
            .unwrap();
        let manual = acts
            .matmul(&w.w_dec)
            .unwrap()
            .broadcast_add(&w.b_dec)
            .unwrap()
            .reshape((b, p, d))
            .unwrap();
        let out = &sc[format!("{output_at}.hook_sae_output").as_str()];
        assert_close(&format!("{family}: transcoder output"), out, &manual, 1e-5);
        assert!(
            max_diff(out, &cache[output_at]) > 1e-2,
            "{family}: the transcoder's output is not the MLP's"
        );
        assert!(
            !sc.contains_key(output_at),
            "{family}: the replaced point is not cached"
        );
        // Downstream, the model runs as if the MLP had written the transcoder's output:
        // through ln2_post (Gemma 2) to hook_mlp_out.
        let replace = manual.clone();
        let hooks = HookSet::new().fwd(output_at, move |_, _| Ok(Some(replace.clone())));
        let (by_hand, hc) = model
            .run_with_cache_and_hooks(CacheOptions::new(), hooks, |m| m.forward(&tokens))
            .unwrap();
        assert_close(&format!("{family}: logits"), &spliced, &by_hand, 1e-5);
        let mlp_out = "blocks.1.hook_mlp_out";
        assert_close(&format!("{family}: {mlp_out}"), &sc[mlp_out], &hc[mlp_out], 1e-5);
        let post_norm = max_diff(&sc[mlp_out], &manual);
        if model.cfg().use_normalization_before_and_after {
            assert!(
                post_norm > 1e-2,
                "{family}: ln2_post normalises the transcoder's output"
            );
        } else {
            assert_eq!(post_norm, 0.0, "{family}: hook_mlp_out is the transcoder's output");
        }
        assert!(
            max_diff(&spliced, &plain) > 1e-3,
            "{family}: the splice changes the logits"
        );
        // With the error term the model is unchanged.
        let kept = model
            .run_with_saes(SaeSet::new().sae_with_error_term(&sae), |m| m.forward(&tokens))
            .unwrap();
        assert_close(&format!("{family}: error term keeps the logits"), &kept, &plain, 1e-5);
    }
}

#[test]
fn gradients_flow_through_the_sae_not_its_error_term() {
    let (model, tokens) = tiny();
    let sae = sae("saes/standard");
    let loss = |m: &HookedTransformer| -> hooklens_core::Result<Tensor> { Ok(loss_of(m, &tokens, false)) };
    let (_, plain) = model
        .run_with_cache_bwd(
            CacheOptions::new().names("blocks.0.hook_resid_pre"),
            HookSet::new(),
            loss,
        )
        .unwrap();
    let set = SaeSet::new().sae_with_error_term(&sae);
    let (_, spliced) = model
        .run_with_cache_bwd(CacheOptions::new(), set.hooks().unwrap(), loss)
        .unwrap();
    // The output is the plain activation, so everything downstream, and the gradient
    // arriving at the output, is the plain model's.
    assert_close(
        "grad at hook_sae_output",
        &spliced["blocks.0.hook_resid_pre.hook_sae_output_grad"],
        &plain["blocks.0.hook_resid_pre_grad"],
        1e-4,
    );
    // Upstream of the SAE the gradient went through the reconstruction only: it is
    // W_dec's image, not the identity's.
    let features = &spliced["blocks.0.hook_resid_pre.hook_sae_acts_post_grad"];
    assert!(features.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    let at_embed = &spliced["hook_embed_grad"];
    let recons_path = spliced["blocks.0.hook_resid_pre.hook_sae_input_grad"].clone();
    assert_close(
        "grad at hook_embed: through the SAE's input",
        at_embed,
        &recons_path,
        1e-5,
    );
    assert!(
        max_diff(at_embed, &plain["blocks.0.hook_resid_pre_grad"]) > 1e-4,
        "not the identity's"
    );
}

#[test]
fn a_run_can_splice_over_a_model_state_sae() {
    let (model, tokens) = tiny();
    let a = sae("saes/standard");
    let b = sae("saes/standard-legacy"); // the same weights: a distinct handle
    model.add_sae(&a).unwrap();
    let (_, cache) = model
        .run_with_cache_with_saes(SaeSet::new().sae_with_error_term(&b), CacheOptions::new(), |m| {
            m.forward(&tokens)
        })
        .unwrap();
    // The run's SAE (with its error term) replaced the model's for that run.
    assert!(cache.contains_key("blocks.0.hook_resid_pre.hook_sae_error"));
    let plain_after_reset = {
        model.reset_saes();
        model.forward(&tokens).unwrap()
    };
    let out = model
        .run_with_saes(SaeSet::new().sae_with_error_term(&b), |m| m.forward(&tokens))
        .unwrap();
    assert!(max_diff(&out, &plain_after_reset) < 1e-5);
}

/// A NaN in the weights would vanish through relu (no feature ever fires): it is
/// refused at load, naming the tensor and the file.
#[test]
fn non_finite_sae_weights_are_refused_at_load() {
    let tmp = hooklens_testutil::TempDir::new("sae-nan");
    let dir = edited_copy(&tmp.join("nan"), |_| {});
    let file = dir.join("sae_weights.safetensors");
    let mut w = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let enc = &w["W_enc"];
    let mut v = enc.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[7] = f32::NAN;
    let enc = Tensor::from_vec(v, enc.dims(), &Device::Cpu).unwrap();
    w.insert("W_enc".into(), enc.clone());
    candle_core::safetensors::save(&w, &file).unwrap();
    let msg = Sae::from_dir(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(
        msg.contains("W_enc") && msg.contains("sae_weights.safetensors") && msg.contains("finite"),
        "{msg}"
    );
}

/// A `cfg.json` far larger than any config is refused before it is read.
#[test]
fn an_oversized_sae_config_is_refused_unread() {
    let tmp = hooklens_testutil::TempDir::new("sae-big-cfg");
    let dir = edited_copy(&tmp.join("big"), |_| {});
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cfg.json"))
        .unwrap();
    f.set_len(256 << 20).unwrap(); // sparse: no disk used
    drop(f);
    let msg = Sae::from_dir(&dir, &Device::Cpu).err().unwrap().to_string();
    assert!(msg.contains("cfg.json") && msg.contains("MiB"), "{msg}");
}

/// An SAE at a point a family lacks is an error naming the point, before any run: a
/// mixture of experts has no dense `mlp.hook_post` (its experts have theirs), OLMo 2
/// no `ln2` (its norms follow the MLP).
#[test]
fn saes_at_points_a_family_lacks_are_refused_by_name() {
    for (family, point) in [
        ("mixtral", "blocks.0.mlp.hook_post"),
        ("gpt_oss", "blocks.1.mlp.hook_pre"),
        ("olmo2", "blocks.0.ln2.hook_normalized"),
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata")
            .join(family)
            .join("model");
        let model = HookedTransformer::from_dir(&dir, &LoadOptions::no_processing()).unwrap();
        assert!(!model.hook_names().iter().any(|n| n == point), "{family} has {point}");
        let d = model.cfg().d_model;
        let cfg = format!(
            r#"{{"architecture": "standard", "d_in": {d}, "d_sae": 16, "apply_b_dec_to_input": false,
                "metadata": {{"sae_lens_version": "6.54.12", "hook_name": "{point}"}}}}"#
        );
        let sae = random_sae(&cfg, 5);
        let tokens = hooklens_testutil::reference_tokens(family);
        let e = model
            .run_with_saes(&sae, |m| m.forward(&tokens))
            .err()
            .unwrap_or_else(|| panic!("{family}: an SAE at {point} was spliced"))
            .to_string();
        assert!(e.contains(point), "{family}: {e}");
    }
}

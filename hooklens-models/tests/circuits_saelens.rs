//! SAELens transcoders, loaded with `Sae::from_dir`, used for attribution through
//! `Transcoders::from_saes`: the reference case's transcoder set (`testdata/circuits`)
//! rewritten as SAELens folders gives circuit-tracer's graph; each supported
//! architecture encodes exactly as the SAE does; what cannot be expressed is refused.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::circuits::{f32s, i64s, model, tokens};
use hooklens_models::circuits::{attribute, Activation, AttributionOptions, Transcoders};
use hooklens_models::sae::{Sae, SaeConfig};
use hooklens_models::HookedTransformer;
use hooklens_testutil::{load_tensors, testdata, TempDir};
use serde_json::{json, Value};

const D: usize = 64;
const F: usize = 96;

fn case() -> PathBuf {
    testdata().join("circuits")
}

fn opts() -> AttributionOptions {
    AttributionOptions::new().salient(5, 0.95).batch_size(16)
}

/// circuit-tracer's layer `l` (`W_enc` [96, 64], `W_dec` [96, 64], `b_enc`, `b_dec`).
fn layer(l: usize) -> HashMap<String, Tensor> {
    load_tensors(case().join(format!("transcoders/layer_{l}.safetensors")))
}

/// Layer `l` as SAELens tensors (`W_enc` transposed to [d_in, d_sae]).
fn saelens_tensors(l: usize) -> HashMap<String, Tensor> {
    let ct = layer(l);
    let mut t = HashMap::new();
    t.insert("W_enc".to_string(), ct["W_enc"].t().unwrap().contiguous().unwrap());
    for k in ["W_dec", "b_enc", "b_dec"] {
        t.insert(k.to_string(), ct[k].clone());
    }
    t
}

/// A SAELens 6 `cfg.json` reading `hook_in` and writing `hook_out` (`null`: an SAE).
fn cfg_json(arch: &str, hook_in: &str, hook_out: Option<&str>, extra: Value) -> Value {
    let mut c = json!({
        "sae_lens_version": "6.0.0",
        "architecture": arch,
        "d_in": D,
        "d_sae": F,
        "apply_b_dec_to_input": false,
        "normalize_activations": "none",
        "metadata": {"hook_name": hook_in, "model_name": "public"},
    });
    if let Some(out) = hook_out {
        c["d_out"] = json!(D);
        c["metadata"]["hook_name_out"] = json!(out);
    }
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// Writes an SAE folder `name` under `tmp` and loads it.
fn sae_folder(tmp: &TempDir, name: &str, cfg: &Value, tensors: &HashMap<String, Tensor>) -> Sae {
    let dir = tmp.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cfg.json"), cfg.to_string()).unwrap();
    candle_core::safetensors::save(tensors, dir.join("sae_weights.safetensors")).unwrap();
    Sae::from_dir(&dir, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The two layers as SAELens transcoders of architecture `arch`; `edit(l, tensors)` may
/// add or change tensors.
fn saes(tmp: &TempDir, arch: &str, extra: Value, edit: &dyn Fn(usize, &mut HashMap<String, Tensor>)) -> Vec<Sae> {
    (0..2)
        .map(|l| {
            let mut t = saelens_tensors(l);
            edit(l, &mut t);
            let cfg = cfg_json(
                arch,
                &format!("blocks.{l}.mlp.hook_in"),
                Some(&format!("blocks.{l}.mlp.hook_out")),
                extra.clone(),
            );
            sae_folder(tmp, &format!("{arch}_{l}"), &cfg, &t)
        })
        .collect()
}

/// A graph's tensors as circuit-tracer's `graph.safetensors` names them.
fn graph_tensors(model: &HookedTransformer, tc: &Transcoders, tmp: &TempDir, name: &str) -> HashMap<String, Tensor> {
    let graph = attribute(model, tc, &tokens(&case()), &opts()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let path = tmp.path(&format!("{name}.safetensors"));
    graph.save_safetensors(&path).unwrap();
    load_tensors(path)
}

/// `max |a - b|` and `max |b|` of two adjacency matrices.
fn adjacency_diff(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> (f32, f32) {
    let (x, y) = (f32s(&a["adjacency_matrix"]), f32s(&b["adjacency_matrix"]));
    assert_eq!(x.len(), y.len(), "node counts differ");
    let diff = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
    let max = y.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    (diff, max)
}

fn same_nodes(what: &str, got: &HashMap<String, Tensor>, want: &HashMap<String, Tensor>) {
    for k in ["active_features", "selected_features", "logit_tokens"] {
        assert_eq!(i64s(&got[k]), i64s(&want[k]), "{what}: {k}");
    }
}

#[test]
fn saelens_transcoders_give_circuit_tracers_graph() {
    let tmp = TempDir::new("circuits-saelens");
    let model = model(&case());
    let saes = saes(&tmp, "transcoder", json!({}), &|_, _| {});
    let tc = Transcoders::from_saes(&saes).unwrap();
    assert_eq!((tc.n_layers(), tc.d_model(), tc.d_transcoder()), (2, D, F));
    assert_eq!(tc.input_hook(1), "blocks.1.mlp.hook_in");
    assert_eq!(tc.output_hook(0), "blocks.0.mlp.hook_out");
    assert_eq!(tc.activation(), &Activation::Relu);
    assert_eq!(tc.scan(), None);
    assert_eq!(tc.config().model_name.as_deref(), Some("public"));
    assert!(!tc.has_skip(0));

    let files = Transcoders::from_dir(case().join("transcoders")).unwrap();
    for l in 0..2 {
        let feats = [0, 17, 95, 17];
        assert_eq!(
            tc.decoder_rows(l, &feats).unwrap(),
            files.decoder_rows(l, &feats).unwrap()
        );
    }
    let err = tc.decoder_rows(1, &[3, 96]).unwrap_err().to_string();
    assert!(err.contains("feature 96") && err.contains("out of range"), "{err}");

    let got = graph_tensors(&model, &tc, &tmp, "saelens");
    let from_files = graph_tensors(&model, &files, &tmp, "files");
    same_nodes("from_saes vs from_dir", &got, &from_files);
    let (diff, max) = adjacency_diff(&got, &from_files);
    assert!(
        diff <= 1e-6 * max,
        "from_saes vs from_dir: adjacency differs by {diff} (max {max})"
    );

    let reference = load_tensors(case().join("graph.safetensors"));
    same_nodes("from_saes vs circuit-tracer", &got, &reference);
    let (diff, max) = adjacency_diff(&got, &reference);
    assert!(
        diff <= 1e-4 * max,
        "from_saes vs circuit-tracer: adjacency differs by {diff} (max {max})"
    );
    assert_eq!(f32s(&got["activation_values"]).len(), 261);
}

/// JumpReLU with zero thresholds and top-k of every feature are ReLU: the same graph.
/// Top-k rescaled by decoder norms reports `pre * ||W_dec[f]||`: feature rows scale by it.
#[test]
fn other_activations_give_the_graphs_they_imply() {
    let tmp = TempDir::new("circuits-saelens-acts");
    let model = model(&case());
    let reference = graph_tensors(
        &model,
        &Transcoders::from_dir(case().join("transcoders")).unwrap(),
        &tmp,
        "ref",
    );

    let jump = saes(&tmp, "jumprelu_transcoder", json!({}), &|_, t| {
        t.insert("threshold".into(), Tensor::zeros(F, DType::F32, &Device::Cpu).unwrap());
    });
    let topk = saes(&tmp, "topk", json!({"k": F}), &|_, _| {});
    for (what, saes, act) in [
        ("jumprelu", &jump, Activation::JumpRelu),
        ("topk", &topk, Activation::TopKRelu(F)),
    ] {
        let tc = Transcoders::from_saes(saes).unwrap();
        assert_eq!(tc.activation(), &act, "{what}");
        let got = graph_tensors(&model, &tc, &tmp, what);
        same_nodes(what, &got, &reference);
        let (diff, max) = adjacency_diff(&got, &reference);
        assert!(diff <= 1e-6 * max, "{what}: adjacency differs by {diff} (max {max})");
    }

    let rescaled = saes(
        &tmp,
        "topk",
        json!({"k": F, "rescale_acts_by_decoder_norm": true}),
        &|_, _| {},
    );
    let tc = Transcoders::from_saes(&rescaled).unwrap();
    let got = graph_tensors(&model, &tc, &tmp, "rescaled");
    same_nodes("rescaled", &got, &reference);
    let norms: Vec<Vec<f32>> = (0..2)
        .map(|l| f32s(&layer(l)["W_dec"].sqr().unwrap().sum(1).unwrap().sqrt().unwrap()))
        .collect();
    let feats = i64s(&reference["active_features"]);
    let (a, r) = (f32s(&got["adjacency_matrix"]), f32s(&reference["adjacency_matrix"]));
    let n = (a.len() as f64).sqrt() as usize;
    let max = r.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    let (vals, ref_vals) = (f32s(&got["activation_values"]), f32s(&reference["activation_values"]));
    for t in 0..n {
        // Feature rows (targets) scale by their decoder norm; the rest is unchanged.
        let scale = if t < vals.len() {
            let (l, f) = (feats[3 * t] as usize, feats[3 * t + 2] as usize);
            let s = norms[l][f];
            assert!(
                (vals[t] - ref_vals[t] * s).abs() <= 1e-5 * ref_vals[t].abs() * s,
                "activation {t}"
            );
            s
        } else {
            1.0
        };
        for s in 0..n {
            let want = r[t * n + s] * scale;
            assert!(
                (a[t * n + s] - want).abs() <= 1e-5 * max * scale.max(1.0),
                "rescaled: A[{t}, {s}] = {}, expected {want}",
                a[t * n + s]
            );
        }
    }
}

/// The feature activations a transcoder set computes for `x` `[rows, D]` at `layer`.
fn activations(tc: &Transcoders, layer: usize, x: &[f32]) -> Vec<f32> {
    let mut acts = tc.pre_activations(layer, x);
    tc.activate(layer, &mut acts);
    acts
}

/// Encoding with `from_saes` gives exactly the SAE's activations and reconstruction,
/// on the reference prompt's real MLP inputs, for every supported architecture.
#[test]
fn every_supported_architecture_encodes_as_the_sae() {
    let tmp = TempDir::new("circuits-saelens-encode");
    let cache = load_tensors(case().join("replacement_cache.safetensors"));
    let thr = |_: usize, t: &mut HashMap<String, Tensor>| {
        let v: Vec<f32> = (0..F).map(|f| (f % 7) as f32 * 0.03).collect();
        t.insert("threshold".into(), Tensor::from_vec(v, F, &Device::Cpu).unwrap());
    };
    let with_b_dec = |sae: &Sae| {
        // The same SAE subtracting b_dec from its input (which SAELens's configs refuse
        // for transcoders, but an SAE built in memory may say), with half the bias that
        // would make up for it.
        let mut cfg: SaeConfig = sae.cfg().clone();
        cfg.apply_b_dec_to_input = true;
        let mut w = sae.weights().clone();
        let shift = w
            .b_dec
            .unsqueeze(0)
            .unwrap()
            .matmul(&w.w_enc)
            .unwrap()
            .squeeze(0)
            .unwrap();
        w.b_enc = Some((w.b_enc.as_ref().unwrap() + shift.affine(0.5, 0.0).unwrap()).unwrap());
        Sae::new(cfg, w).unwrap()
    };
    let cases: Vec<(&str, Vec<Sae>)> = vec![
        ("transcoder", saes(&tmp, "transcoder", json!({}), &|_, _| {})),
        ("jumprelu", saes(&tmp, "jumprelu_transcoder", json!({}), &thr)),
        ("topk", saes(&tmp, "topk", json!({"k": 7}), &|_, _| {})),
        // Past the ~15% that fire: some of the top 40 are negative, and relu zeroes them.
        ("topk 40", saes(&tmp, "topk", json!({"k": 40}), &|_, _| {})),
        (
            "topk rescaled",
            saes(
                &tmp,
                "topk",
                json!({"k": 5, "rescale_acts_by_decoder_norm": true}),
                &|_, _| {},
            ),
        ),
        (
            "b_dec on the input",
            saes(&tmp, "transcoder", json!({}), &|_, _| {})
                .iter()
                .map(with_b_dec)
                .collect(),
        ),
        (
            "skip transcoder",
            saes(&tmp, "skip_transcoder", json!({}), &|l, t| {
                t.insert("W_skip".into(), skip_matrix(l));
            }),
        ),
    ];
    for (what, saes) in cases {
        let tc = Transcoders::from_saes(&saes).unwrap_or_else(|e| panic!("{what}: {e}"));
        for (l, sae) in saes.iter().enumerate() {
            let x = cache["feature_input"].i(l).unwrap().contiguous().unwrap();
            let want = sae.encode(&x).unwrap();
            let got = activations(&tc, l, &f32s(&x));
            let want_v = f32s(&want);
            let max = want_v.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
            assert!(max > 0.0, "{what}: nothing fires");
            for (i, (g, w)) in got.iter().zip(&want_v).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * max,
                    "{what} layer {l}: activation {i}: {g} vs {w}"
                );
                assert_eq!(*g == 0.0, *w == 0.0, "{what} layer {l}: activation {i}: {g} vs {w}");
            }
            // Reconstruction: acts @ decoder rows + b_dec (the skip is checked by the graph test).
            let rows = tc.decoder_rows(l, &(0..F).collect::<Vec<_>>()).unwrap();
            let dec = Tensor::from_vec(rows, (F, D), &Device::Cpu).unwrap();
            let acts = Tensor::from_vec(got, (10, F), &Device::Cpu).unwrap();
            let recons = acts.matmul(&dec).unwrap().broadcast_add(&sae.weights().b_dec).unwrap();
            let want = sae.decode(&want).unwrap();
            let diff = hooklens_testutil::max_abs_diff(&recons, &want);
            let scale = f32s(&want).iter().map(|v| v.abs()).fold(0.0f32, f32::max);
            assert!(
                diff <= 1e-5 * scale,
                "{what} layer {l}: reconstruction differs by {diff}"
            );
            assert_eq!(tc.has_skip(l), what == "skip transcoder", "{what}");
        }
    }
}

/// A skip transcoder's `W_skip` (`x @ W_skip^T`) gives the graph that circuit-tracer's
/// per-layer `W_skip` (the same convention) gives through `from_dir`.
#[test]
fn skip_transcoders_match_the_file_format() {
    let tmp = TempDir::new("circuits-saelens-skip");
    let model = model(&case());
    let skips: Vec<Tensor> = (0..2).map(skip_matrix).collect();
    let saes = saes(&tmp, "skip_transcoder", json!({}), &|l, t| {
        t.insert("W_skip".into(), skips[l].clone());
    });
    let files = tmp.path("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::copy(case().join("transcoders/config.yaml"), files.join("config.yaml")).unwrap();
    for (l, skip) in skips.iter().enumerate() {
        let mut t = layer(l);
        t.insert("W_skip".into(), skip.clone());
        candle_core::safetensors::save(&t, files.join(format!("layer_{l}.safetensors"))).unwrap();
    }
    let got = graph_tensors(&model, &Transcoders::from_saes(&saes).unwrap(), &tmp, "saes");
    let want = graph_tensors(&model, &Transcoders::from_dir(&files).unwrap(), &tmp, "files");
    same_nodes("skip", &got, &want);
    let (diff, max) = adjacency_diff(&got, &want);
    assert!(diff <= 1e-6 * max, "skip: adjacency differs by {diff} (max {max})");
    // The skip changes the graph: the reference (no skip) is not matched.
    let (diff, _) = adjacency_diff(&got, &load_tensors(case().join("graph.safetensors")));
    assert!(diff > 1e-3 * max, "the skip connections had no effect");
}

/// A fixed, non-symmetric `W_skip` `[D, D]` for layer `l` (entries within ±0.05).
fn skip_matrix(l: usize) -> Tensor {
    let v: Vec<f32> = (0..D * D)
        .map(|i| (((i * 7919 + l * 104_729) % 1000) as f32 / 1000.0 - 0.5) * 0.1)
        .collect();
    Tensor::from_vec(v, (D, D), &Device::Cpu).unwrap()
}

fn refusal(saes: &[Sae]) -> String {
    Transcoders::from_saes(saes).unwrap_err().to_string()
}

#[test]
fn what_cannot_be_a_transcoder_set_is_refused() {
    let tmp = TempDir::new("circuits-saelens-errors");
    let good = saes(&tmp, "transcoder", json!({}), &|_, _| {});
    let t0 = saelens_tensors(0);

    assert!(refusal(&[]).contains("no SAEs"));

    // An SAE (no hook_name_out) is not a transcoder.
    let sae = sae_folder(
        &tmp,
        "sae",
        &cfg_json("standard", "blocks.0.mlp.hook_in", None, json!({})),
        &t0,
    );
    let e = refusal(&[sae, good[1].clone()]);
    assert!(
        e.contains("SAE 0") && e.contains("blocks.0.mlp.hook_in") && e.contains("not a transcoder"),
        "{e}"
    );

    // Layers out of order, or at another block than their index.
    let e = refusal(&[good[1].clone(), good[0].clone()]);
    assert!(
        e.contains("SAE 0") && e.contains("blocks.1.mlp.hook_in -> blocks.1.mlp.hook_out"),
        "{e}"
    );
    let cross = cfg_json(
        "transcoder",
        "blocks.1.mlp.hook_in",
        Some("blocks.0.mlp.hook_out"),
        json!({}),
    );
    let e = refusal(&[good[0].clone(), sae_folder(&tmp, "cross", &cross, &saelens_tensors(1))]);
    assert!(e.contains("SAE 1") && e.contains("blocks.1 -> blocks.0"), "{e}");
    // Other points at another layer.
    let other = cfg_json(
        "transcoder",
        "blocks.1.ln2.hook_normalized",
        Some("blocks.1.hook_mlp_out"),
        json!({}),
    );
    let e = refusal(&[good[0].clone(), sae_folder(&tmp, "other", &other, &saelens_tensors(1))]);
    assert!(
        e.contains("SAE 1") && e.contains("ln2.hook_normalized") && e.contains("same points"),
        "{e}"
    );
    let bad = cfg_json("transcoder", "hook_embed", Some("blocks.0.mlp.hook_out"), json!({}));
    let e = refusal(&[sae_folder(&tmp, "bad", &bad, &t0)]);
    assert!(
        e.contains("SAE 0 (hook_embed -> blocks.0.mlp.hook_out)") && e.contains("blocks.0.<point>"),
        "{e}"
    );

    // Gated: two encoders.
    let mut gated = t0.clone();
    gated.remove("b_enc");
    for k in ["b_gate", "r_mag", "b_mag"] {
        gated.insert(k.into(), Tensor::zeros(F, DType::F32, &Device::Cpu).unwrap());
    }
    let gcfg = cfg_json(
        "gated",
        "blocks.0.mlp.hook_in",
        Some("blocks.0.mlp.hook_out"),
        json!({}),
    );
    let e = refusal(&[sae_folder(&tmp, "gated", &gcfg, &gated), good[1].clone()]);
    assert!(
        e.contains("SAE 0") && e.contains("gated") && e.contains("not supported"),
        "{e}"
    );

    // A negative JumpReLU threshold: SAELens's and circuit-tracer's JumpReLU differ.
    let neg = saes(&tmp, "jumprelu_transcoder", json!({}), &|l, t| {
        let mut v = vec![0.1f32; F];
        v[5] = if l == 1 { -0.2 } else { 0.0 };
        t.insert("threshold".into(), Tensor::from_vec(v, F, &Device::Cpu).unwrap());
    });
    let e = refusal(&neg);
    assert!(
        e.contains("SAE 1") && e.contains("feature 5") && e.contains("< 0"),
        "{e}"
    );

    // Mixed activations, widths, normalisation, non-finite weights.
    let jump = saes(&tmp, "jumprelu_transcoder", json!({}), &|_, t| {
        t.insert("threshold".into(), Tensor::zeros(F, DType::F32, &Device::Cpu).unwrap());
    });
    let e = refusal(&[good[0].clone(), jump[1].clone()]);
    assert!(e.contains("SAE 1") && e.contains("same one"), "{e}");
    let norm = saes(
        &tmp,
        "transcoder",
        json!({"normalize_activations": "layer_norm"}),
        &|_, _| {},
    );
    let e = refusal(&norm);
    assert!(e.contains("SAE 0") && e.contains("normalize_activations"), "{e}");
    let mut w = good[1].weights().clone();
    let mut dec = f32s(&w.w_dec);
    dec[3 * D + 2] = f32::NAN;
    w.w_dec = Tensor::from_vec(dec, (F, D), &Device::Cpu).unwrap();
    let nan = Sae::new(good[1].cfg().clone(), w).unwrap();
    let e = refusal(&[good[0].clone(), nan]);
    assert!(
        e.contains("SAE 1 (blocks.1.mlp.hook_in -> blocks.1.mlp.hook_out)")
            && e.contains("`W_dec`")
            && e.contains("non-finite"),
        "{e}"
    );
    let mut narrow_cfg = cfg_json(
        "transcoder",
        "blocks.1.mlp.hook_in",
        Some("blocks.1.mlp.hook_out"),
        json!({}),
    );
    narrow_cfg["d_out"] = json!(32);
    let mut narrow = saelens_tensors(1);
    narrow.insert(
        "W_dec".into(),
        narrow["W_dec"].narrow(1, 0, 32).unwrap().contiguous().unwrap(),
    );
    narrow.insert(
        "b_dec".into(),
        narrow["b_dec"].narrow(0, 0, 32).unwrap().contiguous().unwrap(),
    );
    let e = refusal(&[good[0].clone(), sae_folder(&tmp, "narrow", &narrow_cfg, &narrow)]);
    assert!(e.contains("SAE 1") && e.contains("d_out 32"), "{e}");
}

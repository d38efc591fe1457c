//! Loading GPT-2 checkpoints: both Hugging Face layouts, dtypes, processing options,
//! VarBuilder, and errors that name the file and tensor for bad checkpoints.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::*;
use hooklens_models::{HookedTransformer, LoadOptions, ProcessingOptions, TransformerConfig};

fn fixture_tensors() -> HashMap<String, Tensor> {
    hooklens_testutil::load_tensors(model_dir().join("model.safetensors"))
}

/// Writes `tensors` and the fixture's config to a fresh directory.
fn write_checkpoint(name: &str, tensors: &HashMap<String, Tensor>) -> TempDir {
    let dir = TempDir::new(name);
    std::fs::copy(model_dir().join("config.json"), dir.join("config.json")).unwrap();
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    HookedTransformer::from_dir(dir, &LoadOptions::no_processing())
        .unwrap_err()
        .to_string()
}

#[test]
fn published_layout_without_prefix_and_with_mask_buffers_loads() {
    let mut tensors: HashMap<String, Tensor> = fixture_tensors()
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("transformer.").unwrap_or(&k).to_string(), v))
        .collect();
    assert!(tensors.contains_key("h.0.attn.c_attn.weight"));
    for i in 0..2 {
        let m = Tensor::tril2(64, DType::F32, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 64, 64))
            .unwrap();
        tensors.insert(format!("h.{i}.attn.bias"), m);
    }
    let dir = write_checkpoint("published-layout", &tensors);
    let reference = load_ref("tl_unprocessed.safetensors");
    let model = HookedTransformer::from_dir(&dir, &LoadOptions::no_processing()).unwrap();
    assert_close(
        "unprefixed logits",
        &model.forward(&tokens()).unwrap(),
        &reference["logits"],
        1e-4,
    );
    let processed = HookedTransformer::from_dir(&dir, &LoadOptions::default()).unwrap();
    let reference = load_ref("tl_processed.safetensors");
    assert_close(
        "unprefixed processed logits",
        &processed.forward(&tokens()).unwrap(),
        &reference["logits"],
        1e-4,
    );
}

#[test]
fn untied_lm_head_is_used_when_present() {
    let mut tensors = fixture_tensors();
    let wte = tensors["transformer.wte.weight"].clone();
    tensors.insert("lm_head.weight".into(), (wte * 2.0).unwrap());
    let dir = write_checkpoint("lm-head", &tensors);
    let model = HookedTransformer::from_dir(&dir, &LoadOptions::no_processing()).unwrap();
    let tied = raw_model();
    let want = (tied.forward(&tokens()).unwrap() * 2.0).unwrap();
    assert!(max_abs_diff(&model.forward(&tokens()).unwrap(), &want) < 1e-4);
}

#[test]
fn from_files_and_var_builder_load_the_same_model() {
    let reference = load_ref("tl_unprocessed.safetensors");
    let m = HookedTransformer::from_files(
        model_dir().join("config.json"),
        model_dir().join("model.safetensors"),
        &LoadOptions::no_processing(),
    )
    .unwrap();
    assert_close("from_files", &m.forward(&tokens()).unwrap(), &reference["logits"], 1e-4);

    let cfg = TransformerConfig::from_hf_json(model_dir().join("config.json")).unwrap();
    // SAFETY: the fixture is only read while mapped: no test writes it.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[model_dir().join("model.safetensors")], DType::F32, &Device::Cpu).unwrap()
    };
    let m = HookedTransformer::load(vb, &cfg).unwrap();
    assert_close("VarBuilder", &m.forward(&tokens()).unwrap(), &reference["logits"], 1e-4);
}

#[test]
fn processing_steps_are_switchable_and_keep_log_probs() {
    let raw = raw_model();
    let lp = |m: &HookedTransformer| candle_nn::ops::log_softmax(&m.forward(&tokens()).unwrap(), 2).unwrap();
    let want = lp(&raw);
    for (i, opts) in [
        ProcessingOptions {
            fold_ln: true,
            ..ProcessingOptions::none()
        },
        ProcessingOptions {
            center_writing_weights: true,
            ..ProcessingOptions::none()
        },
        ProcessingOptions {
            center_unembed: true,
            ..ProcessingOptions::none()
        },
        ProcessingOptions {
            fold_value_biases: true,
            ..ProcessingOptions::none()
        },
        ProcessingOptions::default(),
    ]
    .into_iter()
    .enumerate()
    {
        let m = HookedTransformer::from_dir(model_dir(), &LoadOptions::default().with_processing(opts)).unwrap();
        assert!(max_abs_diff(&lp(&m), &want) < 1e-4, "case {i}");
    }
    let processed = processed_model();
    // Folded value biases are zero; centred writing weights have zero d_model mean.
    assert_eq!(
        processed
            .b_v()
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    let mean = processed
        .w_e()
        .mean(1)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(mean < 1e-6);
    assert!(processed.state_dict().unwrap().iter().all(|(n, _)| !n.contains("ln")));
}

#[test]
fn weight_views_have_transformer_lens_shapes() {
    let m = raw_model();
    let (l, h, d, dh, mlp, v, ctx) = (2, 4, 64, 16, 256, 512, 64);
    assert_eq!(m.w_e().dims(), [v, d]);
    assert_eq!(m.w_pos().unwrap().dims(), [ctx, d]);
    assert_eq!(m.w_u().unwrap().dims(), [d, v]);
    assert_eq!(m.b_u().dims(), [v]);
    for w in [m.w_q(), m.w_k(), m.w_v()] {
        assert_eq!(w.unwrap().dims(), [l, h, d, dh]);
    }
    assert_eq!(m.w_o().unwrap().dims(), [l, h, dh, d]);
    for b in [m.b_q(), m.b_k(), m.b_v()] {
        assert_eq!(b.unwrap().dims(), [l, h, dh]);
    }
    assert_eq!(m.b_o().unwrap().dims(), [l, d]);
    assert_eq!(m.w_in().unwrap().dims(), [l, d, mlp]);
    assert_eq!(m.w_out().unwrap().dims(), [l, mlp, d]);
    assert_eq!(m.b_in().unwrap().dims(), [l, mlp]);
    assert_eq!(m.b_out().unwrap().dims(), [l, d]);
    // W_Q of head 1 in layer 0 is columns 16..32 of c_attn's first third.
    let c_attn = fixture_tensors()["transformer.h.0.attn.c_attn.weight"].clone();
    let want = c_attn.narrow(1, dh, dh).unwrap();
    let got = m.w_q().unwrap().get(0).unwrap().get(1).unwrap();
    assert_eq!(max_abs_diff(&got, &want), 0.0);
    let want_v = c_attn.narrow(1, 2 * d + 3 * dh, dh).unwrap();
    assert_eq!(
        max_abs_diff(&m.w_v().unwrap().get(0).unwrap().get(3).unwrap(), &want_v),
        0.0
    );
    let names: Vec<String> = m.state_dict().unwrap().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"blocks.1.attn.W_O".to_string()) && names.contains(&"blocks.0.ln1.w".to_string()));
}

#[test]
fn half_precision_loads_on_request() {
    let reference = load_ref("tl_unprocessed.safetensors");
    for dtype in [DType::F16, DType::BF16] {
        let m = HookedTransformer::from_dir(model_dir(), &LoadOptions::no_processing().with_dtype(dtype)).unwrap();
        assert_eq!(m.dtype(), dtype);
        let logits = m.forward(&tokens()).unwrap();
        assert_eq!(logits.dtype(), dtype);
        assert_close(&format!("{dtype:?} logits"), &logits, &reference["logits"], 5e-2);
    }
}

#[test]
fn missing_tensor_is_named_with_the_file() {
    let mut tensors = fixture_tensors();
    tensors.remove("transformer.h.1.mlp.c_fc.bias");
    let dir = write_checkpoint("missing", &tensors);
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("transformer.h.1.mlp.c_fc.bias") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn misshapen_tensor_is_named_with_both_shapes() {
    let mut tensors = fixture_tensors();
    let w = tensors["transformer.h.0.attn.c_attn.weight"]
        .t()
        .unwrap()
        .contiguous()
        .unwrap();
    tensors.insert("transformer.h.0.attn.c_attn.weight".into(), w);
    let dir = write_checkpoint("misshapen", &tensors);
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors")
            && e.contains("transformer.h.0.attn.c_attn.weight")
            && e.contains("[192, 64]")
            && e.contains("[64, 192]"),
        "{e}"
    );
}

#[test]
fn wrong_dtype_is_named() {
    let mut tensors = fixture_tensors();
    let w = tensors["transformer.wpe.weight"].to_dtype(DType::I64).unwrap();
    tensors.insert("transformer.wpe.weight".into(), w);
    let dir = write_checkpoint("dtype", &tensors);
    let e = load_err(&dir);
    assert!(e.contains("transformer.wpe.weight") && e.contains("I64"), "{e}");
}

#[test]
fn truncated_file_is_an_error_naming_it() {
    let dir = TempDir::new("truncated");
    std::fs::copy(model_dir().join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(model_dir().join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors") && e.contains("truncated"), "{e}");
    std::fs::write(dir.join("model.safetensors"), b"garbage").unwrap();
    assert!(load_err(&dir).contains("model.safetensors"));
}

#[test]
fn bad_or_missing_config_is_an_error_naming_the_field() {
    let dir = write_checkpoint("config", &fixture_tensors());
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    for (from, to, field) in [
        ("\"gpt2\"", "\"llama\"", "model_type"),
        ("GPT2LMHeadModel", "LlamaForCausalLM", "architectures"),
        ("\"n_head\": 4", "\"n_head\": 5", "n_head"),
        ("\"n_layer\": 2", "\"n_layer\": \"two\"", "n_layer"),
        ("\"vocab_size\": 512", "\"vocab_size\": 0", "vocab_size"),
    ] {
        assert!(cfg.contains(from), "{from}");
        std::fs::write(dir.join("config.json"), cfg.replace(from, to)).unwrap();
        let e = load_err(&dir);
        assert!(e.contains("config.json") && e.contains(field), "{field}: {e}");
    }
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    assert!(load_err(&dir).contains("config.json"));
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(load_err(&dir).contains("config.json"));
    // A config that disagrees with the tensors names the tensor.
    std::fs::write(dir.join("config.json"), cfg.replace("\"n_layer\": 2", "\"n_layer\": 3")).unwrap();
    assert!(load_err(&dir).contains("transformer.h.2."));
    assert!(HookedTransformer::from_dir(TempDir::new("nothing-here").join("nope"), &LoadOptions::default()).is_err());
}

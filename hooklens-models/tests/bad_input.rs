//! Bad input to GPT-2's entry points gives an error that says what and where, never a
//! panic (issue 6): checkpoints, configs, tokens, prompts, hooks, cache options,
//! patching, output paths.
//!
//! Already covered elsewhere, and not repeated here:
//! - a missing tensor, a tensor of the wrong shape or an integer dtype, a file cut in
//!   half, a bad or missing `config.json` (model_type, architectures, n_head, n_layer as
//!   a string, vocab_size 0, not JSON, missing), a config that disagrees with the
//!   tensors: `tests/gpt2_loading.rs`;
//! - token ids outside the vocabulary (too large, negative), empty input, more than
//!   n_ctx positions, float or rank-3 tokens, a wrong attention mask, a loss on one
//!   position, generation past n_ctx, top_p 1.5, a residual of the wrong width:
//!   `tests/gpt2_forward.rs::bad_inputs_are_errors_not_panics`;
//! - hook points switched off by the config: `tests/gpt2_hooks.rs::disabled_points_are_errors_naming_the_flag`;
//! - clean and corrupted runs of different batch size or length, a clean cache without
//!   its batch axis or without the patched hook, bad patch indices, a failing metric:
//!   `tests/patching.rs::mismatched_runs_and_bad_indices_are_errors`;
//! - bad `tokenizer.json` files and ids outside a tokenizer: `src/tokenizer.rs` tests.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::*;
use hooklens_core::{CacheOptions, Error, HookPoint, HookSet, HookedModel, Slice};
use hooklens_models::analysis::patching::{PatchIndex, PatchSetter, Patching};
use hooklens_models::model::PaddingSide;
use hooklens_models::{GenerateOptions, HookedTransformer, LoadOptions, Tokenizer, TransformerConfig};

/// The fixture with its matching 512-token BPE, so text entry points can be reached.
fn model_with_tokenizer() -> HookedTransformer {
    let tok = Tokenizer::from_file(Path::new(FIXTURE).join("../tiny-tokenizer/tokenizer.json")).unwrap();
    raw_model().with_tokenizer(tok)
}

fn fixture_config() -> String {
    std::fs::read_to_string(model_dir().join("config.json")).unwrap()
}

/// Replaces (or with `None` removes) one top-level field of the fixture's config.
fn config_with(field: &str, value: Option<&str>) -> String {
    let mut json: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&fixture_config()).unwrap();
    match value {
        Some(v) => {
            json.insert(field.to_string(), serde_json::from_str(v).unwrap());
        }
        None => {
            json.remove(field);
        }
    }
    serde_json::to_string(&json).unwrap()
}

/// Nonsense in every field the loader reads: an error naming the file and the field.
#[test]
fn config_fields_with_nonsense_values_are_named() {
    let cases: &[(&str, Option<&str>)] = &[
        ("n_layer", None),
        ("n_layer", Some("-2")),
        ("n_layer", Some("2.5")),
        ("n_layer", Some("true")),
        ("n_layer", Some("[2]")),
        ("n_layer", Some("1e30")),
        ("n_embd", Some("0")),
        ("n_embd", Some("\"64\"")),
        ("n_embd", Some("null")),
        ("n_head", Some("0")),
        ("n_head", Some("128")),
        ("vocab_size", Some("-1")),
        ("n_positions", None),
        ("n_inner", Some("0")),
        ("n_inner", Some("\"wide\"")),
        ("layer_norm_epsilon", Some("0")),
        ("layer_norm_epsilon", Some("-1e-5")),
        ("layer_norm_epsilon", Some("\"tiny\"")),
        ("activation_function", Some("\"swiglu\"")),
        ("activation_function", Some("3")),
        ("bos_token_id", Some("512")),
        ("bos_token_id", Some("-1")),
        ("eos_token_id", Some("4294967296")),
        ("eos_token_id", Some("\"<|endoftext|>\"")),
        ("model_type", Some("\"bert\"")),
        ("architectures", Some("[\"GPT2LMHeadModel\", \"BertModel\"]")),
    ];
    for (field, value) in cases {
        let text = config_with(field, *value);
        let err = TransformerConfig::from_hf_str(&text, "dir/config.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dir/config.json") && err.contains(field),
            "{field} = {value:?}: {err}"
        );
    }
    for text in ["", "[]", "null", "42", "{", "{\"model_type\": \"gpt2\"}"] {
        let err = TransformerConfig::from_hf_str(text, "dir/config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dir/config.json"), "{text:?}: {err}");
    }
}

/// Sizes that parse but cannot be a model on this machine (their products overflow, or
/// the layer list alone would not fit in memory) are errors, not overflows or aborts.
#[test]
fn absurdly_large_sizes_are_errors_not_overflows() {
    let huge = (usize::MAX / 2).to_string();
    for (field, value) in [
        ("n_embd", huge.as_str()),
        ("n_inner", huge.as_str()),
        ("vocab_size", huge.as_str()),
        ("n_positions", huge.as_str()),
    ] {
        let mut text = config_with(field, Some(value));
        if field == "n_embd" {
            text = text.replace("\"n_head\":4", "\"n_head\":1");
        }
        let err = match TransformerConfig::from_hf_str(&text, "config.json") {
            Err(e) => e.to_string(),
            Ok(cfg) => {
                // Parsing may accept it; loading the fixture's tensors with it must not.
                let dir = TempDir::new(&format!("huge-{field}"));
                std::fs::write(dir.join("config.json"), &text).unwrap();
                std::fs::copy(model_dir().join("model.safetensors"), dir.join("model.safetensors")).unwrap();
                let _ = cfg;
                HookedTransformer::from_dir(&dir, &LoadOptions::no_processing())
                    .unwrap_err()
                    .to_string()
            }
        };
        assert!(
            err.contains("config.json") || err.contains("model.safetensors"),
            "{field}: {err}"
        );
    }
    // A billion layers over a two-layer checkpoint: an error naming the missing layer,
    // without first reserving room for a billion.
    let dir = TempDir::new("huge-n-layer");
    std::fs::write(dir.join("config.json"), config_with("n_layer", Some("1000000000000"))).unwrap();
    std::fs::copy(model_dir().join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let err = HookedTransformer::from_dir(&dir, &LoadOptions::no_processing())
        .unwrap_err()
        .to_string();
    assert!(err.contains("transformer.h.2."), "{err}");
    // The same sizes given in code, through a VarBuilder.
    let mut cfg = TransformerConfig::new(2, 64, 4, 512, 64);
    cfg.d_mlp = usize::MAX;
    assert!(cfg.validate().is_err());
    let weights = hooklens_testutil::load_tensors(model_dir().join("model.safetensors"));
    let vb = candle_nn::VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    assert!(HookedTransformer::load(vb, &cfg).is_err());
}

/// safetensors files broken in the ways a download or a disk breaks them.
#[test]
fn malformed_checkpoints_are_errors_naming_the_file() {
    let dir = TempDir::new("malformed");
    std::fs::write(dir.join("config.json"), fixture_config()).unwrap();
    let bytes = std::fs::read(model_dir().join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), vec![]),
        ("7 bytes".into(), bytes[..7].to_vec()),
        ("length only".into(), bytes[..8].to_vec()),
        ("header cut".into(), bytes[..8 + header_len / 2].to_vec()),
        ("no data".into(), bytes[..8 + header_len].to_vec()),
        ("last byte missing".into(), bytes[..bytes.len() - 1].to_vec()),
    ];
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.push(("header length u64::MAX".into(), huge));
    let mut not_json = bytes.clone();
    not_json[8..16].copy_from_slice(b"not json");
    cases.push(("header not JSON".into(), not_json));
    for (what, data) in cases {
        std::fs::write(dir.join("model.safetensors"), &data).unwrap();
        for opts in [LoadOptions::no_processing(), LoadOptions::default()] {
            let err = HookedTransformer::from_dir(&dir, &opts).unwrap_err().to_string();
            assert!(err.contains("model.safetensors"), "{what}: {err}");
        }
    }
    // Tensors of dtypes a weight cannot have, and a checkpoint of another model.
    let mut tensors = hooklens_testutil::load_tensors(model_dir().join("model.safetensors"));
    for dtype in [DType::U8, DType::U32] {
        let mut t = tensors.clone();
        let w = t["transformer.h.1.ln_2.bias"].to_dtype(dtype).unwrap();
        t.insert("transformer.h.1.ln_2.bias".into(), w);
        candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
        let err = HookedTransformer::from_dir(&dir, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("transformer.h.1.ln_2.bias") && err.contains(&format!("{dtype:?}")),
            "{dtype:?}: {err}"
        );
    }
    tensors.retain(|k, _| !k.contains("wte"));
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let err = HookedTransformer::from_dir(&dir, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a GPT-2 checkpoint"), "{err}");
    // A model directory that is a file; a weights path that is a directory.
    let err = HookedTransformer::from_dir(dir.join("config.json"), &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
    let err = HookedTransformer::from_files(dir.join("config.json"), &*dir, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    // A dtype a model cannot be loaded in.
    let err = HookedTransformer::from_dir(model_dir(), &LoadOptions::default().with_dtype(DType::U32)).unwrap_err();
    assert!(err.to_string().contains("U32"), "{err}");
}

/// Text entry points: an empty prompt, a prompt longer than n_ctx, no prompt at all,
/// ids outside the tokenizer, multi-token strings where one token is needed.
#[test]
fn prompts_and_ids_that_do_not_fit_are_errors() {
    let model = model_with_tokenizer();
    let err = model.to_tokens("", false, PaddingSide::Right).unwrap_err().to_string();
    assert!(err.contains("empty prompt"), "{err}");
    assert_eq!(model.to_tokens("", true, PaddingSide::Right).unwrap().dims(), [1, 1]);
    let err = model
        .to_tokens(Vec::<&str>::new(), true, PaddingSide::Left)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no prompt"), "{err}");
    let long = "word ".repeat(100);
    let err = model
        .to_tokens(["short", long.as_str()], true, PaddingSide::Left)
        .unwrap_err()
        .to_string();
    assert!(err.contains("n_ctx = 64"), "{err}");
    let err = model.to_str_tokens(long.as_str(), true).unwrap_err().to_string();
    assert!(err.contains("n_ctx = 64"), "{err}");
    for ids in [vec![512u32], vec![3, u32::MAX]] {
        let t = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap();
        assert!(model.to_string(&t).unwrap_err().to_string().contains("vocabulary"));
        assert!(model.to_strings(&t.unsqueeze(0).unwrap()).is_err());
        assert!(model.to_str_tokens(&ids, false).is_err());
    }
    assert!(model.to_single_str_token(512).is_err());
    let err = model.to_single_token("Hello world").unwrap_err().to_string();
    assert!(err.contains("Hello world"), "{err}");
    assert!(model.to_single_token("").is_err());
    let float = Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap();
    assert!(model.to_string(&float).is_err());
    let batch = Tensor::new(&[[1u32, 2], [3, 4]], &Device::Cpu).unwrap();
    assert!(model.to_string(&batch).is_err(), "to_string takes one sequence");
    // Without its tokenizer, the tiny GPT-2 does not fall back to GPT-2's BPE (whose
    // ids lie past its vocabulary): the error names the missing file.
    let err = raw_model()
        .to_tokens("Hello world", true, PaddingSide::Right)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("vocabulary of 512"),
        "{err}"
    );
}

/// Generation from ids outside the vocabulary, and with nonsense sampling options.
#[test]
fn generation_with_bad_tokens_or_options_is_an_error() {
    let model = raw_model();
    let bad = Tensor::new(&[[1u32, 600]], &Device::Cpu).unwrap();
    let err = model
        .generate(&bad, &GenerateOptions::greedy(2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("600") && err.contains("vocabulary"), "{err}");
    let one = Tensor::new(&[[1u32]], &Device::Cpu).unwrap();
    let sample = |f: fn(&mut GenerateOptions)| {
        let mut o = GenerateOptions::sample(2, 1.0, 0);
        f(&mut o);
        model.generate(&one, &o)
    };
    for (what, result) in [
        ("negative temperature", sample(|o| o.temperature = -1.0)),
        ("NaN temperature", sample(|o| o.temperature = f64::NAN)),
        ("infinite temperature", sample(|o| o.temperature = f64::INFINITY)),
        ("top_k 0", sample(|o| o.top_k = Some(0))),
        ("top_p 0", sample(|o| o.top_p = Some(0.0))),
        ("NaN top_p", sample(|o| o.top_p = Some(f64::NAN))),
        ("NaN freq_penalty", sample(|o| o.freq_penalty = f64::NAN)),
    ] {
        assert!(result.is_err(), "{what} was accepted");
    }
}

/// A hole of `len` bytes at `path`: a large file that takes no disk.
fn sparse(path: &Path, len: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
}

/// A `config.json` far too large is refused unread, naming the file and the limit
/// (parsed, it would take many times its size in memory).
#[test]
fn an_oversized_config_is_refused_unread() {
    let dir = TempDir::new("oversized-config");
    std::fs::copy(model_dir().join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    sparse(&dir.join("config.json"), 100 << 20);
    let err = HookedTransformer::from_dir(&dir, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json") && err.contains("4 MiB"), "{err}");
}

/// So is a shard index far too large.
#[test]
fn an_oversized_shard_index_is_refused_unread() {
    let dir = TempDir::new("oversized-index");
    std::fs::write(dir.join("config.json"), fixture_config()).unwrap();
    sparse(&dir.join("model.safetensors.index.json"), 100 << 20);
    let err = HookedTransformer::from_dir(&dir, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors.index.json") && err.contains("64 MiB"),
        "{err}"
    );
}

/// A safetensors header whose `__metadata__` holds a non-string is refused, as
/// safetensors refuses it; strings are fine.
#[test]
fn safetensors_metadata_must_hold_strings() {
    let dir = TempDir::new("metadata-number");
    std::fs::write(dir.join("config.json"), fixture_config()).unwrap();
    let bytes = std::fs::read(model_dir().join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    for (meta, ok) in [(r#"{"format": "pt"}"#, true), (r#"{"format": 1}"#, false)] {
        header.insert("__metadata__".into(), serde_json::from_str(meta).unwrap());
        let text = serde_json::to_vec(&header).unwrap();
        let mut file = (text.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&text);
        file.extend_from_slice(&bytes[8 + n..]);
        std::fs::write(dir.join("model.safetensors"), &file).unwrap();
        match (ok, HookedTransformer::from_dir(&dir, &LoadOptions::default())) {
            (true, r) => assert!(r.is_ok(), "{meta}: {}", r.err().unwrap()),
            (false, Ok(_)) => panic!("{meta} was accepted"),
            (false, Err(e)) => {
                let e = e.to_string();
                assert!(
                    e.contains("model.safetensors") && e.contains("__metadata__.format") && e.contains("string"),
                    "{e}"
                );
            }
        }
    }
}

/// An f32 weight beyond f16's range, loaded as f16, is an error naming the tensor
/// rather than an inf that surfaces later as non-finite results.
#[test]
fn weights_that_overflow_f16_are_named() {
    let dir = TempDir::new("f16-overflow");
    std::fs::write(dir.join("config.json"), fixture_config()).unwrap();
    let mut tensors = hooklens_testutil::load_tensors(model_dir().join("model.safetensors"));
    let name = "transformer.h.0.mlp.c_fc.weight";
    let big = (tensors[name].to_dtype(DType::F32).unwrap() * 1e6).unwrap();
    tensors.insert(name.into(), big);
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    HookedTransformer::from_dir(&dir, &LoadOptions::no_processing().with_dtype(DType::F32)).unwrap();
    let err = HookedTransformer::from_dir(&dir, &LoadOptions::no_processing().with_dtype(DType::F16))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(name) && err.contains("f16") && err.contains("bf16"),
        "{err}"
    );
}

/// Greedy generation on NaN logits (a NaN in the final norm's weight) is an error
/// naming the position, as sampling's is, not token 0.
#[test]
fn greedy_generation_refuses_non_finite_logits() {
    let dir = TempDir::new("nan-logits");
    std::fs::write(dir.join("config.json"), fixture_config()).unwrap();
    let mut tensors = hooklens_testutil::load_tensors(model_dir().join("model.safetensors"));
    let w = &tensors["transformer.ln_f.weight"];
    let nan = (w.ones_like().unwrap() * f64::NAN).unwrap();
    tensors.insert("transformer.ln_f.weight".into(), nan);
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let model = HookedTransformer::from_dir(&dir, &LoadOptions::no_processing()).unwrap();
    let prompt = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    for cache in [true, false] {
        let mut opts = GenerateOptions::greedy(2);
        opts.use_kv_cache = cache;
        let err = model.generate(&prompt, &opts).unwrap_err().to_string();
        assert!(err.contains("position 2") && err.contains("not finite"), "{err}");
    }
}

/// Hooks on GPT-2: unknown names with suggestions, wrong shapes and dtypes named, and
/// a pos_slice that does not fit a head-shaped activation named with its hook.
#[test]
fn hooks_and_cache_options_that_do_not_fit_gpt2_are_named() {
    let model = raw_model();
    let toks = tokens();
    let err = model
        .run_with_hooks(
            HookSet::new().fwd("blocks.0.attn.hook_patern", |_: &Tensor, _: &HookPoint| Ok(None)),
            |m| m.forward(&toks),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("did you mean `blocks.0.attn.hook_pattern`"), "{err}");
    let err = model
        .run_with_cache(CacheOptions::new().names("blocks.*.attn.hook_zz"), |m| m.forward(&toks))
        .unwrap_err()
        .to_string();
    assert!(err.contains("matched no hook point"), "{err}");
    let err = model
        .run_with_hooks(
            HookSet::new().fwd("blocks.1.attn.hook_pattern", |x: &Tensor, _: &HookPoint| {
                Ok(Some(x.narrow(3, 0, 2)?))
            }),
            |m| m.forward(&toks),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blocks.1.attn.hook_pattern") && err.contains("[2, 4, 10, 10]") && err.contains("[2, 4, 10, 2]"),
        "{err}"
    );
    let err = model
        .run_with_hooks(
            HookSet::new().fwd("blocks.0.attn.hook_z", |x: &Tensor, _: &HookPoint| {
                Ok(Some(x.to_dtype(DType::BF16)?))
            }),
            |m| m.forward(&toks),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("blocks.0.attn.hook_z") && err.contains("BF16"), "{err}");
    // hook_z is [batch, pos, head, d_head]: its positions are on axis -3.
    let err = model
        .run_with_cache(
            CacheOptions::new()
                .names("blocks.0.attn.hook_z")
                .pos_slice(Slice::Index(10)),
            |m| m.forward(&toks),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blocks.0.attn.hook_z") && err.contains("out of range"),
        "{err}"
    );
    let err = model
        .run_with_cache(CacheOptions::new().remove_batch_dim(true), |m| m.forward(&toks))
        .unwrap_err()
        .to_string();
    assert!(err.contains("batch size 2"), "{err}");
    assert!(model.list_hooks().is_empty());
}

/// Patching beyond `tests/patching.rs`: corrupted tokens of the wrong rank, and a
/// custom setter that returns the wrong shape (named with its hook point).
#[test]
fn patching_with_bad_tokens_or_setters_is_an_error() {
    let model = processed_model();
    let toks = tokens();
    let (_, cache) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&toks)).unwrap();
    let rank3 = toks.unsqueeze(0).unwrap();
    let err = Patching::gpt2(&model, &rank3, &cache).err().unwrap().to_string();
    assert!(err.contains("[batch, pos]"), "{err}");
    let p = Patching::gpt2(&model, &toks, &cache).unwrap();
    let metric = |logits: &Tensor| -> hooklens_core::Result<f64> {
        Ok(logits.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
    };
    let shrink = PatchSetter::custom(|corrupted, _, _| Ok(corrupted.narrow(1, 0, 1)?));
    let err = p
        .generic_activation_patch(&metric, &shrink, "resid_pre", &PatchIndex::Rows(vec![vec![1, 0]]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blocks.1.hook_resid_pre") && err.contains("[2, 1, 64]"),
        "{err}"
    );
    assert!(model.list_hooks().is_empty());
}

/// A checkpoint written where it cannot be: an error naming the path.
#[test]
fn saving_a_checkpoint_to_an_unwritable_path_is_an_error() {
    let dir = TempDir::new("unwritable-checkpoint");
    let file = dir.join("file");
    std::fs::write(&file, b"x").unwrap();
    let cfg = TransformerConfig::new(1, 8, 2, 16, 4);
    let weights = hooklens_models::model::random_weights(&cfg, 0).unwrap();
    let err = hooklens_models::model::save_hf_checkpoint(file.join("sub"), &cfg, &weights, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("file"), "{err}");
}

/// What a caller branches on has a variant of its own, with the numbers in fields; the
/// messages stay what they were.
#[test]
fn typed_errors_carry_what_a_caller_acts_on() {
    use hooklens_core::Error;
    let model = raw_model();
    let d_vocab = model.cfg().d_vocab;
    let bad = Tensor::new(&[[1u32, d_vocab as u32 + 3]], &Device::Cpu).unwrap();
    match model.forward(&bad).unwrap_err() {
        Error::TokenOutOfVocab {
            id,
            d_vocab: v,
            message,
        } => {
            assert_eq!((id, v), (d_vocab as i64 + 3, d_vocab));
            assert!(message.contains("at [0, 1]"), "{message}");
        }
        other => panic!("not TokenOutOfVocab: {other}"),
    }
    let n_ctx = model.cfg().n_ctx;
    let long = Tensor::zeros((1, n_ctx + 2), candle_core::DType::U32, &Device::Cpu).unwrap();
    match model.forward(&long).unwrap_err() {
        Error::ContextTooLong {
            positions, n_ctx: n, ..
        } => assert_eq!((positions, n), (n_ctx + 2, n_ctx)),
        other => panic!("not ContextTooLong: {other}"),
    }
    let opts = hooklens_models::GenerateOptions::greedy(n_ctx);
    match model
        .generate(&Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap(), &opts)
        .unwrap_err()
    {
        Error::ContextTooLong { positions, .. } => assert_eq!(positions, 3 + n_ctx),
        other => panic!("not ContextTooLong: {other}"),
    }
    let resid = Tensor::zeros((1, 3, model.cfg().d_model + 1), candle_core::DType::F32, &Device::Cpu).unwrap();
    let fwd = hooklens_models::ForwardOptions::new().start_at_layer(1);
    match model.forward_with(&resid, &fwd).map(|_| ()).unwrap_err() {
        Error::ShapeMismatch { got, what, .. } => {
            assert_eq!(got, [1, 3, model.cfg().d_model + 1]);
            assert_eq!(what, "residual input");
        }
        other => panic!("not ShapeMismatch: {other}"),
    }
    let cfg = r#"{"model_type": "mamba", "architectures": ["MambaForCausalLM"]}"#;
    match hooklens_models::convert::config_from_hf_str(cfg, std::path::Path::new("m/config.json")).unwrap_err() {
        Error::UnsupportedArchitecture {
            name,
            supported,
            message,
        } => {
            assert_eq!(name, "mamba");
            assert!(supported.iter().any(|s| s == "LlamaForCausalLM"));
            assert!(message.contains("m/config.json"), "{message}");
        }
        other => panic!("not UnsupportedArchitecture: {other}"),
    }
}

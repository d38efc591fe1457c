//! Forward options, padding, KV cache, generation and input errors.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use hooklens_core::{CacheOptions, HookSet, HookedModel};
use hooklens_models::{ForwardOptions, GenerateOptions, HookedTransformer, KvCache, ReturnType};

fn ids(v: &[u32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

fn pad_batch(prompts: &[&[u32]], left: bool) -> (Tensor, Tensor) {
    let len = prompts.iter().map(|p| p.len()).max().unwrap();
    let mut toks = Vec::new();
    let mut mask = Vec::new();
    for p in prompts {
        let pad = len - p.len();
        let (mut t, mut m) = (Vec::new(), Vec::new());
        if left {
            t.extend(std::iter::repeat_n(511u32, pad));
            m.extend(std::iter::repeat_n(0u32, pad));
        }
        t.extend_from_slice(p);
        m.extend(std::iter::repeat_n(1u32, p.len()));
        if !left {
            t.extend(std::iter::repeat_n(511u32, pad));
            m.extend(std::iter::repeat_n(0u32, pad));
        }
        toks.extend(t);
        mask.extend(m);
    }
    let n = prompts.len();
    (
        Tensor::from_vec(toks, (n, len), &Device::Cpu).unwrap(),
        Tensor::from_vec(mask, (n, len), &Device::Cpu).unwrap(),
    )
}

const A: &[u32] = &[511, 5, 17, 300, 42, 8, 99];
const B: &[u32] = &[511, 7, 250];

#[test]
fn padded_batches_give_each_prompt_its_own_logits() {
    for model in [raw_model(), processed_model()] {
        for left in [true, false] {
            let (toks, mask) = pad_batch(&[A, B], left);
            let out = model
                .forward_with(&toks, &ForwardOptions::new().attention_mask(mask.clone()))
                .unwrap()
                .logits
                .unwrap();
            let len = A.len();
            for (row, prompt) in [A, B].iter().enumerate() {
                let alone = model.forward(&ids(prompt)).unwrap().squeeze(0).unwrap();
                let start = if left { len - prompt.len() } else { 0 };
                let got = out.get(row).unwrap().narrow(0, start, prompt.len()).unwrap();
                assert!(max_abs_diff(&got, &alone) < 1e-4, "left={left} row {row}");
            }
            // Pad query rows attend nothing: their pattern rows are zero, not NaN.
            let (_, cache) = model
                .run_with_cache(CacheOptions::new(), |m| {
                    m.forward_with(&toks, &ForwardOptions::new().attention_mask(mask.clone()))
                })
                .unwrap();
            let pattern = cache.get("blocks.0.attn.hook_pattern").unwrap();
            let v = pattern.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(v.iter().all(|x| x.is_finite()));
        }
    }
}

#[test]
fn loss_with_a_mask_ignores_padding() {
    let model = raw_model();
    let (toks, mask) = pad_batch(&[A, B], true);
    let out = model
        .forward_with(
            &toks,
            &ForwardOptions::new()
                .attention_mask(mask)
                .return_type(ReturnType::Loss)
                .loss_per_token(true),
        )
        .unwrap();
    let per_token = out.loss.unwrap();
    assert_eq!(per_token.dims(), [2, A.len() - 1]);
    let alone = model
        .forward_with(
            &ids(B),
            &ForwardOptions::new().return_type(ReturnType::Loss).loss_per_token(true),
        )
        .unwrap()
        .loss
        .unwrap();
    let pad = A.len() - B.len();
    let row = per_token.get(1).unwrap();
    assert!(max_abs_diff(&row.narrow(0, pad, B.len() - 1).unwrap(), &alone.squeeze(0).unwrap()) < 1e-4);
    assert_eq!(
        row.narrow(0, 0, pad)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
}

#[test]
fn start_and_stop_at_layer_split_the_forward() {
    let model = processed_model();
    let tokens = tokens();
    let (logits, cache) = model
        .run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))
        .unwrap();
    let resid = model
        .forward_with(&tokens, &ForwardOptions::new().stop_at_layer(1))
        .unwrap()
        .residual
        .unwrap();
    assert_eq!(max_abs_diff(&resid, cache.get("blocks.1.hook_resid_pre").unwrap()), 0.0);
    let zero = model
        .forward_with(&tokens, &ForwardOptions::new().stop_at_layer(0))
        .unwrap()
        .residual
        .unwrap();
    let embed = (cache.get("hook_embed").unwrap() + cache.get("hook_pos_embed").unwrap()).unwrap();
    assert_eq!(max_abs_diff(&zero, &embed), 0.0);
    let out = model
        .forward_with(
            &resid,
            &ForwardOptions::new()
                .start_at_layer(1)
                .return_type(ReturnType::Both)
                .tokens(tokens.clone()),
        )
        .unwrap();
    assert_eq!(max_abs_diff(out.logits.as_ref().unwrap(), &logits), 0.0);
    let reference = load_ref("tl_processed.safetensors");
    assert_close(
        "loss from layer 1",
        &out.loss.unwrap().reshape(1).unwrap(),
        &reference["loss"],
        1e-4,
    );
    // Negative layers count from the end; out of range is an error.
    let neg = model
        .forward_with(&tokens, &ForwardOptions::new().stop_at_layer(-1))
        .unwrap()
        .residual
        .unwrap();
    assert_eq!(max_abs_diff(&neg, &resid), 0.0);
    assert!(model
        .forward_with(&tokens, &ForwardOptions::new().stop_at_layer(3))
        .is_err());
    assert!(model
        .forward_with(&resid, &ForwardOptions::new().start_at_layer(2).stop_at_layer(1))
        .is_err());
    // Loss without tokens from a residual is an error, not a panic.
    assert!(model
        .forward_with(
            &resid,
            &ForwardOptions::new().start_at_layer(1).return_type(ReturnType::Loss)
        )
        .is_err());
    assert!(model
        .forward_with(&tokens, &ForwardOptions::new().start_at_layer(1))
        .is_err());
    let none = model
        .forward_with(&tokens, &ForwardOptions::new().return_type(ReturnType::None))
        .unwrap();
    assert!(none.logits.is_none() && none.loss.is_none());
}

#[test]
fn kv_cached_logits_equal_a_full_recompute() {
    for model in [raw_model(), processed_model()] {
        let tokens = tokens();
        let full = model.forward(&tokens).unwrap();
        let mut cache = KvCache::new();
        let mut parts = Vec::new();
        for (start, len) in [(0, 4), (4, 1), (5, 3), (8, 2)] {
            let chunk = tokens.narrow(1, start, len).unwrap();
            let out = model
                .forward_with_kv(&chunk, &ForwardOptions::new(), &mut cache)
                .unwrap();
            parts.push(out.logits.unwrap());
            assert_eq!(cache.len(), start + len);
        }
        let cached = Tensor::cat(&parts, 1).unwrap();
        assert!(max_abs_diff(&cached, &full) < 1e-4, "{}", max_abs_diff(&cached, &full));
        assert_eq!(cache.keys(0).unwrap().dims(), [2, 10, 4, 16]);
        // A wrong batch size or too many positions is an error.
        assert!(model
            .forward_with_kv(&ids(&[1]), &ForwardOptions::new(), &mut cache)
            .is_err());
        let long = Tensor::zeros((2, 60), DType::U32, &Device::Cpu).unwrap();
        assert!(model
            .forward_with_kv(&long, &ForwardOptions::new(), &mut cache)
            .is_err());
    }
}

#[test]
fn kv_cache_with_left_padding_matches_recompute() {
    let model = raw_model();
    let (toks, mask) = pad_batch(&[A, B], true);
    let full = model
        .forward_with(&toks, &ForwardOptions::new().attention_mask(mask.clone()))
        .unwrap()
        .logits
        .unwrap();
    let mut cache = KvCache::new();
    let first = model
        .forward_with_kv(
            &toks.narrow(1, 0, 5).unwrap(),
            &ForwardOptions::new().attention_mask(mask.narrow(1, 0, 5).unwrap()),
            &mut cache,
        )
        .unwrap()
        .logits
        .unwrap();
    let rest = model
        .forward_with_kv(&toks.narrow(1, 5, 2).unwrap(), &ForwardOptions::new(), &mut cache)
        .unwrap()
        .logits
        .unwrap();
    let cached = Tensor::cat(&[first, rest], 1).unwrap();
    // Compare real-token positions only (pad rows are arbitrary but finite).
    for (row, prompt) in [A, B].iter().enumerate() {
        let start = A.len() - prompt.len();
        let a = cached.get(row).unwrap().narrow(0, start, prompt.len()).unwrap();
        let b = full.get(row).unwrap().narrow(0, start, prompt.len()).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-4);
    }
}

#[test]
fn generation_is_deterministic_and_kv_cache_agrees() {
    let model = processed_model();
    let prompt = tokens();
    let greedy = model
        .generate(
            &prompt,
            &GenerateOptions {
                stop_at_eos: false,
                ..GenerateOptions::greedy(8)
            },
        )
        .unwrap();
    assert_eq!(greedy.dims(), [2, 18]);
    assert_eq!(greedy.dtype(), DType::I64, "the input's dtype comes back");
    assert_eq!(max_abs_diff(&greedy.narrow(1, 0, 10).unwrap(), &prompt), 0.0);
    // Greedy tokens are the argmax of a full recompute at every step.
    let logits = model.forward(&greedy.narrow(1, 0, 17).unwrap()).unwrap();
    let argmax = logits
        .argmax(2)
        .unwrap()
        .narrow(1, 9, 8)
        .unwrap()
        .to_dtype(DType::I64)
        .unwrap();
    assert_eq!(max_abs_diff(&argmax, &greedy.narrow(1, 10, 8).unwrap()), 0.0);
    let no_cache = model
        .generate(
            &prompt,
            &GenerateOptions {
                stop_at_eos: false,
                use_kv_cache: false,
                ..GenerateOptions::greedy(8)
            },
        )
        .unwrap();
    assert_eq!(max_abs_diff(&no_cache, &greedy), 0.0);

    let opts = GenerateOptions {
        top_k: Some(20),
        top_p: Some(0.9),
        freq_penalty: 0.5,
        stop_at_eos: false,
        ..GenerateOptions::sample(12, 0.8, 42)
    };
    let a = model.generate(&prompt, &opts).unwrap();
    let b = model.generate(&prompt, &opts).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0, "same seed, same tokens");
    let c = model
        .generate(
            &prompt,
            &GenerateOptions {
                use_kv_cache: false,
                ..opts.clone()
            },
        )
        .unwrap();
    assert_eq!(max_abs_diff(&a, &c), 0.0, "the KV cache does not change sampling");
    let d = model.generate(&prompt, &GenerateOptions { seed: 43, ..opts }).unwrap();
    assert!(max_abs_diff(&a, &d) > 0.0, "another seed, other tokens");
}

#[test]
fn generation_stops_at_eos_and_hooks_apply() {
    let model = processed_model();
    let prompt = ids(&[511, 3, 4]);
    // Make the greedy next token the EOS: generation must stop right after it.
    let first = model
        .generate(
            &prompt,
            &GenerateOptions {
                stop_at_eos: false,
                ..GenerateOptions::greedy(1)
            },
        )
        .unwrap();
    let next = first.to_vec2::<u32>().unwrap()[0][3];
    let stopped = model
        .generate(
            &prompt,
            &GenerateOptions {
                eos_token_id: Some(next),
                ..GenerateOptions::greedy(5)
            },
        )
        .unwrap();
    assert_eq!(stopped.dims(), [1, 4], "stops right after EOS");

    // Hooks apply during generation (per-run hooks see every step's new positions).
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let hooks = HookSet::new().fwd("blocks.0.hook_resid_pre", move |x, _hp| {
        s.lock().unwrap().push(x.dim(1)?);
        Ok(None)
    });
    model
        .run_with_hooks(hooks, |m| {
            m.generate(
                &prompt,
                &GenerateOptions {
                    stop_at_eos: false,
                    ..GenerateOptions::greedy(3)
                },
            )
        })
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![3, 1, 1]);
    let ablated = model
        .run_with_hooks(
            HookSet::new().fwd("blocks.1.hook_mlp_out", |x, _| Ok(Some(x.zeros_like()?))),
            |m| {
                m.generate(
                    &prompt,
                    &GenerateOptions {
                        stop_at_eos: false,
                        ..GenerateOptions::greedy(6)
                    },
                )
            },
        )
        .unwrap();
    let ablated_recompute = model
        .run_with_hooks(
            HookSet::new().fwd("blocks.1.hook_mlp_out", |x, _| Ok(Some(x.zeros_like()?))),
            |m| {
                m.generate(
                    &prompt,
                    &GenerateOptions {
                        stop_at_eos: false,
                        use_kv_cache: false,
                        ..GenerateOptions::greedy(6)
                    },
                )
            },
        )
        .unwrap();
    assert_eq!(max_abs_diff(&ablated, &ablated_recompute), 0.0);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let model: HookedTransformer = raw_model();
    let e = model.forward(&ids(&[1, 512])).unwrap_err().to_string();
    assert!(e.contains("512") && e.contains("vocabulary"), "{e}");
    let neg = Tensor::new(&[[1i64, -1]], &Device::Cpu).unwrap();
    assert!(model.forward(&neg).is_err());
    let empty = Tensor::zeros((1, 0), DType::U32, &Device::Cpu).unwrap();
    assert!(model.forward(&empty).unwrap_err().to_string().contains("empty"));
    let long = Tensor::zeros((1, 65), DType::U32, &Device::Cpu).unwrap();
    assert!(model.forward(&long).unwrap_err().to_string().contains("n_ctx"));
    let float = Tensor::zeros((1, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(model.forward(&float).is_err());
    let rank3 = Tensor::zeros((1, 3, 1), DType::U32, &Device::Cpu).unwrap();
    assert!(model.forward(&rank3).is_err());
    let bad_mask = Tensor::ones((2, 3), DType::U32, &Device::Cpu).unwrap();
    assert!(model
        .forward_with(&tokens(), &ForwardOptions::new().attention_mask(bad_mask))
        .is_err());
    let one = ids(&[5]);
    assert!(model
        .forward_with(&one, &ForwardOptions::new().return_type(ReturnType::Loss))
        .is_err());
    assert!(model.generate(&ids(&[1; 60]), &GenerateOptions::greedy(10)).is_err());
    assert!(model
        .generate(
            &one,
            &GenerateOptions {
                top_p: Some(1.5),
                ..GenerateOptions::default()
            }
        )
        .is_err());
    let wrong_resid = Tensor::zeros((1, 3, 7), DType::F32, &Device::Cpu).unwrap();
    assert!(model
        .forward_with(&wrong_resid, &ForwardOptions::new().start_at_layer(0))
        .is_err());
}

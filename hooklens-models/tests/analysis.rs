//! TransformerLens's `tests/acceptance/test_activation_cache.py`, ported to the processed
//! reference GPT-2, plus identities that catch wrong math (decompositions sum to the
//! residual, attributions sum to the logit difference).

mod common;

use candle_core::{Device, IndexOp, Tensor, D};
use common::*;
use hooklens_core::{ActivationCache, CacheOptions, HookedModel, Slice};
use hooklens_models::analysis::{
    act_name, token_tensor, AccumulatedResid, Analysis, CompositionMode, DecomposeMode, DecomposeResid,
    FullDecomposition, LnOptions, LogitAttrs, StackHeads, StackNeurons,
};
use hooklens_models::HookedTransformer;

fn run(model: &HookedTransformer, tokens: &Tensor) -> (Tensor, ActivationCache) {
    model
        .run_with_cache(CacheOptions::new(), |m| m.forward(tokens))
        .unwrap()
}

fn assert_eq_t(a: &Tensor, b: &Tensor) {
    assert_eq!(max_abs_diff(a, b), 0.0);
}

fn assert_near(a: &Tensor, b: &Tensor, tol: f32) {
    let d = max_abs_diff(a, b);
    assert!(d <= tol, "max difference {d} > {tol}");
}

/// The "answer" pairs per prompt: (correct, incorrect) token ids.
fn answers() -> (Tensor, Tensor) {
    (token_tensor(&[7, 100]).unwrap(), token_tensor(&[42, 300]).unwrap())
}

struct Fixture {
    model: HookedTransformer,
    logits: Tensor,
    cache: ActivationCache,
}

fn fixture() -> Fixture {
    let model = processed_model();
    let tokens = tokens();
    let (logits, cache) = run(&model, &tokens);
    Fixture { model, logits, cache }
}

#[test]
fn accumulated_resid_on_last_layer_variants_agree() {
    let f = fixture();
    let a = Analysis::new(&f.model, f.cache.clone());
    let opts = |layer| AccumulatedResid {
        layer,
        incl_mid: true,
        pos_slice: Slice::Index(-1),
        ..Default::default()
    };
    let minus_one = a.accumulated_resid(&opts(Some(-1))).unwrap();
    let n = a.accumulated_resid(&opts(Some(2))).unwrap();
    let none = a.accumulated_resid(&opts(None)).unwrap();
    assert_eq_t(&minus_one.stack, &n.stack);
    assert_eq_t(&minus_one.stack, &none.stack);
    assert_eq!(minus_one.stack.dims(), &[5, 2, 64]);
    assert_eq!(minus_one.labels, ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]);
    assert_eq_t(
        &none.stack.get(4).unwrap(),
        &f.cache["blocks.1.hook_resid_post"].i((.., 9)).unwrap(),
    );
    assert!(a.accumulated_resid(&opts(Some(3))).is_err());
}

#[test]
fn accumulated_resid_without_mid_and_with_mlp_input() {
    let f = fixture();
    let a = Analysis::new(&f.model, f.cache.clone());
    let r = a
        .accumulated_resid(&AccumulatedResid {
            pos_slice: Slice::Index(-1),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.labels.len(), r.stack.dim(0).unwrap());
    assert!(r.labels.iter().all(|l| !l.contains("mid")));
    let r = a
        .accumulated_resid(&AccumulatedResid {
            layer: Some(1),
            mlp_input: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.labels, ["0_pre", "1_pre", "1_mid"]);
    assert_eq!(r.stack.dims(), &[3, 2, 10, 64]);
}

#[test]
fn accumulated_resid_with_apply_ln() {
    let f = fixture();
    let a = Analysis::new(&f.model, f.cache.clone());
    let plain = a
        .accumulated_resid(&AccumulatedResid {
            layer: Some(-1),
            incl_mid: true,
            pos_slice: Slice::Index(-1),
            ..Default::default()
        })
        .unwrap();
    let reference = a
        .apply_ln_to_stack(&plain.stack, &LnOptions::new().layer(Some(-1)).pos_slice(-1))
        .unwrap();
    let scaled = a
        .accumulated_resid(&AccumulatedResid {
            incl_mid: true,
            pos_slice: Slice::Index(-1),
            apply_ln: true,
            ..Default::default()
        })
        .unwrap();
    assert_near(&reference, &scaled.stack, 1e-7);
    assert_eq!(scaled.labels, ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]);
    // The final entry through ln_final is the model's own normalised residual.
    assert_near(
        &scaled.stack.get(4).unwrap(),
        &f.cache["ln_final.hook_normalized"].i((.., 9)).unwrap(),
        1e-5,
    );
    // Recomputing the scale from the residual stream gives the cached one.
    let recomputed = a
        .apply_ln_to_stack(&plain.stack, &LnOptions::new().pos_slice(-1).recompute_ln(true))
        .unwrap();
    assert_near(&reference, &recomputed, 1e-5);
}

#[test]
fn decompose_resid_with_apply_ln_and_sums() {
    let f = fixture();
    let a = Analysis::new(&f.model, f.cache.clone());
    let per_layer = a
        .decompose_resid(&DecomposeResid {
            layer: Some(-1),
            pos_slice: Slice::Index(-1),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        per_layer.labels,
        [
            "embed",
            "pos_embed",
            "0_attn_out",
            "0_mlp_out",
            "1_attn_out",
            "1_mlp_out"
        ]
    );
    let reference = a
        .apply_ln_to_stack(&per_layer.stack, &LnOptions::new().pos_slice(-1))
        .unwrap();
    let scaled = a
        .decompose_resid(&DecomposeResid {
            pos_slice: Slice::Index(-1),
            apply_ln: true,
            ..Default::default()
        })
        .unwrap();
    assert_near(&reference, &scaled.stack, 1e-7);
    // The decomposition of each layer's input sums to that input.
    for layer in 0..=2usize {
        let d = a
            .decompose_resid(&DecomposeResid {
                layer: Some(layer as isize),
                ..Default::default()
            })
            .unwrap();
        let want = if layer == 2 {
            f.cache["blocks.1.hook_resid_post"].clone()
        } else {
            f.cache[format!("blocks.{layer}.hook_resid_pre").as_str()].clone()
        };
        assert_near(&d.stack.sum(0).unwrap(), &want, 1e-5);
    }
    let mid = a
        .decompose_resid(&DecomposeResid {
            layer: Some(1),
            mlp_input: true,
            ..Default::default()
        })
        .unwrap();
    assert_near(&mid.stack.sum(0).unwrap(), &f.cache["blocks.1.hook_resid_mid"], 1e-5);
}

#[test]
fn decompose_resid_including_attention() {
    let f = fixture();
    let a = Analysis::new(&f.model, f.cache.clone());
    let reference = Tensor::stack(
        &(0..2)
            .map(|l| a.get("attn_out", Some(l), None).unwrap().i((.., 9)).unwrap())
            .collect::<Vec<_>>(),
        0,
    )
    .unwrap();
    let stack = a
        .decompose_resid(&DecomposeResid {
            layer: Some(1),
            pos_slice: Slice::Index(-1),
            mlp_input: true,
            incl_embeds: false,
            mode: DecomposeMode::Attn,
            ..Default::default()
        })
        .unwrap();
    assert_near(&reference, &stack.stack, 1e-7);
    assert_eq!(stack.labels, ["0_attn_out", "1_attn_out"]);
}

#[test]
fn stack_head_results_with_apply_ln_and_remainder() {
    let f = fixture();
    let a = Analysis::new(&f.model, f.cache.clone());
    let per_head = a
        .stack_head_results(&StackHeads {
            layer: Some(-1),
            pos_slice: Slice::Index(-1),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(per_head.stack.dims(), &[8, 2, 64]);
    let reference = a
        .apply_ln_to_stack(&per_head.stack, &LnOptions::new().pos_slice(-1))
        .unwrap();
    let scaled = a
        .stack_head_results(&StackHeads {
            layer: Some(-1),
            pos_slice: Slice::Index(-1),
            apply_ln: true,
            ..Default::default()
        })
        .unwrap();
    assert_near(&reference, &scaled.stack, 1e-7);

    let resid_post0 = f.cache["blocks.0.hook_resid_post"]
        .i((.., 9))
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let with_rest = a
        .stack_head_results(&StackHeads {
            layer: Some(1),
            pos_slice: Slice::Index(-1),
            incl_remainder: true,
            ..Default::default()
        })
        .unwrap();
    let heads = with_rest.stack.narrow(0, 0, 4).unwrap();
    let remainder = (&resid_post0 - heads.sum_keepdim(0).unwrap()).unwrap();
    assert_near(&remainder, &with_rest.stack.narrow(0, 4, 1).unwrap(), 1e-6);
    assert_eq!(with_rest.labels, ["L0H0", "L0H1", "L0H2", "L0H3", "remainder"]);
    assert_near(&with_rest.stack.sum_keepdim(0).unwrap(), &resid_post0, 1e-5);

    // Layer 0: only the remainder, which is the residual entering layer 0. (TransformerLens
    // returns the *last* block's resid_post here, by indexing layer - 1 = -1.)
    let rest_only = a
        .stack_head_results(&StackHeads {
            layer: Some(0),
            pos_slice: Slice::Index(-1),
            incl_remainder: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rest_only.labels, ["remainder"]);
    let pre0 = f.cache["blocks.0.hook_resid_pre"]
        .i((.., 9))
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    assert_eq_t(&rest_only.stack, &pre0);
    let empty = a
        .stack_head_results(&StackHeads {
            layer: Some(0),
            pos_slice: Slice::Index(-1),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(empty.stack.dims(), &[0, 2, 64]);
    assert!(empty.labels.is_empty());
}

#[test]
fn head_results_sum_to_attn_out_and_are_not_recomputed() {
    let f = fixture();
    let mut a = Analysis::new(&f.model, f.cache.clone());
    assert!(!a.cache().contains("blocks.0.attn.hook_result"));
    let b_o = f.model.b_o().unwrap();
    for l in 0..2 {
        let summed = a
            .head_results(l)
            .unwrap()
            .sum(2)
            .unwrap()
            .broadcast_add(&b_o.get(l).unwrap())
            .unwrap();
        assert_near(&summed, a.get("attn_out", Some(l as isize), None).unwrap(), 1e-5);
    }
    a.compute_head_results().unwrap();
    assert!(a.cache().contains("blocks.0.attn.hook_result"));
    let mut cache = a.into_cache();
    let poisoned = cache["blocks.0.attn.hook_result"].affine(0.0, f64::INFINITY).unwrap();
    cache.insert("blocks.0.attn.hook_result", poisoned.clone());
    let mut a = Analysis::new(&f.model, cache);
    a.compute_head_results().unwrap();
    let kept = a.cache()["blocks.0.attn.hook_result"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(kept.iter().all(|x| *x == f32::INFINITY));
}

#[test]
fn head_results_match_a_model_run_with_use_attn_result() {
    let mut model = processed_model();
    model.set_use_attn_result(true);
    let (_, cache) = run(&model, &tokens());
    let f = fixture();
    let a = Analysis::new(&f.model, f.cache.clone());
    for l in 0..2 {
        let name = format!("blocks.{l}.attn.hook_result");
        assert_near(&a.head_results(l).unwrap(), &cache[name.as_str()], 1e-5);
    }
}

#[test]
fn stack_neuron_results_with_apply_ln_remainder_and_slices() {
    let f = fixture();
    let a = Analysis::new(&f.model, f.cache.clone());
    let stack = a
        .stack_neuron_results(&StackNeurons {
            pos_slice: Slice::Index(-1),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(stack.stack.dims(), &[512, 2, 64]);
    let reference = a
        .apply_ln_to_stack(&stack.stack, &LnOptions::new().pos_slice(-1))
        .unwrap();
    let scaled = a
        .stack_neuron_results(&StackNeurons {
            pos_slice: Slice::Index(-1),
            apply_ln: true,
            ..Default::default()
        })
        .unwrap();
    assert_near(&reference, &scaled.stack, 1e-7);

    let resid_post0 = f.cache["blocks.0.hook_resid_post"]
        .i((.., 9))
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let with_rest = a
        .stack_neuron_results(&StackNeurons {
            layer: Some(1),
            pos_slice: Slice::Index(-1),
            incl_remainder: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(with_rest.labels.len(), 257);
    assert_eq!(with_rest.labels[..3], ["L0N0", "L0N1", "L0N2"]);
    assert_eq!(with_rest.labels.last().unwrap(), "remainder");
    assert_near(&with_rest.stack.sum_keepdim(0).unwrap(), &resid_post0, 1e-4);

    let empty = a
        .stack_neuron_results(&StackNeurons {
            layer: Some(0),
            pos_slice: Slice::Index(-1),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(empty.stack.dims(), &[0, 2, 64]);
    let sliced = a
        .stack_neuron_results(&StackNeurons {
            layer: Some(1),
            pos_slice: Slice::Index(-1),
            neuron_slice: Slice::Indices(vec![0, 1, 2]),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(sliced.labels, ["L0N0", "L0N1", "L0N2"]);
    let one = a
        .stack_neuron_results(&StackNeurons {
            layer: Some(2),
            neuron_slice: Slice::Index(5),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(one.labels, ["L0N5", "L1N5"]);
    assert_eq!(one.stack.dims(), &[2, 2, 10, 64]);
}

#[test]
fn projected_neuron_stacks_equal_projections_of_the_full_ones() {
    let f = fixture();
    let a = Analysis::new(&f.model, f.cache.clone());
    let (good, bad) = answers();
    let dir = (f.model.tokens_to_residual_directions(&good).unwrap()
        - f.model.tokens_to_residual_directions(&bad).unwrap())
    .unwrap(); // [2, d_model]: one direction per prompt
    for apply_ln in [false, true] {
        let full = a
            .stack_neuron_results(&StackNeurons {
                pos_slice: Slice::Index(-1),
                incl_remainder: true,
                apply_ln,
                ..Default::default()
            })
            .unwrap();
        let want = full.stack.broadcast_mul(&dir).unwrap().sum(D::Minus1).unwrap();
        let projected = a
            .stack_neuron_results(&StackNeurons {
                pos_slice: Slice::Index(-1),
                incl_remainder: true,
                apply_ln,
                project_output_onto: Some(dir.clone()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(projected.stack.dims(), &[513, 2]);
        assert_eq!(projected.labels, full.labels);
        assert_near(&projected.stack, &want, 1e-4);
    }
}

#[test]
fn get_neuron_results_match_hand_computation() {
    let f = fixture();
    let a = Analysis::new(&f.model, f.cache.clone());
    let w_out = f.model.w_out().unwrap().get(1).unwrap();
    let post = &f.cache["blocks.1.mlp.hook_post"];
    let want = post
        .i((.., 9, 0..2))
        .unwrap()
        .unsqueeze(2)
        .unwrap()
        .broadcast_mul(&w_out.narrow(0, 0, 2).unwrap())
        .unwrap();
    let got = a
        .get_neuron_results(1, &Slice::Indices(vec![0, 1]), &Slice::Index(-1))
        .unwrap();
    assert_near(&got, &want, 1e-6);
    let want = post.unsqueeze(3).unwrap().broadcast_mul(&w_out).unwrap();
    let got = a.get_neuron_results(1, &Slice::All, &Slice::All).unwrap();
    assert_near(&got, &want, 1e-6);
}

#[test]
fn batch_dim_removal_and_slicing() {
    let model = processed_model();
    let tokens = tokens();
    let (_, cache) = run(&model, &tokens.narrow(0, 0, 1).unwrap());
    let a = Analysis::new(&model, cache.clone());
    assert!(a.has_batch_dim());
    let a = a.remove_batch_dim().unwrap();
    assert!(!a.has_batch_dim());
    for (name, t) in cache.iter() {
        assert_eq!(&t.dims()[1..], a.cache()[name].dims(), "{name}");
    }
    let a = a.remove_batch_dim().unwrap();
    assert!(!a.has_batch_dim());
    // Decompositions work without a batch axis too.
    let r = a.accumulated_resid(&AccumulatedResid::default()).unwrap();
    assert_eq!(r.stack.dims(), &[3, 10, 64]);

    let (_, cache) = run(&model, &tokens);
    let a = Analysis::new(&model, cache.clone());
    assert!(Analysis::new(&model, cache.clone()).remove_batch_dim().is_err());
    let sliced = a.apply_slice_to_batch_dim(&Slice::range(Some(1), Some(2))).unwrap();
    assert!(sliced.has_batch_dim());
    for (name, t) in cache.iter() {
        assert_eq_t(&t.narrow(0, 1, 1).unwrap(), &sliced.cache()[name]);
    }
    let one = a.apply_slice_to_batch_dim(&Slice::Index(1)).unwrap();
    assert!(!one.has_batch_dim());
    for (name, t) in cache.iter() {
        assert_eq_t(&t.get(1).unwrap(), &one.cache()[name]);
    }
    assert!(one.apply_slice_to_batch_dim(&Slice::Index(0)).is_err());
}

#[test]
fn retrieve_activations_by_shorthand() {
    let f = fixture();
    let a = Analysis::new(&f.model, f.cache.clone());
    let by_key = a.get("scale", Some(1), Some("ln1")).unwrap();
    assert_eq_t(
        by_key,
        a.get_by_name(&act_name("scale", Some(1), Some("ln1")).unwrap())
            .unwrap(),
    );
    assert_eq_t(
        a.get("scale", Some(-1), Some("ln1")).unwrap(),
        a.get_by_name("scale1ln1").unwrap(),
    );
    assert_eq_t(a.get("k", Some(-1), None).unwrap(), &f.cache["blocks.1.attn.hook_k"]);
    assert_eq_t(a.get_by_name("embed").unwrap(), &f.cache["hook_embed"]);
    assert_eq_t(a.get("embed", None, None).unwrap(), &f.cache["hook_embed"]);
    assert!(a.get("scale", Some(1), None).is_err());
    assert!(a.get("k", Some(2), None).is_err());
    assert!(
        a.get("result", Some(0), None).is_err(),
        "not cached without use_attn_result"
    );
}

#[test]
fn stack_activation_stacks_layers() {
    let f = fixture();
    let a = Analysis::new(&f.model, f.cache.clone());
    let stack = a.stack_activation("scale", Some(-1), Some("ln1")).unwrap();
    assert_eq!(stack.dim(0).unwrap(), 2);
    for l in 0..2 {
        assert_eq_t(
            &stack.get(l).unwrap(),
            a.get("scale", Some(l as isize), Some("ln1")).unwrap(),
        );
    }
    let stack = a.stack_activation("scale", Some(1), Some("ln1")).unwrap();
    assert_eq!(stack.dim(0).unwrap(), 1);
    assert_eq_t(&stack.get(0).unwrap(), a.get("scale", Some(0), Some("ln1")).unwrap());
}

#[test]
fn full_resid_decomposition_matches_its_parts() {
    let f = fixture();
    let a = Analysis::new(&f.model, f.cache.clone());
    let heads = a
        .stack_head_results(&StackHeads {
            pos_slice: Slice::Index(-1),
            apply_ln: true,
            ..Default::default()
        })
        .unwrap();
    let mlps = a
        .decompose_resid(&DecomposeResid {
            pos_slice: Slice::Index(-1),
            incl_embeds: false,
            mode: DecomposeMode::Mlp,
            apply_ln: true,
            ..Default::default()
        })
        .unwrap();
    let ln = LnOptions::new().pos_slice(-1);
    let embed = a
        .apply_ln_to_stack(&f.cache["hook_embed"].i((.., 9)).unwrap().unsqueeze(0).unwrap(), &ln)
        .unwrap();
    let pos_embed = a
        .apply_ln_to_stack(
            &f.cache["hook_pos_embed"].i((.., 9)).unwrap().unsqueeze(0).unwrap(),
            &ln,
        )
        .unwrap();
    let bias = f
        .model
        .accumulated_bias(2, false, false)
        .unwrap()
        .broadcast_as((1, 2, 64))
        .unwrap();
    let bias = a.apply_ln_to_stack(&bias.contiguous().unwrap(), &ln).unwrap();

    let full = a
        .get_full_resid_decomposition(&FullDecomposition {
            pos_slice: Slice::Index(-1),
            apply_ln: true,
            expand_neurons: false,
            ..Default::default()
        })
        .unwrap();
    let (h, m) = (heads.labels.len(), mlps.labels.len());
    assert_near(&heads.stack, &full.stack.narrow(0, 0, h).unwrap(), 1e-7);
    assert_eq!(heads.labels[..], full.labels[..h]);
    assert_near(&mlps.stack, &full.stack.narrow(0, h, m).unwrap(), 1e-7);
    assert_eq!(mlps.labels[..], full.labels[h..h + m]);
    assert_near(&embed, &full.stack.narrow(0, h + m, 1).unwrap(), 1e-7);
    assert_near(&pos_embed, &full.stack.narrow(0, h + m + 1, 1).unwrap(), 1e-7);
    assert_near(&bias, &full.stack.narrow(0, h + m + 2, 1).unwrap(), 1e-7);
    assert_eq!(full.labels[h + m..], ["embed", "pos_embed", "bias"]);

    let expanded = a
        .get_full_resid_decomposition(&FullDecomposition {
            layer: Some(1),
            pos_slice: Slice::Index(-1),
            apply_ln: true,
            ..Default::default()
        })
        .unwrap();
    let neurons = a
        .stack_neuron_results(&StackNeurons {
            layer: Some(1),
            pos_slice: Slice::Index(-1),
            ..Default::default()
        })
        .unwrap();
    let neurons_ln = a
        .apply_ln_to_stack(&neurons.stack, &LnOptions::new().layer(Some(1)).pos_slice(-1))
        .unwrap();
    assert_near(&neurons_ln, &expanded.stack.narrow(0, 4, 256).unwrap(), 1e-7);
    assert_eq!(neurons.labels[..], expanded.labels[4..260]);
}

#[test]
fn full_resid_decomposition_sums_to_the_residual() {
    let f = fixture();
    let a = Analysis::new(&f.model, f.cache.clone());
    let cases: [(Option<isize>, bool, &str); 5] = [
        (None, false, "blocks.1.hook_resid_post"),
        (Some(1), false, "blocks.1.hook_resid_pre"),
        (Some(1), true, "blocks.1.hook_resid_mid"),
        (Some(0), false, "blocks.0.hook_resid_pre"),
        (Some(0), true, "blocks.0.hook_resid_mid"),
    ];
    for (layer, mlp_input, want) in cases {
        for expand_neurons in [true, false] {
            let full = a
                .get_full_resid_decomposition(&FullDecomposition {
                    layer,
                    mlp_input,
                    expand_neurons,
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(full.labels.len(), full.stack.dim(0).unwrap());
            assert_near(&full.stack.sum(0).unwrap(), &f.cache[want], 1e-4);
        }
    }
}

#[test]
fn logit_attrs_match_reference_code_for_all_input_shapes() {
    let f = fixture();
    let a = Analysis::new(&f.model, f.cache.clone());
    let (good, bad) = answers();
    let accumulated = a
        .accumulated_resid(&AccumulatedResid {
            incl_mid: true,
            pos_slice: Slice::Index(-1),
            ..Default::default()
        })
        .unwrap()
        .stack; // [5, batch, d_model]
    let dirs_good = f.model.tokens_to_residual_directions(&good).unwrap();
    let dirs_bad = f.model.tokens_to_residual_directions(&bad).unwrap();
    let diff_dirs = (&dirs_good - &dirs_bad).unwrap();
    let scaled = a
        .apply_ln_to_stack(&accumulated, &LnOptions::new().pos_slice(-1))
        .unwrap();
    let reference = scaled.broadcast_mul(&diff_dirs).unwrap().sum(D::Minus1).unwrap(); // [5, batch]

    let opts = LogitAttrs::new().pos_slice(-1).incorrect_tokens(bad.clone());
    let all = a.logit_attrs(&accumulated, &good, &opts).unwrap();
    assert_near(&reference, &all, 1e-5);
    let mean_ref = (reference.sum(1).unwrap() / 2.0).unwrap();
    assert_near(&mean_ref, &all.mean(1).unwrap(), 1.1e-6);

    // One prompt: a batch index with scalar tokens, with and without a batch axis on the stack.
    let last_ref = reference.i((.., 1)).unwrap();
    let scalar = |t: &Tensor| t.get(1).unwrap();
    let one = LogitAttrs::new()
        .pos_slice(-1)
        .batch_slice(-1)
        .incorrect_tokens(scalar(&bad));
    assert_near(
        &last_ref,
        &a.logit_attrs(&accumulated, &scalar(&good), &one).unwrap(),
        1e-5,
    );
    let no_batch = one.clone().has_batch_dim(false);
    let stack_one = accumulated.i((.., 1)).unwrap();
    assert_near(
        &last_ref,
        &a.logit_attrs(&stack_one, &scalar(&good), &no_batch).unwrap(),
        1e-5,
    );
    // An array of batch indices.
    let picked = LogitAttrs::new()
        .pos_slice(-1)
        .batch_slice(Slice::Indices(vec![1, 0]))
        .incorrect_tokens(token_tensor(&[300, 42]).unwrap());
    let got = a
        .logit_attrs(&accumulated, &token_tensor(&[100, 7]).unwrap(), &picked)
        .unwrap();
    assert_near(&got.i((.., 0)).unwrap(), &last_ref, 1e-5);
    assert_near(&got.i((.., 1)).unwrap(), &reference.i((.., 0)).unwrap(), 1e-5);
    // Tokens and incorrect tokens of different shapes are an error.
    let mismatched = LogitAttrs::new()
        .pos_slice(-1)
        .incorrect_tokens(bad.narrow(0, 0, 1).unwrap());
    let err = a.logit_attrs(&accumulated, &good, &mismatched).unwrap_err().to_string();
    assert!(err.contains("same shape"), "{err}");
    // Out-of-vocabulary ids are an error.
    assert!(a
        .logit_attrs(
            &accumulated,
            &token_tensor(&[7, 512]).unwrap(),
            &LogitAttrs::new().pos_slice(-1)
        )
        .is_err());
    // No incorrect tokens: the logit direction alone.
    let reference = scaled.broadcast_mul(&dirs_good).unwrap().sum(D::Minus1).unwrap();
    let got = a
        .logit_attrs(&accumulated, &good, &LogitAttrs::new().pos_slice(-1))
        .unwrap();
    assert_near(&reference, &got, 1e-5);
}

#[test]
fn logit_attrs_of_a_full_decomposition_sum_to_the_logit_difference() {
    let f = fixture();
    let a = Analysis::new(&f.model, f.cache.clone());
    let (good, bad) = answers();
    let last = f.logits.i((.., 9)).unwrap().contiguous().unwrap(); // [batch, d_vocab]
    let pick = |ids: &Tensor| last.gather(&ids.unsqueeze(1).unwrap(), 1).unwrap().squeeze(1).unwrap();
    let b_u = f.model.b_u();
    let logit_diff = (pick(&good) - pick(&bad)).unwrap();
    let bias_diff = (b_u.index_select(&good, 0).unwrap() - b_u.index_select(&bad, 0).unwrap()).unwrap();
    let want = (logit_diff - bias_diff).unwrap();
    let opts = LogitAttrs::new().pos_slice(-1).incorrect_tokens(bad.clone());
    for expand_neurons in [true, false] {
        let full = a
            .get_full_resid_decomposition(&FullDecomposition {
                pos_slice: Slice::Index(-1),
                expand_neurons,
                ..Default::default()
            })
            .unwrap();
        let attrs = a.logit_attrs(&full.stack, &good, &opts).unwrap();
        assert_near(&attrs.sum(0).unwrap(), &want, 1e-3);
    }
    // Per-component residual stack from decompose_resid sums the same way.
    let d = a
        .decompose_resid(&DecomposeResid {
            pos_slice: Slice::Index(-1),
            ..Default::default()
        })
        .unwrap();
    assert_near(
        &a.logit_attrs(&d.stack, &good, &opts).unwrap().sum(0).unwrap(),
        &want,
        1e-3,
    );
    // Projected onto the logit-difference direction (after ln_final), the full
    // decomposition gives the same attributions without building the neuron vectors.
    let dir = (f.model.tokens_to_residual_directions(&good).unwrap()
        - f.model.tokens_to_residual_directions(&bad).unwrap())
    .unwrap();
    let projected = a
        .get_full_resid_decomposition(&FullDecomposition {
            pos_slice: Slice::Index(-1),
            apply_ln: true,
            project_output_onto: Some(dir),
            ..Default::default()
        })
        .unwrap();
    let full = a
        .get_full_resid_decomposition(&FullDecomposition {
            pos_slice: Slice::Index(-1),
            ..Default::default()
        })
        .unwrap();
    assert_near(
        &projected.stack,
        &a.logit_attrs(&full.stack, &good, &opts).unwrap(),
        1e-4,
    );
}

#[test]
fn weight_views_for_analysis() {
    let model = processed_model();
    let ids = Tensor::new(&[[3u32, 4], [5, 6]], &Device::Cpu).unwrap();
    let dirs = model.tokens_to_residual_directions(&ids).unwrap();
    assert_eq!(dirs.dims(), &[2, 2, 64]);
    assert_eq_t(&dirs.i((1, 0)).unwrap(), &model.w_u().unwrap().i((.., 5)).unwrap());
    let scalar = Tensor::new(9i64, &Device::Cpu).unwrap();
    assert_eq!(model.tokens_to_residual_directions(&scalar).unwrap().dims(), &[64]);

    let b_o = model.b_o().unwrap();
    let b_out = model.b_out().unwrap();
    let want = (b_o.get(0).unwrap() + b_out.get(0).unwrap() + b_o.get(1).unwrap()).unwrap();
    assert_near(&model.accumulated_bias(1, true, true).unwrap(), &want, 1e-6);
    assert_near(
        &model.accumulated_bias(1, false, false).unwrap(),
        &b_o.get(0).unwrap(),
        1e-6,
    );
    assert!(model.accumulated_bias(2, true, true).is_err());

    let qk = model.qk_circuit().unwrap();
    assert_eq!(qk.shape(), vec![2, 4, 64, 64]);
    let dense = model
        .w_q()
        .unwrap()
        .matmul(&model.w_k().unwrap().transpose(2, 3).unwrap().contiguous().unwrap())
        .unwrap();
    assert_near(&qk.ab().unwrap(), &dense, 1e-5);
    let ov = model.ov_circuit().unwrap();
    let dense_ov = model.w_v().unwrap().matmul(&model.w_o().unwrap()).unwrap();
    assert_near(&ov.ab().unwrap(), &dense_ov, 1e-5);
    let fro = dense_ov.sqr().unwrap().sum((2, 3)).unwrap().sqrt().unwrap();
    assert_near(&ov.norm().unwrap(), &fro, 1e-4);
    assert_eq!(ov.s().unwrap().dims(), &[2, 4, 16]);

    for mode in [CompositionMode::Q, CompositionMode::K, CompositionMode::V] {
        let scores = model.all_composition_scores(mode).unwrap();
        assert_eq!(scores.dims(), &[2, 4, 2, 4]);
        // Only pairs from layer 0 into layer 1 are unmasked.
        let masked = (scores.i((1, .., .., ..)).unwrap().abs().unwrap().sum_all().unwrap()
            + scores.i((0, .., 0, ..)).unwrap().abs().unwrap().sum_all().unwrap())
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert_eq!(masked, 0.0);
        let left = dense_ov.i((0, 2)).unwrap();
        let right = match mode {
            CompositionMode::Q => dense.i((1, 3)).unwrap(),
            CompositionMode::K => dense.i((1, 3)).unwrap().t().unwrap(),
            CompositionMode::V => dense_ov.i((1, 3)).unwrap(),
        };
        let f = |t: &Tensor| {
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .sqrt()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let want = f(&left.matmul(&right.contiguous().unwrap()).unwrap()) / f(&left) / f(&right);
        let got = scores.i((0, 2, 1, 3)).unwrap().to_scalar::<f32>().unwrap();
        assert!(
            (want - got).abs() < 1e-4 * want.abs().max(1.0),
            "{mode:?}: {want} vs {got}"
        );
    }
    assert_eq!(model.all_head_labels()[5], "L1H1");
}

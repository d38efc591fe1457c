//! The analysis toolkit on every family (TransformerLens reference checkpoints,
//! processed as `from_pretrained` does): identities that hold for any weights.
//! - `decompose_resid` sums to the final residual; with the final norm's scaling,
//!   `logit_attrs` of its components sum to the logits minus `b_U` (before a logit
//!   soft cap), and the last `accumulated_resid` component unembeds to the logits;
//! - `stack_head_results` plus `b_O` is `attn_out` (where no norm follows attention);
//! - the OV and QK circuits of a grouped-query model read each query head's key/value
//!   head; composition scores are finite and shaped `[L, H, L, H]`;
//! - activation patching from the clean run into the clean run changes nothing.
//!
//! A mixture-of-experts model keeps `ln_final`'s gain when processed (TransformerLens
//! folds no norm of an MoE model), and `logit_attrs` / `apply_ln` apply only the
//! final norm's scale, as TransformerLens's: there the identities hold with the gain
//! applied to the stack, which is what the test does.

mod common;

use std::path::Path;

use candle_core::{DType, IndexOp, Tensor, D};
use common::max_abs_diff;
use hooklens_core::{CacheOptions, HookedModel, Slice};
use hooklens_models::analysis::patching::Patching;
use hooklens_models::analysis::{
    token_tensor, AccumulatedResid, Analysis, CompositionMode, DecomposeResid, FullDecomposition, LogitAttrs,
    StackHeads, StackNeurons,
};
use hooklens_models::{HookedTransformer, LoadOptions};

const FAMILIES: &[&str] = &[
    "neox",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "phi3",
    "gpt_neo",
    "opt",
    "phi",
    "gptj",
    "bloom",
    "gemma3",
    "olmo2",
    "mixtral",
    "qwen3_moe",
    "olmoe",
    "gpt_oss",
];

fn model(family: &str) -> HookedTransformer {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(family)
        .join("model");
    HookedTransformer::from_dir(dir, &LoadOptions::default()).unwrap()
}

fn tokens(family: &str) -> Tensor {
    hooklens_testutil::reference_tokens(family)
        .to_dtype(DType::U32)
        .unwrap()
}

fn scale_of(t: &Tensor) -> f32 {
    max_abs_diff(t, &t.zeros_like().unwrap())
}

#[test]
fn residual_decompositions_and_logit_attribution_add_up() {
    for family in FAMILIES {
        let mut m = model(family);
        m.set_use_attn_result(true);
        let tokens = tokens(family);
        let (logits, cache) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
        let soft_capped = m.cfg().output_logits_soft_cap.is_some();
        let post_norms = m.cfg().use_normalization_before_and_after;
        let a = Analysis::new(&m, cache);
        let n = m.cfg().n_layers;

        let parts = a.decompose_resid(&DecomposeResid::default()).unwrap();
        let total = parts.stack.sum(0).unwrap();
        let final_resid = a.get_by_name(&format!("blocks.{}.hook_resid_post", n - 1)).unwrap();
        assert!(
            max_abs_diff(&total, final_resid) < 1e-4 * scale_of(final_resid),
            "{family}: decompose_resid sums to the residual"
        );

        // The last position's logit of token 5 for every sequence, from the components.
        let pos = Slice::Index(-1);
        // logit_attrs applies the final norm's scaling itself.
        let parts_last = a
            .decompose_resid(&DecomposeResid {
                pos_slice: pos.clone(),
                ..DecomposeResid::default()
            })
            .unwrap();
        // The gain a processed MoE model keeps (`None` where fold_ln folded it).
        let gain = m.ln_final.as_ref().and_then(|n| n.weight()).cloned();
        assert_eq!(
            gain.is_some(),
            m.cfg().num_experts.is_some(),
            "{family}: ln_final's gain"
        );
        let with_gain = |t: &Tensor| match &gain {
            Some(g) => t.broadcast_mul(g).unwrap(),
            None => t.clone(),
        };
        let tok = token_tensor(&[5, 5]).unwrap();
        let attrs = a
            .logit_attrs(
                &with_gain(&parts_last.stack),
                &tok,
                &LogitAttrs {
                    pos_slice: pos.clone(),
                    ..LogitAttrs::new()
                },
            )
            .unwrap();
        let summed = attrs.sum(0).unwrap();
        let last = logits.i((.., logits.dim(1).unwrap() - 1, 5)).unwrap();
        let b_u = m.b_u().i(5).unwrap().to_scalar::<f32>().unwrap() as f64;
        let want = (last - b_u).unwrap();
        if !soft_capped {
            assert!(
                max_abs_diff(&summed, &want) < 1e-4 * scale_of(&logits),
                "{family}: logit attributions add up: {} vs {}",
                summed,
                want
            );
            let lens = a
                .accumulated_resid(&AccumulatedResid {
                    apply_ln: true,
                    pos_slice: pos.clone(),
                    ..AccumulatedResid::default()
                })
                .unwrap();
            let final_post = with_gain(&lens.stack.get(lens.stack.dim(0).unwrap() - 1).unwrap());
            let unembedded = m
                .unembed
                .forward(&final_post.unsqueeze(1).unwrap())
                .unwrap()
                .squeeze(1)
                .unwrap();
            let want = logits.i((.., logits.dim(1).unwrap() - 1)).unwrap();
            assert!(
                max_abs_diff(&unembedded, &want) < 1e-4 * scale_of(&want),
                "{family}: the logit lens's last layer is the logits"
            );
        }

        let heads = a
            .stack_head_results(&StackHeads {
                layer: None,
                incl_remainder: false,
                pos_slice: Slice::All,
                apply_ln: false,
            })
            .unwrap();
        let per_layer = heads.stack.dim(0).unwrap() / n;
        assert_eq!(per_layer, m.cfg().n_heads, "{family}");
        if !post_norms {
            for l in 0..n {
                let sum = heads.stack.narrow(0, l * per_layer, per_layer).unwrap().sum(0).unwrap();
                let b_o = m.b_o().unwrap().get(l).unwrap();
                let got = sum.broadcast_add(&b_o).unwrap();
                let want = a.get_by_name(&format!("blocks.{l}.hook_attn_out")).unwrap();
                assert!(
                    max_abs_diff(&got, want) < 1e-4 * scale_of(want),
                    "{family}: heads of layer {l}"
                );
            }
        }
        if m.cfg().parallel_attn_mlp {
            let err = a
                .accumulated_resid(&AccumulatedResid {
                    incl_mid: true,
                    ..AccumulatedResid::default()
                })
                .unwrap_err()
                .to_string();
            assert!(err.contains("resid_mid"), "{family}: {err}");
        }
    }
}

#[test]
fn circuits_read_the_right_key_value_heads() {
    for family in FAMILIES {
        let m = model(family);
        let cfg = m.cfg();
        let (h, kv, dh) = (cfg.n_heads, cfg.n_kv_heads(), cfg.d_head);
        let group = h / kv;
        let w_v = m.w_v().unwrap();
        let w_k = m.w_k().unwrap();
        assert_eq!(w_v.dims(), [cfg.n_layers, h, cfg.d_model, dh], "{family}");
        // Query heads of one group share their key/value weights.
        for l in 0..cfg.n_layers {
            for head in 0..h {
                let first = (head / group) * group;
                assert_eq!(
                    max_abs_diff(&w_k.i((l, head)).unwrap(), &w_k.i((l, first)).unwrap()),
                    0.0
                );
                assert_eq!(
                    max_abs_diff(&w_v.i((l, head)).unwrap(), &w_v.i((l, first)).unwrap()),
                    0.0
                );
            }
        }
        let ov = m.ov_circuit().unwrap();
        let dense = w_v.matmul(&m.w_o().unwrap()).unwrap();
        assert!(max_abs_diff(&ov.ab().unwrap(), &dense) < 1e-5, "{family}: OV");
        let qk = m.qk_circuit().unwrap();
        assert_eq!(qk.shape(), [cfg.n_layers, h, cfg.d_model, cfg.d_model], "{family}: QK");
        let scores = m.all_composition_scores(CompositionMode::Q).unwrap();
        assert_eq!(scores.dims(), [cfg.n_layers, h, cfg.n_layers, h], "{family}");
        let finite = scores.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(finite.iter().all(|x| x.is_finite()), "{family}: composition scores");
    }
}

#[test]
fn patching_the_clean_run_into_itself_changes_nothing() {
    for family in FAMILIES {
        let m = model(family);
        let tokens = tokens(family);
        let (logits, cache) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
        let metric = |l: &Tensor| -> hooklens_core::Result<f64> {
            let last = l.i((.., l.dim(1)? - 1))?;
            Ok(candle_nn::ops::log_softmax(&last, D::Minus1)?
                .i((.., 7))?
                .mean_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?)
        };
        let clean = metric(&logits).unwrap();
        let p = Patching::transformer(&m, &tokens, &cache).unwrap();
        let sweep = p.get_act_patch_resid_pre(&metric).unwrap();
        assert_eq!(sweep.dims(), [m.cfg().n_layers, tokens.dim(1).unwrap()], "{family}");
        for v in sweep
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
        {
            assert!(
                (v - clean).abs() < 1e-4 * clean.abs().max(1.0),
                "{family}: {v} vs {clean}"
            );
        }
        let heads = p.get_act_patch_attn_head_out_all_pos(&metric).unwrap();
        assert_eq!(heads.dims(), [m.cfg().n_layers, m.cfg().n_heads], "{family}");
        // Every head's q, k, v and pattern (gpt-oss's rows sum below 1: the sink's
        // share), and the blocks' attention and MLP (MoE) outputs: patched into the
        // run they came from, they change nothing either.
        let every = [
            p.get_act_patch_attn_head_all_pos_every(&metric).unwrap(),
            p.get_act_patch_block_every(&metric).unwrap(),
        ];
        assert_eq!(every[0].dims(), [5, m.cfg().n_layers, m.cfg().n_heads], "{family}");
        assert_eq!(
            every[1].dims(),
            [3, m.cfg().n_layers, tokens.dim(1).unwrap()],
            "{family}"
        );
        for v in every.iter().flat_map(|t| {
            t.flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        }) {
            assert!(
                (v - clean).abs() < 1e-4 * clean.abs().max(1.0),
                "{family}: {v} vs {clean}"
            );
        }
    }
}

/// Per-neuron results need a dense MLP's `hook_post` and `W_out`: on a dense family
/// they sum (with `b_out`) to `hook_mlp_out` where no norm follows the MLP; on a
/// mixture of experts they are an error that names the layer, the architecture and
/// why.
#[test]
fn neuron_results_add_up_or_are_refused_on_mixtures_of_experts() {
    for family in FAMILIES {
        let m = model(family);
        let tokens = tokens(family);
        let (_, cache) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
        let a = Analysis::new(&m, cache);
        let got = a.get_neuron_results(0, &Slice::All, &Slice::All);
        if m.cfg().num_experts.is_some() {
            let err = got.unwrap_err().to_string();
            let arch = &m.cfg().original_architecture;
            assert!(
                err.contains("mixture of experts") && err.contains("layer 0") && err.contains(arch.as_str()),
                "{family}: {err}"
            );
            let err = a
                .stack_neuron_results(&StackNeurons::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("mixture of experts"), "{family}: {err}");
            continue;
        }
        let per_neuron = got.unwrap_or_else(|e| panic!("{family}: {e}"));
        if m.cfg().use_normalization_before_and_after {
            continue;
        }
        let b_out = m.b_out().unwrap().get(0).unwrap();
        let sum = per_neuron.sum(D::Minus2).unwrap().broadcast_add(&b_out).unwrap();
        let want = a.get_by_name("blocks.0.hook_mlp_out").unwrap();
        assert!(
            max_abs_diff(&sum, want) < 1e-4 * scale_of(want),
            "{family}: neurons of layer 0 sum to hook_mlp_out"
        );
    }
}

/// `get_full_resid_decomposition` (heads, MLPs or neurons, embeddings, biases) sums to
/// the final residual where no norm follows attention or the MLP; with
/// `expand_neurons` a mixture of experts is the neuron results' error, without it the
/// MoE block is one component per layer.
#[test]
fn full_decomposition_sums_to_the_residual_on_every_family() {
    for family in FAMILIES {
        let mut m = model(family);
        m.set_use_attn_result(true);
        let tokens = tokens(family);
        let (_, cache) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens)).unwrap();
        let moe = m.cfg().num_experts.is_some();
        let post_norms = m.cfg().use_normalization_before_and_after;
        let a = Analysis::new(&m, cache);
        let n = m.cfg().n_layers;
        let final_resid = a.get_by_name(&format!("blocks.{}.hook_resid_post", n - 1)).unwrap();
        for expand_neurons in [false, true] {
            let opts = FullDecomposition {
                expand_neurons,
                ..FullDecomposition::default()
            };
            let got = a.get_full_resid_decomposition(&opts);
            if moe && expand_neurons {
                let err = got.unwrap_err().to_string();
                assert!(
                    err.contains("mixture of experts") && err.contains("expand_neurons"),
                    "{family}: {err}"
                );
                continue;
            }
            let parts = got.unwrap_or_else(|e| panic!("{family} (expand_neurons {expand_neurons}): {e}"));
            assert_eq!(parts.stack.dim(0).unwrap(), parts.labels.len(), "{family}");
            if !post_norms {
                let total = parts.stack.sum(0).unwrap();
                assert!(
                    max_abs_diff(&total, final_resid) < 1e-4 * scale_of(final_resid),
                    "{family} (expand_neurons {expand_neurons}): the components sum to the residual"
                );
            }
        }
    }
}

/// Patching keys or values of a grouped-query model: the cache holds `n_kv_heads` of
/// them; each query head's entry is the patch of the key/value head it reads (once per
/// group), the same as patching that head by hand.
#[test]
fn key_value_patching_follows_the_grouped_query_heads() {
    use hooklens_models::analysis::patching::{PatchIndex, PatchSetter};
    for family in ["mistral", "gemma3", "mixtral", "gpt_oss"] {
        let m = model(family);
        let (h, kv) = (m.cfg().n_heads, m.cfg().n_kv_heads());
        assert!(kv < h, "{family}: grouped-query");
        let group = h / kv;
        let clean = tokens(family);
        let (_, cache) = m.run_with_cache(CacheOptions::new(), |m| m.forward(&clean)).unwrap();
        // Another prompt: the clean one with its tokens after the first reversed.
        let rest = clean
            .narrow(1, 1, clean.dim(1).unwrap() - 1)
            .unwrap()
            .contiguous()
            .unwrap();
        let idx: Vec<u32> = (0..rest.dim(1).unwrap() as u32).rev().collect();
        let rest = rest
            .index_select(&Tensor::new(idx.as_slice(), rest.device()).unwrap(), 1)
            .unwrap();
        let corrupted = Tensor::cat(&[&clean.narrow(1, 0, 1).unwrap(), &rest], 1).unwrap();
        let metric = |l: &Tensor| -> hooklens_core::Result<f64> {
            let last = l.i((.., l.dim(1)? - 1))?;
            Ok(candle_nn::ops::log_softmax(&last, D::Minus1)?
                .i((.., 7))?
                .mean_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?)
        };
        let p = Patching::transformer(&m, &corrupted, &cache).unwrap();
        for (name, all_pos) in [
            ("k", p.get_act_patch_attn_head_k_all_pos(&metric).unwrap()),
            ("v", p.get_act_patch_attn_head_v_all_pos(&metric).unwrap()),
        ] {
            assert_eq!(all_pos.dims(), [m.cfg().n_layers, h], "{family} {name}");
            let got = all_pos.to_vec2::<f32>().unwrap();
            let rows: Vec<Vec<usize>> = (0..m.cfg().n_layers)
                .flat_map(|l| (0..kv).map(move |g| vec![l, g]))
                .collect();
            let by_hand = p
                .generic_activation_patch(&metric, &PatchSetter::LayerHeadVector, name, &PatchIndex::Rows(rows))
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let corrupt = metric(&m.forward(&corrupted).unwrap()).unwrap() as f32;
            let mut moved = false;
            for (l, row) in got.iter().enumerate() {
                for (head, v) in row.iter().enumerate() {
                    let want = by_hand[l * kv + head / group];
                    assert!(
                        (v - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "{family} {name} {l} {head}"
                    );
                    moved |= (v - corrupt).abs() > 1e-4;
                }
            }
            assert!(moved, "{family} {name}: some patch changes the metric");
        }
        let by_pos = p.get_act_patch_attn_head_k_by_pos(&metric).unwrap();
        assert_eq!(
            by_pos.dims(),
            [m.cfg().n_layers, corrupted.dim(1).unwrap(), h],
            "{family}"
        );
    }
}

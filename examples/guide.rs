//! The README's library guide as one program: every block between a `// guide: <step>`
//! line and the next `// end` line is pasted in the README's "Library guide" verbatim
//! (`tests/readme_guide.rs` checks that it still is), so the README's code is code
//! that compiles and runs.
//!
//! `cargo run --release --example guide` runs it on the built-in model (GPT-2's
//! vocabulary and tokenizer, offline); `-- gpt2` on GPT-2 small, `-- DIR` on a model
//! folder with a `tokenizer.json`.

// guide: imports
use hooklens::candle_core::{IndexOp, Tensor};
use hooklens::models::analysis::patching::Patching;
use hooklens::models::analysis::{AccumulatedResid, Analysis, DecomposeResid, LogitAttrs, StackHeads};
use hooklens::{
    interventions, CacheOptions, GenerateOptions, HookSet, HookedModel, HookedTransformer, LoadOptions, Slice,
};
// end

fn main() -> hooklens::Result<()> {
    let source = std::env::args().nth(1).unwrap_or_else(|| "builtin".to_string());
    let model = if source == "gpt2" {
        load_gpt2()?
    } else {
        HookedTransformer::from_pretrained(&source, &LoadOptions::default())?
    };

    // guide: tokens
    let clean = model.to_tokens(
        "When Mary and John went to the store, John gave a drink to",
        true,
        Default::default(),
    )?;
    let corrupted = model.to_tokens(
        "When Mary and John went to the store, Mary gave a drink to",
        true,
        Default::default(),
    )?;
    let (mary, john) = (model.to_single_token(" Mary")?, model.to_single_token(" John")?);
    // end

    // guide: cache
    let (logits, cache) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&clean))?;
    println!("{:?}", cache.keys()); // ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", ...]
    println!("{cache:?}"); // every name with its shape
    let pattern = &cache["blocks.0.attn.hook_pattern"]; // [batch, head, query, key]
    let resid = cache.try_get("blocks.1.hook_resid_post")?; // an error naming the nearest names if absent
                                                            // end
    println!(
        "pattern {:?}, resid {:?}, logits {:?}",
        pattern.shape(),
        resid.shape(),
        logits.shape()
    );

    // guide: ablate
    // TransformerLens's `z[:, :, 3, :] = 0` on layer 1, ready-made ...
    let ablated = model.run_with_hooks(interventions::zero_ablate_head("blocks.1.attn.hook_z", 3), |m| {
        m.forward(&clean)
    })?;
    // ... or by hand: a hook sees `[batch, pos, head, d_head]` and returns its replacement.
    let by_hand = model.run_with_hooks(
        HookSet::new().fwd("blocks.1.attn.hook_z", |z, _hp| {
            let (batch, pos, _, d_head) = z.dims4()?;
            let zeros = Tensor::zeros((batch, pos, 1, d_head), z.dtype(), z.device())?;
            Ok(Some(z.slice_assign(&[0..batch, 0..pos, 3..4, 0..d_head], &zeros)?))
        }),
        |m| m.forward(&clean),
    )?;
    // end
    let gap = (ablated - &by_hand)?.abs()?.max_all()?.to_scalar::<f32>()?;
    println!("ablating L1H3 by both routes: largest difference {gap}");

    // guide: patch
    let (_, clean_cache) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&clean))?;
    // A hook must own what it uses: clone the tensor out of the cache (cheap: it shares
    // storage) and move it into the closure.
    let clean_resid = clean_cache["blocks.1.hook_resid_pre"].clone();
    let patched = model.run_with_hooks(
        HookSet::new().fwd("blocks.1.hook_resid_pre", move |_x, _hp| Ok(Some(clean_resid.clone()))),
        |m| m.forward(&corrupted),
    )?;
    // Only some positions (here the name that differs, position 10), ready-made:
    let source = clean_cache["blocks.1.hook_resid_pre"].clone();
    let hooks = interventions::patch_positions("blocks.1.hook_resid_pre", source, Some(vec![10]));
    let patched_at_10 = model.run_with_hooks(hooks, |m| m.forward(&corrupted))?;
    // end

    // guide: decompose
    let analysis = Analysis::new(&model, cache);
    // What each embedding and sublayer wrote into the residual at the last position.
    let parts = analysis.decompose_resid(&DecomposeResid {
        pos_slice: Slice::Index(-1),
        ..Default::default()
    })?;
    println!("{:?} {:?}", parts.labels, parts.stack.shape()); // ["embed", "pos_embed", "0_attn_out", ...] [components, batch, d_model]
                                                              // The residual entering each layer, through the final LayerNorm: the logit lens.
    let lens = analysis.accumulated_resid(&AccumulatedResid {
        apply_ln: true,
        pos_slice: Slice::Index(-1),
        ..Default::default()
    })?;
    // end
    println!("{:?} {:?}", lens.labels, lens.stack.shape());

    // guide: attribute
    // How much each component pushes " John" over " Mary" (the logit difference).
    let answer = Tensor::new(&[john], model.device())?;
    let wrong = Tensor::new(&[mary], model.device())?;
    let opts = LogitAttrs::new().pos_slice(Slice::Index(-1)).incorrect_tokens(wrong);
    let by_component = analysis.logit_attrs(&parts.stack, &answer, &opts)?; // [components, batch]
    let heads = analysis.stack_head_results(&StackHeads {
        pos_slice: Slice::Index(-1),
        ..Default::default()
    })?;
    let by_head = analysis.logit_attrs(&heads.stack, &answer, &opts)?; // [layers x heads, batch]
                                                                       // end
    println!("{:?}\n{}", parts.labels, by_component.squeeze(1)?);
    println!("{:?}\n{}", heads.labels, by_head.squeeze(1)?);

    // guide: sweep
    // TransformerLens's `get_act_patch_resid_pre`: patch each layer and position of the
    // corrupted run from the clean cache, and score each run with a metric of the logits.
    let logit_diff = |logits: &Tensor| -> hooklens::Result<f64> {
        let last = logits.i((0, logits.dim(1)? - 1))?;
        Ok((last.i(john as usize)? - last.i(mary as usize)?)?.to_scalar::<f32>()? as f64)
    };
    let patching = Patching::transformer(&model, &corrupted, &clean_cache)?;
    let grid = patching.get_act_patch_resid_pre(&logit_diff)?; // [layer, pos]
                                                               // end
    println!(
        "logit difference: clean {:.3}, corrupted {:.3}, layer 1 patched {:.3}, layer 1 patched at 10 {:.3}",
        logit_diff(&logits)?,
        logit_diff(&model.forward(&corrupted)?)?,
        logit_diff(&patched)?,
        logit_diff(&patched_at_10)?
    );
    println!("resid_pre patched, by layer and position:\n{grid}");

    // guide: generate
    // TransformerLens's `model.generate(tokens, max_new_tokens=8, do_sample=False)`:
    // greedy, with a KV cache (`use_kv_cache: false` recomputes every position).
    let continued = model.generate(&clean, &GenerateOptions::greedy(8))?; // [batch, pos + 8]
    println!("{}", model.to_string(&continued)?);
    // With hooks, as TransformerLens's `with model.hooks(...)`: they run at every step.
    let ablated_text = model.run_with_hooks(interventions::zero_ablate_head("blocks.1.attn.hook_z", 3), |m| {
        m.generate(&clean, &GenerateOptions::greedy(8))
    })?;
    // The weights under TransformerLens's names: `model.state_dict()["embed.W_E"]`.
    let state: std::collections::HashMap<String, Tensor> = model.state_dict()?.into_iter().collect();
    let w_e = &state["embed.W_E"]; // [d_vocab, d_model]
                                   // end
    println!("{} | {:?}", model.to_string(&ablated_text)?, w_e.dims());
    Ok(())
}

/// GPT-2 small, from the Hugging Face cache or downloaded into it.
fn load_gpt2() -> hooklens::Result<HookedTransformer> {
    // guide: load
    let model = HookedTransformer::from_pretrained("gpt2", &LoadOptions::default())?;
    // end
    Ok(model)
}

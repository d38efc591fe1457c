//! The local replacement model: a hooked model whose MLPs are replaced by transcoders
//! plus a frozen error term, on one prompt.
//!
//! The replacement is exact by construction (reconstruction + error = the MLP's
//! output), so its logits are the model's; what it adds is the decomposition of every
//! MLP output into active features, a bias and an error, and the frozen state (attention
//! patterns, norm scales) under which the model is linear in the residual stream.

use candle_core::{IndexOp, Tensor};
use hooklens_core::{CacheOptions, Error, HookedModel, NamesFilter, Result};

use super::frozen::{frozen_point_names, to_vec, FrozenModel, ReadPoint, WritePoint};
use super::reconstruction::Reconstruction;
use super::transcoders::Transcoders;
use crate::model::HookedTransformer;

/// The transcoders' view of one prompt: every active feature, the reconstructions and
/// errors, and the model frozen at its state on the prompt.
pub struct ReplacementRun {
    /// The prompt.
    pub tokens: Vec<u32>,
    /// The model's logits `[n_pos, d_vocab]`.
    pub logits: Tensor,
    /// The transcoders' inputs (`blocks.L.<feature_input_hook>`), `[n_layers, n_pos, d_model]` row-major.
    pub feature_input: Vec<f32>,
    /// The true MLP outputs (`blocks.L.<feature_output_hook>`), `[n_layers, n_pos, d_model]`.
    pub feature_output: Vec<f32>,
    /// Active features (non-zero activations, position 0 excluded), in circuit-tracer's
    /// order: by layer, then position, then feature.
    pub active: ActiveFeatures,
    /// `b_dec` + the active features' decoder vectors (+ skip), `[n_layers, n_pos, d_model]`.
    pub reconstruction: Vec<f32>,
    /// `feature_output - reconstruction`, zero at position 0, `[n_layers, n_pos, d_model]`.
    pub error: Vec<f32>,
    pub(crate) frozen: FrozenModel,
    pub(crate) n_layers: usize,
    pub(crate) d_model: usize,
}

/// The active features of a prompt, as parallel lists.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActiveFeatures {
    /// Layer of each.
    pub layer: Vec<usize>,
    /// Position of each.
    pub pos: Vec<usize>,
    /// Feature index in its layer.
    pub feature: Vec<usize>,
    /// Activation (after the nonlinearity).
    pub value: Vec<f32>,
}

impl ActiveFeatures {
    /// How many.
    pub fn len(&self) -> usize {
        self.layer.len()
    }

    /// Whether none is active.
    pub fn is_empty(&self) -> bool {
        self.layer.is_empty()
    }
}

impl ReplacementRun {
    /// Positions in the prompt.
    pub fn n_pos(&self) -> usize {
        self.tokens.len()
    }

    /// Layers.
    pub fn n_layers(&self) -> usize {
        self.n_layers
    }

    /// Width of the residual stream.
    pub fn d_model(&self) -> usize {
        self.d_model
    }
}

/// Where the transcoders read and write, as points the frozen model passes gradients
/// through; others are an error that lists the ones it knows.
fn points(transcoders: &Transcoders) -> Result<(ReadPoint, WritePoint)> {
    let cfg = transcoders.config();
    let read = ReadPoint::parse(&cfg.feature_input_hook).ok_or_else(|| {
        Error::invalid(format!(
            "transcoders reading at `{}`: attribution reads at mlp.hook_in, ln2.hook_normalized, \
             hook_resid_mid or hook_mlp_in",
            cfg.feature_input_hook
        ))
    })?;
    let write = WritePoint::parse(&cfg.feature_output_hook).ok_or_else(|| {
        Error::invalid(format!(
            "transcoders writing at `{}`: attribution writes at mlp.hook_out or hook_mlp_out",
            cfg.feature_output_hook
        ))
    })?;
    Ok((read, write))
}

/// Checks that `transcoders` fit `model` for attribution.
pub(crate) fn check_fit(model: &HookedTransformer, transcoders: &Transcoders) -> Result<()> {
    let cfg = model.cfg();
    // The frozen backward pass follows pre-LN blocks (norms before attention and the
    // MLP, off the residual path) and a final norm.
    if cfg.normalization_after_residual {
        return Err(Error::invalid(format!(
            "attribution graphs and replacement models of a post-LN model ({}, normalization_after_residual: \
             OPT-350m's layout) are not supported: its norms sit on the residual path itself, which the frozen \
             linear backward pass does not model",
            cfg.original_architecture
        )));
    }
    if model.ln_final.is_none() {
        return Err(Error::invalid(format!(
            "attribution graphs and replacement models need a final norm (ln_final); this {} model has none \
             (final_norm: false, `_remove_final_layer_norm`): not supported",
            cfg.original_architecture
        )));
    }
    if !cfg.normalization_type.has_params() {
        return Err(Error::invalid(
            "the model's norms were folded into its weights (fold_ln), so the transcoders' inputs \
             (the MLP's input after ln2's gain) do not exist in it: load it without processing \
             (LoadOptions::no_processing(), as circuit-tracer does)",
        ));
    }
    if transcoders.n_layers() != cfg.n_layers || transcoders.d_model() != cfg.d_model {
        return Err(Error::invalid(format!(
            "the transcoders cover {} layers of width {}, the model has {} layers of width {}",
            transcoders.n_layers(),
            transcoders.d_model(),
            cfg.n_layers,
            cfg.d_model
        )));
    }
    let (read, _) = points(transcoders)?;
    // OLMo 2 has no norm before its MLPs: say so, rather than the unknown-hook error
    // below, whose nearest names are the post-MLP norm's (another point).
    if read == ReadPoint::Ln2Normalized && model.blocks.iter().any(|b| b.ln2.is_none()) {
        return Err(Error::invalid(format!(
            "transcoders read ln2.hook_normalized, but this {} model has no norm before its MLPs \
             (only after them): read mlp.hook_in or hook_resid_mid instead",
            cfg.original_architecture
        )));
    }
    let names: std::collections::HashSet<String> = model.hook_names().into_iter().collect();
    for l in [0, cfg.n_layers - 1] {
        for name in [transcoders.input_hook(l), transcoders.output_hook(l)] {
            if !names.contains(&name) {
                return Err(Error::UnknownHook {
                    name,
                    suggestions: hooklens_core::__internal::nearest_names(
                        &transcoders.input_hook(l),
                        names.iter().map(String::as_str),
                        3,
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Runs `model` on `tokens` (`[n_pos]`) and decomposes each MLP output with
/// `transcoders`, as circuit-tracer's `setup_attribution` does.
pub fn replacement_run(model: &HookedTransformer, transcoders: &Transcoders, tokens: &[u32]) -> Result<ReplacementRun> {
    check_fit(model, transcoders)?;
    if tokens.is_empty() {
        return Err(Error::invalid("attribution needs at least one token"));
    }
    let (n_layers, d) = (transcoders.n_layers(), transcoders.d_model());
    let n_pos = tokens.len();
    let mut names = frozen_point_names(model);
    for l in 0..n_layers {
        names.push(transcoders.input_hook(l));
        names.push(transcoders.output_hook(l));
    }
    let t = Tensor::new(tokens, model.device())?.unsqueeze(0)?;
    let wanted: std::collections::HashSet<String> = names.iter().cloned().collect();
    let filter = NamesFilter::predicate(move |n| wanted.contains(n));
    let (logits, cache) = model.run_with_cache(CacheOptions::new().names(filter), |m| m.forward(&t))?;
    let logits = logits.i(0)?;
    let stack = |hook: &dyn Fn(usize) -> String| -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(n_layers * n_pos * d);
        for l in 0..n_layers {
            out.extend(to_vec(cache.try_get(&hook(l))?)?);
        }
        Ok(out)
    };
    let feature_input = stack(&|l| transcoders.input_hook(l))?;
    let feature_output = stack(&|l| transcoders.output_hook(l))?;
    for (what, values, hook) in [
        ("input", &feature_input, transcoders.input_hook(0)),
        ("output", &feature_output, transcoders.output_hook(0)),
    ] {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            let l = i / (n_pos * d);
            return Err(Error::invalid(format!(
                "the model's MLP {what} is not finite at layer {l}, position {} (`{}`): \
                 no attribution graph for a prompt whose activations overflow",
                (i / d) % n_pos,
                hook.replacen("blocks.0.", &format!("blocks.{l}."), 1)
            )));
        }
    }
    let frozen = FrozenModel::new(model, &cache, n_pos, points(transcoders)?)?;
    drop(cache);

    // Encode every layer; position 0 is zeroed (circuit-tracer's `zero_positions`).
    let mut active = ActiveFeatures::default();
    let mut recon = Reconstruction::new(transcoders, n_pos);
    let f = transcoders.d_transcoder();
    for l in 0..n_layers {
        let x = &feature_input[l * n_pos * d..(l + 1) * n_pos * d];
        let mut acts = transcoders.pre_activations(l, x);
        transcoders.activate(l, &mut acts);
        acts[..f].iter_mut().for_each(|v| *v = 0.0);
        for (i, &v) in acts.iter().enumerate() {
            if v != 0.0 {
                active.layer.push(l);
                active.pos.push(i / f);
                active.feature.push(i % f);
                active.value.push(v);
            }
        }
        recon.add_layer(transcoders, l, &acts, x)?;
    }
    let reconstruction = recon.into_flat();
    let mut error: Vec<f32> = feature_output.iter().zip(&reconstruction).map(|(o, r)| o - r).collect();
    for l in 0..n_layers {
        error[l * n_pos * d..(l * n_pos + 1) * d]
            .iter_mut()
            .for_each(|v| *v = 0.0);
    }
    Ok(ReplacementRun {
        tokens: tokens.to_vec(),
        logits,
        feature_input,
        feature_output,
        active,
        reconstruction,
        error,
        frozen,
        n_layers,
        d_model: d,
    })
}

//! Feature interventions on the replacement model, as circuit-tracer's
//! `feature_intervention` (without `constrained_layers`): chosen (layer, position,
//! feature) activations are set to new values by adding `(new - current) * decoder` at
//! the MLP outputs the feature writes to, and the change propagates through the rest of
//! the model, with attention patterns frozen at their values on the clean prompt or
//! recomputed.

use std::sync::{Arc, Mutex};

use candle_core::{IndexOp, Tensor};
use hooklens_core::{CacheOptions, Error, HookSet, HookedModel, Result};

use super::frozen::to_vec;
use super::replacement::check_fit;
use super::transcoders::{apply_activation, encode, Transcoders};
use crate::model::HookedTransformer;

/// Set feature `feature` of layer `layer` at position `pos` to `value`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FeatureIntervention {
    /// The feature's layer.
    pub layer: usize,
    /// The position.
    pub pos: usize,
    /// The feature's index in its layer.
    pub feature: usize,
    /// Its new activation.
    pub value: f32,
}

/// One intervened layer's encoder, copied out for the hooks (which outlive the borrow
/// of the transcoders).
struct LayerEncoder {
    layer: usize,
    w_enc: Vec<f32>,
    b_enc: Vec<f32>,
    /// The interventions of this layer with their decoder rows `[n_out, d_model]`.
    edits: Vec<(FeatureIntervention, Vec<f32>)>,
}

/// The logits `[n_pos, d_vocab]` of `model` on `tokens` with `interventions` applied
/// through `transcoders`; attention patterns frozen at the clean run's values when
/// `freeze_attention` (circuit-tracer's default), else recomputed.
pub fn feature_intervention(
    model: &HookedTransformer,
    transcoders: &Transcoders,
    tokens: &[u32],
    interventions: &[FeatureIntervention],
    freeze_attention: bool,
) -> Result<Tensor> {
    check_fit(model, transcoders)?;
    let (n_layers, d, f) = (
        transcoders.n_layers(),
        transcoders.d_model(),
        transcoders.d_transcoder(),
    );
    let n_pos = tokens.len();
    check_interventions(interventions, n_pos, n_layers, f)?;
    let t = Tensor::new(tokens, model.device())?.unsqueeze(0)?;
    let mut hooks = HookSet::new();
    if freeze_attention && !interventions.is_empty() {
        hooks = freeze_patterns(model, &t, n_layers, hooks)?;
    }
    let deltas: Deltas = Arc::new(Mutex::new(vec![None; n_layers]));
    let mut layers: Vec<usize> = interventions.iter().map(|iv| iv.layer).collect();
    layers.sort_unstable();
    layers.dedup();
    let activation = transcoders.activation().clone();
    let thresholds: Vec<Option<Vec<f32>>> = (0..n_layers)
        .map(|l| transcoders.threshold(l).map(<[f32]>::to_vec))
        .collect();
    for &l in &layers {
        let mut edits = Vec::new();
        for iv in interventions.iter().filter(|iv| iv.layer == l) {
            edits.push((*iv, transcoders.decoder_rows(l, &[iv.feature])?));
        }
        let enc = Arc::new(LayerEncoder {
            layer: l,
            w_enc: transcoders.w_enc(l).to_vec(),
            b_enc: transcoders.b_enc(l).to_vec(),
            edits,
        });
        let deltas = deltas.clone();
        let activation = activation.clone();
        let threshold = thresholds[l].clone();
        let n_out = transcoders.n_out(l);
        hooks = hooks.fwd(transcoders.input_hook(l), move |x: &Tensor, _hp| {
            let x = to_vec(&x.i(0)?)?;
            let mut acts = encode(&enc.w_enc, &enc.b_enc, &x, d);
            apply_activation(&activation, threshold.as_deref(), &mut acts, f);
            // circuit-tracer zeroes position 0's activations.
            acts[..f].iter_mut().for_each(|v| *v = 0.0);
            let mut deltas = deltas
                .lock()
                .map_err(|_| Error::invalid("intervention state poisoned"))?;
            for (iv, rows) in &enc.edits {
                let change = iv.value - acts[iv.pos * f + iv.feature];
                for o in 0..n_out {
                    let dl = deltas[enc.layer + o].get_or_insert_with(|| vec![0.0; n_pos * d]);
                    let dst = &mut dl[iv.pos * d..(iv.pos + 1) * d];
                    dst.iter_mut()
                        .zip(&rows[o * d..(o + 1) * d])
                        .for_each(|(a, b)| *a += change * b);
                }
            }
            Ok(None)
        });
    }
    hooks = add_deltas_at_outputs(hooks, transcoders, &deltas);
    let logits = model.run_with_hooks(hooks, |m| m.forward(&t))?;
    Ok(logits.i(0)?)
}

/// Deltas per output layer `[n_pos, d_model]`, filled when an intervened layer's input
/// is seen and added at the outputs.
type Deltas = Arc<Mutex<Vec<Option<Vec<f32>>>>>;

/// `Ok` when every intervention is inside the prompt (`n_pos` positions), the model
/// (`n_layers`) and the transcoders (`f` features), with a finite value.
fn check_interventions(interventions: &[FeatureIntervention], n_pos: usize, n_layers: usize, f: usize) -> Result<()> {
    for iv in interventions {
        if iv.layer >= n_layers || iv.pos >= n_pos || iv.feature >= f || !iv.value.is_finite() {
            return Err(Error::invalid(format!(
                "intervention {iv:?} is outside the prompt ({n_pos} positions), the model ({n_layers} layers) \
                 or the transcoders ({f} features), or not finite"
            )));
        }
    }
    Ok(())
}

/// `hooks` with every layer's attention pattern replaced by its value on the clean run
/// of `t` (`[1, n_pos]`).
fn freeze_patterns(model: &HookedTransformer, t: &Tensor, n_layers: usize, mut hooks: HookSet) -> Result<HookSet> {
    let (_, cache) = model.run_with_cache(CacheOptions::new().names("blocks.*.attn.hook_pattern"), |m| {
        m.forward(t)
    })?;
    for l in 0..n_layers {
        let frozen = cache.try_get(&format!("blocks.{l}.attn.hook_pattern"))?.clone();
        hooks = hooks.fwd(format!("blocks.{l}.attn.hook_pattern"), move |_x: &Tensor, _hp| {
            Ok(Some(frozen.clone()))
        });
    }
    Ok(hooks)
}

/// `hooks` with each layer's pending delta (taken from `deltas`) added at its MLP output.
fn add_deltas_at_outputs(mut hooks: HookSet, transcoders: &Transcoders, deltas: &Deltas) -> HookSet {
    for l in 0..transcoders.n_layers() {
        let deltas = deltas.clone();
        hooks = hooks.fwd(transcoders.output_hook(l), move |x: &Tensor, _hp| {
            let taken = deltas
                .lock()
                .map_err(|_| Error::invalid("intervention state poisoned"))?[l]
                .take();
            match taken {
                Some(delta) => {
                    let delta = Tensor::from_vec(delta, x.dims(), x.device())?.to_dtype(x.dtype())?;
                    Ok(Some((x + delta)?))
                }
                None => Ok(None),
            }
        });
    }
    hooks
}

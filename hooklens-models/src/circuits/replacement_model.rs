//! The replacement model as a hooked model of its own: each MLP's output is the
//! transcoders' reconstruction plus an error term frozen at its value on the same tokens,
//! so the logits are the model's, and the features are hook points
//! (`blocks.L.transcoder.hook_acts`, ...) that caches read and hooks edit, as SAELens's
//! spliced SAEs are.

use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use hooklens_core::{CacheOptions, Error, HookPoint, HookSet, HookedModel, NamesFilter, Result};

use super::frozen::to_vec;
use super::reconstruction::Reconstruction;
use super::replacement::check_fit;
use super::transcoders::Transcoders;
use crate::model::HookedTransformer;

/// The hook points of one layer's transcoder.
#[derive(Debug, hooklens_derive::Hooked)]
#[hooked(crate = "hooklens_core")]
pub struct TranscoderPoints {
    /// Pre-activations `[batch, pos, d_transcoder]`.
    pub hook_pre: HookPoint,
    /// Feature activations `[batch, pos, d_transcoder]`: edit them here to intervene.
    pub hook_acts: HookPoint,
    /// The reconstruction written at this layer's output `[batch, pos, d_model]`
    /// (every feature writing here, `b_dec` and the skip connection).
    pub hook_recons: HookPoint,
    /// The frozen error term added to it `[batch, pos, d_model]`.
    pub hook_error: HookPoint,
}

/// One block's points.
#[derive(Debug, hooklens_derive::Hooked)]
#[hooked(crate = "hooklens_core")]
pub struct ReplacementBlock {
    /// The transcoder of this layer.
    pub transcoder: TranscoderPoints,
}

/// A [`HookedTransformer`] with every MLP replaced by transcoders plus a frozen error,
/// hooked by name like every model.
///
/// ```
/// use std::sync::Arc;
/// use hooklens_core::{CacheOptions, HookedModel};
/// use hooklens_models::circuits::{ReplacementModel, Transcoders};
/// use hooklens_models::{HookedTransformer, LoadOptions};
///
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/circuits");
/// let model = HookedTransformer::from_dir(format!("{dir}/model"), &LoadOptions::no_processing())?;
/// let tc = Transcoders::from_dir(format!("{dir}/transcoders"))?;
/// let rm = ReplacementModel::new(Arc::new(model), Arc::new(tc))?;
/// let tokens = candle_core::Tensor::new(&[[1u32, 17, 42, 9]], &candle_core::Device::Cpu)?;
/// let (logits, cache) = rm.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))?;
/// assert_eq!(cache.try_get("blocks.1.transcoder.hook_acts")?.dims(), [1, 4, 96]);
/// assert_eq!(logits.dims(), [1, 4, 200]);
/// # Ok::<(), hooklens_core::Error>(())
/// ```
#[derive(Debug, hooklens_derive::Hooked)]
#[hooked(crate = "hooklens_core")]
pub struct ReplacementModel {
    #[hooked(skip)]
    model: Arc<HookedTransformer>,
    #[hooked(skip)]
    transcoders: Arc<Transcoders>,
    /// One per layer.
    pub blocks: Vec<ReplacementBlock>,
}

impl ReplacementModel {
    /// `model` (loaded without weight processing) with `transcoders` in place of its MLPs.
    pub fn new(model: Arc<HookedTransformer>, transcoders: Arc<Transcoders>) -> Result<Self> {
        check_fit(&model, &transcoders)?;
        let blocks = (0..transcoders.n_layers())
            .map(|_| ReplacementBlock {
                transcoder: TranscoderPoints {
                    hook_pre: HookPoint::new(),
                    hook_acts: HookPoint::new(),
                    hook_recons: HookPoint::new(),
                    hook_error: HookPoint::new(),
                },
            })
            .collect();
        let rm = ReplacementModel {
            model,
            transcoders,
            blocks,
        };
        // Naming the points once makes a plain forward legal (an unnamed point that fires
        // is an error).
        drop(rm.hook_dict());
        Ok(rm)
    }

    /// The model underneath.
    pub fn model(&self) -> &HookedTransformer {
        &self.model
    }

    /// The transcoders.
    pub fn transcoders(&self) -> &Transcoders {
        &self.transcoders
    }

    /// Logits `[batch, pos, d_vocab]` for `tokens` `[batch, pos]` (u32): one forward of
    /// the model to freeze the error terms, and one through the transcoders, firing this
    /// model's points on the way.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let _forward = self.blocks[0].transcoder.hook_acts.model_forward();
        let tc = &self.transcoders;
        let n_layers = tc.n_layers();
        let (d, f) = (tc.d_model(), tc.d_transcoder());
        let tokens = if tokens.rank() == 1 {
            tokens.unsqueeze(0)?
        } else {
            tokens.clone()
        };
        // The clean run: the true MLP inputs and outputs.
        let mut names = Vec::with_capacity(2 * n_layers);
        for l in 0..n_layers {
            names.push(tc.input_hook(l));
            names.push(tc.output_hook(l));
        }
        let (_, clean) = self
            .model
            .run_with_cache(CacheOptions::new().names(NamesFilter::Names(names)), |m| {
                m.forward(&tokens)
            })?;
        // The frozen errors: true output minus the reconstruction of the clean inputs.
        let rows = tokens.elem_count();
        let mut clean_recon = Reconstruction::new(tc, rows);
        for l in 0..n_layers {
            let x = to_vec(clean.try_get(&tc.input_hook(l))?)?;
            let mut acts = tc.pre_activations(l, &x);
            tc.activate(l, &mut acts);
            clean_recon.add_layer(tc, l, &acts, &x)?;
        }
        let mut errors = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let out = to_vec(clean.try_get(&tc.output_hook(l))?)?;
            errors.push(
                out.iter()
                    .zip(clean_recon.layer(l))
                    .map(|(o, r)| o - r)
                    .collect::<Vec<f32>>(),
            );
        }
        drop(clean);

        let dims = tokens.dims().to_vec();
        let (b, p) = (dims[0], dims[1]);
        let device = self.model.device().clone();
        let dtype = self.model.dtype();
        // Filled at each MLP input, read at the outputs.
        let pending = Arc::new(Mutex::new(Reconstruction::new(tc, rows)));
        let poisoned = || Error::invalid("replacement state poisoned");
        let mut hooks = HookSet::new();
        for (l, error) in errors.into_iter().enumerate() {
            let points = &self.blocks[l].transcoder;
            let (pre_point, acts_point) = (points.hook_pre.handle(), points.hook_acts.handle());
            let tcs = self.transcoders.clone();
            let state = pending.clone();
            let device_in = device.clone();
            hooks = hooks.fwd(tc.input_hook(l), move |x: &Tensor, _hp| {
                let xv = to_vec(x)?;
                let pre = pre_point.forward(&Tensor::from_vec(tcs.pre_activations(l, &xv), (b, p, f), &device_in)?)?;
                let mut acts = to_vec(&pre)?;
                tcs.activate(l, &mut acts);
                let acts = to_vec(&acts_point.forward(&Tensor::from_vec(acts, (b, p, f), &device_in)?)?)?;
                if acts.len() != b * p * f {
                    return Err(Error::invalid(format!(
                        "a hook on `{}` returned {} values, expected [{b}, {p}, {f}]",
                        acts_point.name(),
                        acts.len()
                    )));
                }
                state.lock().map_err(|_| poisoned())?.add_layer(&tcs, l, &acts, &xv)?;
                Ok(None)
            });
            let (recons_point, error_point) = (points.hook_recons.handle(), points.hook_error.handle());
            let state = pending.clone();
            let device_out = device.clone();
            hooks = hooks.fwd(tc.output_hook(l), move |_x: &Tensor, _hp| {
                let recon = state.lock().map_err(|_| poisoned())?.layer(l).to_vec();
                let recon = recons_point.forward(&Tensor::from_vec(recon, (b, p, d), &device_out)?)?;
                let err = error_point.forward(&Tensor::from_vec(error.clone(), (b, p, d), &device_out)?)?;
                Ok(Some((recon + err)?.to_dtype(dtype)?))
            });
        }
        self.model.run_with_hooks(hooks, |m| m.forward(&tokens))
    }
}

//! The replacement model as a hooked model of its own: each MLP's output is the
//! transcoders' reconstruction plus an error term frozen at its value on the same tokens,
//! so the logits are the model's, and the features are hook points
//! (`blocks.L.transcoder.hook_acts`, ...) that caches read and hooks edit, as SAELens's
//! spliced SAEs are.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Tensor};
use hooklens_core::{CacheOptions, Error, HookPoint, HookSet, HookedModel, NamesFilter, Result};

use super::replacement::check_fit;
use super::transcoders::Transcoders;
use crate::model::HookedTransformer;
use crate::ops::slice_gemm::{gemm, View};

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

/// Values one forward hands from the hooks at the MLP inputs to those at the outputs.
struct Pending {
    /// Per output layer, the reconstruction so far `[rows, d_model]`.
    recons: Vec<Option<Vec<f32>>>,
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
        let f32s = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?) };
        // The frozen errors: true output minus the reconstruction of the clean inputs.
        let mut errors = Vec::with_capacity(n_layers);
        let rows = tokens.elem_count();
        let mut clean_recons: Vec<Vec<f32>> = (0..n_layers).map(|o| base_recon(tc, o, rows)).collect();
        for l in 0..n_layers {
            let x = f32s(clean.try_get(&tc.input_hook(l))?)?;
            let mut acts = tc.pre_activations(l, &x);
            tc.activate(l, &mut acts);
            add_decoded(tc, l, &acts, rows, &mut clean_recons)?;
            if let Some(s) = tc.skip(l) {
                gemm(
                    View::row_major(&x, rows, d),
                    View::row_major(s, d, d),
                    1.0,
                    &mut clean_recons[l],
                    d,
                );
            }
        }
        for (l, recon) in clean_recons.iter().enumerate() {
            let out = f32s(clean.try_get(&tc.output_hook(l))?)?;
            errors.push(out.iter().zip(recon).map(|(o, r)| o - r).collect::<Vec<f32>>());
        }
        drop(clean);

        let dims = tokens.dims().to_vec();
        let (b, p) = (dims[0], dims[1]);
        let device = self.model.device().clone();
        let dtype = self.model.dtype();
        let pending = Arc::new(Mutex::new(Pending {
            recons: (0..n_layers).map(|o| Some(base_recon(tc, o, rows))).collect(),
        }));
        let mut hooks = HookSet::new();
        for l in 0..n_layers {
            let points = &self.blocks[l].transcoder;
            let (pre_point, acts_point) = (points.hook_pre.handle(), points.hook_acts.handle());
            let tcs = self.transcoders.clone();
            let state = pending.clone();
            let device_in = device.clone();
            hooks = hooks.fwd(tc.input_hook(l), move |x: &Tensor, _hp| {
                let xv = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let pre = tcs.pre_activations(l, &xv);
                let pre_t = Tensor::from_vec(pre, (b, p, f), &device_in)?;
                let pre_t = pre_point.forward(&pre_t)?;
                let mut acts = pre_t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                tcs.activate(l, &mut acts);
                let acts_t = acts_point.forward(&Tensor::from_vec(acts, (b, p, f), &device_in)?)?;
                let acts = acts_t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                if acts.len() != b * p * f {
                    return Err(Error::invalid(format!(
                        "a hook on `{}` returned {} values, expected [{b}, {p}, {f}]",
                        acts_point.name(),
                        acts.len()
                    )));
                }
                let mut st = state.lock().map_err(|_| Error::invalid("replacement state poisoned"))?;
                let mut recons: Vec<Vec<f32>> = st.recons.iter_mut().map(|r| r.take().unwrap_or_default()).collect();
                add_decoded(&tcs, l, &acts, b * p, &mut recons)?;
                if let Some(s) = tcs.skip(l) {
                    gemm(
                        View::row_major(&xv, b * p, d),
                        View::row_major(s, d, d),
                        1.0,
                        &mut recons[l],
                        d,
                    );
                }
                st.recons = recons.into_iter().map(Some).collect();
                Ok(None)
            });
            let (recons_point, error_point) = (points.hook_recons.handle(), points.hook_error.handle());
            let state = pending.clone();
            let error = errors[l].clone();
            let device_out = device.clone();
            hooks = hooks.fwd(tc.output_hook(l), move |_x: &Tensor, _hp| {
                let recon = state
                    .lock()
                    .map_err(|_| Error::invalid("replacement state poisoned"))?
                    .recons[l]
                    .clone()
                    .unwrap_or_default();
                let recon = recons_point.forward(&Tensor::from_vec(recon, (b, p, d), &device_out)?)?;
                let err = error_point.forward(&Tensor::from_vec(error.clone(), (b, p, d), &device_out)?)?;
                Ok(Some((recon + err)?.to_dtype(dtype)?))
            });
        }
        self.model.run_with_hooks(hooks, |m| m.forward(&tokens))
    }
}

/// `b_dec` of output layer `o` on every row: `[rows, d_model]`.
fn base_recon(tc: &Transcoders, o: usize, rows: usize) -> Vec<f32> {
    (0..rows).flat_map(|_| tc.b_dec(o).iter().copied()).collect()
}

/// Adds the decoder vectors of the non-zero activations of layer `l` (`acts`
/// `[rows, d_transcoder]`) into the reconstructions of every layer they write to.
fn add_decoded(tc: &Transcoders, l: usize, acts: &[f32], rows: usize, recons: &mut [Vec<f32>]) -> Result<()> {
    let (d, f) = (tc.d_model(), tc.d_transcoder());
    let n_out = tc.n_out(l);
    let mut feats: Vec<usize> = (0..rows * f).filter(|&i| acts[i] != 0.0).map(|i| i % f).collect();
    feats.sort_unstable();
    feats.dedup();
    if feats.is_empty() {
        return Ok(());
    }
    let dec = tc.decoder_rows(l, &feats)?;
    for r in 0..rows {
        for (k, &j) in feats.iter().enumerate() {
            let a = acts[r * f + j];
            if a == 0.0 {
                continue;
            }
            for o in 0..n_out {
                let src = &dec[(k * n_out + o) * d..(k * n_out + o + 1) * d];
                let dst = &mut recons[l + o][r * d..(r + 1) * d];
                dst.iter_mut().zip(src).for_each(|(x, s)| *x += a * s);
            }
        }
    }
    Ok(())
}

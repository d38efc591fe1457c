//! Features as interventions (zero, clamp, steer) and their direct logit attribution.
//!
//! The hooks here are [`HookSet`]s: pass them with the SAE to
//! [`SaeModel::run_with_hooks_with_saes`](super::SaeModel::run_with_hooks_with_saes)
//! (feature edits, which act on the spliced SAE's `hook_sae_acts_post`) or to
//! `run_with_hooks` (steering, which needs no SAE spliced in).
//!
//! ```
//! # fn main() -> hooklens_core::Result<()> {
//! use candle_core::{Device, Tensor};
//! use hooklens_core::HookedModel;
//! use hooklens_models::sae::{Sae, SaeModel, SaeSet};
//! use hooklens_models::{HookedTransformer, LoadOptions};
//! # let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata");
//! let model = HookedTransformer::from_dir(root.join("tiny-gpt2/model"), &LoadOptions::no_processing())?;
//! let sae = Sae::from_dir(root.join("saes/saes/standard"), &Device::Cpu)?;
//! let tokens = Tensor::new(&[[511u32, 3, 17, 42]], &Device::Cpu)?;
//!
//! // Ablate feature 7 at positions 1 and 2, the rest of the SAE's output unchanged:
//! let set = SaeSet::new().sae_with_error_term(&sae);
//! let ablated = model.run_with_hooks_with_saes(set, sae.zero_feature(7, Some(&[1, 2]))?, |m| m.forward(&tokens))?;
//!
//! // Steer: add 5 x feature 3's decoder row at every position, no SAE spliced in:
//! let steered = model.run_with_hooks(sae.steer(3, 5.0, None)?, |m| m.forward(&tokens))?;
//! # let _ = (ablated, steered);
//! # Ok(()) }
//! ```

use candle_core::{DType, Tensor, D};
use hooklens_core::{Error, HookPoint, HookSet, Result};

use super::Sae;

impl Sae {
    /// A hook that sets feature `feature` to zero at `positions` (every position when
    /// `None`) of the spliced SAE's `hook_sae_acts_post`.
    pub fn zero_feature(&self, feature: usize, positions: Option<&[usize]>) -> Result<HookSet> {
        self.clamp_feature(feature, 0.0, positions)
    }

    /// A hook that sets feature `feature` to `value` at `positions` (every position when
    /// `None`) of the spliced SAE's `hook_sae_acts_post` (`[batch, pos, d_sae]`).
    pub fn clamp_feature(&self, feature: usize, value: f64, positions: Option<&[usize]>) -> Result<HookSet> {
        self.check_feature(feature)?;
        let positions = positions.map(<[usize]>::to_vec);
        let d_sae = self.cfg().d_sae;
        Ok(HookSet::new().fwd(
            self.hook_name("hook_sae_acts_post"),
            move |acts: &Tensor, hp: &HookPoint| {
                let n_pos = position_count(acts, hp)?;
                let keep = feature_mask(n_pos, d_sae, feature, positions.as_deref(), hp)?
                    .to_device(acts.device())?
                    .to_dtype(acts.dtype())?;
                let set = ((1.0 - &keep)? * value)?;
                Ok(Some(acts.broadcast_mul(&keep)?.broadcast_add(&set)?))
            },
        ))
    }

    /// A hook at the point this SAE writes (`cfg.hook_name`; a transcoder's
    /// `hook_name_out`) that adds `coefficient * W_dec[feature]` at `positions` (every
    /// position when `None`): steering, with or without the SAE spliced in (spliced,
    /// it acts on `hook_sae_output`).
    pub fn steer(&self, feature: usize, coefficient: f64, positions: Option<&[usize]>) -> Result<HookSet> {
        self.check_feature(feature)?;
        let direction = (self.w_dec().get(feature)? * coefficient)?;
        let positions = positions.map(<[usize]>::to_vec);
        let spliced_output = self.hook_name("hook_sae_output");
        let hook = move |x: &Tensor, hp: &HookPoint| {
            // hook_z: the decoder row is `n_heads * d_head` wide, head-major.
            let dims = x.dims();
            let dir = if dims.last() == Some(&direction.elem_count()) {
                direction.clone()
            } else if dims.len() >= 2 && dims[dims.len() - 2] * dims[dims.len() - 1] == direction.elem_count() {
                direction.reshape((dims[dims.len() - 2], dims[dims.len() - 1]))?
            } else {
                return Err(Error::invalid(format!(
                    "steering at `{}`: the decoder row has {} values, the activation shape {dims:?}",
                    hp.name(),
                    direction.elem_count()
                )));
            };
            let dir = dir.to_device(x.device())?.to_dtype(x.dtype())?;
            let n_pos = position_count(x, hp)?;
            let per_pos = match &positions {
                None => Tensor::ones(n_pos, DType::F32, &candle_core::Device::Cpu)?,
                Some(p) => {
                    let mask = feature_mask(n_pos, 1, 0, Some(p), hp)?;
                    (1.0 - mask)?.flatten_all()?
                }
            };
            // [pos] -> [pos, 1, ..] against dir's [d] or [h, d].
            let mut shape = vec![n_pos];
            shape.extend(std::iter::repeat_n(1, dir.rank()));
            let per_pos = per_pos.to_device(x.device())?.to_dtype(x.dtype())?.reshape(shape)?;
            Ok(Some(x.broadcast_add(&per_pos.broadcast_mul(&dir.unsqueeze(0)?)?)?))
        };
        let at = self.cfg().spliced_at().to_string();
        Ok(HookSet::new().fwd(
            hooklens_core::NamesFilter::predicate(move |n| n == at || n == spliced_output),
            hook,
        ))
    }

    /// Direct logit attribution of features: `W_dec[f] @ W_U` for each of `features`
    /// -> `[features.len(), d_vocab]`. `w_u` `[d_model, d_vocab]` is the model's
    /// unembedding (`model.weights().w_u()`); the SAE must write the residual stream
    /// (`d_out == d_model`). As in SAELens's tutorials, the final norm's scale is not
    /// applied.
    pub fn feature_logit_attribution(&self, w_u: &Tensor, features: &[usize]) -> Result<Tensor> {
        let (d_model, _) = w_u.dims2()?;
        if self.cfg().output_width() != d_model {
            return Err(Error::invalid(format!(
                "SAE for `{}` writes {} values, but W_U reads d_model = {d_model}: its features have no direct path to the logits",
                self.cfg().spliced_at(),
                self.cfg().output_width()
            )));
        }
        for &f in features {
            self.check_feature(f)?;
        }
        let ids: Vec<u32> = features.iter().map(|&f| f as u32).collect();
        let ids = Tensor::new(ids.as_slice(), self.w_dec().device())?;
        let rows = self.w_dec().index_select(&ids, 0)?;
        Ok(crate::ops::matmul(&rows, &w_u.to_dtype(rows.dtype())?)?)
    }

    /// The `k` most active features of one position's activations `acts` `[d_sae]`, as
    /// (feature, activation), largest first; features at zero are left out.
    pub fn top_features(acts: &Tensor, k: usize) -> Result<Vec<(usize, f32)>> {
        let v = acts.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let mut active: Vec<(usize, f32)> = v.into_iter().enumerate().filter(|(_, a)| *a != 0.0).collect();
        active.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        active.truncate(k);
        Ok(active)
    }

    fn check_feature(&self, feature: usize) -> Result<()> {
        let d_sae = self.cfg().d_sae;
        if feature >= d_sae {
            return Err(Error::invalid(format!(
                "feature {feature} does not exist: the SAE for `{}` has d_sae = {d_sae} (features 0..{d_sae})",
                self.cfg().spliced_at()
            )));
        }
        Ok(())
    }
}

/// The number of positions of an activation at `hp` (its declared position axis).
fn position_count(x: &Tensor, hp: &HookPoint) -> Result<usize> {
    let axis = hp.position_axis(x.rank()).ok_or_else(|| {
        Error::invalid(format!(
            "`{}`: activation of shape {:?} has no position axis",
            hp.name(),
            x.dims()
        ))
    })?;
    Ok(x.dim(D::Minus(axis.unsigned_abs()))?)
}

/// `[n_pos, width]` ones, with zeros at column `col` of the rows `positions` (every row
/// when `None`); positions outside `0..n_pos` are an error naming the hook.
fn feature_mask(n_pos: usize, width: usize, col: usize, positions: Option<&[usize]>, hp: &HookPoint) -> Result<Tensor> {
    let mut mask = vec![1f32; n_pos * width];
    let all: Vec<usize> = (0..n_pos).collect();
    for &p in positions.unwrap_or(&all) {
        if p >= n_pos {
            return Err(Error::invalid(format!(
                "position {p} at `{}`: the input has {n_pos} positions",
                hp.name()
            )));
        }
        mask[p * width + col] = 0.0;
    }
    Ok(Tensor::from_vec(mask, (n_pos, width), &candle_core::Device::Cpu)?)
}

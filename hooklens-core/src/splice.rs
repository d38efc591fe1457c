//! `Splice`: a hooked module that takes a hook point's place in the forward pass, as
//! SAELens's `HookedSAETransformer` puts a sparse autoencoder where a hook point was.

use std::sync::Arc;

use candle_core::Tensor;

use crate::{HookPoint, Hooked, Result};

/// A module spliced into a model at one of its hook points. While spliced, the point it
/// replaces neither runs its hooks nor is cached: the splice's own hook points take its
/// place in the hook dictionary, named under it (`blocks.0.hook_resid_pre.hook_sae_acts_post`
/// for a point `hook_sae_acts_post` of the splice), in the splice's registration order,
/// and the value the splice returns flows on through the model.
///
/// Splice with [`HookSet::splice`](crate::HookSet::splice): per run (`run_with_hooks`,
/// `run_with_cache_and_hooks`: private to that run and thread), for a scope
/// ([`HookedModel::hooks`](crate::HookedModel::hooks)), or as model state until
/// [`HookedModel::reset_splices`](crate::HookedModel::reset_splices)
/// ([`HookedModel::add_splices`](crate::HookedModel::add_splices)).
///
/// ```
/// use std::sync::Arc;
/// use candle_core::{Device, Tensor};
/// use hooklens_core::{HookPath, HookPoint, HookSet, Hooked, HookedModel, Result, Splice};
///
/// /// Doubles the activation, with a point of its own on the way.
/// struct Double { hook_doubled: HookPoint }
/// impl Hooked for Double {
///     fn visit_hook_points<'a>(&'a self, path: &mut HookPath, v: &mut dyn FnMut(&str, &'a HookPoint)) {
///         path.push("hook_doubled");
///         v(path.as_str(), &self.hook_doubled);
///         path.pop();
///     }
/// }
/// impl Splice for Double {
///     fn forward(&self, x: &Tensor, _at: &HookPoint) -> Result<Tensor> {
///         Ok(self.hook_doubled.forward(&(x * 2.0)?)?)
///     }
/// }
///
/// /// A one-point model.
/// struct Model { hook_x: HookPoint }
/// impl Hooked for Model {
///     fn visit_hook_points<'a>(&'a self, path: &mut HookPath, v: &mut dyn FnMut(&str, &'a HookPoint)) {
///         path.push("hook_x");
///         v(path.as_str(), &self.hook_x);
///         path.pop();
///     }
/// }
///
/// let model = Model { hook_x: HookPoint::new() };
/// let splice = Arc::new(Double { hook_doubled: HookPoint::new() });
/// let x = Tensor::new(&[1f32, 2.0], &Device::Cpu)?;
/// let hooks = HookSet::new().splice("hook_x", splice);
/// let y = model.run_with_hooks(hooks, |m| {
///     assert_eq!(m.hook_names(), ["hook_x.hook_doubled"]);
///     m.hook_x.forward(&x)
/// })?;
/// assert_eq!(y.to_vec1::<f32>()?, [2.0, 4.0]);
/// assert_eq!(model.hook_names(), ["hook_x"]); // gone with the run
/// # Ok::<(), hooklens_core::Error>(())
/// ```
pub trait Splice: Hooked + Send + Sync {
    /// What flows on in place of `x`, the activation that reached the replaced point `at`
    /// (any shape the splice accepts; it should return the same shape). Errors should
    /// name `at`.
    fn forward(&self, x: &Tensor, at: &HookPoint) -> Result<Tensor>;
}

/// A splice attached to a hook point as model state.
#[derive(Clone)]
pub(crate) struct AttachedSplice {
    pub(crate) splice: Arc<dyn Splice>,
    pub(crate) is_permanent: bool,
    pub(crate) level: Option<u64>,
}

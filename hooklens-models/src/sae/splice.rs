//! Splicing SAEs into a model, as SAELens's `HookedSAETransformer` does: per run, for a
//! scope, or as model state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use candle_core::Tensor;
use hooklens_core::{
    ActivationCache, CacheOptions, Error, HookPath, HookPoint, HookScope, HookSet, Hooked, HookedModel, Result, Splice,
};

use super::autoencoder::{Fire, Sae};

/// SAEs to splice in, each with or without its error term (SAELens's `saes=[...]` and
/// `use_error_term`). Build it from one SAE or several, then pass it to a
/// [`SaeModel`] method.
///
/// ```
/// # use candle_core::Device;
/// # use hooklens_models::sae::{Sae, SaeSet};
/// # let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/saes/saes");
/// let a = Sae::from_dir(dir.join("standard"), &Device::Cpu)?;
/// let b = Sae::from_dir(dir.join("gated"), &Device::Cpu)?;
/// let set = SaeSet::new().sae(&a).sae_with_error_term(&b);
/// assert_eq!(set.len(), 2);
/// # Ok::<(), hooklens_core::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct SaeSet {
    entries: Vec<(Sae, bool)>,
}

impl SaeSet {
    /// No SAEs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `sae`, without its error term: the model then runs on its reconstruction.
    pub fn sae(mut self, sae: &Sae) -> Self {
        self.entries.push((sae.clone(), false));
        self
    }

    /// Adds `sae` with its error term (SAELens's `use_error_term=True`): what flows on is
    /// its reconstruction plus `original - reconstruction` (computed with its hooks
    /// off and no gradient, exposed at `hook_sae_error`), so the model's output is
    /// unchanged unless a hook edits the SAE's features.
    pub fn sae_with_error_term(mut self, sae: &Sae) -> Self {
        self.entries.push((sae.clone(), true));
        self
    }

    /// Sets the error term of every SAE in the set.
    pub fn use_error_term(mut self, yes: bool) -> Self {
        for e in &mut self.entries {
            e.1 = yes;
        }
        self
    }

    /// The number of SAEs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set has no SAE.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The SAEs and whether each uses its error term.
    pub fn iter(&self) -> impl Iterator<Item = (&Sae, bool)> {
        self.entries.iter().map(|(s, e)| (s, *e))
    }

    /// The splices (and, for transcoders, the hooks reading their input) that put
    /// these SAEs in: give it to `run_with_hooks`, `run_with_cache_and_hooks`,
    /// `run_with_cache_bwd` or `hooks()`, extended with hooks of your own.
    pub fn hooks(&self) -> Result<HookSet> {
        let mut set = HookSet::new();
        for (sae, use_error_term) in &self.entries {
            let cfg = sae.cfg();
            if let Some(h) = cfg.hook_head_index {
                return Err(Error::invalid(format!(
                    "SAE for `{}` reads head {h} only (hook_head_index): splicing such SAEs is not supported",
                    cfg.hook_name
                )));
            }
            let input = cfg.is_transcoder().then(|| Arc::new(InputSlot::default()));
            if let Some(slot) = &input {
                let slot = slot.clone();
                set = set.fwd(cfg.hook_name.clone(), move |x: &Tensor, _: &HookPoint| {
                    slot.put(x.clone());
                    Ok(None)
                });
            }
            let splice = SaeSplice {
                sae: sae.clone(),
                use_error_term: *use_error_term,
                input,
            };
            set = set.splice(cfg.spliced_at(), Arc::new(splice));
        }
        Ok(set)
    }
}

impl From<&Sae> for SaeSet {
    fn from(sae: &Sae) -> Self {
        SaeSet::new().sae(sae)
    }
}

impl From<&[Sae]> for SaeSet {
    fn from(saes: &[Sae]) -> Self {
        saes.iter().fold(SaeSet::new(), SaeSet::sae)
    }
}

impl<const N: usize> From<&[Sae; N]> for SaeSet {
    fn from(saes: &[Sae; N]) -> Self {
        saes.as_slice().into()
    }
}

impl From<&Vec<Sae>> for SaeSet {
    fn from(saes: &Vec<Sae>) -> Self {
        saes.as_slice().into()
    }
}

/// A transcoder's input, read at its input point and taken at its output point in the
/// same pass; one per thread, since runs on several threads may share the splice.
#[derive(Default)]
struct InputSlot(Mutex<HashMap<ThreadId, Tensor>>);

impl InputSlot {
    fn put(&self, x: Tensor) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(std::thread::current().id(), x);
    }

    fn take(&self) -> Option<Tensor> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&std::thread::current().id())
    }
}

/// An SAE in the place of a hook point.
struct SaeSplice {
    sae: Sae,
    use_error_term: bool,
    input: Option<Arc<InputSlot>>,
}

impl Hooked for SaeSplice {
    fn visit_hook_points<'a>(&'a self, path: &mut HookPath, visitor: &mut dyn FnMut(&str, &'a HookPoint)) {
        self.sae.visit_hook_points(path, visitor)
    }
}

impl Splice for SaeSplice {
    fn forward(&self, x: &Tensor, at: &HookPoint) -> Result<Tensor> {
        let sae = &self.sae;
        let what = format!("`{}`", at.name());
        let input = match &self.input {
            None => x.clone(),
            Some(slot) => slot.take().ok_or_else(|| {
                Error::invalid(format!(
                    "transcoder spliced at `{}` saw no input at `{}` in this pass (is that point before it?)",
                    at.name(),
                    sae.cfg().hook_name
                ))
            })?,
        };
        if self.input.is_some() && x.dims().last() != Some(&sae.cfg().output_width()) {
            return Err(Error::invalid(format!(
                "transcoder spliced at `{}` writes d_out = {}, but the activation there has shape {:?}",
                at.name(),
                sae.cfg().output_width(),
                x.dims()
            )));
        }
        let (acts, norm) = sae.encode_inner(&input, Fire::Yes, &what)?;
        let mut out = sae.decode_inner(&acts, &norm, Fire::Yes)?;
        if let Some(skip) = sae.skip_term(&input)? {
            out = (out + skip)?;
        }
        if self.use_error_term {
            // SAELens: recomputed with the SAE's hooks off and no gradient, so that
            // edits to its features change the output and no gradient flows through it.
            let input = input.detach();
            let (acts, norm) = sae.encode_inner(&input, Fire::No, &what)?;
            let mut clean = sae.decode_inner(&acts, &norm, Fire::No)?;
            if let Some(skip) = sae.skip_term(&input)? {
                clean = (clean + skip)?;
            }
            let error = (x.detach() - clean.to_dtype(x.dtype())?)?;
            let error = sae.error_point().forward(&error)?;
            out = (out.to_dtype(x.dtype())? + error)?;
        }
        let out = out.to_dtype(x.dtype())?;
        if out.dims() != x.dims() {
            return Err(Error::invalid(format!(
                "SAE spliced at `{}` gives shape {:?}, but the activation there has shape {:?}",
                at.name(),
                out.dims(),
                x.dims()
            )));
        }
        Ok(sae.output_point().forward(&out)?)
    }
}

/// SAELens's `HookedSAETransformer` API on every hooked model: SAEs spliced in per run,
/// for a scope, or as model state. Bring it in scope with `use hooklens_models::sae::SaeModel`.
///
/// While spliced, the point an SAE replaces (`cfg.hook_name`; a transcoder's
/// `hook_name_out`) neither fires nor is cached; in its place fire, in SAELens's order,
/// `<point>.hook_sae_input`, `.hook_sae_acts_pre`, `.hook_sae_acts_post`,
/// `.hook_sae_recons`, `.hook_sae_error` (with the error term only) and
/// `.hook_sae_output`, whose value flows on. Those names can be hooked and cached like
/// any other, in the same call.
///
/// ```
/// # fn main() -> hooklens_core::Result<()> {
/// use candle_core::{Device, Tensor};
/// use hooklens_core::{CacheOptions, HookedModel};
/// use hooklens_models::sae::{Sae, SaeModel, SaeSet};
/// use hooklens_models::{HookedTransformer, LoadOptions};
/// # let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata");
/// let model = HookedTransformer::from_dir(root.join("tiny-gpt2/model"), &LoadOptions::no_processing())?;
/// let sae = Sae::from_dir(root.join("saes/saes/standard"), &Device::Cpu)?; // at blocks.0.hook_resid_pre
/// let tokens = Tensor::new(&[[511u32, 3, 17, 42]], &Device::Cpu)?;
///
/// // One run, the SAE's features cached under the point it replaces:
/// let (logits, cache) = model.run_with_cache_with_saes(&sae, CacheOptions::new(), |m| m.forward(&tokens))?;
/// let acts = &cache["blocks.0.hook_resid_pre.hook_sae_acts_post"]; // [1, 4, d_sae]
/// assert_eq!(acts.dims(), [1, 4, sae.cfg().d_sae]);
/// assert!(!cache.contains_key("blocks.0.hook_resid_pre"));
///
/// // With the error term the logits are the plain model's:
/// let set = SaeSet::new().sae_with_error_term(&sae);
/// let spliced = model.run_with_saes(set, |m| m.forward(&tokens))?;
/// let plain = model.forward(&tokens)?;
/// let gap = (spliced - plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
/// assert!(gap < 1e-4);
/// # let _ = logits;
/// # Ok(()) }
/// ```
pub trait SaeModel: HookedModel {
    /// Runs `forward` with `saes` spliced in for this run only, on this thread
    /// (SAELens's `run_with_saes`).
    fn run_with_saes<R, E: Into<Error>>(
        &self,
        saes: impl Into<SaeSet>,
        forward: impl FnOnce(&Self) -> std::result::Result<R, E>,
    ) -> Result<R> {
        self.run_with_hooks(saes.into().hooks()?, forward)
    }

    /// [`SaeModel::run_with_saes`] with per-run `hooks`, which may name the SAEs'
    /// points (SAELens's `run_with_hooks_with_saes`).
    fn run_with_hooks_with_saes<R, E: Into<Error>>(
        &self,
        saes: impl Into<SaeSet>,
        hooks: HookSet,
        forward: impl FnOnce(&Self) -> std::result::Result<R, E>,
    ) -> Result<R> {
        self.run_with_hooks(saes.into().hooks()?.extend(hooks), forward)
    }

    /// [`SaeModel::run_with_saes`], caching what `opts` selects, the SAEs' points
    /// included (SAELens's `run_with_cache_with_saes`).
    fn run_with_cache_with_saes<R, E: Into<Error>>(
        &self,
        saes: impl Into<SaeSet>,
        opts: CacheOptions,
        forward: impl FnOnce(&Self) -> std::result::Result<R, E>,
    ) -> Result<(R, ActivationCache)> {
        self.run_with_cache_and_hooks(opts, saes.into().hooks()?, forward)
    }

    /// Splices `saes` in until the returned scope drops, on every thread (SAELens's
    /// `with model.saes(saes=[...]):`); they are gone when it drops, panics included.
    fn saes(&self, saes: impl Into<SaeSet>) -> Result<HookScope<'_, Self>> {
        self.hooks(saes.into().hooks()?)
    }

    /// Splices `saes` in as model state until [`SaeModel::reset_saes`] (SAELens's
    /// `add_sae`); `reset_hooks` leaves them.
    fn add_sae(&self, saes: impl Into<SaeSet>) -> Result<()> {
        self.add_splices(saes.into().hooks()?).map(|_| ())
    }

    /// Removes every SAE (and other splice) attached as model state (SAELens's
    /// `reset_saes`); returns how many.
    fn reset_saes(&self) -> usize {
        self.reset_splices()
    }
}

impl<M: HookedModel + ?Sized> SaeModel for M {}

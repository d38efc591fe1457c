//! hooklens: mechanistic interpretability on candle.
//!
//! Every activation of a model gets a name, hooks read or replace it, and caches
//! collect it, as in TransformerLens. `#[derive(Hooked)]` puts this on any candle model.

pub use hooklens_core::*;
/// `#[derive(Hooked)]`: names every `HookPoint` of a struct by its field path, through
/// nested derived structs, `Vec`s, arrays, `Option`s, `Box`es and `Arc`s, as
/// TransformerLens names `blocks.0.attn.hook_z`. Fields of other types are not walked.
/// `#[hooked(rename = "name")]` gives a field another segment, `#[hooked(skip)]` leaves
/// it out, `#[hooked(module)]` walks a field whose type is a generic parameter (a field
/// over an unbounded parameter must say `module` or `skip`: a compile error otherwise).
/// `#[hooked(position_axis = -3)]` (or `= None`) declares the position axis of the points
/// under a field, counted from the end, for `pos_slice` and the interventions; the
/// declaration nearest a point wins (its constructor's, then the innermost field's).
///
/// ```
/// use hooklens::candle_core::{Device, Tensor};
/// use hooklens::{HookPoint, Hooked, HookedModel};
///
/// #[derive(Hooked)]
/// struct Attention {
///     hook_pattern: HookPoint,
///     hook_z: HookPoint,
///     w_o: Tensor, // not a hook point: not walked
/// }
///
/// #[derive(Hooked)]
/// struct Block {
///     attn: Attention,
///     hook_resid_post: HookPoint,
/// }
///
/// #[derive(Hooked)]
/// struct Model<M> {
///     hook_embed: HookPoint,
///     blocks: Vec<Block>,
///     #[hooked(rename = "ln_final")]
///     final_norm: Option<HookPoint>,
///     #[hooked(module)]
///     head: M,
///     #[hooked(skip)]
///     scratch: HookPoint,
/// }
///
/// let block = || Block {
///     attn: Attention { hook_pattern: HookPoint::new(), hook_z: HookPoint::new(), w_o: Tensor::zeros(1, hooklens::candle_core::DType::F32, &Device::Cpu).unwrap() },
///     hook_resid_post: HookPoint::new(),
/// };
/// let model = Model {
///     hook_embed: HookPoint::new(),
///     blocks: vec![block(), block()],
///     final_norm: Some(HookPoint::new()),
///     head: HookPoint::new(),
///     scratch: HookPoint::new(),
/// };
/// assert_eq!(
///     model.hook_names(),
///     [
///         "hook_embed",
///         "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z", "blocks.0.hook_resid_post",
///         "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z", "blocks.1.hook_resid_post",
///         "ln_final",
///         "head",
///     ]
/// );
/// ```
pub use hooklens_derive::Hooked;

/// Hooked models (the `models` feature, on by default): one `HookedTransformer` for every bundled family (GPT-2, GPT-NeoX,
/// Llama, Mistral, Qwen 2 / 3, Gemma 1 / 2 / 3, Phi-3, OLMo 2, GPT-Neo, OPT, Phi, GPT-J, BLOOM,
/// Mixtral, Qwen3-MoE, OLMoE, gpt-oss) with TransformerLens's hook names,
/// loading, text and generation.
#[cfg(feature = "models")]
pub use hooklens_models as models;

/// The candle this version of hooklens is built on, so that a user's tensors are the
/// very type hooklens takes without pinning candle's version by hand:
///
/// ```
/// use hooklens::candle_core::{Device, Tensor};
/// use hooklens::{HookPoint, HookSet};
///
/// let x = Tensor::ones((1, 3, 4), hooklens::candle_core::DType::F32, &Device::Cpu)?;
/// let hooks = HookSet::new().fwd("hook_x", |x: &Tensor, _: &HookPoint| Ok(Some(x.zeros_like()?)));
/// # let _ = (x, hooks);
/// # Ok::<(), hooklens::Error>(())
/// ```
pub use candle_core;
/// candle's neural-network crate, as [`candle_core`] (with the `models` feature).
#[cfg(feature = "models")]
pub use candle_nn;
/// Sparse autoencoders and transcoders in SAELens's format (see [`models::sae`]).
#[cfg(feature = "models")]
pub use hooklens_models::sae::{Sae, SaeModel, SaeSet};
/// The model types most programs start from (with the `models` feature).
#[cfg(feature = "models")]
pub use hooklens_models::{
    ForwardOptions, GenerateOptions, HookedTransformer, LoadOptions, ReturnType, Tokenizer, TransformerConfig,
};
/// The GPT-2-era names of [`HookedTransformer`] and [`TransformerConfig`], deprecated.
#[cfg(feature = "models")]
#[allow(deprecated)]
pub use hooklens_models::{Gpt2Config, HookedGpt2};

/// What `#[derive(Hooked)]` expands to refers to these. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use hooklens_core::__private::*;
}

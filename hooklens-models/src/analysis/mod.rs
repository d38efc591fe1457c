//! TransformerLens's analysis toolkit: hook-name shorthand ([`act_name`]), residual
//! stream decompositions and logit attribution over an activation cache ([`Analysis`]),
//! weight analysis ([`FactoredMatrix`], QK/OV circuits, composition scores) and
//! activation patching ([`patching`]).
//!
//! ```no_run
//! # use hooklens_core::{CacheOptions, HookedModel, Slice};
//! # use hooklens_models::{HookedTransformer, LoadOptions};
//! # use hooklens_models::analysis::{Analysis, AccumulatedResid};
//! # fn main() -> hooklens_core::Result<()> {
//! # let model = HookedTransformer::from_dir("testdata/tiny-gpt2/model", &LoadOptions::default())?;
//! # let tokens = candle_core::Tensor::zeros((1, 4), candle_core::DType::U32, &candle_core::Device::Cpu)?;
//! let (_, cache) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))?;
//! let analysis = Analysis::new(&model, cache);
//! let lens = analysis.accumulated_resid(&AccumulatedResid {
//!     apply_ln: true,
//!     pos_slice: Slice::Index(-1),
//!     ..Default::default()
//! })?;
//! println!("{:?} {:?}", lens.labels, lens.stack.shape()); // ["0_pre", ..., "final_post"] [layers+1, batch, d_model]
//! # Ok(()) }
//! ```

mod act_name;
mod apply_ln;
mod cache_view;
mod circuits;
mod factored_matrix;
mod full_decomposition;
mod head_results;
mod linalg;
mod logit_attrs;
mod neuron_results;
pub mod patching;
mod resid;

pub use act_name::{act_name, act_name_in, resolve_layer};
pub use apply_ln::LnOptions;
pub use cache_view::{Analysis, LabeledStack};
pub use circuits::{token_tensor, CompositionMode};
pub use factored_matrix::{composition_scores, Eigenvalues, FactoredMatrix, Svd};
pub use full_decomposition::FullDecomposition;
pub use head_results::StackHeads;
pub use logit_attrs::LogitAttrs;
pub use neuron_results::StackNeurons;
pub use resid::{AccumulatedResid, DecomposeMode, DecomposeResid};

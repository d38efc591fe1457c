//! TransformerLens's analysis toolkit: hook-name shorthand ([`act_name`]), residual
//! stream decompositions and logit attribution over an activation cache ([`Analysis`]),
//! weight analysis ([`FactoredMatrix`], QK/OV circuits, composition scores) and
//! activation patching ([`patching`]).

mod act_name;
mod factored_matrix;
mod linalg;
pub mod patching;

pub use act_name::{act_name, act_name_in, resolve_layer};
pub use factored_matrix::{composition_scores, Eigenvalues, FactoredMatrix, Svd};

//! `#[derive(Hooked)]`: names every `HookPoint` of a model struct by its field path,
//! the way TransformerLens names `blocks.3.attn.hook_z`.
//!
//! Use it through the `hooklens` crate, which re-exports it next to the trait.
//!
//! ```ignore
//! #[derive(hooklens::Hooked)]
//! struct Attention {
//!     q: candle_nn::Linear,          // not Hooked: ignored, no annotation needed
//!     hook_q: hooklens::HookPoint,   // "attn.hook_q" when reached through field `attn`
//! }
//!
//! #[derive(hooklens::Hooked)]
//! struct Model {
//!     blocks: Vec<Block>,            // "blocks.0.…", "blocks.1.…"
//!     #[hooked(rename = "ln_final")]
//!     ln_f: LayerNormPre,
//!     #[hooked(skip)]
//!     scratch: Scratch,
//! }
//! ```
//!
//! Field attributes: `skip`, `rename = "name"`, `module` (walk a generic field
//! through its `Hooked` bound, which the derive adds). Struct attributes:
//! `crate = "path"` (where `__private` lives, for crates that use `hooklens_core`
//! directly) and `hint = "path::to::fn"` (a `fn(&Self, &str) -> Option<Error>` that
//! becomes `unknown_hook_hint`).

mod ast;
mod attr;
mod expand;
mod valid;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Implements `hooklens::Hooked` for a struct: each field that is a `HookPoint`, or
/// a type that is itself `Hooked` (including `Vec`, arrays, `Option`, `Box` and `Arc`
/// of those), is walked under its field name; all other fields are ignored. See the
/// crate documentation for the `#[hooked(...)]` attributes.
#[proc_macro_derive(Hooked, attributes(hooked))]
pub fn derive_hooked(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    derive(&input).into()
}

fn derive(node: &DeriveInput) -> proc_macro2::TokenStream {
    let mut errors = valid::Errors::default();
    let input = ast::Input::from_syn(node, &mut errors);
    valid::validate(&input, &mut errors);
    match errors.finish() {
        Ok(()) => expand::derive(&input),
        Err(err) => {
            let errors = err.to_compile_error();
            let stub = expand::stub(&input);
            quote::quote! {
                #errors
                #stub
            }
        }
    }
}

//! The name of the built-in model: a name that resolves to no files, so name
//! resolution must know it (the model itself is `crate::builtin`, above the hub).

/// The name that selects the built-in model wherever a model is named (`--model
/// builtin`, [`HookedTransformer::from_pretrained`](crate::HookedTransformer::from_pretrained)).
/// It takes precedence over a directory of the same name; write `./builtin` for that.
pub const BUILTIN: &str = "builtin";

/// Whether `name` selects the built-in model.
pub fn is_builtin(name: &str) -> bool {
    name == BUILTIN
}

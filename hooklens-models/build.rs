//! Tells the library whether the built-in model's files (`builtin/config.json` and
//! `builtin/model.safetensors`, written by `examples/train_builtin`) are there to be
//! compiled in, as `cfg(hooklens_builtin)`. Without them the library still builds and
//! `HookedTransformer::builtin()` returns an error saying what is missing, so a checkout
//! without the weights (mid-training, say) is not a compile error.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(hooklens_builtin)");
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let files = ["builtin/config.json", "builtin/model.safetensors"];
    // The directory, not the files: a missing file counts as changed, which would
    // rebuild the library on every build until the weights exist. The directory is
    // always there (its README.md is committed) and changes when they are written.
    println!("cargo::rerun-if-changed=builtin");
    // The `builtin` feature off: a lean build without the 6.6 MB of weights.
    let wanted = std::env::var_os("CARGO_FEATURE_BUILTIN").is_some();
    if wanted && files.iter().all(|f| Path::new(&dir).join(f).is_file()) {
        println!("cargo::rustc-cfg=hooklens_builtin");
    }
}

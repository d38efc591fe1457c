#!/usr/bin/env bash
# Checks every example of examples/ as a user's own crate would: a crate outside the
# workspace that depends on `hooklens` alone (and serde_json), so that an example leaning
# on the workspace's inner crates (`candle_core::`, `hooklens_core::`, `hooklens_models::`
# instead of `hooklens::...`) fails here, as it would for a user who copies it.
#
# The benchmarks below use the workspace's `bench-internals` helpers (random checkpoints,
# the built-in model's training), which are not API: they are the exceptions.
#
# `cargo check`, not `cargo build`: what can go wrong here is a path the compiler resolves,
# and linking eight more debug binaries only costs disk (CI's disk ran out doing it).
#
# Usage: scripts/examples-as-outside-crate.sh   (CI runs it after the tests)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
internal=" attribute_memory gpt2_bench llama_bench sae_bench train_builtin moe_bench "
dir="$root/target/outside-examples"
rm -rf "$dir"
mkdir -p "$dir/src/bin"
cat >"$dir/Cargo.toml" <<TOML
[package]
name = "outside-examples"
version = "0.0.0"
edition = "2021"
publish = false

[workspace]

[dependencies]
hooklens = { path = "$root" }
serde_json = "1"

# The workspace's profile.
[profile.dev]
debug = "line-tables-only"
[profile.dev.package."*"]
opt-level = 3
debug = false
TOML
cp "$root/Cargo.lock" "$dir/Cargo.lock"
n=0
for ex in "$root"/examples/*.rs; do
    name=$(basename "$ex" .rs)
    case "$internal" in *" $name "*) continue ;; esac
    cp "$ex" "$dir/src/bin/$name.rs"
    n=$((n + 1))
done
echo "checking $n examples as an outside crate"
CARGO_TARGET_DIR="$root/target" cargo check --offline --manifest-path "$dir/Cargo.toml" --bins

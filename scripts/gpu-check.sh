#!/usr/bin/env bash
# The GPU check, one command for a machine with an NVIDIA GPU and its driver:
#   scripts/gpu-check.sh            parity tests on CUDA, then the benchmark table (--quick)
#   scripts/gpu-check.sh --full     the same with the benchmark's full repeats
# 1. the TransformerLens / SAELens parity tests (gpt2_parity, families, saes) with the
#    models on the GPU (HOOKLENS_TEST_DEVICE=cuda), against the same reference files as on
#    the CPU, at the GPU tolerance of hooklens-testutil's `tolerance_on`;
# 2. `examples/gpt2_bench.rs --device cuda`: the GPT-2-small-shaped table on the GPU.
# CI cannot do this (no GPU, no driver to link against); it only checks and lints the
# `cuda` build (see .ci/run). Run this whenever a GPU machine is lent.
#
# The CUDA toolkit: the system's `nvcc` when there is one; otherwise a CUDA 13 compiler,
# headers and libraries from PyPI (scripts/cuda-env.sh --runtime; needs the registry and a
# driver that supports CUDA 13). HOOKLENS_TEST_DEVICE=cuda:N picks another GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu-check: no nvidia-smi: this needs a machine with an NVIDIA GPU and its driver" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader

if ! command -v nvcc >/dev/null 2>&1; then
    # shellcheck source=scripts/cuda-env.sh
    source scripts/cuda-env.sh "${HOOKLENS_CUDA_VENV:-$PWD/target/cuda-venv}" --runtime
fi
# The kernels are compiled for the GPU at hand (e.g. 9.0 -> 90).
CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d .)}"
export CUDA_COMPUTE_CAP
# Apart from the CPU build's and CI's `cuda` check, whose artefacts this would invalidate.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/cuda-gpu}"
export HOOKLENS_TEST_DEVICE="${HOOKLENS_TEST_DEVICE:-cuda}"

quick=(--quick)
if [ "${1:-}" = --full ]; then
    quick=()
fi

echo "== parity tests on $HOOKLENS_TEST_DEVICE"
cargo test --release -p hooklens-models --features cuda --test gpt2_parity --test families --test saes

echo "== benchmark table on $HOOKLENS_TEST_DEVICE"
cargo run --release --features cuda --example gpt2_bench -- --device "$HOOKLENS_TEST_DEVICE" "${quick[@]}"

# Sourced, not run: `source scripts/cuda-env.sh VENV_DIR [--runtime]`.
#
# Puts a CUDA 13 compiler and headers from PyPI into the virtual environment VENV_DIR
# (created if missing) and exports what candle's `cuda` build reads, so the `cuda` feature
# compiles on a machine with no CUDA toolkit and no GPU (`.ci/run` checks it this way).
# What was checked to work, and why each variable is needed:
# ../shared/notes/cuda-build-from-registry.md.
#
# With `--runtime` it also installs the CUDA libraries a `cuda` binary links against
# (cuBLAS, cuRAND, NVRTC) and puts them on the library paths, for a GPU machine that has a
# driver but no toolkit (`scripts/gpu-check.sh`). `libcuda` itself only ever comes with the
# NVIDIA driver, which is why CI can check and lint the `cuda` build but not link it.
#
# Any failure (no python3, pip cannot reach the registry) returns non-zero: under `set -e`
# the caller stops there rather than silently skipping the GPU build.

cuda_env_main() {
    local venv="$1" runtime="${2:-}"
    if [ -z "$venv" ]; then
        echo "usage: source scripts/cuda-env.sh VENV_DIR [--runtime]" >&2
        return 2
    fi
    local py="$venv/bin/python"
    if [ ! -x "$py" ]; then
        python3 -m venv "$venv" || return 1
    fi
    # The cu13 line: the cu12 wheels carry `ptxas` but no `nvcc`.
    local pkgs=(nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-cccl)
    if [ "$runtime" = --runtime ]; then
        pkgs+=(nvidia-cublas nvidia-curand nvidia-cuda-nvrtc)
    fi
    # --disable-pip-version-check: no extra request whose failure would only be noise.
    "$py" -m pip install --quiet --disable-pip-version-check "${pkgs[@]}" || {
        echo "cuda-env: pip could not install ${pkgs[*]} (is the package registry reachable?)" >&2
        return 1
    }
    local root
    root="$("$py" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')" || return 1
    if [ ! -x "$root/bin/nvcc" ]; then
        echo "cuda-env: no nvcc at $root/bin/nvcc after installing ${pkgs[*]}" >&2
        return 1
    fi
    export PATH="$root/bin:$PATH"
    export CUDA_ROOT="$root" CUDA_PATH="$root" CUDA_HOME="$root"
    # nvcc's own include path does not cover the wheels' split layout (CCCL apart).
    export NVCC_PREPEND_FLAGS="-I$root/include -I$root/cccl"
    # cudarc reads the toolkit version from `nvcc --version` and rejects the newest
    # releases; 13.4 is the newest it knows, and the kernels do not depend on the minor.
    export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13040}"
    if [ "$runtime" = --runtime ]; then
        export LIBRARY_PATH="$root/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
        export LD_LIBRARY_PATH="$root/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    echo "cuda-env: $(nvcc --version | tail -n 2 | head -n 1) at $root"
}

cuda_env_main "$@"

#!/usr/bin/env bash
# Builds the Python environment that makes and benchmarks the circuit-tracing ground truth:
#   bash scripts/circuit-tracer-env.sh VENV_DIR        (e.g. /work/venv-ct, outside the repo)
# Then: VENV_DIR/bin/python shared/reference/circuits/make_circuit_reference.py OUT public
#       VENV_DIR/bin/python scripts/circuit_cases.py ...  /  scripts/circuit_tracer_bench.py ...
#
# Versions are those of shared/reference/circuits (README there): circuit-tracer 0.5.0,
# transformer-lens 3.2.1, torch 2.15.0 (run on CPU), transformers 4.57.3, safetensors 0.8.0,
# tokenizers 0.22.2; nnsight 0.6.3 (only for make_circuit_reference.py --nnsight-check).
#
# Everything comes from PyPI with `pip install --no-deps` and a fully pinned list (the closure
# pip's resolver picked for the packages above, minus torch's GPU-only dependencies), so the
# environment is the same on every run and pip never pulls in the CUDA stack by itself.
# torch on PyPI is the CUDA build: there is no CPU-only wheel there. Its libraries are linked
# against the CUDA libraries (libtorch_cpu.so needs libcupti and libcudart; libtorch_cuda.so
# needs cuBLAS, cuDNN, cuFFT, cuFile, cuSPARSE(Lt), NCCL, NVRTC, NVSHMEM), so `import torch`
# fails without them; this installs exactly those NVIDIA wheels (about 2.8 GB unpacked) and
# leaves out the rest of torch's declared dependencies (cuda-toolkit, cuda-bindings, triton,
# cuSOLVER, NVTX, CCCL), which nothing here loads. `pip check` therefore lists them as missing;
# that is expected. No GPU is needed or used: torch.cuda.is_available() is False.
#
# Idempotent: an existing VENV_DIR is reused, and pip skips what is already at the pinned
# version. Exits non-zero on any failure (no python3, registry not reachable, import fails).
set -euo pipefail

venv="${1:-}"
if [ -z "$venv" ]; then
    echo "usage: bash scripts/circuit-tracer-env.sh VENV_DIR" >&2
    exit 2
fi
py="$venv/bin/python"
if [ ! -x "$py" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$py" -m pip install -q --disable-pip-version-check --upgrade "pip>=24"

# torch 2.15.0 (CUDA 13 build from PyPI) and just the NVIDIA libraries its import loads
torch_pkgs=(
    torch==2.15.0
    nvidia-cuda-runtime==13.2.86 nvidia-cuda-cupti==13.2.86 nvidia-cuda-nvrtc==13.2.86
    nvidia-cublas==13.4.1.3 nvidia-cudnn-cu13==9.26.0.51 nvidia-cufft==12.2.0.57
    nvidia-cufile==1.17.1.22 nvidia-cusparse==12.7.10.12 nvidia-nvjitlink==13.5.37
    nvidia-cusparselt-cu13==0.8.1 nvidia-nccl-cu13==2.30.7 nvidia-nvshmem-cu13==3.7.2
)
# circuit-tracer, transformer-lens, transformers and their whole pure-Python closure
py_pkgs=(
    circuit-tracer==0.5.0 transformer-lens==3.2.1 transformers==4.57.3 safetensors==0.8.0
    tokenizers==0.22.2 nnsight==0.6.3 huggingface_hub==0.36.2 PyYAML==6.0.4 numpy==2.4.6
    Jinja2==3.1.6 MarkupSafe==3.0.4 Pygments==2.21.0 accelerate==1.16.0
    aiohappyeyeballs==2.7.1 aiohttp==3.14.5 aiosignal==1.4.0 annotated-types==0.8.0
    anyio==4.16.0 astor==0.8.1 asttokens==3.0.2 attrs==26.1.0 beartype==0.23.1
    better-abc==0.0.3 bidict==0.24.1 certifi==2026.10.19.post1 charset-normalizer==3.5.3
    click==8.5.1 cloudpickle==3.1.3 cwevals==0.0.1b1 datasets==5.0.1 dill==0.4.1
    distro==1.9.0 einops==0.8.2 executing==2.3.0 fancy-einsum==0.0.3 filelock==4.3.2
    frozenlist==1.8.0 fsspec==2026.6.0 googleapis-common-protos==1.76.0 h11==0.16.0
    hf-xet==1.8.0 httpcore==1.0.9 httpx==0.29.0 idna==3.21 ipython==9.19.1
    ipython_pygments_lexers==1.1.1 jaxtyping==0.3.11 jedi==0.20.1 markdown-it-py==4.3.0
    matplotlib-inline==0.2.2 mdurl==0.1.2 mpmath==1.3.0 multidict==7.2.1
    multiprocess==0.70.19 networkx==3.6.1 opentelemetry-api==1.45.2
    opentelemetry-exporter-http-transport==0.66b2 opentelemetry-exporter-otlp-common==0.66b2
    opentelemetry-exporter-otlp-proto-common==1.45.2
    opentelemetry-exporter-otlp-proto-http==1.45.2 opentelemetry-proto==1.45.2
    opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2 packaging==26.4
    pandas==3.1.1 parso==0.8.7 pexpect==4.9.0 platformdirs==4.14.9 prompt_toolkit==3.0.53
    propcache==0.5.4 protobuf==7.36.2 psutil==7.2.2 ptyprocess==0.7.0 pure_eval==0.2.4
    pyarrow==26.0.1 pydantic==2.14.4 pydantic_core==2.50.5 python-dateutil==4.0.0
    python-engineio==4.15.1 python-socketio==5.18.1 regex==2026.12.2 requests==2.34.2
    rich==15.0.0 sentencepiece==0.2.3 setuptools==84.2.1 simple-websocket==1.1.0
    sniffio==1.3.1 stack-data==0.6.3 sympy==1.14.0 toml==0.10.2 tqdm==4.70.1
    traitlets==5.16.1 transformers-stream-generator==0.0.5 typeguard==4.6.1
    typing-inspection==0.4.5 typing_extensions==4.16.0 tzdata==2026.6 urllib3==2.8.0
    wadler_lindig==0.1.8 wandb==0.31.0 wcwidth==0.9.5 websocket-client==1.9.2
    wsproto==1.3.2 xxhash==4.1.0 yarl==1.25.1 zstandard==0.25.0
)
"$py" -m pip install -q --disable-pip-version-check --no-deps "${torch_pkgs[@]}" "${py_pkgs[@]}"

"$py" - <<'EOF'
from importlib.metadata import version
import torch
import circuit_tracer, transformer_lens, transformers  # noqa: F401
assert version("torch") == "2.15.0" and version("circuit-tracer") == "0.5.0"
x = torch.randn(2, 2) @ torch.randn(2, 2)
print("circuit-tracer env ok:", {p: version(p) for p in (
    "circuit-tracer", "transformer-lens", "torch", "transformers", "safetensors", "tokenizers")},
    "cuda available:", torch.cuda.is_available())
EOF

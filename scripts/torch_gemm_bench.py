"""torch's f32 (and bf16) gemm rate on the weight products of a Llama-3.2-1B forward.

The shapes and the timing match `hooklens-models/examples/gemm_bench.rs`, which reads
the JSON this writes (`--torch FILE`) and puts torch's rate beside its own:

    python scripts/torch_gemm_bench.py --json torch.json
    cargo run --release -p hooklens-models --example gemm_bench -- --torch torch.json

torch runs on as many threads as the Rust side (2 on the CI machine kind); each shape is
timed `--rounds` times after one warm-up call and the median kept.
"""

import argparse
import json
import os
import time

import torch

SHAPES = [
    ("qkv", 2048, 3072),
    ("o", 2048, 2048),
    ("gate/up", 2048, 8192),
    ("down", 8192, 2048),
    ("unembed", 2048, 128256),
]


def rate(m, k, n, rounds, dtype):
    x = torch.randn(m, k, dtype=dtype)
    w = (torch.randn(k, n) * 0.02).to(dtype)
    torch.matmul(x, w)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        torch.matmul(x, w)
        times.append(time.perf_counter() - t)
    times.sort()
    return 2 * m * k * n / times[len(times) // 2] / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="where to write the rates")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--quick", action="store_true", help="M = 64 and 1024 only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for m in [64, 1024] if args.quick else [64, 256, 1024]:
        for name, k, n in SHAPES:
            rounds = min(args.rounds, 3) if n > 100_000 and m > 256 else args.rounds
            row = {"m": m, "k": k, "n": n, "name": name}
            row["gflops"] = rate(m, k, n, rounds, torch.float32)
            row["gflops_bf16"] = rate(m, k, n, rounds, torch.bfloat16)
            print(f"M {m} {name} {k} x {n}: f32 {row['gflops']:.1f} GFLOP/s, bf16 {row['gflops_bf16']:.1f}")
            rows.append(row)
    for s in [4096]:
        row = {"m": s, "k": s, "n": s, "name": "square", "gflops": rate(s, s, s, 3, torch.float32)}
        print(f"{s}^3: f32 {row['gflops']:.1f} GFLOP/s")
        rows.append(row)
    with open(args.json, "w") as f:
        json.dump({"torch": torch.__version__, "threads": args.threads, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

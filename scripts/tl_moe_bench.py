"""CPU timings of TransformerLens 2.16.1 on the Mixtral-shaped model of examples/moe_bench.rs and
on its dense twin: the Python side of that comparison.

Usage: python scripts/tl_moe_bench.py [--quick] [--threads N] [--rounds N] [--json FILE]
then:  cargo run --release --example moe_bench -- --tl FILE   (prints both, and hooklens / TL)
Needs: transformer-lens==2.16.1, torch (CPU is enough); about 2 GB of memory. Weights are random
(HookedTransformer's own seeded init): no download.

Models (the shapes examples/moe_bench.rs builds; keep the two in step):
  MoE:   n_layers 4, d_model 512, n_heads 8, n_key_value_heads 2, d_head 64, 8 experts of
         d_mlp 1792, 2 per token, d_vocab 32000, RMSNorm, rotary (base 1e6), gated silu, f32
  dense: the same with one gated MLP of d_mlp 3584 (the MoE's active width)
Measured in one process, under torch.no_grad(), with torch.set_num_threads(--threads, default 2):
the forward `model(tokens)` at batch x pos = 1x64 and 4x256, the two models timed in turn each
round; the median and min of the rounds, in milliseconds.
"""
import argparse, importlib.metadata, json, platform, statistics, time

import torch

from transformer_lens import HookedTransformer, HookedTransformerConfig

SHAPE = dict(
    n_layers=4, d_model=512, n_heads=8, n_key_value_heads=2, d_head=64, d_vocab=32000, n_ctx=2048,
    act_fn="silu", gated_mlp=True, normalization_type="RMS", final_rms=True, eps=1e-5,
    positional_embedding_type="rotary", rotary_dim=64, rotary_base=1000000,
    rotary_adjacent_pairs=False, default_prepend_bos=False, init_weights=True, seed=0,
    dtype=torch.float32, device="cpu")
MOE = dict(SHAPE, d_mlp=1792, num_experts=8, experts_per_token=2,
           original_architecture="MixtralForCausalLM")
DENSE = dict(SHAPE, d_mlp=2 * 1792, original_architecture="MistralForCausalLM")


def build(cfg):
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 11; 3 with --quick)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    rounds = args.rounds or (3 if args.quick else 11)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    models = {"dense": build(DENSE), "moe": build(MOE)}
    print(f"TransformerLens {importlib.metadata.version('transformer_lens')}, torch {torch.__version__}, "
          f"python {platform.python_version()}, threads {torch.get_num_threads()}, rounds {rounds}")
    g = torch.Generator().manual_seed(1)
    results = []
    print(f"{'model':6s} {'shape':>7s} {'median ms':>11s} {'min ms':>11s}")
    for b, p in [(1, 64), (4, 256)]:
        x = torch.randint(0, SHAPE["d_vocab"], (b, p), generator=g)
        times = {name: [] for name in models}
        for m in models.values():
            m(x)  # warm-up
        for _ in range(rounds):
            for name, m in models.items():
                t0 = time.perf_counter()
                m(x)
                times[name].append((time.perf_counter() - t0) * 1e3)
        for name, ts in times.items():
            med = statistics.median(ts)
            results.append(dict(model=name, shape=f"{b}x{p}", median_ms=med, min_ms=min(ts), rounds_ms=ts))
            print(f"{name:6s} {b}x{p:<5d} {med:11.1f} {min(ts):11.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(threads=args.threads, torch=torch.__version__,
                           transformer_lens=importlib.metadata.version("transformer_lens"),
                           results=results), f, indent=1)


if __name__ == "__main__":
    main()

"""CPU timings of TransformerLens 2.16.1 on a Llama-3.2-1B-shaped HookedTransformer, the Python
side of a comparison with hooklens.

Usage: python scripts/tl_llama_bench.py [--shape llama|gpt2] [--quick] [--bf16] [--threads N] [--rounds N] [--json FILE]
Needs: transformer-lens==2.16.1, torch (CPU is enough), transformers; about 12 GB of free memory
(16 GB with --bf16). Weights are random (HookedTransformer's own seeded init): no download.
The full run takes about 10-15 minutes on 2 cores; --quick does one timed round per case after a
single 1x64 warm-up forward, and is only a smoke test (its numbers are noisy).

Model: n_layers 16, d_model 2048, n_heads 32, n_key_value_heads 8, d_head 64, d_mlp 8192,
d_vocab 128256, n_ctx 2048, RMSNorm (+ final), rotary (dim 64, base 500000), gated silu MLP,
float32, CPU, untied W_U (TransformerLens always keeps its own), ~1.5e9 parameters, 6 GB.

Measured in one process, under torch.no_grad(), with torch.set_num_threads(--threads, default 2):
  forward        model(tokens) -> logits            batch x pos = 1x64 and 4x256
  run_with_cache model.run_with_cache(tokens), every hook point cached, same shapes
  generate       model.generate greedy with the KV cache (use_past_kv_cache=True), batch 1,
                 16-token prompt, 32 new tokens, no EOS stop: total ms, new tokens per second,
                 and ms per decode step = (t(32 new) - t(1 new)) / 31
  bf16 forward   (--bf16) a bfloat16 copy of the model, forward at 1x64 and 4x256
Each case: warm-up run(s), then the median (and min) of several rounds, in milliseconds.
"""
import argparse, importlib.metadata, json, os, platform, statistics, time

import torch

from transformer_lens import HookedTransformer, HookedTransformerConfig

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "..", "testdata", "tiny-tokenizer", "tokenizer.json")

LLAMA_3_2_1B = dict(
    n_layers=16, d_model=2048, n_heads=32, n_key_value_heads=8, d_head=64, d_mlp=8192,
    d_vocab=128256, n_ctx=2048, act_fn="silu", gated_mlp=True, normalization_type="RMS",
    final_rms=True, eps=1e-5, positional_embedding_type="rotary", rotary_dim=64,
    rotary_base=500000, rotary_adjacent_pairs=False, original_architecture="LlamaForCausalLM",
    default_prepend_bos=False, init_weights=True, seed=0, dtype=torch.float32, device="cpu")


# GPT-2 small's shape (the `--shape gpt2` run, beside `cargo run --release --example gpt2_bench`).
GPT2_SMALL = dict(
    n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024,
    act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard",
    original_architecture="GPT2LMHeadModel", default_prepend_bos=False, init_weights=True, seed=0,
    dtype=torch.float32, device="cpu")


def attach_tokenizer(model):
    """TL's generate asserts that a tokenizer exists even for token input; for a rotary model it
    uses it for nothing else, so any tokenizer will do (the tiny one of testdata/, or a stub)."""
    try:
        from transformers import PreTrainedTokenizerFast
        tok = PreTrainedTokenizerFast(tokenizer_file=TOKENIZER, bos_token="<|endoftext|>",
                                      eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    except Exception:  # noqa: BLE001 - no file: a stub with the attributes generate reads
        from types import SimpleNamespace
        tok = SimpleNamespace(pad_token_id=0, bos_token_id=0, eos_token_id=0)
    tok.padding_side = "right"
    model.tokenizer = tok


def timed(fn, warmup, rounds):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts), min(ts), ts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round per case, one 1x64 warm-up")
    ap.add_argument("--bf16", action="store_true", help="also time a bfloat16 forward at 1x64 and 4x256")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5; 1 with --quick)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--shape", choices=["llama", "gpt2"], default="llama",
                    help="gpt2: GPT-2 small at 1x64 and 8x128, with one hook replacing blocks.5.attn.hook_z")
    args = ap.parse_args()
    rounds = args.rounds or (1 if args.quick else 5)
    warmup = 0 if args.quick else 1  # per case; --quick only warms up once, at 1x64, below

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    g = torch.Generator().manual_seed(1)
    results = []

    def record(case, shape, med, mn, ts, **extra):
        results.append(dict(case=case, shape=shape, median_ms=med, min_ms=mn, rounds_ms=ts, **extra))
        more = "".join(f"  {k} {v}" if isinstance(v, int) else f"  {k} {v:.2f}"
                       for k, v in extra.items())
        print(f"{case:16s} {shape:>7s} {med:11.1f} {mn:11.1f}{more}", flush=True)

    t0 = time.perf_counter()
    shape = GPT2_SMALL if args.shape == "gpt2" else LLAMA_3_2_1B
    sizes = [(1, 64), (8, 128)] if args.shape == "gpt2" else [(1, 64), (4, 256)]
    model = HookedTransformer(HookedTransformerConfig(**shape))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    attach_tokenizer(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"TransformerLens {importlib.metadata.version('transformer_lens')}, "
          f"torch {torch.__version__}, python {platform.python_version()}, "
          f"threads {torch.get_num_threads()}, {n_params / 1e9:.3f}e9 params, "
          f"{len(model.hook_dict)} hook points; build+init {time.perf_counter() - t0:.1f} s; "
          f"rounds {rounds}, warm-up {warmup if not args.quick else 'one 1x64 forward'}")

    def toks(b, p):
        return torch.randint(0, shape["d_vocab"], (b, p), generator=g)

    if args.quick:
        model(toks(1, 64))

    print(f"{'case':16s} {'shape':>7s} {'median ms':>11s} {'min ms':>11s}")
    for b, p in sizes:
        x = toks(b, p)
        record("forward", f"{b}x{p}", *timed(lambda: model(x), warmup, rounds))
        if args.shape == "gpt2":
            hooks = [("blocks.5.attn.hook_z", lambda z, hook: torch.zeros_like(z))]
            record("hook_z replaced", f"{b}x{p}",
                   *timed(lambda: model.run_with_hooks(x, fwd_hooks=hooks), warmup, rounds))
    for b, p in sizes:
        x = toks(b, p)
        n_cached = []

        def rwc():
            logits, cache = model.run_with_cache(x)
            n_cached.append(len(cache))
            del logits, cache
        record("run_with_cache", f"{b}x{p}", *timed(rwc, warmup, rounds), hooks=n_cached[-1])

    prompt = toks(1, 16)

    def gen(n):
        out = model.generate(prompt, max_new_tokens=n, do_sample=False, stop_at_eos=False,
                             use_past_kv_cache=True, prepend_bos=False, verbose=False)
        assert out.shape == (1, 16 + n)
    one = timed(lambda: gen(1), warmup, rounds)
    full = timed(lambda: gen(32), warmup, rounds)
    record("generate 1 new", "1x16", *one)
    record("generate 32 new", "1x16", *full, tok_per_s=32 / (full[0] / 1e3),
           decode_ms_per_tok=(full[0] - one[0]) / 31)

    if args.bf16:
        model = model.to(torch.bfloat16)  # in place: no second f32 copy stays alive
        model.cfg.dtype = torch.bfloat16
        for b, p in [(1, 64), (4, 256)]:
            x = toks(b, p)
            record("forward bf16", f"{b}x{p}", *timed(lambda: model(x), 1, rounds))

    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(threads=args.threads, quick=args.quick, torch=torch.__version__,
                           results=results), f, indent=1)


if __name__ == "__main__":
    main()

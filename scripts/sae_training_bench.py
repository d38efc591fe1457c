"""Trains the same SAE with SAELens's trainer and with `hooklens train-sae` on the same
activations, then compares what they learned and how fast.

Usage: python scripts/sae_training_bench.py [--tokens 2000000] [--d-in 768]
           [--d-sae 4096] [--arch topk --arch standard] [--k 64] [--l1 F] [--lr F]
           [--work DIR] [--json FILE]
  Needs SAELens (6.54) and torch (the venv of scripts/check_sae_training.py) and a
  release build of the `hooklens` binary (built here with cargo).

The activations: `--tokens` rows of width `--d-in` (GPT-2-small's residual stream,
`blocks.6.hook_resid_pre`, by default), written as harvest shards. Each row is a sum of
48 draws (with replacement) from 16384 unit directions with Zipf-distributed firing
rates and exponential magnitudes, plus a fixed offset and a little Gaussian noise: data
an SAE can learn, with a known sparse structure, made without a model. A separate
held-out set of 32768 rows from the same distribution is what both SAEs are scored on.

SAELens: `SAETrainer(SAETrainerConfig(...), TopKTrainingSAE / StandardTrainingSAE,
data_provider)` fed the shards' rows in order, batch after batch, `.fit()` timed alone
(data already in memory). hooklens: `hooklens train-sae --activations DIR ...` with the
same settings, timed as a whole process (start-up, reading the shards, its shuffling
buffer, writing the folder). Both use every core (torch's default thread count and
rayon's). Then each saved SAE is loaded with SAELens's `SAE.load_from_disk` and scored
on the held-out rows: explained variance `1 - sum ||x - x_hat||^2 / sum ||x -
mean(x)||^2` and L0 (mean active features per row), with the same code for both.
"""

import argparse
import json
import math
import os
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from sae_lens import SAE
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

ROOT = Path(__file__).resolve().parent.parent
HOOK = "blocks.6.hook_resid_pre"
SHARD_ROWS = 131072
EVAL_ROWS = 32768


def make_data(work: Path, tokens: int, d_in: int, seed: int) -> tuple[Path, torch.Tensor]:
    """Writes the training shards under work/acts (once per size and seed) and returns
    that folder and the held-out rows."""
    acts = work / f"acts-v2-{tokens}-{d_in}-{seed}"
    g = torch.Generator().manual_seed(seed)
    n_feat, draws = 16384, 48
    dirs = F.normalize(torch.randn(n_feat, d_in, generator=g), dim=-1)
    probs = 1.0 / torch.arange(1, n_feat + 1, dtype=torch.float64) ** 0.8
    probs = (probs / probs.sum()).float()
    offset = 0.1 * torch.randn(d_in, generator=g)

    def rows(n: int) -> torch.Tensor:
        idx = torch.multinomial(probs, n * draws, replacement=True, generator=g).view(n, draws)
        mags = torch.empty(n, draws).exponential_(1.0, generator=g)
        x = F.embedding_bag(idx, dirs, per_sample_weights=mags, mode="sum")
        return (x + offset + 0.05 * torch.randn(n, d_in, generator=g)).contiguous()

    held_out = rows(EVAL_ROWS)
    done = acts / "done"
    if not done.exists():
        acts.mkdir(parents=True, exist_ok=True)
        for s in range(math.ceil(tokens / SHARD_ROWS)):
            n = min(SHARD_ROWS, tokens - s * SHARD_ROWS)
            save_file({HOOK: rows(n)}, acts / f"synthetic-shard-{s:05d}.safetensors")
        done.write_text("")
    return acts, held_out


def batches(acts: Path, batch: int):
    """The shards' rows in order, `batch` at a time, over and over."""
    shards = sorted(acts.glob("*-shard-*.safetensors"))
    data = torch.cat([safe_open(str(p), "pt").get_tensor(HOOK) for p in shards])
    while True:
        for i in range(0, data.shape[0] - batch + 1, batch):
            yield data[i : i + batch]


def saelens_sae(arch: str, args, d_in: int):
    meta = SAEMetadata(hook_name=HOOK)
    if arch == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=args.d_sae, k=args.k, metadata=meta))
    return StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=args.d_sae, l1_coefficient=args.l1, metadata=meta))


def train_saelens(arch: str, args, acts: Path, d_in: int, out: Path) -> float:
    """Trains with SAELens's trainer; the tokens per second of `.fit()`."""
    torch.manual_seed(args.seed)
    sae = saelens_sae(arch, args, d_in)
    cfg = SAETrainerConfig(
        total_training_samples=args.tokens,
        train_batch_size_samples=args.batch,
        lr=args.lr,
        # What LanguageModelSAERunnerConfig sets when it builds this config.
        lr_end=args.lr / 10,
        logger=LoggingConfig(log_to_wandb=False),
    )
    provider = batches(acts, args.batch)
    trainer = SAETrainer(cfg, sae, provider)
    start = time.perf_counter()
    trained = trainer.fit()
    seconds = time.perf_counter() - start
    trained.save_inference_model(str(out))
    return args.tokens / seconds


def train_hooklens(arch: str, args, acts: Path, out: Path) -> float:
    """Runs `hooklens train-sae`; the tokens per second of the whole process."""
    exe = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "hooklens"
    cmd = [
        str(exe), "train-sae", "--activations", str(acts), "--hook", HOOK,
        "--architecture", arch, "--d-sae", str(args.d_sae), "--lr", str(args.lr),
        "--training-tokens", str(args.tokens), "--batch-size", str(args.batch),
        "--seed", str(args.seed), "--out", str(out),
    ]  # fmt: skip
    cmd += ["--k", str(args.k)] if arch == "topk" else ["--l1-coefficient", str(args.l1)]
    start = time.perf_counter()
    run = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{run.stderr}")
    return args.tokens / seconds


@torch.no_grad()
def score(folder: Path, x: torch.Tensor) -> tuple[float, float]:
    """(explained variance, L0) of the SAE in `folder` on `x`."""
    sae = SAE.load_from_disk(str(folder), device="cpu")
    acts = sae.encode(x)
    x_hat = sae.decode(acts)
    ev = 1.0 - ((x - x_hat) ** 2).sum().item() / ((x - x.mean(0)) ** 2).sum().item()
    return ev, (acts != 0).float().sum(-1).mean().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2_000_000)
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--arch", action="append", choices=["topk", "standard"])
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--l1", type=float, default=1.0, help="standard: l1_coefficient")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--work", type=Path, default=Path("/tmp/hooklens-sae-bench"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "hooklens-cli"], cwd=ROOT, check=True)
    acts, held_out = make_data(args.work, args.tokens, args.d_in, args.seed)
    rows = []
    for arch in args.arch or ["topk", "standard"]:
        base = args.work / f"{arch}-{args.tokens}-{args.d_sae}"
        sl_tps = train_saelens(arch, args, acts, args.d_in, base / "saelens")
        hl_tps = train_hooklens(arch, args, acts, base / "hooklens")
        (sl_ev, sl_l0), (hl_ev, hl_l0) = score(base / "saelens", held_out), score(base / "hooklens", held_out)
        rows.append(
            {
                "architecture": arch,
                "saelens": {"explained_variance": sl_ev, "l0": sl_l0, "tokens_per_s": sl_tps},
                "hooklens": {"explained_variance": hl_ev, "l0": hl_l0, "tokens_per_s": hl_tps},
            }
        )
        print(f"{arch}: SAELens EV {sl_ev:.4f} L0 {sl_l0:.1f} {sl_tps:.0f} tok/s; hooklens EV {hl_ev:.4f} L0 {hl_l0:.1f} {hl_tps:.0f} tok/s", flush=True)
    print(
        f"\n{args.tokens} activations of width {args.d_in}, d_sae {args.d_sae}, batch {args.batch}, lr {args.lr}, "
        f"{torch.get_num_threads()} threads; held-out {EVAL_ROWS} rows\n"
    )
    print("| architecture | EV SAELens | EV hooklens | EV ratio | L0 SAELens | L0 hooklens | L0 ratio | tok/s SAELens | tok/s hooklens | speed ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s, h = r["saelens"], r["hooklens"]
        print(
            f"| {r['architecture']} | {s['explained_variance']:.4f} | {h['explained_variance']:.4f} | "
            f"{h['explained_variance'] / s['explained_variance']:.3f} | {s['l0']:.1f} | {h['l0']:.1f} | "
            f"{h['l0'] / s['l0']:.3f} | {s['tokens_per_s']:.0f} | {h['tokens_per_s']:.0f} | "
            f"{h['tokens_per_s'] / s['tokens_per_s']:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"work": str(args.work), "json": str(args.json)}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

"""Checks hooklens's SAE trainer against SAELens: same initial weights, same batches,
same settings; one training step per batch in each; then compares the saved SAEs and
has SAELens load hooklens's folder.

Usage: python scripts/check_sae_training.py [--steps N] [--keep DIR] [--arch A ...]
           [--d-in N --d-sae N --batch N --k K]
  Needs SAELens (6.54) and torch; builds and runs the example
  hooklens-models/examples/sae_train_steps.rs with cargo (release). Exits non-zero on a
  mismatch. For each of standard, topk, batchtopk (saved as jumprelu), jumprelu (SAELens's
  defaults: the step L0 loss), jumprelu-tanh (tanh loss, jumprelu_ste_to_input, the
  pre-activation loss on dead features) and jumprelu-quadratic (target_l0 4):
  - SAELens's side is TrainingSAE.training_forward_pass with SAETrainer._train_step's
    bookkeeping: dead-feature counters (dead_feature_window), L1 coefficient warm-up
    (CoefficientScheduler), clip_grad_norm_(1.0), torch.optim.Adam, get_lr_scheduler;
    then save_inference_model.
  - SAELens is also run in float64, the reference both float32 runs approximate. Each
    tensor of hooklens's sae_weights.safetensors must be within twice SAELens float32's
    relative L2 distance to it (or --tolerance, 1e-5). At the default size the two float32
    runs agree to about 1e-7 elementwise; at larger sizes (--d-in 256 --d-sae 4096
    --batch 1024 --steps 20) both drift from float64 by 1e-4 to 2e-3, through round-off
    amplified where Adam divides by |g| + 1e-8 with |g| near 1e-8 and where top-k has
    near-ties, and hooklens drifts less than SAELens float32 does for standard and topk.
    BatchTopK is the most sensitive (one cut-off over the whole batch, so round-off
    moves activations across it): at that size it agrees to 1e-6 up to 12 steps; at 16
    steps both float32 runs jump to 2e-3 from float64; at 20 steps hooklens jumps (1e-2)
    where SAELens float32 does not, so the check fails there by the luck of the round-off.
  - JumpReLU (40 steps at the default size): every tensor, the threshold included, within
    6e-8 of SAELens float32 and 1e-7 to 2e-7 (relative L2) of float64, as close as SAELens
    float32 is, for both variants; jumprelu-tanh starts its thresholds at 0.3 so that all
    48 features are dead for a while and the pre-activation loss is exercised. Like
    BatchTopK it has cut-offs (the jump, the rectangle kernel's edges) that round-off can
    move a pre-activation across: one such run, with the threshold starting at 0.01, had
    both float32 runs 1e-5 from float64 after 40 steps, and hooklens 5e-5, though they
    agreed to 1e-7 up to 20 steps.
  - Matryoshka BatchTopK (levels d_sae/6, d_sae/2, d_sae; SAELens's default
    use_matryoshka_aux_loss false, and matryoshka_batchtopk-aux with it true): as
    BatchTopK, saved as JumpReLU.
  - Transcoders (transcoder: standard; jumprelu-transcoder): SAELens 6.54 has no
    transcoder trainer, so its StandardTrainingSAE / JumpReLUTrainingSAE are run as one:
    W_dec [d_sae, 12], Transcoder.process_sae_in (no b_dec on the input), the MSE against
    a target y = relu(x @ M). Weights within 6e-8 of SAELens after 40 steps; SAELens loads
    hooklens's folder as a Transcoder / JumpReLUTranscoder (d_out 12).
  - SAE.load_from_disk(hooklens's folder).encode must equal hooklens's own encode of the
    first batch to 1e-4, and its decode(encode(x)) the folder's as hooklens reads it
    (Sae::from_dir) to 1e-4.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from sae_lens import SAE
from sae_lens.saes.sae import SAEMetadata, TrainStepInput
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.matryoshka_batchtopk_sae import (
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.transcoder import Transcoder
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.optim import CoefficientScheduler, get_lr_scheduler

ROOT = Path(__file__).resolve().parent.parent

# The JumpReLU variants checked: SAELens's defaults (the `step` L0 loss, the estimators
# reaching the threshold only), and Anthropic's setup (`tanh`, the estimators reaching
# the encoder too, the pre-activation loss on dead features).
JUMPRELU = {
    "jumprelu": {"jumprelu_sparsity_loss_mode": "step"},
    "jumprelu-tanh": {
        "jumprelu_sparsity_loss_mode": "tanh",
        "jumprelu_ste_to_input": True,
        "pre_act_loss_coefficient": 1e-2,
        "jumprelu_init_threshold": 0.3,
    },
    "jumprelu-quadratic": {"jumprelu_sparsity_loss_mode": "quadratic", "target_l0": 4.0},
}
JUMPRELU_COMMON = {"l0_coefficient": 1e-2, "l0_warm_up_steps": 10, "jumprelu_bandwidth": 0.05, "jumprelu_init_threshold": 0.01}


def jumprelu_cfg(arch, d_in, d_sae, meta, dtype="float32", l0_warm_up_steps=10):
    extra = {**JUMPRELU_COMMON, "l0_warm_up_steps": l0_warm_up_steps, **JUMPRELU[arch]}
    return JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta, dtype=dtype, **extra)


# Matryoshka BatchTopK with SAELens's default aux loss, and with use_matryoshka_aux_loss.
MATRYOSHKA = {"matryoshka_batchtopk": False, "matryoshka_batchtopk-aux": True}

# Transcoders: SAELens 6.54 has no transcoder trainer; its training SAEs are run with
# apply_b_dec_to_input = False, W_dec [d_sae, d_out] and the MSE taken against the
# target (its mse_loss_fn swapped per batch), which is what hooklens's transcoder
# training is: SAELens's losses and trainer with another target.
TRANSCODERS = {"transcoder": "standard", "jumprelu-transcoder": "jumprelu"}
D_OUT = 12


def saelens_train(arch, opts, init, xs, out, dtype="float32", ys=None):
    meta = SAEMetadata(hook_name="blocks.0.hook_resid_post")
    if arch in TRANSCODERS:
        inner = TRANSCODERS[arch]
        common = dict(d_in=xs.shape[-1], d_sae=opts["d_sae"], metadata=meta, dtype=dtype, apply_b_dec_to_input=False)
        if inner == "jumprelu":
            extra = {**JUMPRELU_COMMON, "l0_warm_up_steps": opts["l0_warm_up_steps"], **JUMPRELU["jumprelu"]}
            sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(**common, **extra))
        else:
            sae = StandardTrainingSAE(
                StandardTrainingSAEConfig(
                    **common, l1_coefficient=opts["l1_coefficient"], l1_warm_up_steps=opts["l1_warm_up_steps"]
                )
            )
        t = getattr(torch, dtype)
        sae.W_dec = torch.nn.Parameter(torch.empty(opts["d_sae"], D_OUT, dtype=t))
        sae.b_dec = torch.nn.Parameter(torch.empty(D_OUT, dtype=t))
        # SAELens's Transcoder reads its input without b_dec (whose width is d_out).
        sae.process_sae_in = types.MethodType(Transcoder.process_sae_in, sae)
        return _train(sae, opts, init, xs, ys, out)
    if arch == "topk":
        cfg = TopKTrainingSAEConfig(d_in=xs.shape[-1], d_sae=opts["d_sae"], k=opts["k"], metadata=meta, dtype=dtype)
        sae = TopKTrainingSAE(cfg)
    elif arch in JUMPRELU:
        cfg = jumprelu_cfg(arch, xs.shape[-1], opts["d_sae"], meta, dtype, opts["l0_warm_up_steps"])
        sae = JumpReLUTrainingSAE(cfg)
    elif arch in MATRYOSHKA:
        cfg = MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=xs.shape[-1],
            d_sae=opts["d_sae"],
            k=opts["k"],
            matryoshka_widths=list(opts["matryoshka_widths"]),
            use_matryoshka_aux_loss=opts["use_matryoshka_aux_loss"],
            metadata=meta,
            dtype=dtype,
        )
        sae = MatryoshkaBatchTopKTrainingSAE(cfg)
    elif arch == "batchtopk":
        cfg = BatchTopKTrainingSAEConfig(d_in=xs.shape[-1], d_sae=opts["d_sae"], k=opts["k"], metadata=meta, dtype=dtype)
        sae = BatchTopKTrainingSAE(cfg)
    else:
        cfg = StandardTrainingSAEConfig(
            d_in=xs.shape[-1],
            d_sae=opts["d_sae"],
            l1_coefficient=opts["l1_coefficient"],
            l1_warm_up_steps=opts["l1_warm_up_steps"],
            metadata=meta,
            dtype=dtype,
        )
        sae = StandardTrainingSAE(cfg)
    return _train(sae, opts, init, xs, None, out)


def _train(sae, opts, init, xs, ys, out):
    sae.load_state_dict({k: v.clone() for k, v in init.items()})
    optimizer = torch.optim.Adam(sae.parameters(), lr=opts["lr"], betas=(0.9, 0.999))
    total_steps = opts["training_tokens"] // opts["train_batch_size_tokens"]
    scheduler = get_lr_scheduler(
        "constant",
        optimizer=optimizer,
        training_steps=total_steps,
        lr=opts["lr"],
        warm_up_steps=opts["lr_warm_up_steps"],
        decay_steps=opts["lr_decay_steps"],
        lr_end=opts["lr"] / 10,
        num_cycles=1,
    )
    coefs = {
        name: CoefficientScheduler(warm_up_steps=c.warm_up_steps, final_value=c.value)
        for name, c in ((n, c) for n, c in sae.get_coefficients().items())
    }
    since_fired = torch.zeros(opts["d_sae"])
    most_dead = 0
    for step, x in enumerate(xs):
        if ys is not None:
            y = ys[step]
            sae.mse_loss_fn = lambda out, _sae_in, y=y: (out - y) ** 2
        out_step = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                dead_neuron_mask=(since_fired > opts["dead_feature_window"]).bool(),
                coefficients={n: s.value for n, s in coefs.items()},
                n_training_steps=step,
                is_logging_step=False,
            )
        )
        with torch.no_grad():
            did_fire = out_step.feature_acts.bool().float().sum(-2).bool()
            since_fired += 1
            since_fired[did_fire] = 0
            most_dead = max(most_dead, int((since_fired > opts["dead_feature_window"]).sum()))
        out_step.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        for s in coefs.values():
            s.step()
    if ys is not None:
        # Saved as SAELens's inference transcoder (weights as they are, as its training
        # SAEs save them); the folder is only read for its weights.
        Path(out).mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in sae.state_dict().items()}, Path(out) / "sae_weights.safetensors")
    else:
        sae.save_inference_model(out)
    return int((since_fired > opts["dead_feature_window"]).sum()), most_dead


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--keep", type=Path)
    ap.add_argument("--d-in", type=int, default=16)
    ap.add_argument("--d-sae", type=int, default=48)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument(
        "--arch",
        action="append",
        help="standard, topk, batchtopk, matryoshka_batchtopk, matryoshka_batchtopk-aux, jumprelu, jumprelu-tanh, jumprelu-quadratic, transcoder, "
        "jumprelu-transcoder (default: all)",
    )
    ap.add_argument(
        "--tolerance",
        type=float,
        default=1e-5,
        help="relative L2 distance to the float64 reference always accepted",
    )
    args = ap.parse_args()
    subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "hooklens-models", "--example", "sae_train_steps"],
        cwd=ROOT,
        check=True,
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    exe = target / "release" / "examples" / "sae_train_steps"
    base = args.keep or Path(tempfile.mkdtemp(prefix="hooklens-sae-train-"))
    torch.manual_seed(0)
    d_in, d_sae, batch = args.d_in, args.d_sae, args.batch
    # Sparse data: each row a sum of up to 3 of 24 unit directions (at least one).
    dirs = torch.nn.functional.normalize(torch.randn(24, d_in), dim=-1)
    coef = torch.zeros(args.steps, batch, 24)
    for j in range(3):
        idx = torch.randint(0, 24, (args.steps, batch, 1))
        val = (1 + torch.rand(args.steps, batch, 1)) * (torch.rand(args.steps, batch, 1) < 0.6 if j else 1)
        coef.scatter_add_(-1, idx, val.float())
    xs = coef @ dirs
    failed = False
    # Transcoder targets: a fixed map of the inputs, through relu.
    ys = torch.relu(xs @ torch.randn(d_in, D_OUT))
    all_archs = ["standard", "topk", "batchtopk", *MATRYOSHKA, *JUMPRELU, *TRANSCODERS]
    for arch in args.arch or all_archs:
        d = base / arch
        d.mkdir(parents=True, exist_ok=True)
        opts = {
            "architecture": "jumprelu"
            if arch in JUMPRELU
            else "matryoshka_batchtopk"
            if arch in MATRYOSHKA
            else TRANSCODERS.get(arch, arch),
            "d_sae": d_sae,
            "k": args.k,
            "lr": 3e-3,
            "l1_coefficient": 5e-3,
            "l1_warm_up_steps": min(10, args.steps // 4),
            "lr_warm_up_steps": min(5, args.steps // 4),
            "lr_decay_steps": min(10, args.steps // 4),
            "dead_feature_window": 3,
            "train_batch_size_tokens": batch,
            "training_tokens": batch * args.steps,
        }
        if arch in TRANSCODERS:
            opts["hook_out"] = "blocks.0.hook_mlp_out"
        if arch in MATRYOSHKA:
            opts["matryoshka_widths"] = [d_sae // 6, d_sae // 2, d_sae]
            opts["use_matryoshka_aux_loss"] = MATRYOSHKA[arch]
        if arch in JUMPRELU or TRANSCODERS.get(arch) == "jumprelu":
            opts.update({**JUMPRELU_COMMON, "l0_warm_up_steps": min(10, args.steps // 4), **JUMPRELU.get(arch, JUMPRELU["jumprelu"])})
        (d / "opts.json").write_text(json.dumps(opts))
        # SAELens's own initialisation (kaiming-uniform, decoder rows at norm 0.1).
        if arch in JUMPRELU or TRANSCODERS.get(arch) == "jumprelu":
            init_sae = JumpReLUTrainingSAE(
                jumprelu_cfg(arch if arch in JUMPRELU else "jumprelu", d_in, d_sae, SAEMetadata(hook_name="h"))
            )
        else:
            cls, cfg_cls = {
                "standard": (StandardTrainingSAE, StandardTrainingSAEConfig),
                "transcoder": (StandardTrainingSAE, StandardTrainingSAEConfig),
                "topk": (TopKTrainingSAE, TopKTrainingSAEConfig),
                "batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig),
                "matryoshka_batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig),
                "matryoshka_batchtopk-aux": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig),
            }[arch]
            init_sae = cls(cfg_cls(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name="h")))
        init = {k: v.detach().clone().contiguous() for k, v in init_sae.state_dict().items()}
        if arch in TRANSCODERS:
            # No W_enc = W_dec^T: W_dec's rows at norm 0.1, W_enc's columns too.
            init["W_dec"] = torch.nn.functional.normalize(torch.randn(d_sae, D_OUT), dim=-1) * 0.1
            init["b_dec"] = torch.zeros(D_OUT)
            init["W_enc"] = torch.nn.functional.normalize(torch.randn(d_in, d_sae), dim=0) * 0.1
            if TRANSCODERS[arch] == "jumprelu":
                init["threshold"] = torch.full((d_sae,), 0.01)
        save_file(init, d / "init.safetensors")
        batches = {"x": xs.contiguous()}
        if arch in TRANSCODERS:
            batches["y"] = ys.contiguous()
        save_file(batches, d / "batches.safetensors")
        t0 = time.perf_counter()
        subprocess.run([str(exe), str(d)], check=True, stdout=subprocess.DEVNULL)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        tys = ys if arch in TRANSCODERS else None
        dead, most_dead = saelens_train(arch, opts, init, xs, d / "saelens", ys=tys)
        t_theirs = time.perf_counter() - t0
        # The float64 reference: what both float32 runs approximate.
        init64 = {k: v.double() for k, v in init.items()}
        saelens_train(
            arch, opts, init64, xs.double(), d / "saelens64", dtype="float64", ys=None if tys is None else tys.double()
        )
        ref = load_file(d / "saelens64" / "sae_weights.safetensors")
        tokens = args.steps * batch
        print(
            f"{arch}: {args.steps} steps, {dead} dead features at the end ({most_dead} at most); "
            f"hooklens {tokens / t_ours:.0f} tok/s (process, with loading and saving), "
            f"SAELens {tokens / t_theirs:.0f} tok/s (torch threads: {torch.get_num_threads()})"
        )
        ours = load_file(d / "hooklens" / "sae_weights.safetensors")
        theirs = load_file(d / "saelens" / "sae_weights.safetensors")
        names = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if "threshold" in theirs else [])
        for name in names:
            diff = (ours[name] - theirs[name]).abs().max().item()
            scale = theirs[name].abs().max().item()
            r64 = ref[name].norm().clamp_min(1e-12)
            ours_err = ((ours[name].double() - ref[name]).norm() / r64).item()
            theirs_err = ((theirs[name].double() - ref[name]).norm() / r64).item()
            ok = ours_err <= max(2 * theirs_err, args.tolerance)
            failed |= not ok
            print(
                f"{arch} {name}: max |hooklens - SAELens| = {diff:.3e} (max |SAELens| {scale:.3e}); "
                f"relative L2 distance to SAELens in float64: hooklens {ours_err:.2e}, "
                f"SAELens float32 {theirs_err:.2e} {'ok' if ok else 'MISMATCH'}"
            )
        loaded = SAE.load_from_disk(str(d / "hooklens"), device="cpu")
        if arch in TRANSCODERS:
            print(f"{arch}: SAE.load_from_disk(hooklens folder) is a {type(loaded).__name__} (d_out {loaded.cfg.d_out})")
            failed |= loaded.cfg.d_out != D_OUT
        enc = loaded.encode(xs[0])
        ours_enc = load_file(d / "hooklens_encode.safetensors")["acts"]
        diff = (enc - ours_enc).abs().max().item()
        ok = diff <= 1e-4 * max(ours_enc.abs().max().item(), 1.0)
        failed |= not ok
        print(f"{arch}: SAE.load_from_disk(hooklens folder).encode vs hooklens: max diff {diff:.3e} {'ok' if ok else 'MISMATCH'}")
        # The reconstruction of the same rows by the same folder, read by each library.
        recons = loaded.decode(loaded.encode(xs[0]))
        ours_recons = load_file(d / "hooklens_encode.safetensors")["recons"]
        diff = (recons - ours_recons).abs().max().item()
        ok = diff <= 1e-4 * max(ours_recons.abs().max().item(), 1.0)
        failed |= not ok
        print(f"{arch}: decode(encode(x)) of the folder, SAELens vs hooklens: max diff {diff:.3e} {'ok' if ok else 'MISMATCH'}")
    print(f"files in {base}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

"""Writes testdata/sae-formats/: for each file format SAELens converts (its
`conversion_func`s), a tiny file set in that format and what SAELens's own conversion
makes of it, for hooklens-models/tests/sae_formats.rs.

Each case folder holds:
  repo/          the files as the Hugging Face repository has them (paths inside the repo)
  case.json      release, sae_id, extra config overrides, SAELens's cfg dict after loading
  expected.safetensors  SAELens's SAE parameters (W_enc, W_dec, b_enc, b_dec, threshold,
                 W_skip, b_gate/r_mag/b_mag) and, for a fixed input x, encode(x) -> acts,
                 decode(acts) -> recons and forward(x) -> out

SAELens's loader runs unchanged: only `hf_hub_download` (and the header-only shape read)
is redirected to the local `repo/` folder. Real releases fix d_in/d_sae by name for
Gemma Scope 1 (gemma_2, gemma_2_transcoder); those cases pass small d_in/d_sae as extra
config overrides, which the Rust test passes the same way.

and bad/ holds malformed inputs the Rust tests expect clear errors for.

Run with SAELens 6.54.12:  python scripts/sae_formats.py
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from huggingface_hub.utils import EntryNotFoundError
from safetensors import safe_open
from safetensors.torch import save_file

import sae_lens
import sae_lens.saes.sae as sae_module
from sae_lens import SAE
from sae_lens.loading import pretrained_sae_loaders as loaders
from sae_lens.loading import pretrained_saes_directory as directory

OUT = Path(__file__).resolve().parent.parent / "testdata" / "sae-formats"
REPO_ROOT: Path = Path()


def fake_download(repo_id, filename=None, subfolder=None, **_kw):
    path = f"{subfolder}/{filename}" if subfolder else filename
    local = REPO_ROOT / path
    if not local.is_file():
        raise EntryNotFoundError(f"{repo_id}: no {path}")
    return str(local)


def fake_shapes(repo_id, filename):
    with safe_open(str(REPO_ROOT / filename), framework="pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}


loaders.hf_hub_download = fake_download
loaders.get_safetensors_tensor_shapes = fake_shapes
EXTRA: dict = {}
_real_overrides = directory.get_config_overrides


def overrides_with_extra(release, sae_id):
    return {**_real_overrides(release, sae_id), **EXTRA}


sae_module.get_config_overrides = overrides_with_extra

gen = torch.Generator().manual_seed(0)


def randn(*shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def case(name, release, sae_id, write, extra=None, x_shape=None):
    """Writes the repo files with `write(repo_dir, folder)`, loads the SAE with SAELens
    and saves what it computes."""
    global REPO_ROOT, EXTRA
    info = directory.get_pretrained_saes_directory()[release]
    folder = info.saes_map[sae_id]
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    REPO_ROOT = out / "repo"
    REPO_ROOT.mkdir(parents=True)
    write(REPO_ROOT, folder)
    EXTRA = dict(extra or {})
    sae, cfg_dict, _ = SAE.from_pretrained_with_cfg_and_sparsity(release, sae_id, device="cpu")
    sae.eval()
    d_in = sae.cfg.d_in
    x = randn(*(x_shape or (2, 3, d_in)))
    with torch.no_grad():
        acts = sae.encode(x)
        recons = sae.decode(acts)
        out_t = sae(x)
    tensors = {k: v.detach().clone().contiguous().float() for k, v in sae.state_dict().items()}
    tensors.update(x=x, acts=acts, recons=recons, out=out_t)
    save_file(tensors, str(out / "expected.safetensors"))
    firing = float((acts > 0).float().mean())
    assert 0.05 < firing < 0.95, f"{name}: {firing:.2f} of features fire; pick other weights"
    (out / "case.json").write_text(
        json.dumps(
            {
                "release": release,
                "sae_id": sae_id,
                "repo_id": info.repo_id,
                "folder": folder,
                "extra_overrides": EXTRA,
                "sae_lens_version": sae_lens.__version__,
                "cfg": cfg_dict,
                "sae_cfg": sae.cfg.to_dict(),
            },
            indent=1,
            default=str,
            sort_keys=True,
        )
        + "\n"
    )
    print(f"{name}: {release} / {sae_id} -> {sorted(tensors)}; {firing:.2f} fire")


def jumprelu_params(d_in, d_sae, d_out=None):
    d_out = d_out or d_in
    return {
        "W_enc": randn(d_in, d_sae, scale=0.5),
        "W_dec": randn(d_sae, d_out, scale=0.3),
        "b_enc": randn(d_sae, scale=0.1),
        "b_dec": randn(d_out, scale=0.1),
        "threshold": torch.rand(d_sae, generator=gen) * 0.8,
    }


def save_npz(path, params):
    path.parent.mkdir(parents=True, exist_ok=True)
    # Gemma Scope's params.npz are np.savez archives: stored, not compressed.
    np.savez(path, **{k: v.numpy() for k, v in params.items()})


# --- gemma_2 (Gemma Scope): params.npz; d_in / d_sae from the names ------------------
def gemma_2(repo, folder):
    # Gemma Scope's keys: W_enc, W_dec, b_enc, b_dec, threshold.
    save_npz(repo / folder / "params.npz", jumprelu_params(16, 32))


case(
    "gemma_2",
    "gemma-scope-2b-pt-res-canonical",
    "layer_12/width_16k/canonical",
    gemma_2,
    extra={"d_in": 16, "d_sae": 32},
)
case(
    "gemma_2_att",
    "gemma-scope-2b-pt-att",
    "layer_0/width_16k/average_l0_104",
    gemma_2,
    extra={"d_in": 16, "d_sae": 32},
    x_shape=(2, 3, 4, 4),
)
case(
    "gemma_2_embedding",
    "gemma-scope-2b-pt-res",
    "embedding/width_4k/average_l0_6",
    gemma_2,
    extra={"d_in": 16, "d_sae": 32},
)


# --- gemma_2_transcoder: params.npz ----------------------------------------------------
def gemma_2_transcoder(repo, folder):
    save_npz(repo / folder / "params.npz", jumprelu_params(16, 32))


case(
    "gemma_2_transcoder",
    "gemma-scope-2b-pt-transcoders",
    "layer_0/width_16k/average_l0_76",
    gemma_2_transcoder,
    extra={"d_in": 16, "d_out": 16, "d_sae": 32},
)


# --- gemma_3 (Gemma Scope 2): params.safetensors (+ config.json) ---------------------
def gemma_3(with_config, affine=False):
    def write(repo, folder):
        d = repo / folder
        d.mkdir(parents=True)
        p = jumprelu_params(16, 32, 12 if "transcoder" in folder else None)
        raw = {k.lower(): v for k, v in p.items()}
        if affine:
            raw["affine_skip_connection"] = randn(16, 12, scale=0.2)
        save_file({k: v.contiguous() for k, v in raw.items()}, str(d / "params.safetensors"))
        if with_config:
            layer = folder.split("layer_")[1].split("_")[0]
            (d / "config.json").write_text(
                json.dumps(
                    {
                        "architecture": "jump_relu",
                        "model_name": "gemma-v3-270m-pt",
                        "hf_hook_point_in": f"model.layers.{layer}.output",
                        "width": 32,
                    }
                )
            )

    return write


case("gemma_3", "gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_small", gemma_3(True))
case(
    "gemma_3_transcoder_affine",
    "gemma-scope-2-270m-pt-transcoders",
    "transcoder/layer_9_width_16k_l0_small_affine",
    gemma_3(False, affine=True),
)


# --- llama_scope: hyperparams.json + checkpoints/final.safetensors (bf16) -------------
def llama_scope(repo, folder):
    d = repo / folder
    (d / "checkpoints").mkdir(parents=True)
    d_in, d_sae = 16, 32
    (d / "hyperparams.json").write_text(
        json.dumps(
            {
                "d_model": d_in,
                "d_sae": d_sae,
                "jump_relu_threshold": 0.9,
                "dataset_average_activation_norm": {"in": 2.5, "out": 3.0},
                "hook_point_in": "blocks.0.hook_resid_post",
                "hook_point_out": "blocks.0.hook_resid_post",
            }
        )
    )
    w = {
        "encoder.weight": randn(d_sae, d_in, scale=0.5),
        "encoder.bias": randn(d_sae, scale=0.1),
        "decoder.weight": randn(d_in, d_sae, scale=0.3),
        "decoder.bias": randn(d_in, scale=0.1),
    }
    save_file({k: v.to(torch.bfloat16) for k, v in w.items()}, str(d / "checkpoints" / "final.safetensors"))


case("llama_scope", "llama_scope_lxr_8x", "l0r_8x", llama_scope, x_shape=(2, 3, 16))


# --- dictionary_learning_1: config.json + ae.pt ---------------------------------------
def dictionary_learning(dict_class, state):
    def write(repo, folder):
        d = repo / folder
        d.mkdir(parents=True)
        trainer = {
            "dict_class": dict_class,
            "layer": 12,
            "activation_dim": 16,
            "dict_size": 32,
            "lm_name": "google/gemma-2-2b",
        }
        if "TopK" in dict_class:
            trainer["k"] = 6
        (d / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"ctx_len": 128}}))
        torch.save(state(), d / "ae.pt")

    return write


def topk_state():
    return {
        "encoder.weight": randn(32, 16, scale=0.5),
        "encoder.bias": randn(32, scale=0.1),
        "decoder.weight": randn(16, 32, scale=0.3),
        "b_dec": randn(16, scale=0.1),
        "k": torch.tensor(6),
        "threshold": torch.tensor(0.25),
    }


def gated_state():
    return {
        "encoder.weight": randn(32, 16, scale=0.5),
        "decoder.weight": randn(16, 32, scale=0.3),
        "decoder_bias": randn(16, scale=0.1),
        "r_mag": randn(32, scale=0.2),
        "gate_bias": randn(32, scale=0.1),
        "mag_bias": randn(32, scale=0.1),
    }


def batch_topk_state():
    return {
        "W_enc": randn(16, 32, scale=0.5),
        "b_enc": randn(32, scale=0.1),
        "W_dec": randn(32, 16, scale=0.3),
        "b_dec": randn(16, scale=0.1),
        "k": torch.tensor(6),
        "threshold": torch.tensor(0.3),
        "group_sizes": torch.tensor([8, 24]),
    }


def standard_state():
    return {
        "encoder.weight": randn(32, 16, scale=0.5),
        "encoder.bias": randn(32, scale=0.1),
        "decoder.weight": randn(16, 32, scale=0.3),
        "bias": randn(16, scale=0.1),
    }


case(
    "dictionary_learning_topk",
    "sae_bench_gemma-2-2b_topk_width-2pow12_date-1109",
    "blocks.12.hook_resid_post__trainer_0",
    dictionary_learning("AutoEncoderTopK", topk_state),
)
case(
    "dictionary_learning_gated",
    "sae_bench_pythia70m_sweep_gated_ctx128_0730",
    "blocks.3.hook_resid_post__trainer_0",
    dictionary_learning("GatedAutoEncoder", gated_state),
)
case(
    "dictionary_learning_matryoshka",
    "saebench_gemma-2-2b_width-2pow14_date-0107",
    "blocks.12.hook_resid_post__trainer_0",
    dictionary_learning("MatryoshkaBatchTopKSAE", batch_topk_state),
)
case(
    "dictionary_learning_standard",
    "sae_bench_pythia70m_sweep_standard_ctx128_0712",
    "blocks.3.hook_resid_post__trainer_10",
    dictionary_learning("AutoEncoder", standard_state),
)


# --- mwhanna_transcoder: layer_N.safetensors + wandb-config.yaml + config.yaml --------
def mwhanna(repo, folder):
    d_in, d_sae = 16, 32
    save_file(
        {
            "W_enc": randn(d_sae, d_in, scale=0.5),
            "b_enc": randn(d_sae, scale=0.1),
            "W_dec": randn(d_sae, d_in, scale=0.3),
            "b_dec": randn(d_in, scale=0.1),
        },
        str(repo / folder),
    )
    (repo / "wandb-config.yaml").write_text(
        "_wandb:\n  value:\n    cli_version: 0.19.1\n    t:\n      \"1\":\n        - 1\n        - 55\n"
        "batch_size:\n  desc: null\n  value: 4096\n"
        f"d_feature:\n  value: {d_sae}\n"
        f"d_model:\n  desc: null\n  value: {d_in}\n"
        "lr:\n  value: 0.0002\n"
    )
    (repo / "config.yaml").write_text(
        "model_name: Qwen/Qwen3-4B\nfeature_input_hook: mlp.hook_in\nfeature_output_hook: hook_mlp_out\n"
        "scan: null\ntranscoders:\n  - hf://mwhanna/qwen3-4b-transcoders/layer_0.safetensors\n"
    )


case("mwhanna_transcoder", "mwhanna-qwen3-4b-transcoders", "layer_3", mwhanna)


# --- mntss_clt_layer_transcoder: W_enc_N / W_dec_N.safetensors + config.yaml ----------
def mntss(repo, folder):
    d_in, d_sae, later = 16, 32, 3
    n = folder
    save_file(
        {
            f"W_enc_{n}": randn(d_sae, d_in, scale=0.5),
            f"b_enc_{n}": randn(d_sae, scale=0.1),
            f"b_dec_{n}": randn(d_in, scale=0.1),
        },
        str(repo / f"W_enc_{n}.safetensors"),
    )
    save_file({f"W_dec_{n}": randn(d_sae, later, d_in, scale=0.3)}, str(repo / f"W_dec_{n}.safetensors"))
    (repo / "config.yaml").write_text(
        "model_kind: cross_layer_transcoder\nmodel_name: google/gemma-2-2b\n"
        "feature_input_hook: hook_resid_mid\nfeature_output_hook: hook_mlp_out\n"
    )


case("mntss_clt_layer_transcoder", "mntss-gemma-2-2b-2.5m-clt-as-per-layer", "layer_0", mntss)

# --- bad inputs: a compressed .npz (np.savez_compressed), which hooklens refuses ------
(OUT / "bad").mkdir(exist_ok=True)
np.savez_compressed(OUT / "bad" / "compressed.npz", W_enc=randn(16, 32).numpy())

total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
print(f"{total / 1024:.0f} KiB in {OUT}", file=sys.stderr)

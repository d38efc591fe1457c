"""CPU timings of circuit-tracer 0.5.0 (TransformerLens backend) building one attribution graph,
the Python side of a comparison with hooklens' circuit tracing.

Usage: python scripts/circuit_tracer_bench.py CASE_DIR [--batch-size N] [--max-feature-nodes N]
           [--max-n-logits N] [--desired-logit-prob P] [--update-interval N] [--threads N]
           [--reference PATH] [--json FILE]
  CASE_DIR has the layout of shared/reference/circuits: model/ (a Hugging Face checkpoint),
  transcoders/ (circuit-tracer's on-disk format, with config.yaml), tokens.safetensors and, as
  the generator writes it, graph_meta.json (the architecture and the case name are read from it;
  without it the architecture comes from model/config.json). Settings left out are taken from
  graph_meta.json's attribute_call (so by default this repeats the call that made the case's
  graph.safetensors), else circuit-tracer's defaults. Needs the environment of
  scripts/circuit-tracer-env.sh and the reference generator (for the model-building code);
  --reference defaults to ../shared/reference/circuits/make_circuit_reference.py beside the repo.

The benchmark case (about 1 GB, kept outside the repository), regenerated bit-identically with
  python scripts/circuit_cases.py --into /work/bench-case bench
(a GPT-2-small-sized Llama: 12 layers, d_model 768, 12 heads, d_mlp 3072, vocab 1000; 4096 ReLU
transcoder features per layer, about 1% active per position; 32 prompt tokens; its graph keeps
1024 feature nodes; see CASES["bench"] in scripts/circuit_cases.py), then timed with
  python scripts/circuit_tracer_bench.py /work/bench-case
(batch_size 128, max_feature_nodes 1024, max_n_logits 10, desired_logit_prob 0.95,
update_interval 4, from its graph_meta.json). Generating it takes about 3 minutes (its own
attribute() at one thread is about 2 of them) and 5 GB of memory. Measured here (2 cores, AMD
EPYC, 2 threads, machine otherwise idle): setup 2.6-2.8 s, attribute 43-45 s (forward pass 8 s,
9 backward batches 34-37 s, ranking 0.04 s), prune + create_graph_files 0.25-0.3 s, peak RSS
about 4.0 GB; 15861 active features, 1024 feature nodes, 10 logits, 1450 nodes, 505 nodes and
53566 edges after pruning; the adjacency matrix equals the case's graph.safetensors bit for bit.
With other builds running (load 8-10) attribute took 80-212 s: compare timings only from one
quiet session.

The replacement model is built exactly as the generator builds it: the checkpoint read with
AutoModelForCausalLM, TransformerLens's config and weight conversion for it, circuit-tracer's
load_transcoder_from_hub("transcoders", cache_dir=".") and
TransformerLensReplacementModel + load_and_process_state_dict(fold_ln=False, ...) +
_configure_replacement_model (the generator's tl_config / tl_state_dict / load_transcoders /
replacement_model functions are called). Then, timed: attribute(tokens, model, ...) with
offload=None, verbose=False; prune_graph(graph, 0.8, 0.98); create_graph_files(graph, ...,
node_threshold=0.8, edge_threshold=0.98) into a temporary directory (it prunes again itself).

torch runs on the CPU in float32 with torch.set_num_threads(--threads), 2 by default (the
machine's cores); the generator itself uses 1. Inside attribute() the time is split by wrapping
circuit-tracer's own steps: setup_attribution (phase 0: forward with the transcoders, active
features, error vectors), run_forward_pass (phase 1: the batched forward whose graph the
backward passes reuse), compute_batch (phases 3-4: one backward per batch of logit or feature
rows), compute_partial_influences (feature ranking, only with max_feature_nodes below the
number of active features); the rest is packaging. Prints one JSON line: wall seconds for
imports, setup (load checkpoint + transcoders, build the replacement model), attribute (total
and split), prune, create_graph_files, prune_and_graph_files; peak RSS (getrusage ru_maxrss)
after setup and at the end; the graph's sizes; and, when CASE_DIR/graph.safetensors was made
with the same settings, how far this graph is from it.
"""
import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

T0 = time.time()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_REFERENCE = os.environ.get("CIRCUIT_REFERENCE") or os.path.join(
    HERE, "..", "..", "shared", "reference", "circuits", "make_circuit_reference.py")
ATTRIBUTE_DEFAULTS = dict(batch_size=512, max_feature_nodes=None, max_n_logits=10,
                          desired_logit_prob=0.95, update_interval=4)  # circuit-tracer's


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("case_dir")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--max-feature-nodes", type=int, help="0: all active features")
    ap.add_argument("--max-n-logits", type=int)
    ap.add_argument("--desired-logit-prob", type=float)
    ap.add_argument("--update-interval", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference", default=DEFAULT_REFERENCE)
    ap.add_argument("--json", help="also write the JSON line to this file")
    args = ap.parse_args()
    case_dir = os.path.abspath(args.case_dir)
    reference = os.path.abspath(args.reference)

    t = time.time()
    import importlib.util
    from importlib.metadata import version

    import torch
    from safetensors.torch import load_file

    import circuit_tracer
    import circuit_tracer.attribution.attribute as ct_attr
    from circuit_tracer.graph import prune_graph
    from circuit_tracer.utils import create_graph_files
    from transformers import AutoConfig, AutoModelForCausalLM

    spec_ = importlib.util.spec_from_file_location("make_circuit_reference", reference)
    ref = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(ref)
    times = {"imports": time.time() - T0}

    torch.set_num_threads(args.threads)
    os.chdir(case_dir)  # circuit-tracer reads transcoders/ and the tokenizer (model/) relative
    meta = {}
    if os.path.exists("graph_meta.json"):
        with open("graph_meta.json") as f:
            meta = json.load(f)
    call = dict(ATTRIBUTE_DEFAULTS)
    call.update({k: v for k, v in meta.get("attribute_call", {}).items() if k in call})
    for k in call:
        v = getattr(args, k)
        if v is not None:
            call[k] = v
    if call["max_feature_nodes"] == 0:
        call["max_feature_nodes"] = None
    if meta:
        case = meta["case"]
        arch = meta["generator"]["spec"]["arch"]
    else:
        case = os.path.basename(case_dir)
        archs = AutoConfig.from_pretrained("model").architectures
        arch = {"LlamaForCausalLM": "llama", "Gemma2ForCausalLM": "gemma2"}[archs[0]]

    # setup: what the generator does to build the replacement model from the files
    t = time.time()
    tokens = load_file("tokens.safetensors")["tokens"]
    hf = AutoModelForCausalLM.from_pretrained(
        "model", dtype=torch.float32, attn_implementation="eager").eval()
    cfg = ref.tl_config({"arch": arch}, hf.config, case)
    sd = ref.tl_state_dict({"arch": arch}, hf, cfg)
    del hf
    transcoders, _ = ref.load_transcoders()
    model = ref.replacement_model(cfg, sd, transcoders)
    del sd
    times["setup"] = time.time() - t
    rss_setup = peak_rss_mib()

    # split attribute() by wrapping the steps it calls
    split = {"setup_attribution": 0.0, "run_forward_pass": 0.0, "compute_batch": 0.0,
             "compute_partial_influences": 0.0}
    counts = {"compute_batch": 0, "compute_partial_influences": 0}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t = time.time()
            out = fn(*a, **kw)
            split[name] += time.time() - t
            if name in counts:
                counts[name] += 1
            if name == "setup_attribution":  # the context whose compute_batch does the rows
                out.compute_batch = timed("compute_batch", out.compute_batch)
            return out
        return wrapper

    model.setup_attribution = timed("setup_attribution", model.setup_attribution)
    model.run_forward_pass = timed("run_forward_pass", model.run_forward_pass)
    real_partial = ct_attr.compute_partial_influences
    ct_attr.compute_partial_influences = timed("compute_partial_influences", real_partial)

    t = time.time()
    graph = circuit_tracer.attribute(tokens, model, attribution_targets=None, offload=None,
                                     verbose=False, **call)
    times["attribute"] = time.time() - t
    ct_attr.compute_partial_influences = real_partial
    split["packaging_and_rest"] = times["attribute"] - sum(split.values())

    t = time.time()
    node_mask, edge_mask, _ = prune_graph(graph, ref.NODE_THRESHOLD, ref.EDGE_THRESHOLD)
    times["prune"] = time.time() - t
    with tempfile.TemporaryDirectory() as out:
        t = time.time()
        create_graph_files(graph, slug=case, output_path=out,
                           node_threshold=ref.NODE_THRESHOLD, edge_threshold=ref.EDGE_THRESHOLD)
        times["create_graph_files"] = time.time() - t
        graph_file_bytes = os.path.getsize(os.path.join(out, f"{case}.json"))
    times["prune_and_graph_files"] = times["prune"] + times["create_graph_files"]

    n_sel = len(graph.selected_features)
    n_pos = graph.n_pos
    result = {
        "bench": "circuit-tracer attribute", "case_dir": case_dir, "case": case,
        "attribute_call": call, "torch_threads": torch.get_num_threads(),
        "device": "cpu", "dtype": "float32",
        "model": {"arch": arch, "n_layers": cfg.n_layers, "d_model": cfg.d_model,
                  "n_heads": cfg.n_heads, "d_mlp": cfg.d_mlp, "d_vocab": cfg.d_vocab,
                  "d_transcoder": meta.get("transcoders", {}).get("d_transcoder")},
        "n_pos": n_pos, "n_active_features": int(graph.active_features.shape[0]),
        "n_feature_nodes": n_sel, "n_logits": len(graph.logit_targets),
        "n_nodes": int(graph.adjacency_matrix.shape[0]),
        "pruned": {"nodes": int(node_mask.sum()), "edges": int(edge_mask.sum()),
                   "graph_file_bytes": graph_file_bytes},
        "seconds": {k: round(v, 3) for k, v in times.items()},
        "attribute_split_seconds": {k: round(v, 3) for k, v in split.items()},
        "attribute_calls": counts,
        "peak_rss_mib": {"after_setup": round(rss_setup), "end": round(peak_rss_mib())},
        "versions": {p: version(p) for p in ("circuit-tracer", "transformer-lens", "torch",
                                             "transformers")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "processor": cpu_model()},
    }
    same_call = meta.get("attribute_call") and all(
        meta["attribute_call"].get(k) == v for k, v in call.items())
    if same_call and os.path.exists("graph.safetensors"):
        g = load_file("graph.safetensors")
        A, R = graph.adjacency_matrix, g["adjacency_matrix"]
        result["vs_case_graph"] = {
            "same_selected_features": torch.equal(graph.selected_features, g["selected_features"]),
            "same_logit_tokens": torch.equal(graph.logit_token_ids, g["logit_tokens"]),
            "adjacency_max_abs_diff": (A - R).abs().max().item() if A.shape == R.shape else None,
            "adjacency_max_abs": R.abs().max().item()}
    line = json.dumps(result)
    print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())

"""Extra circuit-tracing ground-truth cases (testdata/circuits-extra/), made with the reference
generator shared/reference/circuits/make_circuit_reference.py, which this script runs unmodified
(imported from its own path, one fresh process per case).

Usage: python scripts/circuit_cases.py [--reference PATH] OUT_ROOT [CASE ...]
       python scripts/circuit_cases.py [--reference PATH] --into DIR CASE
  Writes OUT_ROOT/<case>/ for each CASE (default: all of CASES below but "bench"), or DIR itself
  for one CASE. The repository's copy is
  made with OUT_ROOT = testdata/circuits-extra. --reference defaults to
  ../shared/reference/circuits/make_circuit_reference.py beside the repository (or
  $CIRCUIT_REFERENCE). Needs the environment of scripts/circuit-tracer-env.sh.
  Every file is bit-identical from run to run; a case with neither "attribute" nor "clt_skip"
  below is exactly what
  `python make_circuit_reference.py OUT_DIR <argv>` writes.

What the generator itself cannot do is added here, by replacing some of its functions before its
main() runs (recorded in graph_meta.json under generator.circuit_cases):
  - attribute: extra arguments to circuit_tracer.attribute (max_feature_nodes, update_interval;
    the generator always passes max_feature_nodes=None, update_interval=4). With fewer feature
    nodes than active features, circuit-tracer ranks features by influence (power iteration on
    the partial graph) and picks them in queues of update_interval * batch_size; every ranking
    step is recorded under feature_selection, with the gap between the last feature picked and
    the first one left out, and the intervention check is run on the selected features (the
    generator's own check assumes all features are selected).
  - clt_skip: a cross-layer transcoder with a skip connection. circuit-tracer 0.5.0 can hold one
    (CrossLayerTranscoder(skip_connection=True): reconstruction of layer l += x_l @ W_skip[l]) but
    its CLT files (W_enc_{i} / W_dec_{i}.safetensors) have no place for it and load_clt never
    sets it; the generator refuses --transcoder clt --skip true for that reason. Here the CLT is
    written and loaded with circuit-tracer's own writer and loader, and W_skip is added beside
    it as transcoders/W_skip_{l}.safetensors (key W_skip_{l}, [d_model, d_model], applied as
    x @ W_skip, no transpose, unlike the per-layer transcoder's x @ W_skip.T) and set on the
    loaded CrossLayerTranscoder before the replacement model is built.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_REFERENCE = os.environ.get("CIRCUIT_REFERENCE") or os.path.join(
    HERE, "..", "..", "shared", "reference", "circuits", "make_circuit_reference.py")

# case -> generator argv (after OUT_DIR; the first word is the case name) and what is added
CASES = {
    # Gemma 2: embedding scale, attention and final logit soft caps (small, and larger q/k
    # weights, so that both bite: without the attention cap the logits move by 1.1 of 5.5, the
    # largest logit 6.8 is capped to 5.5), pre- and post-norms around attention and MLP,
    # GELU-tanh gated MLP, tied embeddings, local (sliding window 6 < 10 prompt tokens) and
    # global layers alternating
    "gemma2": dict(argv=["gemma2", "--arch", "gemma2", "--sliding-window", "6",
                         "--attn-softcap", "5.0", "--final-softcap", "8.0", "--qk-std", "0.2",
                         "--embed-std", "0.15", "--d-transcoder", "64"]),
    # per-layer transcoders with a skip connection (W_skip in layer_{l}.safetensors)
    "skip": dict(argv=["skip", "--skip", "true", "--d-transcoder", "64"]),
    # cross-layer transcoder, ReLU, with a skip connection (see the docstring)
    "clt-skip": dict(argv=["clt-skip", "--transcoder", "clt", "--activation", "relu",
                           "--skip", "true", "--d-transcoder", "64"], clt_skip=True),
    # the public case's model, transcoders and prompt, with 40 of its 261 active features chosen
    # by circuit-tracer's influence ranking (queues of 2 * 8 = 16: three ranking steps)
    "select": dict(argv=["select", "--seed", "20260101", "--batch-size", "8"],
                   attribute=dict(max_feature_nodes=40, update_interval=2)),
    # another Llama: 3 layers, other sizes and seed, 12 prompt tokens
    "llama3": dict(argv=["llama3", "--seed", "7301", "--n-layers", "3", "--d-model", "48",
                         "--n-heads", "4", "--n-kv-heads", "2", "--head-dim", "12",
                         "--d-mlp", "96", "--vocab", "128", "--d-transcoder", "80",
                         "--n-prompt", "12", "--active-frac", "0.07", "--max-n-logits", "6",
                         "--desired-logit-prob", "0.1", "--batch-size", "32"]),
    # not in the default list: the speed benchmark's case (about 1 GB; kept out of the repo),
    # `python scripts/circuit_cases.py --into /work/bench-case bench`, then
    # scripts/circuit_tracer_bench.py on it. A GPT-2-small-sized Llama (12 layers, d_model 768,
    # 12 heads of 64, d_mlp 3072, vocab 1000), 4096 ReLU features per layer, about 1% of them
    # active per position (~15k active features), 32 prompt tokens; attribute() keeps the 1024
    # most influential features (batch_size 128, update_interval 4: two ranking steps). No
    # intervention check (it would take hours); the graph is still circuit-tracer's own.
    "bench": dict(argv=["bench", "--seed", "424242", "--n-layers", "12", "--d-model", "768",
                        "--n-heads", "12", "--n-kv-heads", "12", "--head-dim", "64",
                        "--d-mlp", "3072", "--vocab", "1000", "--n-ctx", "64",
                        "--weight-std", "0.025", "--unembed-std", "0.05",
                        "--d-transcoder", "4096", "--active-frac", "0.01", "--n-prompt", "32",
                        "--max-n-logits", "10", "--desired-logit-prob", "0.95",
                        "--batch-size", "128", "--no-verify"],
                  attribute=dict(max_feature_nodes=1024, update_interval=4), default=False),
}


def load_reference(path):
    spec = importlib.util.spec_from_file_location("make_circuit_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------------------------
# attribute() with extra arguments, and a record of circuit-tracer's feature selection


def patch_attribute(ref, extra, record):
    import torch

    import circuit_tracer
    import circuit_tracer.attribution.attribute as ct_attr

    real_attribute = circuit_tracer.attribute
    real_partial = ct_attr.compute_partial_influences

    def attribute(prompt, model, **kw):
        kw.update(extra)
        record["call"] = {k: v for k, v in kw.items()}
        record["state"] = dict(n_layers=model.cfg.n_layers, n_pos=len(prompt), visited=None,
                               n_visited=0, batch_size=kw["batch_size"],
                               update_interval=kw["update_interval"],
                               max_feature_nodes=kw["max_feature_nodes"])
        record["steps"] = []
        return real_attribute(prompt, model, **kw)

    def compute_partial_influences(edge_matrix, logit_p, row_to_node_index, *a, **kw):
        infl = real_partial(edge_matrix, logit_p, row_to_node_index, *a, **kw)
        st = record["state"]
        n_active = infl.shape[0] - len(logit_p) - (st["n_layers"] + 1) * st["n_pos"]
        if st["visited"] is None:
            st["visited"] = torch.zeros(n_active, dtype=torch.bool)
            st["max_feature_nodes"] = min(st["max_feature_nodes"] or n_active, n_active)
        # the same ranking and queue as circuit_tracer.attribution.attribute._run_attribution
        rank = torch.argsort(infl[:n_active], descending=True).cpu()
        q = min(st["update_interval"] * st["batch_size"], st["max_feature_nodes"] - st["n_visited"])
        unvisited = rank[~st["visited"][rank]]
        picked = unvisited[:q]
        last = infl[picked[-1]].item()
        nxt = infl[unvisited[q]].item() if len(unvisited) > q else None
        record["steps"].append({
            "n_rows_before": int(edge_matrix.shape[0]), "n_visited_before": st["n_visited"],
            "queue_size": q, "picked_in_rank_order": picked.tolist(),
            "last_picked_influence": last, "first_left_influence": nxt,
            "gap_rel": None if nxt is None else (last - nxt) / last})
        st["visited"][picked] = True
        st["n_visited"] += q
        return infl

    circuit_tracer.attribute = attribute
    ct_attr.compute_partial_influences = compute_partial_influences

    # the generator's intervention check, on the selected features (rows and columns of A)
    real_check = ref.check_by_intervention

    def check_by_intervention(model, graph, softcap):
        sel = graph.selected_features
        view = types.SimpleNamespace(
            input_tokens=graph.input_tokens, adjacency_matrix=graph.adjacency_matrix,
            active_features=graph.active_features[sel], logit_token_ids=graph.logit_token_ids,
            selected_features=torch.arange(len(sel)))
        return real_check(model, view, softcap)

    ref.check_by_intervention = check_by_intervention


# ----------------------------------------------------------------------------------------------
# a cross-layer transcoder with a skip connection


def patch_clt_skip(ref, record):
    import torch
    from safetensors.torch import load_file, save_file

    real_make, real_save, real_load = ref.make_transcoders, ref.save_transcoders, ref.load_transcoders

    def make_transcoders(spec, x_in, y_out, gen):
        clt, moved = real_make({**spec, "skip": False}, x_in, y_out, gen)
        L, d = spec["n_layers"], spec["d_model"]
        W_skip = 0.1 * torch.randn(L, d, d, generator=gen) / d ** 0.5  # as the per-layer skip
        clt.skip_connection = True
        clt.W_skip = torch.nn.Parameter(W_skip)
        return clt, moved

    def save_transcoders(spec, tcs, case):
        real_save(spec, tcs, case)  # W_enc_{l} / W_dec_{l}.safetensors + config.yaml
        for l in range(tcs.n_layers):
            save_file({f"W_skip_{l}": tcs.W_skip[l].detach().contiguous().clone()},
                      f"transcoders/W_skip_{l}.safetensors")
        # hooklens's key saying the skip files are there (a hub repo cannot be searched
        # for optional files); circuit-tracer's yaml loader ignores unknown keys.
        with open("transcoders/config.yaml", "a") as f:
            f.write("skip_connection: true\n")

    def load_transcoders():
        tcs, conf = real_load()  # circuit-tracer's loader: no W_skip
        assert tcs.W_skip is None
        W = torch.stack([load_file(f"transcoders/W_skip_{l}.safetensors")[f"W_skip_{l}"]
                         for l in range(tcs.n_layers)])
        tcs.skip_connection = True
        tcs.W_skip = torch.nn.Parameter(W.to(tcs.b_enc.dtype), requires_grad=False)
        record["clt_skip_loaded"] = True
        return tcs, conf

    ref.make_transcoders = make_transcoders
    ref.save_transcoders = save_transcoders
    ref.load_transcoders = load_transcoders


# ----------------------------------------------------------------------------------------------


def run_one(reference, out_dir, case):
    """In this process: the generator's main() for one case, with the patches it needs."""
    c = CASES[case]
    ref = load_reference(reference)
    record = {}
    if c.get("attribute"):
        patch_attribute(ref, c["attribute"], record)
    if c.get("clt_skip"):
        patch_clt_skip(ref, record)
    sys.argv = [reference, out_dir, *c["argv"]]
    ref.main()
    if not (c.get("attribute") or c.get("clt_skip")):
        return
    # record what was added in graph_meta.json
    from safetensors.torch import load_file

    path = os.path.join(out_dir, "graph_meta.json")
    with open(path) as f:
        meta = json.load(f)
    added = {"script": "scripts/circuit_cases.py", "case": case}
    if c.get("attribute"):
        meta["attribute_call"].update(c["attribute"])
        added["attribute_extra"] = c["attribute"]
        sel = load_file(os.path.join(out_dir, "graph.safetensors"))["selected_features"]
        picked = sorted(i for s in record["steps"] for i in s["picked_in_rank_order"])
        assert picked == sel.tolist(), "feature selection record differs from the graph's"
        gaps = [s["gap_rel"] for s in record["steps"] if s["gap_rel"] is not None]
        meta["feature_selection"] = {
            "max_feature_nodes": record["state"]["max_feature_nodes"],
            "batch_size": record["state"]["batch_size"],
            "update_interval": record["state"]["update_interval"],
            "n_active_features": meta["n_active_features"],
            "min_gap_rel": min(gaps) if gaps else None,
            "how": "each step: influences = compute_partial_influences(rows so far, logit "
                   "probabilities); features ranked by influence (descending); the first "
                   "queue_size not yet visited are picked; rows computed; repeat",
            "steps": record["steps"]}
        if "intervention_max_abs_dev" in meta["checks"]:
            meta["checks"]["intervention_max_abs_dev"]["rows_and_columns"] = "selected features"
    if c.get("clt_skip"):
        assert record.get("clt_skip_loaded")
        added["clt_skip"] = ("W_skip_{l}.safetensors beside circuit-tracer's CLT files, set on the "
                             "loaded CrossLayerTranscoder (circuit-tracer 0.5.0 does not read it); "
                             "reconstruction[l] += x[l] @ W_skip[l]")
        meta["transcoders"]["skip_files"] = [f"W_skip_{l}.safetensors"
                                             for l in range(meta["n_layers"])]
    meta["generator"]["circuit_cases"] = added
    with open(path, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out_root")
    ap.add_argument("cases", nargs="*", help="default: all but bench")
    ap.add_argument("--reference", default=DEFAULT_REFERENCE)
    ap.add_argument("--into", metavar="DIR",
                    help="write the one CASE given into DIR itself (out_root is then omitted)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    reference = os.path.abspath(args.reference)
    if args.one:  # child process: out_root is the case's directory
        run_one(reference, os.path.abspath(args.out_root), args.cases[0])
        return
    if args.into:  # then the positional "out_root" is the case's name
        cases = [args.out_root] + args.cases
        if len(cases) != 1:
            sys.exit("--into DIR takes exactly one CASE")
    else:
        cases = args.cases or [c for c, v in CASES.items() if v.get("default", True)]
    for case in cases:
        if case not in CASES:
            sys.exit(f"unknown case {case}; known: {', '.join(CASES)}")
        out = os.path.abspath(args.into or os.path.join(args.out_root, case))
        print(f"== {case}: {' '.join(CASES[case]['argv'])}", flush=True)
        subprocess.run([sys.executable, os.path.abspath(__file__), "--reference", reference,
                        "--one", out, case], check=True)


if __name__ == "__main__":
    main()

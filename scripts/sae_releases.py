#!/usr/bin/env python3
"""Refreshes hooklens-models/data/sae_releases.json, SAELens's directory of named SAE
releases (`pretrained_saes.yaml` in the `sae-lens` package), from a given version.

    python scripts/sae_releases.py 6.54.12            # downloads the wheel (no deps)
    python scripts/sae_releases.py --yaml FILE 6.54.12 # reads a pretrained_saes.yaml

The file is read as SAELens's `get_pretrained_saes_directory` reads it (an SAE's `path`
that is a number becomes text; `variance_explained`, `l0`, `neuronpedia` and
`norm_scaling_factor` per SAE id; `conversion_func` and `config_overrides` per release),
except that absent values stay absent (SAELens fills in 1.0 and 0.0). Needs PyYAML.
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import zipfile

import yaml

OUT = pathlib.Path(__file__).resolve().parent.parent / "hooklens-models" / "data" / "sae_releases.json"


def read_yaml(version: str, yaml_path: str | None) -> str:
    if yaml_path:
        return pathlib.Path(yaml_path).read_text()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"sae-lens=={version}", "--no-deps", "-d", tmp, "-q"],
            check=True,
        )
        wheel = next(pathlib.Path(tmp).glob("sae_lens-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            return z.read("sae_lens/pretrained_saes.yaml").decode()


def convert(data: dict, version: str) -> dict:
    releases = {}
    for release, value in data.items():
        saes = []
        for info in value["saes"]:
            path = info["path"]
            row = {"id": info["id"], "path": str(path) if isinstance(path, int) else path}
            for key in ("l0", "variance_explained", "neuronpedia", "norm_scaling_factor"):
                if info.get(key) is not None:
                    row[key] = info[key]
            saes.append(row)
        entry = {
            "repo_id": value["repo_id"],
            "model": value["model"],
            "conversion_func": value.get("conversion_func"),
            "saes": saes,
        }
        if value.get("config_overrides"):
            entry["config_overrides"] = value["config_overrides"]
        releases[release] = entry
    return {"sae_lens_version": version, "releases": releases}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("version", help="the sae-lens version whose directory to ship, e.g. 6.54.12")
    ap.add_argument("--yaml", help="read this pretrained_saes.yaml instead of downloading the wheel")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    data = yaml.load(read_yaml(args.version, args.yaml), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    out = convert(data, args.version)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    # One SAE per line: small diffs when a release changes.
    with open(args.out, "w") as f:
        f.write('{"sae_lens_version": %s, "releases": {\n' % json.dumps(args.version))
        names = list(out["releases"])
        for i, name in enumerate(names):
            entry = dict(out["releases"][name])
            saes = entry.pop("saes")
            head = json.dumps(entry, sort_keys=True)[:-1]
            f.write("%s: %s, \"saes\": [\n" % (json.dumps(name), head))
            f.write(",\n".join(json.dumps(s) for s in saes))
            f.write("\n]}%s\n" % ("," if i + 1 < len(names) else ""))
        f.write("}}\n")
    n = sum(len(r["saes"]) for r in out["releases"].values())
    print(f"{args.out}: {len(names)} releases, {n} SAEs (sae-lens {args.version})")


if __name__ == "__main__":
    main()

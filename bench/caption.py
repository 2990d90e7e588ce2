"""The embedded captioner: how often captions name the true class, float vs decoded, and three recipes.

Each `semcomp train-caption` run measures itself on Tiny-ImageNet val and writes ``metrics.json`` next to
its weights; this script gathers the runs into one table (plus CPU latency of the shipped captioner):

    semcomp train-caption --out weights/heads/semcomp-tiny-clipcap --text-epochs 2 --image-epochs 0.6 \\
        --decoded-codecs pqvae-n2d32k256 vqvae-n4d128k256 fsq-c32l4 fsq-c128l4 --eval-codecs ...   # shipped
    semcomp train-caption --out ~/.cache/semcomp/caption-variants/text-only --stages --init-from .../caption-text.pt
    semcomp train-caption --out ~/.cache/semcomp/caption-variants/image-float-only --stages image --init-from ...
    python bench/caption.py      (the exact commands are in scripts/reproduce_embedded.sh)
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "text-only (CapDec stage 1 only)": Path.home() / ".cache/semcomp/caption-variants/text-only/metrics.json",
    "+ image fine-tune, float features only": Path.home() / ".cache/semcomp/caption-variants/image-float-only/metrics.json",
    "+ image fine-tune, float + decoded features (shipped)": ROOT / "weights/heads/semcomp-tiny-clipcap/metrics.json",
}


def main() -> None:
    from semcomp.backbone import load_backbone
    from semcomp.data import load_features
    from semcomp.receiver import load_head

    runs = {}
    for name, p in RUNS.items():
        if p.exists():
            m = json.loads(p.read_text())
            runs[name] = {"command": m.get("command"), "stages": m.get("stages"), "eval": m["eval"]}
    cap = load_head("caption", "semcomp-tiny-clip")
    fs = load_features(Path.home() / ".cache/semcomp/features/tin-val.safetensors")
    x = torch.from_numpy(fs.features[:64])
    t = []
    for beam in (1, 3):
        t0 = time.perf_counter()
        for i in range(16):
            cap.caption(x[i : i + 1], beam=beam)
        t.append({"beam": beam, "ms_per_caption": 1000 * (time.perf_counter() - t0) / 16})
    t0 = time.perf_counter()
    cap.caption(x, beam=1)
    t.append({"beam": 1, "batch": 64, "ms_per_caption": 1000 * (time.perf_counter() - t0) / 64})
    res = {"model": "weights/heads/semcomp-tiny-clipcap", "backbone": "semcomp-tiny-clip", "runs": runs, "cpu_latency": t,
           "threads": torch.get_num_threads()}
    record("caption", res)
    variants = list(next(iter(runs.values()))["eval"]["greedy"]) if runs else []
    md = ["| recipe | " + " | ".join(variants) + " |", "|---|" + "---:|" * len(variants)]
    for name, r in runs.items():
        g = r["eval"]["greedy"]
        md.append(f"| {name} | " + " | ".join(f"{100 * g[v]['names_true_class']:.1f} %" for v in variants) + " |")
    md.append("")
    md.append("Agreement with the float feature's caption (token F1 / identical), shipped captioner:")
    md.append("")
    ship = runs.get("+ image fine-tune, float + decoded features (shipped)")
    if ship:
        md.append("| decoded by | token F1 | identical |")
        md.append("|---|---:|---:|")
        for v, r in ship["eval"]["greedy"].items():
            if "token_f1_vs_float" in r:
                md.append(f"| {v} | {r['token_f1_vs_float']:.3f} | {100 * r['identical_to_float']:.1f} % |")
    (RESULTS / "caption.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(t)


if __name__ == "__main__":
    main()

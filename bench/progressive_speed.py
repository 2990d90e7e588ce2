"""One-core speed of the shipped progressive codec against FAISS PQ at equal bits (issue 20, part 4).

    python bench/progressive_speed.py --features ~/.cache/semcomp/features/lite-val.safetensors

Greedy prq encoding (stages = bits / 8) and its additive decode vs FAISS ``PQ{bits/8}x8`` sa_encode / sa_decode,
torch and faiss at 1 thread, on the unseen classes' val features. Writes bench/results/progressive_speed.json.
The timing itself is bench/progressive.py's ``speed``; this script runs only that step (the full bench is slow).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import record  # noqa: E402
from bench.progressive import speed  # noqa: E402


def main():
    from semcomp.codecs import load_codec
    from semcomp.data import load_features
    from semcomp.splits import class_split

    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True, help="val feature file (the unseen classes' items are timed)")
    ap.add_argument("--codec", default=str(Path(__file__).resolve().parents[1] / "weights" / "codecs" / "semcomp-lite-clip" / "prq-s128o32k256"))
    ap.add_argument("--budgets", type=int, nargs="*", default=[8, 32, 64, 128, 256])
    a = ap.parse_args()
    torch.set_num_threads(1)
    codec = load_codec(a.codec)
    te = load_features(a.features)
    x = te.features[np.isin(te.labels, class_split("tiny-imagenet")["test_classes"])].astype(np.float32)
    rows = []
    for b in a.budgets:
        rows.append(speed(codec, x, b))
        print(rows[-1], flush=True)
    print("wrote", record("progressive_speed", {
        "codec": codec.spec, "backbone": codec.backbone, "data": f"{len(x)} features of the unseen classes ({a.features})",
        "speed_1thread": rows, "note": "items/s; greedy prq encode + additive decode vs FAISS PQ sa_encode/sa_decode "
                                       "(PQ fitted on the same features: speed only); torch and faiss at 1 thread"}))


if __name__ == "__main__":
    main()

"""Prepare the inputs of scripts/device_generator.py (a GPU burst) in a folder that travels with the repo.

Copies as many Tiny-ImageNet train shards as fit the device's 64 MiB working-tree limit and writes
``eval.npz``: the first N val features (float, and decoded by the best shipped codec at each budget), their
labels, the 200 class text features ("a photo of a {name}.") and the first 8 val images for the grid.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from semcomp.codecs import load_codec
from semcomp.data import SHARED_ASSETS, load_features, tiny_imagenet_split
from semcomp.zoo import best_measured

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / ".devdata"))
    ap.add_argument("--shards", type=int, default=30)
    ap.add_argument("--val-features", default=str(Path.home() / ".cache/semcomp/features/tin-val.safetensors"))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--budgets", default="16,32,64,256")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for p in sorted((SHARED_ASSETS / "tiny-imagenet").glob("train-*.tar.gz"))[: a.shards]:
        shutil.copy(p, out / p.name)
    fs = load_features(a.val_features)
    x = torch.from_numpy(fs.features[: a.n])
    arrays = {"float": x.numpy().astype(np.float16), "labels": fs.labels[: a.n],
              "text_features": fs.metadata["_extra"]["text_features"].astype(np.float16),
              "source_images": tiny_imagenet_split("val").images[:8]}
    best = best_measured("semcomp-tiny-clip")
    chosen = {}
    for b in (int(v) for v in a.budgets.split(",")):
        spec = best[b]["spec"]
        codec = load_codec(best[b]["path"])
        with torch.inference_mode():
            arrays[f"dec_{b}"] = codec.decode(codec.encode(x)).numpy().astype(np.float16)
        chosen[b] = spec
    np.savez_compressed(out / "eval.npz", **arrays)
    (out / "eval.json").write_text(json.dumps({"codecs": chosen, "n": a.n, "features": a.val_features}, indent=2))
    print("wrote", out, chosen, sum(f.stat().st_size for f in out.iterdir()) / 2**20, "MiB")


if __name__ == "__main__":
    main()

"""Which pretrained tower, at which input size, for the embedded backbone: each tower's own ImageNet
classifier on Tiny-ImageNet val images (64 px, upsampled), 1000-way and restricted to the 200 Tiny-ImageNet
classes — the ceiling an alignment to text can reach on these images — and its speed on this machine.

    python bench/tower_probe.py --n 500
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import record  # noqa: E402
from semcomp.data import SHARED_ASSETS, iter_shard  # noqa: E402
from semcomp.towers import TOWERS, load_tower  # noqa: E402
from semcomp.training.tower_features import imagenet_wnids  # noqa: E402


def main():
    from PIL import Image
    from torchvision import transforms as T

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="val images (first shard order)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 192, 160, 128])
    a = ap.parse_args()
    widx = {w: i for i, w in enumerate(imagenet_wnids())}
    tin = json.loads((SHARED_ASSETS / "tiny-imagenet" / "classes.json").read_text())
    tin_inet = torch.tensor([widx[c["wnid"]] for c in tin])
    ims, ys = [], []
    for k, s in iter_shard(SHARED_ASSETS / "tiny-imagenet" / "val-000000.tar.gz"):
        ims.append(Image.open(io.BytesIO(s["jpg"])).convert("RGB"))
        ys.append(widx[json.loads(s["json"])["wnid"]])
        if len(ims) >= a.n:
            break
    y = torch.tensor(ys)
    rows = []
    for name in sorted(TOWERS):
        tower, spec = load_tower(name), TOWERS[name]
        settings = [(224, True)] + [(s, False) for s in a.sizes]
        for size, margin in settings:
            resize = T.Resize(round(size / 0.875) if margin else size, interpolation=T.InterpolationMode.BICUBIC)
            tf = T.Compose([resize, T.CenterCrop(size), T.ToTensor(), T.Normalize(spec.mean, spec.std)])
            x = torch.stack([tf(im) for im in ims])
            t0 = time.perf_counter()
            with torch.inference_mode():
                logits = torch.cat([tower.classify(tower(x[i : i + 64])) for i in range(0, len(x), 64)])
            dt = time.perf_counter() - t0
            top200 = tin_inet[logits[:, tin_inet].argmax(1)]
            rows.append({"tower": name, "size": size, "crop_margin_0.875": margin,
                         "top1_1000way": round(float((logits.argmax(1) == y).float().mean()), 4),
                         "top1_200way": round(float((top200 == y).float().mean()), 4), "img_per_s": round(len(x) / dt, 1)})
            print(rows[-1], flush=True)
    print(record("tower_probe", {"images": len(ims), "data": "Tiny-ImageNet val, first shard (shuffled), 64 px",
                                 "load_average": os.getloadavg(), "results": rows}))


if __name__ == "__main__":
    main()

"""Text-targeted segmentation on Tiny-ImageNet val: pointing game and box IoU, float vs compressed command.

The command is "a photo of a {class name}." — its text feature is sent float or compressed by the best
shipped codec at each budget. Boxes: ``../shared/assets/tiny-imagenet/boxes.json``. Baselines that use no
command: the image centre (pointing), a centred box of the mean true-box size (IoU), and a random proposal
of the same set (shows what ranking by CLIP adds).

    python bench/segment.py --n 500
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

from semcomp.backbone import load_backbone  # noqa: E402
from semcomp.codecs import load_codec  # noqa: E402
from semcomp.data import SHARED_ASSETS, tiny_imagenet_classes, tiny_imagenet_split  # noqa: E402
from semcomp.heads.segment import TextSegmenter  # noqa: E402
from semcomp.zoo import best_measured  # noqa: E402

from common import RESULTS  # noqa: E402


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def inside(p, box) -> bool:
    return box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--budgets", default="16,32,64,256,600")
    ap.add_argument("--backbone", default="semcomp-tiny-clip")
    a = ap.parse_args()
    t0 = time.time()
    bb = load_backbone(a.backbone)
    val = tiny_imagenet_split("val")
    classes = tiny_imagenet_classes()
    boxes = json.loads((SHARED_ASSETS / "tiny-imagenet" / "boxes.json").read_text())
    n = min(a.n, len(val.images))
    names = [classes[int(y)]["name"] for y in val.labels[:n]]
    text = bb.encode_text([f"a photo of a {c}." for c in names])
    best = best_measured(a.backbone)
    variants = {"float": (None, text)}
    for b in (int(x) for x in a.budgets.split(",")):
        codec = load_codec(best[b]["path"])
        with torch.inference_mode():
            variants[f"{b} bits ({codec.spec})"] = (b, codec.decode(codec.encode(text)))
    seg = TextSegmenter(bb)
    true = [boxes[k] for k in val.keys[:n]]
    mean_wh = np.mean([[t[2] - t[0] + 1, t[3] - t[1] + 1] for t in true], axis=0)
    stats = {k: {"pointing": [], "iou": []} for k in variants}
    stats["baseline: centre"] = {"pointing": [], "iou": []}
    stats["baseline: random proposal"] = {"pointing": [], "iou": []}
    rng = np.random.default_rng(0)
    n_props = []
    for i in range(n):
        img, masks, z = seg.embed_proposals(val.images[i])
        n_props.append(len(masks))
        tb = true[i]
        for k, (_, tf) in variants.items():
            r = seg.rank(img, masks, z, tf[i], top_k=1)
            stats[k]["pointing"].append(inside(r.peak, tb))
            stats[k]["iou"].append(iou(r.boxes[0], tb))
        h, w = img.shape[:2]
        cx, cy = (w - 1) / 2, (h - 1) / 2
        cb = [cx - mean_wh[0] / 2, cy - mean_wh[1] / 2, cx + mean_wh[0] / 2 - 1, cy + mean_wh[1] / 2 - 1]
        stats["baseline: centre"]["pointing"].append(inside((cx, cy), tb))
        stats["baseline: centre"]["iou"].append(iou(cb, tb))
        m = masks[rng.integers(len(masks))]
        ys, xs = np.nonzero(m)
        stats["baseline: random proposal"]["pointing"].append(inside((xs.mean(), ys.mean()), tb))
        stats["baseline: random proposal"]["iou"].append(iou((xs.min(), ys.min(), xs.max(), ys.max()), tb))
    table = [{"method": k, "command_bits": variants[k][0] if k in variants else None, "items": n,
              "pointing_accuracy": float(np.mean(v["pointing"])), "mean_box_iou": float(np.mean(v["iou"]))} for k, v in stats.items()]
    res = {"data": f"Tiny-ImageNet val, first {n} images (64x64), boxes from shared/assets/tiny-imagenet/boxes.json",
           "command": "a photo of a {class name}.", "backbone": a.backbone, "proposals": "superpixels+boxes",
           "mean_proposals_per_image": float(np.mean(n_props)), "seconds": round(time.time() - t0, 1), "results": table}
    record("segment", res)
    md = ["| method | command bits | pointing acc. | mean box IoU |", "|---|---:|---:|---:|"]
    for r in table:
        md.append(f"| {r['method']} | {r['command_bits'] or '—'} | {r['pointing_accuracy']:.3f} | {r['mean_box_iou']:.3f} |")
    (RESULTS / "segment.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

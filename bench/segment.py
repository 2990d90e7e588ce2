"""Text-targeted segmentation: pointing game and box IoU on Tiny-ImageNet val boxes and on pasted pairs.

The command is "a photo of a {class name}." — its text feature is sent float or compressed by the best
shipped codec at each budget (as the app does). Two sets:

* ``tin``: Tiny-ImageNet val images (64x64) with their boxes (``../shared/assets/tiny-imagenet/boxes.json``);
  the object is usually large and centred, so the image centre is a strong pointing baseline;
* ``pairs``: two val images of different classes pasted side by side (128x64), the command naming one
  (``semcomp.data.pasted_pairs``, seed 0): pointing at a random half's centre is the 50 % chance line.

Methods on a dense-map backbone (``semcomp-lite-clip``): the dense CAM map (``TextSegmenter(method="dense")``)
at 320 px (a 10x10 map for a square image, 20x10 for a pair) and at 224 px (7x7), its mask from the peak's
region or the best-contrast proposal, with and without subtracting generic background prompts; and the
proposal ranking (the region's mean projected feature, the segmenter's other path). Baselines use no command.
Rows are reported over all items and over the 40 classes the codecs never trained on (the committed split;
the shipped backbone's alignment card says it used no class hold-out). Standard errors are binomial
(pointing) or the sample SE of the mean (IoU). Earlier runs (other backbones) are kept in the JSON and the table.

    python bench/segment.py --n 500 --pairs 500            # the committed numbers
    python bench/segment.py --offset 9000 --n 100 --pairs 100 --out segment_dev   # method selection
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, record  # noqa: E402

from semcomp.backbone import load_backbone  # noqa: E402
from semcomp.codecs import load_codec  # noqa: E402
from semcomp.data import SHARED_ASSETS, pasted_pairs, tiny_imagenet_classes, tiny_imagenet_split  # noqa: E402
from semcomp.heads.segment import Prepared, TextSegmenter  # noqa: E402
from semcomp.splits import class_split  # noqa: E402
from semcomp.zoo import best_measured  # noqa: E402


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def inside(p, box) -> bool:
    return box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3]


def summarise(v: dict, keep: np.ndarray) -> dict:
    p, o = np.asarray(v["pointing"], float)[keep], np.asarray(v["iou"], float)[keep]
    n = len(p)
    out = {"items": n, "pointing_accuracy": float(p.mean()), "pointing_se": float(np.sqrt(p.mean() * (1 - p.mean()) / n)),
           "mean_box_iou": float(o.mean()), "box_iou_se": float(o.std(ddof=1) / np.sqrt(n))}
    if v["half"]:
        h = np.asarray(v["half"], float)[keep]
        out.update(named_half_accuracy=float(h.mean()), named_half_se=float(np.sqrt(h.mean() * (1 - h.mean()) / n)))
    return out


def legacy_runs() -> list[dict]:
    """Runs already in segment.json for other backbones/settings (the first file had one run at top level)."""
    path = RESULTS / "segment.json"
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    if "runs" in old:
        return old["runs"]
    run = {k: v for k, v in old.items()}
    run["set"] = "tin"
    for r in run["results"]:  # the first run ranked masked crops; its rows were named by the command's budget
        if not r["method"].startswith("baseline"):
            r["command"], r["method"] = r["method"], "proposals ranked by masked-crop features"
        else:
            r["command"] = "—"
        r.setdefault("subset", "all")
    return [run]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500, help="Tiny-ImageNet val images")
    ap.add_argument("--pairs", type=int, default=500, help="pasted pairs")
    ap.add_argument("--offset", type=int, default=0, help="first val index (9000+: the method-selection images)")
    ap.add_argument("--budgets", default="16,64,256")
    ap.add_argument("--backbone", default="semcomp-lite-clip")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="segment", help="result name under bench/results (a dev run writes elsewhere)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    bb = load_backbone(a.backbone)
    val = tiny_imagenet_split("val")
    classes = tiny_imagenet_classes()
    boxes = json.loads((SHARED_ASSETS / "tiny-imagenet" / "boxes.json").read_text())
    unseen = set(class_split("tiny-imagenet")["test_classes"])
    names = [c["name"] for c in classes]
    text = bb.encode_text([f"a photo of a {c}." for c in names])  # (200, D), one command per class
    best = best_measured(a.backbone)
    commands = {"float": (None, text)}
    for b in (int(x) for x in a.budgets.split(",")):
        codec = load_codec(best[b]["path"])
        with torch.inference_mode():
            commands[f"{b} bits ({codec.spec})"] = (b, codec.decode(codec.encode(text)))

    idx = np.arange(a.offset, a.offset + a.n)
    all_boxes = [boxes[k] for k in val.keys]
    tin = [(val.images[i], int(val.labels[i]), tuple(all_boxes[i])) for i in idx]
    pool = np.arange(a.offset, min(len(val.keys), a.offset + max(a.n, a.pairs)))
    pairs = [(p.image, p.label, p.box) for p in pasted_pairs(val.images, val.labels, all_boxes, a.pairs, seed=0, pool=pool)]

    dense = TextSegmenter(bb, method="dense", dense_size=320)
    has_dense = dense.method == "dense"
    variants = {  # name -> (segmenter, uses the 320 px pass)
        "dense CAM @320 (10x10), peak region": dense,
        "dense CAM @320, best-contrast proposal": TextSegmenter(bb, method="dense", dense_size=320, mask="proposal"),
        "dense CAM @320 − background prompts, peak region": TextSegmenter(bb, method="dense", dense_size=320, background=True),
        "dense CAM @320, no smoothing": TextSegmenter(bb, method="dense", dense_size=320, smooth=0.0),
    }
    seg224 = TextSegmenter(bb, "boxes", method="dense", dense_size=224)  # top-1 peak region only: cheap proposals
    rng = np.random.default_rng(0)
    runs = []
    latency = {}
    for set_name, items in (("tin", tin), ("pairs", pairs)):
        stats: dict[str, dict] = {}
        def add(key, peak, box, pred_box):
            v = stats.setdefault(key, {"pointing": [], "iou": [], "half": []})
            v["pointing"].append(inside(peak, box))
            v["iou"].append(iou(pred_box, box) if pred_box is not None else 0.0)
            if set_name == "pairs":  # the named half (chance 50 %)
                v["half"].append((peak[0] >= w / 2) == (box[0] >= w / 2))

        t_prop, t_map, t_rank, t224, n_props = [], [], [], [], []
        mean_wh = np.mean([[b[2] - b[0] + 1, b[3] - b[1] + 1] for _, _, b in items], axis=0)  # the centred baseline box
        for img, y, tb in items:
            h, w = img.shape[:2]
            s = time.perf_counter()  # dense.prepare(img), in its two timed steps
            masks = np.stack(dense.propose(dense._working(img)))
            t_prop.append(time.perf_counter() - s)
            s = time.perf_counter()
            dmap = dense.dense_map(img)  # the 320 px map: one tower pass
            t_map.append(time.perf_counter() - s)
            prep = Prepared(img, masks, dense._region_features(masks, dmap), dmap)
            s = time.perf_counter()
            prep224 = seg224.prepare(img) if has_dense else None
            t224.append(time.perf_counter() - s)
            n_props.append(len(prep.masks))
            for cname, (bits, tf) in commands.items():
                s = time.perf_counter()
                r = dense.rank_prepared(prep, tf[y], top_k=1)
                if cname == "float":
                    t_rank.append(time.perf_counter() - s)
                add(f"dense CAM @320 (10x10), peak region | {cname}", r.peak, tb, r.boxes[0])
                r = dense.rank(prep.image, prep.masks, prep.z, tf[y], top_k=1)
                add(f"proposals ranked by region feature | {cname}", r.peak, tb, r.boxes[0])
            for vname, seg in list(variants.items())[1:]:
                r = seg.rank_prepared(prep, text[y], top_k=1)
                add(f"{vname} | float", r.peak, tb, r.boxes[0])
            if prep224 is not None:
                r = seg224.rank_prepared(prep224, text[y], top_k=1)
                add("dense CAM @224 (7x7), peak region | float", r.peak, tb, r.boxes[0])
            if set_name == "tin":
                cx, cy = (w - 1) / 2, (h - 1) / 2
                add("baseline: centre (no command)", (cx, cy), tb,
                    (cx - mean_wh[0] / 2, cy - mean_wh[1] / 2, cx + mean_wh[0] / 2 - 1, cy + mean_wh[1] / 2 - 1))
            else:  # the centre of a random half, with a centred box of the mean true size there
                half = int(rng.integers(2))
                cx, cy = (w / 2 - 1) / 2 + half * w / 2, (h - 1) / 2
                add("baseline: centre of a random half (no command)", (cx, cy), tb,
                    (cx - mean_wh[0] / 2, cy - mean_wh[1] / 2, cx + mean_wh[0] / 2 - 1, cy + mean_wh[1] / 2 - 1))
            m = prep.masks[rng.integers(len(prep.masks))]
            ys, xs = np.nonzero(m)
            add("baseline: random proposal (no command)", (xs.mean(), ys.mean()), tb, (xs.min(), ys.min(), xs.max(), ys.max()))
        labels = np.array([y for _, y, _ in items])
        subsets = {"all": np.ones(len(items), bool), "unseen-40": np.isin(labels, list(unseen)), "seen-160": ~np.isin(labels, list(unseen))}
        rows = []
        for key, v in stats.items():
            method, _, cname = key.partition(" | ")
            for sub, keep in subsets.items():
                rows.append({"method": method, "command": cname or "—", "command_bits": commands.get(cname, (None,))[0],
                             "subset": sub, **summarise(v, keep)})
        latency[set_name] = {"image_px": list(items[0][0].shape[:2]), "proposals_s_median": float(np.median(t_prop)),
                             "dense_map_320_s_median": float(np.median(t_map)),
                             "rank_dense_s_median": float(np.median(t_rank)), "prepare_224_s_median": float(np.median(t224)),
                             "mean_proposals": float(np.mean(n_props))}
        data = (f"Tiny-ImageNet val images {a.offset}..{a.offset + a.n - 1} (64x64), boxes from shared/assets/tiny-imagenet/boxes.json"
                if set_name == "tin" else f"{a.pairs} pasted pairs (128x64) of val images {pool[0]}..{pool[-1]}, semcomp.data.pasted_pairs seed 0")
        runs.append({"set": set_name, "data": data, "backbone": a.backbone, "proposals": "superpixels+boxes",
                     "map_cells": {"320": "10x10 (pairs 20x10)", "224": "7x7 (pairs 14x7)"}, "results": rows})
    lat_photo = photo_latency(dense)
    load = os.getloadavg()
    payload = {"commands": "a photo of a {class name}.", "backbone": a.backbone, "torch_threads": a.threads,
               "load_average_at_end": [round(x, 2) for x in load], "seconds": round(time.time() - t0, 1),
               "latency_cpu": {**latency, "kodak_photo": lat_photo}, "runs": runs}
    if a.out == "segment":  # keep earlier runs (other backbones) beside this one
        payload["runs"] = [r for r in legacy_runs() if r.get("backbone") != a.backbone] + runs
    record(a.out, payload)
    md = table(payload["runs"])
    (RESULTS / f"{a.out}.md").write_text(md)
    print(md)


def photo_latency(seg: TextSegmenter) -> dict:
    """The dense path on a real photo (Kodak 768x512): median of 3 calls, this machine, these threads."""
    from PIL import Image

    path = SHARED_ASSETS / "kodak" / "kodim23.jpg"
    if not path.exists() or seg.method != "dense":
        return {}
    img = np.asarray(Image.open(path).convert("RGB"))
    t = seg.backbone.encode_text(["a photo of a parrot."])[0]
    prep_t, rank_t = [], []
    for _ in range(3):
        s = time.perf_counter()
        p = seg.prepare(img)
        prep_t.append(time.perf_counter() - s)
        s = time.perf_counter()
        seg.rank_prepared(p, t)
        rank_t.append(time.perf_counter() - s)
    return {"image": "kodak/kodim23.jpg", "image_px": list(img.shape[:2]), "prepare_s_median": float(np.median(prep_t)),
            "rank_s_median": float(np.median(rank_t)), "map_cells": list(p.dense.shape[1:])}


def table(runs: list[dict]) -> str:
    md = []
    for run in runs:
        pairs = run["set"] == "pairs"
        md += [f"**{run['set']}** — {run['data']}; backbone `{run['backbone']}`", "",
               "| method | command | subset | n | pointing acc. | mean box IoU |" + (" named half (chance 0.5) |" if pairs else ""),
               "|---|---|---|---:|---:|---:|" + ("---:|" if pairs else "")]
        for r in run["results"]:
            if r.get("subset", "all") != "all" and not (r["command"] == "float" or r["command"] == "—"):
                continue
            pse = f" ± {r['pointing_se']:.3f}" if "pointing_se" in r else ""
            ise = f" ± {r['box_iou_se']:.3f}" if "box_iou_se" in r else ""
            cmd = r.get("command", r["method"] if r.get("command_bits") else "float")
            md.append(f"| {r['method']} | {cmd} | {r.get('subset', 'all')} | {r['items']} | "
                      f"{r['pointing_accuracy']:.3f}{pse} | {r['mean_box_iou']:.3f}{ise} |"
                      + (f" {r['named_half_accuracy']:.3f} ± {r['named_half_se']:.3f} |" if pairs else ""))
        md.append("")
    return "\n".join(md)


if __name__ == "__main__":
    main()

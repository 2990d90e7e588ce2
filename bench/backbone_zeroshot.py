"""Zero-shot quality of the embedded backbones, prompt "a photo of a {name}." (never used in training).

For each backbone: Tiny-ImageNet val 200-way; the codec protocol's 40 unseen classes (40-way); **coarse
words no class was ever named by** (e.g. "dog", "car", "fruit": 20 groups of Tiny-ImageNet classes, fixed
below before any measurement); ImageNet-1k names on the same images (1000-way); embedding spread; and for
the pretrained-tower backbone the held-out-names figures of its alignment run
(``bench/results/lite_clip_align.json``: a model aligned without 200 ImageNet classes, tested on them).

Images go through the whole model (``--images`` of them, default all 10,000) unless a cache of the
tower's pooled features exists (``semcomp.training.tower_features``), in which case the cache serves the
full set and ``--check`` images are also run end to end to show both paths agree. Also records the image
tower's speed (img/s, batch 64, this machine's threads) and peak memory.

    python bench/backbone_zeroshot.py --backbones semcomp-lite-clip semcomp-tiny-clip
"""
from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import record  # noqa: E402
from semcomp.backbone import load_backbone  # noqa: E402
from semcomp.data import SHARED_ASSETS, iter_shard, tiny_imagenet_classes  # noqa: E402
from semcomp.evaluation import embedding_spread  # noqa: E402
from semcomp.splits import class_split  # noqa: E402

PROMPT = "a photo of a {}."
# Coarse words -> Tiny-ImageNet class indices. None of these words is a class name in any training set here.
COARSE = {
    "dog": [24, 25, 26, 27, 28, 29], "cat": [30, 31, 32], "frog": [2, 3], "bird": [11, 20, 21, 22],
    "insect": [36, 37, 38, 39, 40, 41, 42, 43], "spider": [8, 9], "snake": [5], "bear": [35], "elephant": [57],
    "monkey": [54, 55, 56], "car": [70, 94, 116, 153], "bus": [145, 166], "train": [81, 103], "boat": [108, 115],
    "bridge": [154, 157, 170], "fruit": [186, 187, 188, 189], "bottle": [73, 130, 135], "ball": [68, 143, 171],
    "food": [178, 179, 180, 181, 182, 190, 191, 192], "clothing": [60, 62, 85, 105, 112, 119, 120, 134, 169],
}


def val_images(limit: int | None = None):
    from PIL import Image

    classes = tiny_imagenet_classes()
    widx = {c["wnid"]: c["index"] for c in classes}
    out = []
    for p in sorted((SHARED_ASSETS / "tiny-imagenet").glob("val-*.tar.gz")):
        for key, s in iter_shard(p):
            out.append((key, Image.open(io.BytesIO(s["jpg"])).convert("RGB"), widx[json.loads(s["json"])["wnid"]]))
            if limit and len(out) >= limit:
                return out
    return out


def topk(img, text, labels, k=5):
    top = (img @ text.T).topk(min(k, len(text)), dim=-1).indices
    return {"top1": round(float((top[:, 0] == labels).float().mean()), 4),
            f"top{k}": round(float((top == labels[:, None]).any(1).float().mean()), 4), "n": int(len(labels))}


def features(bb, args, val):
    """All val features: from the tower cache (+ an end-to-end check) or end to end."""
    model = bb.model
    tower = getattr(model, "cfg", None)
    if hasattr(model, "encode_pooled"):
        try:
            from semcomp.training.tower_features import load_cached

            c = load_cached(model.cfg.tower, model.cfg.image_size, "tin-val")
            if len(c["keys"]) == 10000:
                order = {k: i for i, k in enumerate(c["keys"])}
                idx = torch.tensor([order[k] for k, _, _ in val])
                with torch.no_grad():
                    f = F.normalize(model.encode_pooled(c["pooled"][idx]), dim=-1)
                n = args.check
                e2e = bb.encode_images([im for _, im, _ in val[:n]], batch_size=64)
                agree = F.cosine_similarity(e2e, f[:n]).min().item()
                return f, {"path": "tower cache + projection", "end_to_end_check_images": n, "min_cosine_cache_vs_end_to_end": round(agree, 5)}
        except FileNotFoundError:
            pass
    f = bb.encode_images([im for _, im, _ in val], batch_size=64)
    return f, {"path": "end to end", "tower_config": str(tower)}


def speed(bb, val, n=256):
    ims = [im for _, im, _ in val[:n]]
    x = torch.stack([bb.preprocess(im) for im in ims])
    with torch.inference_mode():
        bb.model.encode_image(x[:64])
        t = time.perf_counter()
        for i in range(0, n, 64):
            bb.model.encode_image(x[i : i + 64])
        dt = time.perf_counter() - t
    return {"images": n, "input": list(x.shape[1:]), "img_per_s": round(n / dt, 1), "threads": torch.get_num_threads(),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["semcomp-lite-clip", "semcomp-tiny-clip"])
    ap.add_argument("--images", type=int, default=None, help="val images (default all 10,000)")
    ap.add_argument("--check", type=int, default=256, help="images also run end to end when the cache serves")
    a = ap.parse_args(argv)
    classes = tiny_imagenet_classes()
    names = [c["name"] for c in classes]
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    val = val_images(a.images)
    y = torch.tensor([lab for _, _, lab in val])
    unseen = class_split("tiny-imagenet")["test_classes"]
    coarse_of = {i: j for j, idxs in enumerate(COARSE.values()) for i in idxs}
    rep = {"load_average_at_start": __import__("os").getloadavg(), "prompt": PROMPT, "data": f"Tiny-ImageNet val, {len(val)} images (64 px; towers with a fixed input size upsample)",
           "coarse_words": COARSE, "backbones": {}}
    for name in a.backbones:
        bb = load_backbone(name)
        t0 = time.time()
        f, how = features(bb, a, val)
        r = {"dim": bb.dim, "features": how, "feature_seconds": round(time.time() - t0, 1)}
        r["tin200"] = topk(f, bb.encode_text([PROMPT.format(n) for n in names]), y)
        m = torch.isin(y, torch.tensor(unseen))
        r["tin_unseen40_40way"] = topk(f[m], bb.encode_text([PROMPT.format(names[i]) for i in unseen]),
                                       torch.tensor([unseen.index(int(c)) for c in y[m]]))
        m = torch.tensor([int(c) in coarse_of for c in y])
        r["coarse_words_20way"] = topk(f[m], bb.encode_text([PROMPT.format(w) for w in COARSE]),
                                       torch.tensor([coarse_of[int(c)] for c in y[m]]))
        wn = {c["wnid"]: c["index"] for c in classes}
        try:
            from semcomp.training.tower_features import imagenet_wnids

            inet_idx = {wn[w]: i for i, w in enumerate(imagenet_wnids()) if w in wn}
            r["inet1000_on_tin_val"] = topk(f, bb.encode_text([PROMPT.format(n) for n in IMAGENET_CLASSNAMES]),
                                            torch.tensor([inet_idx[int(c)] for c in y]))
        except (FileNotFoundError, KeyError):
            pass
        r["spread"] = embedding_spread(f)
        r["tower_speed"] = speed(bb, val)
        rep["backbones"][name] = r
        print(name, json.dumps({k: v for k, v in r.items() if k != "features"}))
    align = Path("bench/results/lite_clip_align.json")
    if align.exists():
        rep["alignment_report"] = str(align)
    rep["load_average_at_end"] = __import__("os").getloadavg()
    print(record("backbone_zeroshot", rep))


if __name__ == "__main__":
    main()

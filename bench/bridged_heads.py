"""The older heads on the new backbone through their embedding bridges (``semcomp.heads.bridge``).

Captions: share naming the true class on the first ``--n`` Tiny-ImageNet val images, from the float
feature and from decoded features, beside the same captioner on its own backbone's features (the
bridge's cost). Generation: ``--gen`` images generated from bridged features, recognised by the new
backbone (200-way top-1/top-5) and cosine to the source feature.

    python bench/bridged_heads.py --features ~/.cache/semcomp/features/lite-val.safetensors --n 1000 --gen 50
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import record  # noqa: E402


def main():
    from semcomp.backbone import features_from_uint8, load_backbone
    from semcomp.codecs import load_codec
    from semcomp.data import load_features, tiny_imagenet_classes, tiny_imagenet_split
    from semcomp.receiver import _load_head_folder, head_candidates, load_head
    from semcomp.training.caption import caption_eval
    from semcomp.zoo import shipped_codecs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", required=True, help="new backbone's Tiny-ImageNet val feature file")
    ap.add_argument("--backbone", default="semcomp-lite-clip")
    ap.add_argument("--codecs", nargs="*", default=["fsq-c32l4", "fsq-c128l4"])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--gen", type=int, default=50)
    a = ap.parse_args()
    classes = tiny_imagenet_classes()
    fs = load_features(a.features)
    x, y = torch.from_numpy(fs.features[: a.n]), fs.labels[: a.n]
    feats = {"float": x}
    shipped = {c["spec"]: c["path"] for c in shipped_codecs(a.backbone)}
    for spec in a.codecs:
        if spec in shipped:
            codec = load_codec(shipped[spec])
            feats[f"{spec} ({codec.bits} bits)"] = codec.reconstruct(x)
    def bridged(kind):  # the bridge, not the backbone's own head (e.g. the SmolLM2 captioner comes first in the app)
        for path in head_candidates(a.backbone).get(kind, []):
            if json.loads((path / "config.json").read_text()).get("base"):
                return _load_head_folder(kind, path, a.backbone)
        return None

    cap = bridged("caption")
    t0 = time.perf_counter()
    out = {"captions": caption_eval(cap, feats, y, classes), "caption_seconds": round(time.perf_counter() - t0, 1)}
    # the same captioner on its own backbone's features of the same images (what the bridge costs)
    old = load_backbone("semcomp-tiny-clip")
    val = tiny_imagenet_split("val")
    key_order = {k: i for i, k in enumerate(val.keys)}
    src_keys = fs.metadata.get("keys")
    if src_keys is None:  # feature files from the tower cache keep the shard order, as tiny_imagenet_split does
        idx = np.arange(a.n)
    else:
        idx = np.array([key_order[k] for k in src_keys[: a.n]])
    if (val.labels[idx] == y).all():
        base = features_from_uint8(old, val.images[idx])
        out["captions_base_backbone"] = caption_eval(load_head("caption", "semcomp-tiny-clip"), {"float": base}, y, classes)
    gen = bridged("generate")
    if gen is not None and a.gen:
        bb = load_backbone(a.backbone)
        text = bb.encode_text([f"a photo of a {c['name']}." for c in classes])
        res = {}
        for name, z in list(feats.items())[:2]:
            t0 = time.perf_counter()
            imgs = gen.generate(z[: a.gen], steps=20, seed=0)
            dt = (time.perf_counter() - t0) / a.gen
            g = features_from_uint8(bb, np.stack(imgs))
            top = (g @ text.T).topk(5, dim=-1).indices
            yy = torch.as_tensor(y[: a.gen])
            res[name] = {"top1": float((top[:, 0] == yy).float().mean()), "top5": float((top == yy[:, None]).any(1).float().mean()),
                         "cos_generated_source": float(F.cosine_similarity(g, x[: a.gen]).mean()), "seconds_per_image": round(dt, 2)}
            print(name, res[name], flush=True)
        out["generation"] = res
    out["load_average"] = os.getloadavg()
    print({k: {m: v["names_true_class"] for m, v in out[k].items()} for k in out if k.startswith("captions")})
    print(record("bridged_heads", {"backbone": a.backbone, "features": a.features, "n": a.n, **out}))


if __name__ == "__main__":
    main()

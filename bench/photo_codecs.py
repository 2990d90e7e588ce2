"""Do the codecs keep the meaning of real photos, not only of Tiny-ImageNet thumbnails?

Every codec here was fitted on features of the lite backbone; the progressive codec on Tiny-ImageNet train images
only (64 px thumbnails upsampled to 224), the ladder on those plus ImageNet sample photos. Users send photos. This
measures, on photos that no codec trained on, how much of the original feature's meaning each codec keeps:

* the 24 Kodak images (768 x 512), through the backbone as the app runs it (``encode_images``);
* the ImageNet sample photos (one per class, shorter side 256) of the Tiny-ImageNet split's 40 test classes, which
  every codec's training left out (the tower cache's view 0: the same numbers as ``encode_images``);
* for contrast, the 2,000 Tiny-ImageNet val images of those 40 classes.

Per codec and budget: mean cosine of decoded and original feature, and how often the decoded feature's top-1
ImageNet-1k label (1,000 names, "a photo of a {}.") is the original's (for the labelled sets also top-1 accuracy).

    python bench/photo_codecs.py [--codec EXTRA_CODEC_DIR ...]

Writes bench/results/photo_codecs.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, record  # noqa: E402

PRQ_BUDGETS = [16, 32, 64, 128, 256, 1024]


def photo_sets(bb, split_name: str, test: str) -> dict[str, tuple[torch.Tensor, np.ndarray | None]]:
    """name -> (unit features (N, D), ImageNet-1k labels or None)."""
    from PIL import Image

    from semcomp.data import load_features, tiny_imagenet_classes
    from semcomp.splits import class_split
    from semcomp.training.tower_features import assets_dir, imagenet_wnids, load_cached

    kodak = sorted((assets_dir() / "kodak").glob("kodim*.jpg"))
    with torch.no_grad():
        x_kodak = F.normalize(torch.as_tensor(bb.encode_images([Image.open(p).convert("RGB") for p in kodak])).float(), dim=-1)
    cfg = bb.model.cfg
    c = load_cached(cfg.tower, cfg.image_size, "inet-samples", None, 0)
    inet_index = {w: i for i, w in enumerate(imagenet_wnids())}
    tin = tiny_imagenet_classes(assets_dir() / "tiny-imagenet")
    test_wnids = {tin[i]["wnid"] for i in class_split(split_name)["test_classes"]}
    keep = np.array([w in test_wnids for w in c["wnids"]])
    with torch.no_grad():
        x_inet = F.normalize(bb.model.encode_pooled(c["pooled"][torch.from_numpy(keep)]), dim=-1)
    y_inet = np.array([inet_index[w] for w, k in zip(c["wnids"], keep) if k])
    val = load_features(test)
    m = np.isin(val.labels, class_split(split_name)["test_classes"])
    tin_to_inet = {t["index"]: inet_index[t["wnid"]] for t in tin}
    x_val = F.normalize(torch.as_tensor(val.features[m]).float(), dim=-1)
    y_val = np.array([tin_to_inet[int(v)] for v in val.labels[m]])
    return {f"Kodak ({len(kodak)} photos)": (x_kodak, None),
            f"ImageNet sample photos of the {int(keep.sum())} test classes": (x_inet, y_inet),
            f"Tiny-ImageNet val, the same {len(set(y_val))} classes ({len(y_val)} thumbnails)": (x_val, y_val)}


def main() -> None:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from semcomp.backbone import load_backbone
    from semcomp.codecs import load_codec
    from semcomp.heads.zeroshot import ZeroShotClassifier
    from semcomp.zoo import shipped_codecs

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="semcomp-lite-clip")
    ap.add_argument("--split-name", default="tiny-imagenet")
    ap.add_argument("--codec", nargs="*", default=[], help="more codec folders to measure (e.g. a refit prq)")
    ap.add_argument("--test", default=str(Path.home() / ".cache" / "semcomp" / "features" / "lite-val.safetensors"),
                    help="Tiny-ImageNet val features (the thumbnails of the same classes)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    bb = load_backbone(a.backbone)
    clf = ZeroShotClassifier.from_backbone(bb, list(IMAGENET_CLASSNAMES))
    sets = photo_sets(bb, a.split_name, a.test)
    codecs = [(c["spec"], Path(c["path"])) for c in shipped_codecs(a.backbone)]
    codecs += [(f"{Path(p).name} ({Path(p).parent.parent.name}/{Path(p).parent.name})", Path(p)) for p in a.codec]
    codecs = [(label, load_codec(path)) for label, path in codecs]  # once, not once per photo set
    rows = []
    for name, (x, y) in sets.items():
        top_orig = clf.logits(x).argmax(1).numpy()
        base = {"set": name, "items": len(x)}
        rows.append({**base, "codec": "float", "bits": 32 * x.shape[1], "mean_cosine": 1.0, "agreement": 1.0,
                     "top1": float((top_orig == y).mean()) if y is not None else None})
        for label, codec in codecs:
            for bits in PRQ_BUDGETS if codec.family == "prq" else [codec.bits]:
                kw = {"stages": codec.stages_for_bits(bits)} if codec.family == "prq" else {}
                dec = codec.decode(codec.encode(x, **kw))
                top = clf.logits(dec).argmax(1).numpy()
                rows.append({**base, "codec": label, "bits": bits,
                             "mean_cosine": float(F.cosine_similarity(dec, x, dim=-1).mean()),
                             "agreement": float((top == top_orig).mean()),
                             "top1": float((top == y).mean()) if y is not None else None})
                print(rows[-1], flush=True)
    path = record("photo_codecs", {"backbone": a.backbone, "labels": "ImageNet-1k, 1,000 names, 'a photo of a {}.'",
                                   "sets": {k: len(v[0]) for k, v in sets.items()}, "results": rows})
    lines = ["# Codecs on photos no codec trained on", "",
             "Mean cosine(decoded, original) / share of items whose top-1 ImageNet-1k label survives decoding "
             "(top-1 accuracy in brackets where labelled).", ""]
    names = list(sets)
    lines += ["| codec | bits | " + " | ".join(names) + " |", "|---|---:|" + "---|" * len(names)]
    keys = sorted({(r["codec"], r["bits"]) for r in rows}, key=lambda k: (k[0] != "float", k[0], k[1]))
    for codec, bits in keys:
        cells = []
        for n in names:
            r = next((r for r in rows if r["set"] == n and r["codec"] == codec and r["bits"] == bits), None)
            cells.append("–" if r is None else f"{r['mean_cosine']:.3f} / {100 * r['agreement']:.0f} %"
                         + (f" ({100 * r['top1']:.0f} %)" if r["top1"] is not None else ""))
        lines.append(f"| {codec} | {bits} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `python {' '.join(sys.argv)}`."]
    (RESULTS / "photo_codecs.md").write_text("\n".join(lines) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()

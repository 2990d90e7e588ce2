"""The app's bundled examples: top-1 ImageNet-1k label from the original feature and from the 16-, 64- and
256-bit decoded features (the best measured shipped codec at each budget, else the first shipped one).

    python bench/examples_table.py --backbone semcomp-lite-clip
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    from PIL import Image

    from semcomp.backbone import EMBEDDED_DEFAULT, load_backbone
    from semcomp.codecs import load_codec
    from semcomp.heads.zeroshot import ZeroShotClassifier
    from semcomp.zoo import best_measured, shipped_codecs

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backbone", default=EMBEDDED_DEFAULT)
    ap.add_argument("--budgets", type=int, nargs="+", default=[16, 64, 256])
    a = ap.parse_args()
    bb = load_backbone(a.backbone)
    clf = ZeroShotClassifier.from_backbone(bb, list(IMAGENET_CLASSNAMES))
    best, shipped = best_measured(a.backbone), shipped_codecs(a.backbone)
    codecs = {}
    for b in a.budgets:
        c = best.get(b) or next((c for c in shipped if c["bits"] == b), None)
        if c is not None:
            codecs[b] = load_codec(c["path"])
    paths = sorted((ROOT / "assets" / "examples").glob("*.jpg"))
    feats = bb.encode_images([Image.open(p) for p in paths])
    rows = []
    for p, f in zip(paths, feats):
        r = {"image": p.name, "original": clf.predict(f[None], 1)[0].labels[0]}
        for b, codec in codecs.items():
            r[f"{b} bits ({codec.spec})"] = clf.predict(codec.reconstruct(f[None]), 1)[0].labels[0]
        rows.append(r)
        print(r, flush=True)
    cols = list(rows[0])
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    (RESULTS / "examples_table.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(record("examples_table", {"backbone": a.backbone, "labels": "ImageNet-1k (open_clip names)", "prompt": "a photo of a {}.",
                                    "load_average": os.getloadavg(), "rows": rows}))


if __name__ == "__main__":
    main()

"""Why not send a tiny JPEG? Zero-shot accuracy vs bits per image: pixel codecs against semantic ones.

On the Tiny-ImageNet val images of the 40 classes the codecs never trained on (2,000 images, 64x64), the
embedded CLIP classifies (40-way, "a photo of a {name}.") the image decoded by JPEG/WebP at a quality sweep
and by the learned pixel codecs shipped under weights/pixel (CompressAI factorized prior at three lambdas,
seed 002's attention pyramid at its two levels), and the feature decoded by the best shipped semantic codec at
each budget. Bits: exact bytes x 8 (JPEG/WebP files with their headers; learned codecs: their payload with its
3-byte header; semantic: fixed-length symbol bits, no .scf header). Also PSNR, SSIM and MS-SSIM of every pixel
codec on the 24 Kodak images (rate–distortion, seed 002 Fig. 2 style), and a picture: what the receiver shows
from a 256-bit semantic code next to the smallest JPEG and the smallest learned-codec image.

Backbone: ``--backbone`` (default the embedded ``semcomp-lite-clip``) is the classifier of every decoded image
and the space of the semantic codecs (its best measured codec per budget). The pixel codecs themselves do not
depend on it (the learned ones are the shipped ``weights/pixel`` models, whose pyramid uses the tiny tower's
stem as its own input features). ``--per-class N`` classifies only N seeded val images per class (a slower
tower on a loaded machine: the lite tower runs ~10 images/s on 2 busy cores), ``--jpeg-q`` / ``--webp-q``
thin the sweep, and ``--keep-rd`` carries the Kodak rate–distortion rows (pixels only, no backbone) over from
the existing result instead of re-running them, and says so.

    python bench/pixel_vs_semantic.py
    python bench/pixel_vs_semantic.py --per-class 8 --jpeg-q 1,10,20,40,75 --webp-q 0,5,25,50,75 --keep-rd
    python bench/pixel_vs_semantic.py --backbone semcomp-tiny-clip
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # semcomp from this checkout when it is not installed
from common import RESULTS, record  # noqa: E402

from semcomp.backbone import features_from_uint8, load_backbone  # noqa: E402
from semcomp.codecs import load_codec  # noqa: E402
from semcomp.data import SHARED_ASSETS, tiny_imagenet_classes, tiny_imagenet_split  # noqa: E402
from semcomp.pixel import PillowCodec  # noqa: E402
from semcomp.pixel.learned import shipped_pixel_codecs  # noqa: E402
from semcomp.splits import class_split  # noqa: E402
from semcomp.zoo import best_measured  # noqa: E402

QUALITIES = {"jpeg": [1, 5, 10, 20, 40, 75, 95], "webp": [0, 5, 10, 25, 50, 75, 95]}
SEMANTIC = "semantic (best shipped codec per budget)"


def family_of(codec) -> str:
    if isinstance(codec, PillowCodec):
        return codec.format
    return "learned: seed 002 attention pyramid" if "pyramid" in codec.name else "learned: factorized prior (CompressAI)"


def pixel_codecs(qualities=None):
    return [PillowCodec(fmt, q) for fmt, qs in (qualities or QUALITIES).items() for q in qs] + shipped_pixel_codecs()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="semcomp-lite-clip")
    ap.add_argument("--per-class", type=int, default=0, help="classify N seeded val images per class (0: all 50)")
    ap.add_argument("--jpeg-q", default=",".join(map(str, QUALITIES["jpeg"])))
    ap.add_argument("--webp-q", default=",".join(map(str, QUALITIES["webp"])))
    ap.add_argument("--keep-rd", action="store_true", help="carry the Kodak rate-distortion rows over from the existing result")
    ap.add_argument("--picture-only", action="store_true", help="redraw the receiver picture into the existing result")
    a = ap.parse_args()
    qualities = {"jpeg": [int(q) for q in a.jpeg_q.split(",") if q], "webp": [int(q) for q in a.webp_q.split(",") if q]}
    bb = load_backbone(a.backbone)
    if a.picture_only:  # redraw the receiver picture into the existing result
        from PIL import Image

        kodak = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((SHARED_ASSETS / "kodak").glob("*.jpg"))]
        path = RESULTS / "pixel_vs_semantic.json"
        res = json.loads(path.read_text())
        res["receiver_picture"] = picture(bb, kodak)
        path.write_text(json.dumps(res, indent=2))
        return
    val = tiny_imagenet_split("val")
    test_classes = class_split("tiny-imagenet")["test_classes"]
    keep = np.isin(val.labels, test_classes)
    imgs, labels = val.images[keep], val.labels[keep]
    if a.per_class:
        g = np.random.default_rng(0)
        pick = np.sort(np.concatenate([g.choice(np.nonzero(labels == c)[0], a.per_class, replace=False) for c in test_classes]))
        imgs, labels = imgs[pick], labels[pick]
    names = [c["name"] for c in tiny_imagenet_classes()]
    text = bb.encode_text([f"a photo of a {names[c]}." for c in test_classes])
    remap = {c: i for i, c in enumerate(test_classes)}
    y = torch.tensor([remap[int(l)] for l in labels])

    def top1(z):
        return float(((F.normalize(z, dim=-1) @ text.T).argmax(1) == y).float().mean())

    pixels = np.prod(imgs.shape[1:3])
    float_feat = features_from_uint8(bb, imgs)
    rows = [{"method": "original image (float feature)", "family": "reference", "bits_per_image": None, "top1": top1(float_feat)}]
    for codec in pixel_codecs(qualities):
        blobs = [codec.compress(im) for im in imgs]
        dec = np.stack([codec.decompress(b) for b in blobs])
        bits = 8 * float(np.mean([len(b) for b in blobs]))
        rows.append({"method": codec.name, "family": family_of(codec), "bits_per_image": bits, "bpp": bits / pixels,
                     "top1": top1(features_from_uint8(bb, dec))})
        print(rows[-1], flush=True)
    best = best_measured(bb.name)
    if not best:
        raise SystemExit(f"no measured codec table for {bb.name} (bench/results/rate_accuracy.json is for another backbone)")
    for _, shipped in sorted(best.items()):
        codec = load_codec(shipped["path"])
        with torch.inference_mode():
            z = codec.decode(codec.encode(float_feat))
        rows.append({"method": codec.spec, "family": SEMANTIC, "bits_per_image": float(codec.bits),
                     "bpp": codec.bits / pixels, "top1": top1(z)})
        print(rows[-1], flush=True)
    # where does the smallest pixel file reach the semantic codec's accuracy?
    sem = [r for r in rows if r["family"] == SEMANTIC]
    crossing = {}
    for fmt in sorted({r["family"] for r in rows} - {SEMANTIC, "reference"}):
        pix = sorted([r for r in rows if r["family"] == fmt], key=lambda r: r["bits_per_image"])
        for s in sem:
            hit = next((p for p in pix if p["top1"] >= s["top1"]), None)
            crossing.setdefault(fmt, []).append({"semantic": s["method"], "semantic_bits": s["bits_per_image"], "semantic_top1": s["top1"],
                                                 "smallest_matching": hit["method"] if hit else None,
                                                 "its_bits": hit["bits_per_image"] if hit else None,
                                                 "ratio": hit["bits_per_image"] / s["bits_per_image"] if hit else None})
    # rate–distortion of the pixel codecs on Kodak
    from PIL import Image
    from pytorch_msssim import ms_ssim
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    kodak = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((SHARED_ASSETS / "kodak").glob("*.jpg"))]
    rd = []
    kept_rd = None
    if a.keep_rd:  # pixels only: the backbone plays no part, so the earlier measurement stands
        old = json.loads((RESULTS / "pixel_vs_semantic.json").read_text())
        kept_rd = {**old["kodak_rate_distortion"], "carried_over": f"not re-run: copied from the result of {old.get('date')} "
                   f"(commit {old.get('git_commit')}, backbone {old.get('backbone')}); no backbone is involved"}
    for codec in ([] if a.keep_rd else pixel_codecs()):
        bpp, psnr, ssim, msssim = [], [], [], []
        for im in kodak:
            b = codec.compress(im)
            d = codec.decompress(b)
            bpp.append(8 * len(b) / (im.shape[0] * im.shape[1]))
            psnr.append(peak_signal_noise_ratio(im, d, data_range=255))
            ssim.append(structural_similarity(im, d, channel_axis=2, data_range=255))
            t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float()  # noqa: E731
            msssim.append(float(ms_ssim(t(im), t(d), data_range=255)))
        rd.append({"method": codec.name, "family": family_of(codec), "bpp": float(np.mean(bpp)), "psnr": float(np.mean(psnr)),
                   "ssim": float(np.mean(ssim)), "ms_ssim": float(np.mean(msssim))})
        print(rd[-1], flush=True)
    subset = f", {a.per_class} seeded images per class" if a.per_class else ""
    res = {"data": f"Tiny-ImageNet val, the {len(test_classes)} codec-unseen classes ({len(imgs)} images{subset}, 64x64), "
                   f"{len(test_classes)}-way zero-shot by {bb.name}",
           "backbone": bb.name, "images": len(imgs), "top1_standard_error_at_50pct": float(np.sqrt(0.25 / len(imgs))),
           "classification": rows, "crossings": crossing,
           "kodak_rate_distortion": kept_rd or {"data": "24 Kodak images (shared/assets/kodak, stored as JPEG q95 4:4:4 — the reference is that file)",
                                                "metrics": "PSNR and SSIM (scikit-image), MS-SSIM (pytorch_msssim, 5 scales), RGB, data range 255",
                                                "rows": rd}}
    res["receiver_picture"] = picture(bb, kodak)
    record("pixel_vs_semantic", res)
    plot(rows, bb.name, len(imgs))
    if not a.keep_rd:
        plot_rd(rd)
    md = ["| method | bits / image | bpp | top-1 |", "|---|---:|---:|---:|"]
    for r in rows:
        b = r["bits_per_image"]
        bits = "—" if b is None else f"{b:.0f}"
        bpp = "—" if b is None else f"{r['bpp']:.4f}"
        md.append(f"| {r['method']} | {bits} | {bpp} | {100 * r['top1']:.1f} % |")
    md += ["", f"{res['data']}; standard error of a top-1 near 50 %: ±{100 * res['top1_standard_error_at_50pct']:.1f} points."]
    (RESULTS / "pixel_vs_semantic.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(json.dumps(crossing, indent=1)[:3000])


def plot(rows, backbone: str = "", n: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    styles = {"jpeg": "s-", "webp": "^-", "learned: factorized prior (CompressAI)": "d-", "learned: seed 002 attention pyramid": "v-",
              SEMANTIC: "o-"}
    for fam, style in styles.items():
        rs = sorted([r for r in rows if r["family"] == fam], key=lambda r: r["bits_per_image"])
        ax.plot([r["bits_per_image"] for r in rs], [100 * r["top1"] for r in rs], style, label=fam, ms=4)
    ax.axhline(100 * rows[0]["top1"], ls="--", c="gray", label="original image")
    ax.set_xscale("log")
    ax.set_xlabel("bits per image (64×64 Tiny-ImageNet)")
    ax.set_ylabel("zero-shot top-1 % (40 unseen classes)")
    if backbone:
        ax.set_title(f"classifier: {backbone}, {n} images", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "pixel_vs_semantic.png", dpi=120)


def plot_rd(rd) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ms_ssim", "MS-SSIM")):
        for fam in dict.fromkeys(r["family"] for r in rd):
            rs = sorted([r for r in rd if r["family"] == fam], key=lambda r: r["bpp"])
            ax.plot([r["bpp"] for r in rs], [r[key] for r in rs], "o-", ms=3, label=fam)
        ax.set_xlabel("bits per pixel (Kodak, 24 images)")
        ax.set_ylabel(label)
        ax.set_xlim(0, 2.5)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "pixel_vs_semantic_rd_kodak.png", dpi=120)


def picture(bb, kodak, n: int = 4, bits: int = 256) -> dict:
    """Original | smallest JPEG | smallest learned-codec image | what the receiver of a ``bits``-bit semantic
    code shows (generated image + top label): seed 000's point, drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from semcomp.heads.zeroshot import ZeroShotClassifier
    from semcomp.pixel import JPEG_LADDER, best_within
    from semcomp.receiver import load_head

    codec = load_codec(best_measured(bb.name)[bits]["path"])
    gen = load_head("generate", bb.name)
    names = [c["name"] for c in tiny_imagenet_classes()]
    clf = ZeroShotClassifier.from_backbone(bb, names)
    learned = shipped_pixel_codecs()
    picks = kodak[:: max(1, len(kodak) // n)][:n]
    fig, axes = plt.subplots(n, 4, figsize=(12, 2.6 * n))
    info = []
    for i, im in enumerate(picks):
        pil = Image.fromarray(im)
        z = bb.encode_images([pil])
        with torch.inference_mode():
            z_dec = codec.decode(codec.encode(z))
        label = clf.predict(z_dec)[0].labels[0]
        made = gen.generate(z_dec, steps=20, seed=0)[0]
        jpeg = best_within(JPEG_LADDER[-1:], pil, 10**9, min_side=1, start_side=8)
        budget = bits // 8  # the semantic code's own bytes
        small = best_within(learned, pil, budget, min_side=4, start_side=int((16 * budget / 0.2) ** 0.5)) if learned else None
        panels = [(im, f"original {im.shape[1]}x{im.shape[0]}"),
                  (jpeg["image"], f"smallest JPEG: {jpeg['bytes']} bytes ({jpeg['width']}x{jpeg['height']} px, q1)")]
        if small:
            panels.append((small["image"], f"learned codec in the same {budget} bytes: {small['width']}x{small['height']} px"))
        panels.append((made, f"{bits}-bit semantic ({bits // 8} bytes): generated; label '{label}'"))
        for ax, (arr, title) in zip(axes[i], panels):
            ax.imshow(arr)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
        for ax in axes[i][len(panels):]:
            ax.axis("off")
        info.append({"jpeg_bytes": jpeg["bytes"], "learned_bytes": small["bytes"] if small else None, "semantic_bits": bits, "label": label})
    fig.tight_layout()
    fig.savefig(RESULTS / "pixel_vs_semantic_kodak.png", dpi=100)
    return {"codec": codec.spec, "images": info, "file": "pixel_vs_semantic_kodak.png"}


if __name__ == "__main__":
    main()

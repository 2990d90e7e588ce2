"""The one-pass generator on semcomp-lite-clip (weights/heads/semcomp-lite-decoder) against the bridged diffusion
generator it replaces, on Tiny-ImageNet val.

For each conditioning feature (float; decoded by the progressive codec at several budgets) the generated 64 px
images are embedded by the backbone and classified zero-shot over the 200 class names ("a photo of a {}."):
top-1 / top-5, split into the 160 classes the decoder trained on and the 40 it never saw (codec split,
assets/splits/tiny-imagenet.json), with binomial standard errors; cosine(generated, source). The backbone's
tower (EfficientNet-Lite0) never took part in the decoder's training (its perceptual loss is MobileNetV2's), so
the judge is not the loss. Rows for reference: the real 64 px val images (the ceiling) and the bridged
diffusion generator (``--n-baseline`` images, 20 steps). Also: CPU seconds per image, the share of spectral
power on a 4-pixel lattice (the grid artefact; real images as reference), and a grid.

    python bench/feature_decoder.py --features ~/.cache/semcomp/features/lite-val.safetensors --n 1000
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, record  # noqa: E402

from semcomp.backbone import features_from_uint8, load_backbone  # noqa: E402
from semcomp.codecs import load_codec  # noqa: E402
from semcomp.data import load_features, tiny_imagenet_split  # noqa: E402
from semcomp.splits import class_split  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def scores(z: torch.Tensor, text: torch.Tensor, y: torch.Tensor, source: torch.Tensor, seen: torch.Tensor) -> dict:
    top5 = (F.normalize(z, dim=-1) @ text.T).topk(5, dim=1).indices
    hit1, hit5 = (top5[:, 0] == y).float(), (top5 == y[:, None]).any(1).float()
    out = {"n": len(y), "cos_to_source": float((F.normalize(z, dim=-1) * source).sum(1).mean())}
    for name, m in (("all", torch.ones_like(seen)), ("seen", seen), ("unseen", ~seen)):
        for k, h in (("top1", hit1), ("top5", hit5)):
            p, n = float(h[m].mean()), int(m.sum())
            out[f"{k}_{name}"] = round(100 * p, 1)
            out[f"{k}_{name}_se"] = round(100 * (p * (1 - p) / max(n, 1)) ** 0.5, 1)
        out[f"n_{name}"] = int(m.sum())
    return out


def lattice_power(images: np.ndarray) -> float:
    """Share (%) of the images' non-DC spectral power (grey, each image's mean removed) at the 15 frequencies of a
    period-4 and period-2 pixel lattice (multiples of S/4 on both axes): the grid artefact a decoder with
    stride-2 upsampling can leave. Natural images put very little there."""
    g = images.astype(np.float64).mean(-1)
    g -= g.mean((1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(g)) ** 2).sum(0)
    s = g.shape[1] // 4
    lattice = power[::s, ::s].sum() - power[0, 0]
    return round(float(100 * lattice / (power.sum() - power[0, 0])), 3)


def grid_png(rows: dict[str, np.ndarray], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = next(iter(rows.values())).shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.25 * n, 1.35 * len(rows)))
    for i, (label, imgs) in enumerate(rows.items()):
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(imgs[j])
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(title, 15 * n)), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True, help="the backbone's Tiny-ImageNet val feature file")
    ap.add_argument("--head", default=str(ROOT / "weights/heads/semcomp-lite-decoder"))
    ap.add_argument("--codec", default=str(ROOT / "weights/codecs/semcomp-lite-clip/prq-s128o32k256"))
    ap.add_argument("--bits", default="16,32,64,256")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--n-baseline", type=int, default=100, help="val images for the bridged diffusion generator (slow)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-name", default="feature_decoder")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from semcomp.heads.feature_decoder import FeatureDecoderGenerator

    bb = load_backbone("semcomp-lite-clip")
    gen = FeatureDecoderGenerator.from_pretrained(a.head, backbone=bb)
    fs = load_features(a.features)
    val = tiny_imagenet_split("val")
    if len(val.labels) != len(fs.labels) or not np.array_equal(val.labels, fs.labels):
        raise SystemExit("feature file and val images are not in the same order")
    text = F.normalize(torch.from_numpy(fs.metadata["_extra"]["text_features"]).float(), dim=-1)
    x = torch.from_numpy(fs.features[: a.n]).float()
    y = torch.from_numpy(fs.labels[: a.n])
    seen = torch.from_numpy(np.isin(fs.labels[: a.n], class_split("tiny-imagenet")["train_classes"]))
    codec = load_codec(a.codec, backbone=bb)
    conds = {"float": x}
    for b in (int(v) for v in a.bits.split(",")):
        with torch.inference_mode():
            conds[f"{b} bits"] = F.normalize(codec.decode(codec.encode(x, stages=codec.stages_for_bits(b))), dim=-1)
    res = {"model": a.head, "card": json.loads((Path(a.head) / "card.json").read_text()), "codec": codec.spec,
           "data": f"Tiny-ImageNet val, first {a.n} images (64 px), features {Path(a.features).name}",
           "judge": "semcomp-lite-clip zero-shot over the 200 class names, 'a photo of a {}.'", "results": {}}
    real = features_from_uint8(bb, val.images[: a.n])
    res["results"]["real val images (ceiling)"] = scores(real, text, y, x, seen) | {
        "lattice_power_pct": lattice_power(val.images[: a.n])}
    images = {}
    for k, v in conds.items():
        t0 = time.perf_counter()
        images[k] = gen.generate(v)
        sec = time.perf_counter() - t0
        res["results"][f"decoder, {k}"] = scores(features_from_uint8(bb, images[k]), text, y, x, seen) | {
            "generate_s": round(sec, 2), "lattice_power_pct": lattice_power(images[k])}
        print(k, res["results"][f"decoder, {k}"], flush=True)
    if a.n_baseline:
        from semcomp.receiver import _load_head_folder

        bridged = _load_head_folder("generate", ROOT / "weights/heads/semcomp-lite-unclip", bb.name)
        nb = a.n_baseline
        base = np.concatenate([bridged.generate(x[i : i + 25], steps=20, guidance=3.0, seed=i) for i in range(0, nb, 25)])
        res["results"]["bridged diffusion (semcomp-lite-unclip, 20 steps), float"] = scores(
            features_from_uint8(bb, base), text, y[:nb], x[:nb], seen[:nb]) | {"lattice_power_pct": lattice_power(base)}
        res["results"]["decoder, float, same images as the bridged row"] = scores(
            features_from_uint8(bb, images["float"][:nb]), text, y[:nb], x[:nb], seen[:nb])
        images["bridged diffusion"] = base
    t = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        gen.generate(x[:1])
        runs = []
        for i in range(20):
            t0 = time.perf_counter()
            gen.generate(x[i : i + 1])
            runs.append(time.perf_counter() - t0)
        t[f"{threads}_threads_median_s"] = round(float(np.median(runs)), 4)
    res["cpu_seconds_per_image"] = t
    pick = list(range(0, min(a.n, 200), 20))[:10]
    names = fs.metadata.get("class_names")
    rows = {"source": val.images[pick]} | {k: images[k][pick] for k in images if k != "bridged diffusion" or max(pick) < a.n_baseline}
    grid_png(rows, RESULTS / f"{a.out_name}_grid.png",
             "semcomp-lite-decoder: source | generated from the float and decoded features (Tiny-ImageNet val: "
             + ", ".join(names[int(fs.labels[i])] for i in pick[:10]) + ")")
    record(a.out_name, res)
    print(json.dumps(res["results"], indent=1))
    print(json.dumps(t))


if __name__ == "__main__":
    main()

"""The embedded generator (weights/heads/semcomp-tiny-unclip): quality from float vs decoded features, CPU speed.

Quality (zero-shot top-1/top-5 of the embedded CLIP on generated images, 200 classes; cosine between each
generated image's embedding and the conditioning / source embedding) was measured on the GPU burst that
trained the model (scripts/device_generator.py writes metrics.json + grid.npz); ``--device-dir`` imports
those with their provenance. This script re-measures a CPU subset with the *shipped* weights (``--n``) so
the committed file is checked against the GPU numbers, times one image on this CPU, and draws the grid.

    python bench/generate.py --device-dir .devout/gen --n 100
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
from semcomp.receiver import load_head  # noqa: E402
from semcomp.zoo import best_measured  # noqa: E402


def grid_png(grid: dict, path: Path, labels: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [k for k in ["source", "float", "dec_16", "dec_32", "dec_64", "dec_256"] if k in grid]
    n = grid[rows[0]].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.4 * len(rows)))
    for i, r in enumerate(rows):
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(grid[r][j])
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(labels.get(r, r), fontsize=7)
    fig.suptitle("semcomp-tiny-unclip: source | generated from float / decoded features (Tiny-ImageNet val)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device-dir", help="folder with the GPU burst's metrics.json and grid.npz")
    ap.add_argument("--n", type=int, default=100, help="val images to re-measure on this CPU with the shipped weights")
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    bb = load_backbone("semcomp-tiny-clip")
    gen = load_head("generate", bb.name)
    from semcomp.receiver import shipped_heads

    card = json.loads((shipped_heads(bb.name)["generate"] / "card.json").read_text())
    g = float(card.get("default_guidance", 3.0))
    res = {"model": "weights/heads/semcomp-tiny-unclip", "params": card.get("params"), "guidance": g, "steps": a.steps}
    # the GPU burst's section is kept from the last published result (a dated report folder starts empty)
    prev_path = next((p for p in (RESULTS / "generate.json", Path(__file__).resolve().parent / "results" / "generate.json") if p.exists()), None)
    prev = json.loads(prev_path.read_text()) if prev_path else {}
    if a.device_dir:
        d = Path(a.device_dir)
        m = json.loads((d / "metrics.json").read_text())
        res["gpu_training_and_eval"] = {k: m[k] for k in ("device", "torch", "train_images", "train_steps", "train_seconds", "batch", "lr",
                                                          "images_per_s", "eval_n", "sample_steps", "best_guidance", "metrics", "losses")}
        res["gpu_training_and_eval"]["command"] = card.get("train_command")
        res["gpu_training_and_eval"]["eval_data"] = "Tiny-ImageNet val, first 1000 images' features (all 200 classes; the generator trained on train images of the same classes)"
        ev = json.loads((Path(".devdata") / "eval.json").read_text()) if Path(".devdata/eval.json").exists() else {}
        res["gpu_training_and_eval"]["decoded_by"] = ev.get("codecs")
        grid = dict(np.load(d / "grid.npz"))
        codecs = ev.get("codecs", {})
        labels = {"source": "source", "float": "float"} | {f"dec_{b}": f"{b} bits\n{s}" for b, s in codecs.items()}
        grid_png(grid, RESULTS / "generate_grid.png", labels)
    elif "gpu_training_and_eval" in prev:
        res["gpu_training_and_eval"] = prev["gpu_training_and_eval"]

    # CPU re-check with the shipped (fp16-stored) weights
    val = tiny_imagenet_split("val")
    fs = load_features(Path.home() / ".cache/semcomp/features/tin-val.safetensors")
    text = F.normalize(torch.from_numpy(fs.metadata["_extra"]["text_features"]).float(), dim=-1)
    x = torch.from_numpy(fs.features[: a.n])
    y = torch.from_numpy(fs.labels[: a.n])
    best = best_measured(bb.name)
    variants = {"float": x}
    for b in (64, 256):
        c = load_codec(best[b]["path"])
        with torch.inference_mode():
            variants[f"{b} bits ({c.spec})"] = c.decode(c.encode(x))
    cpu = {}
    for k, v in variants.items():
        imgs = np.concatenate([gen.generate(v[i : i + 50], steps=a.steps, guidance=g, seed=i) for i in range(0, len(v), 50)])
        z = features_from_uint8(bb, imgs)
        top5 = (z @ text.T).topk(5, dim=1).indices
        cpu[k] = {"top1": float((top5[:, 0] == y).float().mean()), "top5": float((top5 == y[:, None]).any(1).float().mean()),
                  "cos_to_condition": float((z * F.normalize(v, dim=-1)).sum(1).mean()), "cos_to_source": float((z * x).sum(1).mean())}
        print(k, cpu[k], flush=True)
    real = features_from_uint8(bb, val.images[: a.n])
    cpu["real val images (ceiling)"] = {"top1": float(((real @ text.T).argmax(1) == y).float().mean())}
    res["cpu_recheck"] = {"items": a.n, "results": cpu}
    torch.manual_seed(0)
    t = []
    for i in range(3):
        t0 = time.perf_counter()
        gen.generate(x[:1], steps=a.steps, guidance=g, seed=i)
        t.append(time.perf_counter() - t0)
    res["cpu_seconds_per_image"] = {"steps": a.steps, "guidance": g, "median_s": float(np.median(t)), "runs": t,
                                    "threads": torch.get_num_threads()}
    record("generate", res)
    print(json.dumps(res["cpu_seconds_per_image"]))


if __name__ == "__main__":
    main()

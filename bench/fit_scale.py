"""How many images does ``semcomp fit`` need? Fit the default progressive codec from 1 k / 10 k / all Tiny-ImageNet
train images of the 160 codec-training classes and measure wall time and zero-shot on the 40 unseen classes.

Each size runs ``semcomp.training.fit.fit`` (the code behind ``semcomp fit``) on the first N images of a seeded
shuffle. Its features come from the tower cache (``semcomp.training.tower_features``: the same numbers as running
the images through the backbone), written where fit looks for finished extraction, so fit skips it; the extraction
time of N images is N divided by the backbone's throughput, measured here on ``--extract-sample`` real images through
``semcomp.extract.extract`` (the same call fit makes). The codebook size is the largest that fit accepts for N images
(FAISS's 39 points per centroid: 256 entries need about 12 k images; below that 16). Every fitted codec and the
shipped ``prq-s128o32k256`` are cut at the same budgets and scored by the same code (greedy encode, 40-way zero-shot,
"a photo of a {name}.", 2,000 Tiny-ImageNet val images of the unseen classes).

    python -m semcomp.training.tower_features --split tin-train        # the cache (about 1 h on 2 cores)
    python bench/fit_scale.py --sizes 1000 10000 0 --max-minutes 10       # 0 = every cached image
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import record  # noqa: E402

FEATURES = Path.home() / ".cache" / "semcomp" / "features"
BUDGETS = [8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024]


def training_pool(bb, split_name: str, seed: int) -> tuple[torch.Tensor, np.ndarray, int]:
    """Every cached Tiny-ImageNet train feature of the split's training classes, seeded shuffle; (x, labels, shards)."""
    from semcomp.data import tiny_imagenet_classes
    from semcomp.splits import class_split
    from semcomp.training.tower_features import assets_dir, cache_path, load_cached, shard_paths

    cfg = bb.model.cfg
    shards = sum(cache_path(cfg.tower, cfg.image_size, s).exists() for s in shard_paths("tin-train"))
    c = load_cached(cfg.tower, cfg.image_size, "tin-train")
    widx = {x["wnid"]: x["index"] for x in tiny_imagenet_classes(assets_dir() / "tiny-imagenet")}
    labels = np.array([widx[w] for w in c["wnids"]], np.int64)
    keep = ~np.isin(labels, class_split(split_name)["test_classes"])
    with torch.no_grad():
        x = F.normalize(bb.model.encode_pooled(c["pooled"][torch.from_numpy(keep)]), dim=-1)
    perm = np.random.default_rng(seed).permutation(int(keep.sum()))
    return x[perm], labels[keep][perm], shards


def extraction_rate(bb, n: int) -> float:
    """Images per second of ``semcomp.extract.extract`` (what fit runs) on n Tiny-ImageNet train images."""
    from semcomp.datasets import open_source
    from semcomp.extract import extract

    src = open_source("tiny-imagenet", "train")
    with tempfile.TemporaryDirectory() as d:
        t = time.time()
        extract(bb, src, Path(d) / "f.safetensors", limit=n, progress=False)
        return n / (time.time() - t)


def unseen_eval(split_name: str):
    from semcomp.data import load_features
    from semcomp.splits import class_split

    fs = load_features(FEATURES / "lite-val.safetensors")
    test = class_split(split_name)["test_classes"]
    keep = np.isin(fs.labels, test)
    remap = {c: i for i, c in enumerate(test)}
    text = fs.metadata["_extra"]["text_features"][test]
    names = [fs.metadata["class_names"][c] for c in test]
    x = F.normalize(torch.from_numpy(fs.features[keep]).float(), dim=-1)
    return x, np.array([remap[int(l)] for l in fs.labels[keep]]), text, names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 0], help="images per fit (0: all cached)")
    ap.add_argument("--max-minutes", type=float, default=10.0, help="fine-tuning time budget of each fit")
    ap.add_argument("--extract-sample", type=int, default=256)
    ap.add_argument("--split-name", default="tiny-imagenet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-name", default="fit_scale")
    a = ap.parse_args()
    from semcomp.backbone import load_backbone, weights_sha256_of
    from semcomp.codecs import load_codec
    from semcomp.data import FeatureSet, save_features, tiny_imagenet_classes
    from semcomp.datasets import ImageSource
    from semcomp.extract import text_features
    from semcomp.training.fit import evaluate_budgets, fit, images_needed, progressive_spec
    from semcomp.zoo import shipped_codecs

    torch.set_num_threads(2)
    bb = load_backbone("semcomp-lite-clip")
    rate = extraction_rate(bb, a.extract_sample)
    print(f"extraction: {rate:.1f} img/s", flush=True)
    pool, pool_labels, shards = training_pool(bb, a.split_name, a.seed)
    xe, ye, te, ne = unseen_eval(a.split_name)
    names = [c["name"] for c in tiny_imagenet_classes()]
    text, template = text_features(bb, names, "a photo of a {}.")
    shipped = next(c for c in shipped_codecs(bb.name) if c["spec"].startswith("prq-"))
    rows = [{"images": "shipped", "spec": shipped["spec"], "codec": str(shipped["path"]),
             "eval": evaluate_budgets(load_codec(shipped["path"]), xe, ye, te, ne, BUDGETS)}]
    print(json.dumps(rows[0]["eval"]["budgets"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.sizes:
            n = len(pool) if n <= 0 else min(n, len(pool))
            k = 256 if n >= images_needed([progressive_spec(None, 256)])[0] else 16
            spec = progressive_spec(None, k)
            work = Path(tmp) / f"work-{n}"
            work.mkdir()
            meta = {"backbone": bb.name, "backbone_sha256": weights_sha256_of(bb), "dataset": "tiny-imagenet",
                    "split": "train", "class_names": names, "template": template, "images": n}  # as extract writes it
            save_features(work / "features.safetensors", FeatureSet(pool[:n].numpy(), pool_labels[:n], meta),
                          extra={"text_features": text.numpy()})
            src = ImageSource("tiny-imagenet", "train", names, lambda: iter(()), f"Tiny-ImageNet train, {n} images of the "
                              f"{a.split_name} training classes (cached features)", count=n)
            t = time.time()
            out = fit(bb, src, specs=[spec], out_dir=Path(tmp) / f"codecs-{n}", work_dir=work, max_minutes=a.max_minutes,
                      seed=a.seed, progress=False, command=f"bench/fit_scale.py (n={n})")[0]
            fit_s = time.time() - t
            card = json.loads((out / "card.json").read_text())
            row = {"images": n, "spec": spec, "codebook": k, "fit_s": round(fit_s, 1),
                   "extract_s_estimate": round(n / rate, 1), "wall_s_estimate": round(fit_s + n / rate, 1),
                   "stopped": card.get("stopped"), "epochs_run": card.get("epochs_run"), "best_epoch": card.get("best_epoch"),
                   "eval": evaluate_budgets(load_codec(out), xe, ye, te, ne, BUDGETS)}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "eval"}), json.dumps(row["eval"]["budgets"]), flush=True)
    lines = ["| images (fit) | codec | fit time | + extraction (est.) | " + " | ".join(f"{b}" for b in BUDGETS) + " |",
             "|---|---|---:|---:|" + "---:|" * len(BUDGETS)]
    for r in rows:
        top = {x["bits"]: x["top1"] for x in r["eval"]["budgets"]}
        timing = ("—", "—") if r["images"] == "shipped" else (f"{r['fit_s'] / 60:.1f} min", f"{r['extract_s_estimate'] / 60:.1f} min")
        lines.append(f"| {r['images']} | `{r['spec']}` | {timing[0]} | {timing[1]} | "
                     + " | ".join(f"{100 * top[b]:.1f}" for b in BUDGETS) + " |")
    md = "\n".join(lines)
    print(md)
    record(a.out_name, {
        "command": "python bench/fit_scale.py " + " ".join(sys.argv[1:]), "backbone": bb.name,
        "data": f"fit: Tiny-ImageNet train images of the 160 codec-training classes from {shards} cached 1,000-image "
                f"shards ({len(pool)} images), seeded shuffle, first N; eval: {len(xe)} val images of the 40 unseen "
                f"classes, 40-way, 'a photo of a {{name}}.'; greedy encode for every codec",
        "extraction_img_per_s": round(rate, 2), "extract_sample": a.extract_sample, "max_minutes": a.max_minutes,
        "float_top1": rows[0]["eval"]["budgets"][0]["float_top1"], "results": rows, "table_md": md})


if __name__ == "__main__":
    main()

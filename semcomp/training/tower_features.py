"""Cache a frozen tower's pooled features and ImageNet logits over the project's image shards.

Aligning a frozen tower to the text space only ever needs ``pool(feature_map(x))`` and the tower's own
ImageNet logits, so they are computed once per (tower, resolution, shard) and kept in
``~/.cache/semcomp/tower-features/`` (one safetensors file per shard: a killed run resumes at the next
shard). Usage::

    python -m semcomp.training.tower_features --tower efficientnet-lite0 --size 224 \\
        --split tin-val tin-train inet-samples --shards 20
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from ..data import iter_shard
from ..towers import TOWERS, load_tower, tower_transform

logger = logging.getLogger(__name__)

CACHE = Path(os.environ.get("SEMCOMP_CACHE", Path.home() / ".cache" / "semcomp")) / "tower-features"
SPLITS = {"tin-train": ("tiny-imagenet", "train-*.tar.gz"), "tin-val": ("tiny-imagenet", "val-*.tar.gz"),
          "inet-samples": ("imagenet-samples", "samples-*.tar.gz")}


def assets_dir() -> Path:
    from ..data import SHARED_ASSETS

    return Path(SHARED_ASSETS)


def imagenet_wnids() -> list[str]:
    """The 1,000 ImageNet-1k wnids in the standard (sorted) label order, read from the sample shards."""
    out = {}
    for p in sorted((assets_dir() / "imagenet-samples").glob("samples-*.tar.gz")):
        for _, s in iter_shard(p):
            m = json.loads(s["json"])
            out[m["class_index"]] = m["wnid"]
    return [out[i] for i in range(len(out))]


def shard_paths(split: str) -> list[Path]:
    folder, pattern = SPLITS[split]
    return sorted((assets_dir() / folder).glob(pattern))


def cache_path(tower: str, size: int, shard: Path, view: int = 0) -> Path:
    """View 0 is the plain image; views 1.. are seeded random crops + flips of it (augmented copies)."""
    suffix = f"-view{view}" if view else ""
    return CACHE / f"{tower}-{size}" / (shard.name.replace(".tar.gz", "") + f"-{shard.parent.name}{suffix}.safetensors")


def augment_transform(name: str, size: int, seed: int):
    """A seeded random view: crop 35-100 % of the area, flip half the time (photo-like variety for codecs)."""
    from torchvision import transforms as T

    spec = TOWERS[name]
    torch.manual_seed(seed)
    return T.Compose([T.Lambda(lambda im: im.convert("RGB")),
                      T.RandomResizedCrop(size, scale=(0.35, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(spec.mean, spec.std)])


@torch.inference_mode()
def extract_shard(model, transform, shard: Path, out: Path, batch_size: int = 64) -> None:
    from safetensors.torch import save_file

    keys, wnids, imgs = [], [], []
    for key, s in iter_shard(shard):
        keys.append(key)
        wnids.append(json.loads(s["json"])["wnid"])
        imgs.append(transform(Image.open(io.BytesIO(s["jpg"]))))
    pooled, logits = [], []
    for i in range(0, len(imgs), batch_size):
        f = model(torch.stack(imgs[i : i + batch_size]))
        pooled.append(f.half())
        logits.append(model.classify(f).half())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file({"pooled": torch.cat(pooled), "logits": torch.cat(logits)}, str(tmp),
              metadata={"keys": json.dumps(keys), "wnids": json.dumps(wnids), "shard": shard.name})
    tmp.replace(out)  # atomic: a killed run never leaves a half file


def load_cached(tower: str, size: int, split: str, shards: int | None = None, view: int = 0) -> dict:
    """Concatenate the cached shards of a split: ``{"pooled", "logits", "keys", "wnids"}``."""
    from safetensors import safe_open

    pooled, logits, keys, wnids = [], [], [], []
    for shard in shard_paths(split)[:shards]:
        p = cache_path(tower, size, shard, view)
        if not p.exists():
            continue
        with safe_open(str(p), "pt") as f:
            meta = f.metadata()
            pooled.append(f.get_tensor("pooled").float())
            logits.append(f.get_tensor("logits").float())
        keys += json.loads(meta["keys"])
        wnids += json.loads(meta["wnids"])
    if not pooled:
        raise FileNotFoundError(f"no cached {tower}-{size} features for {split} in {CACHE}")
    return {"pooled": torch.cat(pooled), "logits": torch.cat(logits), "keys": keys, "wnids": wnids}


def feature_file_from_cache(backbone_name: str, split: str, out: str | Path, shards: int | None = None) -> Path:
    """Write a standard feature file (as ``semcomp extract`` does) for a pretrained-tower backbone from the
    cached pooled features: the same numbers as running the images through it, without the tower's cost."""
    import numpy as np

    from ..backbone import load_backbone
    from ..data import FeatureSet, save_features, tiny_imagenet_classes
    from ..extract import text_features

    bb = load_backbone(backbone_name)
    cfg = bb.model.cfg
    c = load_cached(cfg.tower, cfg.image_size, split, shards)
    with torch.no_grad():
        feats = torch.nn.functional.normalize(bb.model.encode_pooled(c["pooled"]), dim=-1).numpy()
    classes = tiny_imagenet_classes(assets_dir() / "tiny-imagenet")
    widx = {x["wnid"]: x["index"] for x in classes}
    labels = np.array([widx.get(w, -1) for w in c["wnids"]], np.int64)
    names = [x["name"] for x in classes]
    text, template = text_features(bb, names, "a photo of a {}.")
    meta = {"backbone": bb.name, **({"backbone_sha256": bb.weights_sha256} if bb.weights_sha256 else {}),
            "dataset": "tiny-imagenet", "split": split.replace("tin-", ""), "class_names": names,
            "template": template, "source": f"cached {cfg.tower}@{cfg.image_size} pooled features of {split} "
            f"({len(feats)} images, first {shards or 'all'} shards)", "images": int(len(feats)), "processes": 1}
    save_features(out, FeatureSet(feats, labels, meta), extra={"text_features": text.numpy()})
    return Path(out)


def codec_training_file(backbone_name: str, out: str | Path, shards: int | None, views: int, split_name: str = "tiny-imagenet") -> Path:
    """The codecs' training features: Tiny-ImageNet train images of the split's training classes, plus the
    ImageNet sample photos (and their cached random views) except those of the split's test classes — so
    codecs see real 224 px photos, not only upsampled 64 px thumbnails. Labels: Tiny-ImageNet index or -1."""
    import numpy as np

    from ..backbone import load_backbone
    from ..data import FeatureSet, save_features, tiny_imagenet_classes
    from ..splits import class_split

    bb = load_backbone(backbone_name)
    cfg = bb.model.cfg
    classes = tiny_imagenet_classes(assets_dir() / "tiny-imagenet")
    widx = {x["wnid"]: x["index"] for x in classes}
    test = set(class_split(split_name)["test_classes"])
    parts = [load_cached(cfg.tower, cfg.image_size, "tin-train", shards)]
    parts += [load_cached(cfg.tower, cfg.image_size, "inet-samples", None, v) for v in range(views + 1)]
    pooled = torch.cat([p["pooled"] for p in parts])
    labels = np.array([widx.get(w, -1) for p in parts for w in p["wnids"]], np.int64)
    keep = ~np.isin(labels, list(test))
    with torch.no_grad():
        feats = torch.nn.functional.normalize(bb.model.encode_pooled(pooled[torch.from_numpy(keep)]), dim=-1).numpy()
    n_photo = int(keep[len(parts[0]["wnids"]):].sum())
    meta = {"backbone": bb.name, **({"backbone_sha256": bb.weights_sha256} if bb.weights_sha256 else {}),
            "dataset": "tiny-imagenet+imagenet-samples", "split": "train",
            "source": f"cached {cfg.tower}@{cfg.image_size}: Tiny-ImageNet train (first {shards or 'all'} shards) of the "
            f"{split_name} training classes + {n_photo} ImageNet sample photo views ({views} random views each); "
            f"the {len(test)} test classes left out", "images": int(keep.sum()), "processes": 1,
            "class_names": [x["name"] for x in classes]}
    save_features(out, FeatureSet(feats, labels[keep], meta))
    return Path(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tower", choices=sorted(TOWERS), default="efficientnet-lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--split", nargs="+", choices=sorted(SPLITS), default=["tin-val"])
    ap.add_argument("--shards", type=int, default=None, help="first N shards of each split (1,000 images each)")
    ap.add_argument("--views", type=int, default=0, help="also cache this many seeded random views of each image")
    ap.add_argument("--feature-file", metavar="OUT", help="instead: write OUT, a feature file of --backbone over the "
                    "cached features of the (one) --split")
    ap.add_argument("--backbone", default="semcomp-lite-clip")
    ap.add_argument("--codec-train-file", metavar="OUT", help="instead: write OUT, the codecs' training features "
                    "(Tiny-ImageNet train classes + ImageNet sample photos and --views views)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.codec_train_file:
        codec_training_file(args.backbone, args.codec_train_file, args.shards, args.views)
        return
    if args.feature_file:
        feature_file_from_cache(args.backbone, args.split[0], args.feature_file, args.shards)
        return
    model, transform = load_tower(args.tower), tower_transform(args.tower, args.size)
    for split in args.split:
        for view in range(args.views + 1):
            todo = [s for s in shard_paths(split)[: args.shards] if not cache_path(args.tower, args.size, s, view).exists()]
            for i, shard in enumerate(tqdm(todo, desc=f"{args.tower}@{args.size} {split} view {view}", mininterval=30)):
                tf = transform if view == 0 else augment_transform(args.tower, args.size, 1000 * view + i)
                extract_shard(model, tf, shard, cache_path(args.tower, args.size, shard, view))


if __name__ == "__main__":
    main()

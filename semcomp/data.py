"""Image and feature datasets.

Images: Tiny-ImageNet as webdataset shards (``../shared/assets/tiny-imagenet``) or in the official folder
layout (``tiny-imagenet-200/train/<wnid>/images/*.JPEG``), decoded once into a uint8 array cache so that
training on 2 CPU cores is not bound by JPEG decoding.

Features: safetensors files with ``features`` (N, D) float, ``labels`` (N,) int64 and JSON metadata
(backbone, class names) in the safetensors header.
"""
from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

logger = logging.getLogger(__name__)

SHARED_ASSETS = Path(os.environ.get("SEMCOMP_SHARED_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))


class DataError(ValueError):
    """A dataset or feature file is missing, unreadable or inconsistent."""


def iter_shard(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {ext: bytes})`` from a (gzipped) webdataset tar, streaming.

    Streaming mode ("r|*") matters: random access into a gzip stream re-decompresses from the start.
    """
    cur: dict[str, bytes] = {}
    key = None
    with tarfile.open(path, "r|*") as tf:
        for m in tf:
            if not m.isfile():
                continue
            k, ext = m.name.rsplit(".", 1)
            if k != key and cur:
                yield key, cur
                cur = {}
            key = k
            cur[ext] = tf.extractfile(m).read()
    if cur:
        yield key, cur


def decode_rgb(data: bytes, size: int | None = None) -> np.ndarray:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def tiny_imagenet_classes(root: str | os.PathLike | None = None) -> list[dict]:
    """The 200 Tiny-ImageNet classes in index order (sorted wnids), with WordNet synonyms."""
    root = Path(root) if root else SHARED_ASSETS / "tiny-imagenet"
    path = root / "classes.json"
    if not path.exists():
        raise DataError(f"Tiny-ImageNet classes file not found: {path}")
    return json.loads(path.read_text())


@dataclass
class ImageArray:
    """Decoded images in memory: ``images`` (N, H, W, 3) uint8 and ``labels`` (N,) int64."""

    images: np.ndarray
    labels: np.ndarray
    keys: list[str] = field(default_factory=list)


def load_shards(pattern_paths: list[Path], size: int = 64, limit: int | None = None) -> ImageArray:
    imgs, labels, keys = [], [], []
    for p in pattern_paths:
        for key, s in iter_shard(p):
            imgs.append(decode_rgb(s["jpg"], size))
            labels.append(int(s["cls"]))
            keys.append(key)
            if limit and len(imgs) >= limit:
                break
        if limit and len(imgs) >= limit:
            break
    if not imgs:
        raise DataError(f"no samples in {pattern_paths}")
    return ImageArray(np.stack(imgs), np.asarray(labels, dtype=np.int64), keys)


def load_tiny_imagenet_folder(root: str | os.PathLike, classes: list[dict], size: int = 64) -> ImageArray:
    """Official folder layout ``<root>/train/<wnid>/images/*.JPEG``; only the given classes are read."""
    root = Path(root)
    imgs, labels, keys = [], [], []
    for c in classes:
        d = root / "train" / c["wnid"] / "images"
        if not d.is_dir():
            raise DataError(f"missing class folder {d}")
        for f in sorted(d.iterdir()):
            imgs.append(decode_rgb(f.read_bytes(), size))
            labels.append(c["index"])
            keys.append(f.stem)
    return ImageArray(np.stack(imgs), np.asarray(labels, dtype=np.int64), keys)


def cached_images(name: str, build, cache_dir: str | os.PathLike | None = None) -> ImageArray:
    """Return a decoded image array, building it once and caching it as .npz outside the repo."""
    cache_dir = Path(cache_dir or Path.home() / ".cache" / "semcomp" / "images")
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{name}.npz"
    if path.exists():
        z = np.load(path)
        return ImageArray(z["images"], z["labels"], list(z["keys"]))
    arr = build()
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, images=arr.images, labels=arr.labels, keys=np.asarray(arr.keys))
    os.replace(tmp, path)
    return arr


def tiny_imagenet_split(split: str, source: str | None = None, size: int = 64) -> ImageArray:
    """Tiny-ImageNet ``train`` or ``val`` as an in-memory array (cached).

    ``source`` may be a folder in the official layout (all 500 train images per class) instead of the
    shared shards (300 per class).
    """
    shards_dir = SHARED_ASSETS / "tiny-imagenet"
    if split not in ("train", "val"):
        raise DataError(f"unknown split {split!r}; choose 'train' or 'val'")
    if source and split == "train":
        classes = tiny_imagenet_classes()
        return cached_images(f"tin-train-folder-{size}", lambda: load_tiny_imagenet_folder(source, classes, size))
    shards = sorted(shards_dir.glob(f"{split}-*.tar.gz"))
    if not shards:
        raise DataError(f"no {split} shards under {shards_dir}")
    return cached_images(f"tin-{split}-shards-{size}", lambda: load_shards(shards, size))


# ---------------------------------------------------------------- feature files


@dataclass
class FeatureSet:
    features: "np.ndarray"  # (N, D) float32, L2-normalised
    labels: "np.ndarray"  # (N,) int64, -1 when unknown
    metadata: dict

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def subset(self, mask: np.ndarray) -> "FeatureSet":
        return FeatureSet(self.features[mask], self.labels[mask], dict(self.metadata))


def save_features(path: str | os.PathLike, fs: FeatureSet, extra: dict[str, np.ndarray] | None = None) -> None:
    from safetensors.numpy import save_file

    tensors = {"features": np.ascontiguousarray(fs.features, dtype=np.float32),
               "labels": np.ascontiguousarray(fs.labels, dtype=np.int64)}
    tensors.update(extra or {})
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"semcomp": json.dumps(fs.metadata)})
    os.replace(tmp, path)


def check_feature_weights(fs: FeatureSet, weights_sha256: str | None, where) -> None:
    """DataError if ``fs`` records other backbone weights (``backbone_sha256``) than ``weights_sha256``: training a
    head or codec on them for these weights would bind it to features it never saw. A file without the record
    (written before it existed) is let through with a warning; unknown weights are not compared."""
    got = fs.metadata.get("backbone_sha256")
    if not weights_sha256:
        return
    if not got:
        logger.warning("%s does not record which weights of backbone %r made it; assuming the ones in use (%s)",
                       where, fs.metadata.get("backbone"), weights_sha256[:12])
    elif got != weights_sha256:
        raise DataError(f"{where} holds features of other weights of backbone {fs.metadata.get('backbone')!r} "
                        f"({str(got)[:12]}, in use {weights_sha256[:12]}); extract them again with these weights")


def load_features(path: str | os.PathLike) -> FeatureSet:
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise DataError(f"feature file not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get("semcomp", "{}"))
            feats = f.get_tensor("features").astype(np.float32)
            labels = f.get_tensor("labels") if "labels" in f.keys() else np.full(len(feats), -1, np.int64)
            extra = {k: f.get_tensor(k) for k in f.keys() if k not in ("features", "labels")}
    except Exception as e:  # safetensors raises several types on bad files
        raise DataError(f"cannot read feature file {path}: {e}") from e
    if feats.ndim != 2:
        raise DataError(f"{path}: 'features' must be 2-D (N, D), got shape {feats.shape}")
    meta["_extra"] = extra
    return FeatureSet(feats, labels.astype(np.int64), meta)


# ---------------------------------------------------------------- pasted pairs (segmentation off-centre)


@dataclass
class PastedPair:
    image: np.ndarray  # (h, 2w, 3) uint8: image ``left`` | image ``right``
    left: int  # indices into the source array
    right: int
    target: int  # 0: the command names the left image, 1: the right one
    label: int  # the named image's class
    box: tuple[int, int, int, int]  # its box (x0, y0, x1, y1, inclusive) in the pasted image's pixels


def pasted_pairs(images: np.ndarray, labels: np.ndarray, boxes: list, n: int, seed: int = 0,
                 pool: np.ndarray | None = None) -> list[PastedPair]:
    """``n`` deterministic side-by-side pairs of two images of different classes, the named side drawn at random:
    a segmentation set whose object is never centred (pointing at the image centre scores ~0, a random half 50 %).
    ``boxes[i]``: image i's box; ``pool``: the indices to draw from (default all)."""
    pool = np.arange(len(images)) if pool is None else np.asarray(pool)
    if len(np.unique(labels[pool])) < 2:
        raise DataError("pasted pairs need images of at least two classes in the pool")
    rng = np.random.default_rng(seed)
    w = images.shape[2]
    out = []
    while len(out) < n:
        a, b = (int(i) for i in rng.choice(pool, 2, replace=False))
        if labels[a] == labels[b]:
            continue
        target = int(rng.integers(2))
        k = (a, b)[target]
        x0, y0, x1, y1 = (int(v) for v in boxes[k])
        box = (x0 + w * target, y0, x1 + w * target, y1)
        out.append(PastedPair(np.concatenate([images[a], images[b]], axis=1), a, b, target, int(labels[k]), box))
    return out

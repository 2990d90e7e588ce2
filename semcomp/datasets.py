"""Labelled image sources for ``semcomp extract``: one interface over the datasets users point us at.

``open_source(dataset, split, source)`` returns an ``ImageSource``: class names in label order and a stream of
``(index, load, label)`` where ``load()`` decodes the image only when asked, so a resumed or rank-sharded
extraction skips images without decoding them.

* ``tiny-imagenet``: the shared webdataset shards, or the official folder layout (``--source``, train split).
* ``imagenet``: the folder layout ``<source>/<split>/<wnid>/*.JPEG`` with all 1000 class folders; names from
  open_clip's curated ``IMAGENET_CLASSNAMES`` (sorted-wnid order is the standard label order).
* ``cifar10``, ``cifar100``, ``stl10``: torchvision's datasets (downloaded once on the user's machine into
  ``~/.cache/semcomp/data``; names from the dataset itself). ``val`` means their test split.
* ``folder``: any folder with a ``labels.csv`` (header ``path,label``; paths relative to the folder); classes
  are the sorted distinct labels.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .data import SHARED_ASSETS, DataError, iter_shard, tiny_imagenet_classes

DATASETS = ("tiny-imagenet", "imagenet", "cifar10", "cifar100", "stl10", "folder")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
DOWNLOAD_ROOT = Path(os.environ.get("SEMCOMP_DATA", Path.home() / ".cache" / "semcomp" / "data"))


@dataclass
class ImageSource:
    name: str
    split: str
    class_names: list[str]
    samples: Callable[[], Iterator[tuple[int, Callable, int]]]  # (index, load() -> PIL RGB image, label)
    description: str
    count: int | None = None  # images it yields, where known without reading them (checked before extraction)


def _open_bytes(data: bytes, what: str):
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
        return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot decode image {what}: {e}") from e


def _open_path(path: Path):
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    return _open_bytes(data, str(path))


def _tiny_imagenet(split: str, source: str | None) -> ImageSource:
    classes = tiny_imagenet_classes()
    names = [c["name"] for c in classes]
    if source and split == "train":
        root = Path(source)

        def samples():
            i = 0
            for c in classes:
                d = root / "train" / c["wnid"] / "images"
                if not d.is_dir():
                    raise DataError(f"missing class folder {d}")
                for f in sorted(d.iterdir()):
                    yield i, (lambda f=f: _open_path(f)), c["index"]
                    i += 1

        return ImageSource("tiny-imagenet", split, names, samples, f"Tiny-ImageNet {split}, folder layout {root}")
    shards = sorted((SHARED_ASSETS / "tiny-imagenet").glob(f"{split}-*.tar.gz"))
    if not shards:
        raise DataError(f"no Tiny-ImageNet {split} shards under {SHARED_ASSETS / 'tiny-imagenet'}")

    def samples():
        i = 0
        for p in shards:
            for key, s in iter_shard(p):
                yield i, (lambda b=s["jpg"], k=key: _open_bytes(b, f"{p.name}:{k}")), int(s["cls"])
                i += 1

    return ImageSource("tiny-imagenet", split, names, samples, f"Tiny-ImageNet {split}, shared shards")


def _imagenet(split: str, source: str | None) -> ImageSource:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    if not source:
        raise DataError("imagenet needs --source: a folder with <split>/<wnid>/ class folders")
    root = Path(source) / split
    if not root.is_dir():
        raise DataError(f"no ImageNet split folder {root}")
    wnids = sorted(d.name for d in root.iterdir() if d.is_dir())
    if len(wnids) != len(IMAGENET_CLASSNAMES):
        raise DataError(f"{root} holds {len(wnids)} class folders; the ImageNet layout needs all {len(IMAGENET_CLASSNAMES)} "
                        "(sorted wnid order is the label order)")

    def samples():
        i = 0
        for label, w in enumerate(wnids):
            for f in sorted((root / w).iterdir()):
                if f.suffix.lower() in IMAGE_EXTS:
                    yield i, (lambda f=f: _open_path(f)), label
                    i += 1

    return ImageSource("imagenet", split, list(IMAGENET_CLASSNAMES), samples, f"ImageNet {split}, folder layout {root}")


def _torchvision(name: str, split: str) -> ImageSource:
    import torchvision.datasets as tvd

    root = DOWNLOAD_ROOT / name
    try:
        if name == "stl10":
            ds = tvd.STL10(str(root), split="train" if split == "train" else "test", download=True)
        else:
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            ds = cls(str(root), train=split == "train", download=True)
    except Exception as e:  # network or archive errors, reported with where we tried
        raise DataError(f"cannot download or open torchvision {name} into {root}: {e}") from e

    def samples():
        for i in range(len(ds)):
            yield i, (lambda i=i: ds[i][0].convert("RGB")), _label(ds, i)

    return ImageSource(name, split, [c.replace("_", " ") for c in ds.classes], samples, f"torchvision {name} {split} ({root})",
                       len(ds))


def _label(ds, i: int) -> int:
    # read the label without decoding the image: the arrays torchvision keeps
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = ds.labels
    return int(labels[i])


def _folder(source: str | None) -> ImageSource:
    if not source:
        raise DataError("the folder dataset needs --source: a folder with labels.csv (path,label)")
    root = Path(source)
    table = root / "labels.csv"
    if not table.exists():
        raise DataError(f"no labels.csv in {root} (expected a header 'path,label')")
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise DataError(f"{table} needs the columns 'path' and 'label', got {reader.fieldnames}")
        rows = [(r["path"], r["label"].strip()) for r in reader]
    if not rows:
        raise DataError(f"{table} lists no images")
    names = sorted({lab for _, lab in rows if lab})
    if not names:
        raise DataError(f"{table}: every label is empty")
    index = {n: i for i, n in enumerate(names)}

    def samples():
        for i, (p, lab) in enumerate(rows):
            if not lab:
                raise DataError(f"{table}: row {i + 2} ({p}) has an empty label")
            yield i, (lambda p=p: _open_path(root / p)), index[lab]

    return ImageSource("folder", "all", names, samples, f"image folder {root} ({len(rows)} images listed in labels.csv)",
                       len(rows))


def image_folder(source: str | os.PathLike) -> ImageSource:
    """Any folder of images (``semcomp fit --images DIR``): with a ``labels.csv`` as the ``folder`` dataset; with
    its images in first-level subfolders (torchvision's ImageFolder layout) the subfolder names are the classes;
    otherwise unlabelled (label -1, no classes: a codec needs no labels; only the zero-shot check is skipped).
    Files are found recursively, in sorted order, by extension (``IMAGE_EXTS``)."""
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    if (root / "labels.csv").exists():
        return _folder(str(root))
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) under {root}")
    parts = [p.relative_to(root).parts for p in files]
    labelled = all(len(q) == 2 for q in parts) and len({q[0] for q in parts}) > 1
    names = sorted({q[0] for q in parts}) if labelled else []
    index = {n: i for i, n in enumerate(names)}

    def samples():
        for i, (p, q) in enumerate(zip(files, parts)):
            yield i, (lambda p=p: _open_path(p)), index[q[0]] if labelled else -1

    kind = f"{len(names)} class subfolders" if labelled else "unlabelled"
    return ImageSource("images", "all", names, samples, f"image folder {root} ({len(files)} images, {kind})", len(files))


def open_source(dataset: str, split: str = "val", source: str | None = None) -> ImageSource:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    if split not in ("train", "val"):
        raise DataError(f"unknown split {split!r}; choose 'train' or 'val'")
    if dataset == "tiny-imagenet":
        return _tiny_imagenet(split, source)
    if dataset == "imagenet":
        return _imagenet(split, source)
    if dataset == "folder":
        return _folder(source)
    return _torchvision(dataset, split)

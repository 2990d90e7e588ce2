"""Label sets for zero-shot classification, from the packages and datasets that curate them (never retyped).

Tiny-ImageNet-200 ships in ``assets/labels``; ImageNet-1k comes from open_clip; CIFAR-10/100 names come from
torchvision's datasets, which download the dataset once (no package carries the names alone) and are then
cached as JSON in ``~/.cache/semcomp/labels``.
"""
from __future__ import annotations

import json
from pathlib import Path

CACHE = Path.home() / ".cache" / "semcomp" / "labels"
DOWNLOADABLE = {"CIFAR-10": "CIFAR10", "CIFAR-100": "CIFAR100"}


class LabelSetError(ValueError):
    """A label set that cannot be had here (e.g. its download failed)."""


def downloadable_label_set(name: str, root: str | Path | None = None) -> list[str]:
    if name not in DOWNLOADABLE:
        raise LabelSetError(f"unknown label set {name!r}; choose one of {sorted(DOWNLOADABLE)}")
    cached = CACHE / f"{name}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    import torchvision

    try:
        ds = getattr(torchvision.datasets, DOWNLOADABLE[name])(str(root or CACHE / "torchvision"), train=False, download=True)
    except Exception as e:  # no internet, disk full, ...: say what and why
        raise LabelSetError(f"could not get the {name} class names (torchvision downloads the dataset once): {e}") from e
    names = [c.replace("_", " ") for c in ds.classes]
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(names))
    return names


# ----------------------------------------------------------------------------- bounds on what a user types
MAX_LABELS = 2000  # one custom list: its text features took 11.6 s on 2 CPU cores at load average 5
MAX_LABEL_CHARS = 100  # one label
MAX_LABELS_TEXT = 50_000  # the whole comma-separated text, checked before it is split


def parse_custom_labels(text: str | None, max_labels: int = MAX_LABELS) -> list[str]:
    """``"cat, dog, fire truck"`` -> ``["cat", "dog", "fire truck"]`` (stripped, empty items dropped, duplicates
    kept once in order). Raises LabelSetError naming the limit for empty, too many or too long labels."""
    text = text or ""
    if len(text) > MAX_LABELS_TEXT:
        raise LabelSetError(f"the custom label text is {len(text):,} characters long; the limit is {MAX_LABELS_TEXT:,}")
    names = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not names:
        raise LabelSetError("enter at least one comma-separated label (e.g. \"cat, dog, fire truck\")")
    if len(names) > max_labels:
        raise LabelSetError(f"{len(names):,} custom labels; the limit is {max_labels:,} (each label's text feature is "
                            f"computed per request)")
    long = [n for n in names if len(n) > MAX_LABEL_CHARS]
    if long:
        raise LabelSetError(f"a label is {len(long[0])} characters long; keep each under {MAX_LABEL_CHARS} "
                            f"(starts {long[0][:30]!r})")
    return names


def builtin_label_sets(root: str | Path | None = None) -> dict[str, list[str]]:
    """The label sets that need no download: Tiny-ImageNet-200 (``assets/labels``) and ImageNet-1k (open_clip)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    root = Path(root) if root else Path(__file__).resolve().parents[1]
    tin = json.loads((root / "assets" / "labels" / "tiny-imagenet-200.json").read_text())
    return {"Tiny-ImageNet-200": [c["name"] for c in tin], "ImageNet-1k": list(IMAGENET_CLASSNAMES)}

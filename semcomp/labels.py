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

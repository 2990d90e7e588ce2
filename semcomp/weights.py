"""Shipped-weights folders: ``model.safetensors`` + ``config.json`` + ``card.json`` (with the file's sha256)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_verified_card(folder: str | Path, weights: str = "model.safetensors", error: type[Exception] = ValueError,
                       verify: bool = True) -> dict:
    """The folder's card (``{}`` if none); raises ``error`` naming the file if the weights are missing or do
    not match the card's sha256 (altered, truncated or swapped)."""
    folder = Path(folder)
    w = folder / weights
    if not w.exists():
        raise error(f"weights not found: {w}")
    card = json.loads((folder / "card.json").read_text()) if (folder / "card.json").exists() else {}
    if verify and card.get("sha256") and file_sha256(w) != card["sha256"]:
        raise error(f"weights file {w} does not match the sha256 in its card (altered or truncated)")
    return card


def config_from_dict(cls, d: dict, tuple_fields: tuple[str, ...] = ()):
    """A config dataclass from its ``config.json``: JSON lists back to tuples, unknown keys refused by name."""
    d = dict(d)
    for k in tuple_fields:
        if k in d:
            d[k] = tuple(d[k])
    known = set(cls.__dataclass_fields__)
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; valid: {sorted(known)}")
    return cls(**d)

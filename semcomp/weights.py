"""Shipped-weights folders: ``model.safetensors`` + ``config.json`` + ``card.json``.

The card holds the sha256 of the weights file and, since issue 19, of ``config.json`` (``config_sha256``): a
config is untrusted input too (one edited number once asked for 35 TB), so it is checked before anything is
built from it. Cards without ``config_sha256`` still load.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

MAX_JSON_BYTES = 1 << 20  # a config or card is a few kB; refuse to read megabytes of one


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (a large file is never held in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json_bytes(path: str | Path, error: type[Exception] = ValueError, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The raw bytes of a small JSON file; ``error`` if it is missing, not a file or over ``max_bytes``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} is missing or not a file")
    size = path.stat().st_size
    if size > max_bytes:
        raise error(f"{path} is {size} bytes, over the {max_bytes}-byte limit for a JSON file")
    try:
        return path.read_bytes()
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from e


def parse_json_object(raw: bytes, path: str | Path, error: type[Exception] = ValueError) -> dict:
    """A JSON object from bytes; ``error`` with one line of reason if it is not UTF-8 JSON or not an object."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise error(f"{path} is not valid JSON: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if not isinstance(obj, dict):
        raise error(f"{path} must hold a JSON object, got {type(obj).__name__}")
    return obj


def read_card(folder: str | Path, error: type[Exception] = ValueError) -> dict:
    """The folder's ``card.json`` (``{}`` if none), with its hash fields type-checked."""
    p = Path(folder) / "card.json"
    if not p.exists():
        return {}
    card = parse_json_object(read_json_bytes(p, error), p, error)
    for k in ("sha256", "config_sha256"):
        v = card.get(k)
        if v is not None and not (isinstance(v, str) and len(v) == 64):
            raise error(f"{p}: {k} must be a 64-character hex string, got {v!r}")
    return card


def verify_config_bytes(raw: bytes, card: dict, path: str | Path, error: type[Exception] = ValueError) -> None:
    """``error`` if the card names a ``config_sha256`` and ``raw`` (the config file's bytes) does not match it."""
    want = card.get("config_sha256")
    if want and hashlib.sha256(raw).hexdigest() != want:
        raise error(f"config file {path} does not match the config_sha256 in its card (edited or swapped)")


def read_verified_card(folder: str | Path, weights: str = "model.safetensors", error: type[Exception] = ValueError,
                       verify: bool = True, config: str | None = "config.json") -> dict:
    """The folder's card (``{}`` if none); raises ``error`` naming the file if the weights are missing or do
    not match the card's sha256 (altered, truncated or swapped), or if the card names a ``config_sha256``
    that ``config`` does not match. A malformed card raises ``error`` too."""
    folder = Path(folder)
    w = folder / weights
    if not w.is_file():
        raise error(f"weights not found: {w}")
    card = read_card(folder, error)
    if verify and config and card.get("config_sha256"):
        verify_config_bytes(read_json_bytes(folder / config, error), card, folder / config, error)
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

"""Shipped-weights folders: ``model.safetensors`` + ``config.json`` + ``card.json``.

The card holds the sha256 of the weights file and, since issue 19, of ``config.json`` (``config_sha256``): a
config is untrusted input too (one edited number once asked for 35 TB), so it is checked before anything is
built from it. Cards without ``config_sha256`` still load.

A codec's or head's card may also hold ``backbone_sha256``: the sha256 of the backbone weights whose features it
was trained on (the backbone card's own ``sha256``). A backbone keeps its name when its weights are retrained, so
the name alone cannot tell a codec for the old weights from one for the new: :func:`check_backbone_binding`
refuses the pair when both hashes are known and differ. It lives in card.json, not config.json, so that stamping
an old folder (:func:`stamp_backbone`) leaves the config and its ``config_sha256`` as they are.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

MAX_JSON_BYTES = 1 << 20  # a config or card is a few kB; refuse to read megabytes of one
BACKBONE_SHA256 = "backbone_sha256"  # card key: sha256 of the backbone weights the folder was trained for
HASH_KEYS = ("sha256", "config_sha256", BACKBONE_SHA256, "base_" + BACKBONE_SHA256)


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
    for k in HASH_KEYS:
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


def is_sha256(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def check_backbone_binding(card: dict, backbone: str, weights_sha256: str | None, what: str, error: type[Exception],
                           retrain: str, key: str = BACKBONE_SHA256) -> None:
    """``error`` if ``card[key]`` (the backbone weights the folder was trained for) and ``weights_sha256`` (those of
    the backbone the caller will use) are both known and differ. Unknown on either side: nothing to compare, no
    error (folders written before the field existed, backbones without a card such as open_clip models)."""
    want = card.get(key)
    if not want or not weights_sha256 or want == weights_sha256:
        return
    raise error(f"{what} was trained for other weights of backbone {backbone!r} (weights {want[:12]}) than the "
                f"{backbone!r} in use (weights {weights_sha256[:12]}): its output would be garbage; retrain it for "
                f"these weights ({retrain})")


def stamp_backbone(folder: str | Path, weights_sha256: str, backbone: str | None = None, force: bool = False,
                   key: str = BACKBONE_SHA256, dry_run: bool = False) -> bool:
    """Add ``key`` (default ``backbone_sha256``) to ``folder/card.json``; nothing else in the folder changes (not
    config.json, not the weights, not the card's other keys or their order). For folders trained before the field
    existed, once it is known which backbone weights they were trained for. ``backbone``: if given, the folder's
    config.json must name it (``"backbone"``). Returns False if the card already holds this hash; a card holding
    another one is refused unless ``force`` (it was trained for other weights: retrain it instead). ``dry_run``:
    every check, no write. ValueError with one line of reason on anything wrong."""
    folder = Path(folder)
    if not is_sha256(weights_sha256):
        raise ValueError(f"weights_sha256 must be 64 lowercase hex characters, got {weights_sha256!r}")
    p = folder / "card.json"
    if not p.is_file():
        raise ValueError(f"{folder} has no card.json to stamp")
    card = read_card(folder)
    if backbone is not None:
        cfg = parse_json_object(read_json_bytes(folder / "config.json"), folder / "config.json")
        if cfg.get("backbone") != backbone:
            raise ValueError(f"{folder} was made for backbone {cfg.get('backbone')!r}, not {backbone!r}; not stamped")
    old = card.get(key)
    if old == weights_sha256:
        return False
    if old and not force:
        raise ValueError(f"{p} already names other backbone weights ({key} {old[:12]}, not {weights_sha256[:12]}): "
                         f"it was trained for them; retrain it, or force the stamp if that record is wrong")
    if dry_run:
        return True
    card[key] = weights_sha256
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(card, indent=2))
    tmp.replace(p)
    return True


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

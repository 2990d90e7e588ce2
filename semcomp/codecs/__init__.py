"""Codec registry: every codec family by name, built from a spec string such as ``pqvae-n200d16k8``."""
from __future__ import annotations

from pathlib import Path

import torch

from ..weights import file_sha256, parse_json_object, read_card, read_json_bytes, verify_config_bytes
from .aesq import AutoencoderScalarQuantizer
from .base import MAX_SPEC_LEN, Codec, CodecError, fixed_bits, short
from .dsq import DirectScalarQuantizer
from .fsq import FSQCodec
from .progressive import ProgressiveRQ
from .provenance import check_backbone, check_preprocessing
from .vq import PQVAE, VQVAE

CODECS: dict[str, type[Codec]] = {c.family: c for c in (DirectScalarQuantizer, FSQCodec, VQVAE, PQVAE, AutoencoderScalarQuantizer,
                                                          ProgressiveRQ)}

__all__ = ["CODECS", "Codec", "CodecError", "create_codec", "load_codec", "list_codecs", "fixed_bits"]


def list_codecs() -> list[str]:
    return sorted(CODECS)


def create_codec(spec: str, dim: int, **overrides) -> Codec:
    """Build an untrained codec from its spec string, e.g. ``create_codec("pqvae-n200d16k8", 768)``.

    Absurd specs are refused before anything is allocated, with a CodecError naming the limit
    (``base.MAX_STATE_NUMEL``, ``MAX_SYMBOL_TABLE``, ``MAX_DIM``, ``MAX_PARAM``)."""
    if not isinstance(spec, str) or len(spec) > MAX_SPEC_LEN:
        raise CodecError(f"a codec spec is a string of at most {MAX_SPEC_LEN} characters, got {short(spec)}")
    family = spec.split("-", 1)[0]
    if family not in CODECS:
        raise CodecError(f"unknown codec family {short(family)} in spec {short(spec)}; known: {list_codecs()}")
    cls = CODECS[family]
    params = cls.parse_spec(spec)
    if params is None:
        raise CodecError(f"bad spec {spec!r} for family {family!r}; expected the form {cls.spec_format!r}")
    try:
        return cls(dim, **params, **overrides)
    except TypeError as e:  # an unknown or doubled option
        raise CodecError(f"bad options {sorted(overrides)} for {spec}: {e}") from e


_CONFIG_KEYS = {"family": str, "spec": str, "dim": int, "params": dict}
_OPTIONAL_KEYS = {"backbone": str, "num_symbols": int, "alphabet": int, "bits": int, "preprocessing": dict}


def _check_config(cfg: dict, where: Path) -> type[Codec]:
    """Schema and sizes of a codec ``config.json``, before anything is built: CodecError with one line of reason."""
    missing = sorted(set(_CONFIG_KEYS) - set(cfg))
    unknown = sorted(set(cfg) - set(_CONFIG_KEYS) - set(_OPTIONAL_KEYS))
    if missing or unknown:
        raise CodecError(f"bad codec config {where}: missing keys {missing}, unknown keys {short(unknown)}; "
                         f"expected {sorted(_CONFIG_KEYS)} plus optional {sorted(_OPTIONAL_KEYS)}")
    for k, t in {**_CONFIG_KEYS, **_OPTIONAL_KEYS}.items():
        if k in cfg and (not isinstance(cfg[k], t) or isinstance(cfg[k], bool)):
            raise CodecError(f"bad codec config {where}: {k} must be {t.__name__}, got {short(cfg[k])}")
    if cfg["family"] not in CODECS:
        raise CodecError(f"bad codec config {where}: unknown family {short(cfg['family'])}; known: {list_codecs()}")
    cls = CODECS[cfg["family"]]
    params = cfg["params"]
    if set(params) != cls.param_names():
        raise CodecError(f"bad codec config {where}: {cls.family} params must be exactly {sorted(cls.param_names())}, "
                         f"got {short(sorted(params))}")
    cls.check_size(cfg["dim"], params)  # types, ranges, parameter count: pure arithmetic
    from_spec = cls.parse_spec(cfg["spec"])
    if from_spec is None or any(params[k] != v for k, v in from_spec.items()):
        raise CodecError(f"bad codec config {where}: spec {short(cfg['spec'])} does not match params {short(params, 80)}")
    if len(cfg.get("backbone", "").encode()) > 255:
        raise CodecError(f"bad codec config {where}: backbone name over 255 bytes")
    if "preprocessing" in cfg:
        check_preprocessing(cfg["preprocessing"], where)
    return cls


def load_codec(path: str | Path, verify: bool = True, *, revision: str | None = None, backbone=None) -> Codec:
    """Load a codec folder written by ``save_pretrained`` (config.json + model.safetensors + card.json), local or
    on the Hugging Face Hub: a path that is not a local folder but looks like ``org/name`` (``org/name@revision``,
    or ``revision=``) is fetched with ``huggingface_hub.snapshot_download`` into the Hub's cache (``HF_HOME``;
    ``HF_HUB_OFFLINE=1`` reads the cache only) and loaded from there with the same checks (``semcomp.hub``).

    ``backbone``: the backbone name, the loaded ``Backbone`` or a ``BackboneRef`` (a feature file's backbone),
    whose features the caller will feed; a codec made for another one (name, feature dimension, image
    preprocessing, or other weights of the same name: the card's ``backbone_sha256``) raises CodecError naming
    both (``codecs.provenance``). Folders saved before the preprocessing was stored are checked on name and
    dimension; cards without ``backbone_sha256``, and backbones whose weights are unknown (open_clip), skip the
    weights check.

    Order, so that a malformed or hostile folder costs nothing: the card's ``config_sha256`` (if any) is
    checked on the config's bytes; the config is validated (keys, types, spec, sizes against ``base.MAX_*``)
    before the model is built; the weights file's size is bounded by what that config can hold, its sha256
    checked against the card, and every tensor's name, shape and dtype checked before it is read. Rebuilds the
    architecture from the config (never from tensor shapes); never unpickles anything. Anything wrong raises
    CodecError with one line of reason. ``verify=False`` skips the two hash checks only.
    """
    from ..hub import resolve_codec_folder

    path = resolve_codec_folder(path, revision)  # a local folder as it is; a Hub repo id -> its cached snapshot
    if not path.is_dir():
        raise CodecError(f"codec folder {path} does not exist or is not a folder")
    cfg_path, w_path = path / "config.json", path / "model.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CodecError(f"codec folder {path} is missing {p.name}")
    card = read_card(path, CodecError)
    raw = read_json_bytes(cfg_path, CodecError)
    if verify:
        verify_config_bytes(raw, card, cfg_path, CodecError)
    cfg = parse_json_object(raw, cfg_path, CodecError)
    cls = _check_config(cfg, cfg_path)
    n_sym, alphabet = cls.symbol_shape(cfg["dim"], cfg["params"])
    # fp32 at most for every number, int64 counts, plus the safetensors header (names, shapes): generous
    most = 4 * cls.state_numel(cfg["dim"], cfg["params"]) + 8 * n_sym * alphabet + (1 << 20)
    size = w_path.stat().st_size
    if size > most:
        raise CodecError(f"weights file {w_path} is {size} bytes; a {cfg['spec']} codec holds at most {most}")
    if verify and card.get("sha256") and file_sha256(w_path) != card["sha256"]:
        raise CodecError(f"weights file {w_path} does not match the sha256 in its card (altered or truncated)")
    try:
        codec = cls(cfg["dim"], **cfg["params"])
    except (TypeError, RuntimeError) as e:  # _check_config should have caught it; never a raw traceback
        raise CodecError(f"cannot build {cfg['spec']} from {cfg_path}: {e}") from e
    derived = {"num_symbols": codec.num_symbols, "alphabet": codec.alphabet, "bits": codec.bits}
    wrong = {k: cfg[k] for k in derived if k in cfg and cfg[k] != derived[k]}
    if wrong:
        raise CodecError(f"bad codec config {cfg_path}: {short(wrong, 80)} do not match {cfg['spec']} ({derived})")
    codec.load_state_dict(_read_weights(w_path, codec))
    codec.backbone = cfg.get("backbone", "")
    codec.preprocessing = dict(cfg.get("preprocessing", {}))
    codec.backbone_sha256 = card.get("backbone_sha256") or None
    codec.eval()
    check_backbone(codec, backbone, path)
    return codec


def _read_weights(w_path: Path, codec: Codec) -> dict:
    """The state dict in ``w_path``, checked name by name, shape and dtype against ``codec`` before reading."""
    from safetensors import safe_open

    want = codec.state_dict()
    counts_shape = (codec.num_symbols, codec.alphabet)
    sd = {}
    try:
        with safe_open(str(w_path), framework="pt") as f:
            keys = set(f.keys())
            if keys != set(want):
                raise CodecError(f"weights {w_path} do not fit {codec.spec}: missing {sorted(set(want) - keys)[:5]}, "
                                 f"unexpected {sorted(keys - set(want))[:5]}")
            for k in sorted(keys):
                sl = f.get_slice(k)
                shape, dtype = tuple(sl.get_shape()), sl.get_dtype()
                ok_shape = shape in (counts_shape, (0,)) if k == "symbol_counts" else shape == tuple(want[k].shape)
                if not ok_shape:
                    raise CodecError(f"weights {w_path}: tensor {k} has shape {list(shape)}, {codec.spec} needs "
                                     f"{list(counts_shape if k == 'symbol_counts' else want[k].shape)}")
                floating = want[k].is_floating_point()
                if (floating and dtype not in ("F16", "BF16", "F32")) or (not floating and dtype != _ST_DTYPE.get(want[k].dtype)):
                    raise CodecError(f"weights {w_path}: tensor {k} has dtype {dtype}, {codec.spec} needs {want[k].dtype}")
                sd[k] = f.get_tensor(k)
    except CodecError:
        raise
    except Exception as e:  # safetensors' own errors on a malformed file
        raise CodecError(f"cannot read weights {w_path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    for k, v in sd.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CodecError(f"weights {w_path}: tensor {k} holds NaN or Inf")
    if sd["symbol_counts"].numel() and int(sd["symbol_counts"].min()) < 0:
        raise CodecError(f"weights {w_path}: symbol_counts holds negative counts")
    codec.symbol_counts = torch.zeros_like(sd["symbol_counts"])  # the table may be empty (uniform model) or (n, K)
    return sd


_ST_DTYPE = {torch.int64: "I64", torch.bool: "BOOL", torch.int32: "I32", torch.uint8: "U8"}

"""The one interface every codec shares, and its save/load format.

A codec maps L2-normalised features (N, D) to integer symbols (N, n) in [0, K) and back. Its fixed bit
budget is ``n * log2(K)``; entropy coding (``semcomp.entropy``) can only go below that.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import bitstream
from ..entropy import CODER_IDS, EntropyCoder, EntropyCodingError, SymbolModel, coder_name, count_symbols

CHUNK = 8192  # feature rows per encode/decode pass

# Sane bounds on what a spec or a config.json may ask for, checked before anything is allocated (a config is
# untrusted input: one edited number once asked for 35 TB). Far above every shipped codec (the largest holds
# 1.1 M numbers; 512-d features; 512 symbols x 16 an item) and any CLIP width.
MAX_DIM = 16384  # feature dimension
MAX_PARAM = 1 << 20  # any one integer in a spec or config (c, l, n, d, k, hidden)
MAX_STATE_NUMEL = 1 << 26  # parameters + buffers of the network: 67 M numbers, 256 MiB in fp32
MAX_SYMBOL_TABLE = 1 << 22  # symbols per item x alphabet: the entropy model's count table (32 MiB of int64)
MAX_SPEC_LEN = 64


class CodecError(ValueError):
    """Wrong input for a codec (dimension, dtype, symbols out of range) or a bad codec file."""


def fixed_bits(num_symbols: int, alphabet: int) -> int:
    """Exact fixed-length size of one item: the one formula used by training, eval, bench and the app."""
    return int(num_symbols * round(math.log2(alphabet)))


def short(v, n: int = 40) -> str:
    """``repr(v)`` cut to ``n`` characters: error messages stay one short line whatever a file holds."""
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def require_power_of_two(name: str, value: int) -> None:
    if value < 2 or value & (value - 1):
        raise CodecError(f"{name} must be a power of two >= 2, got {value}")


def mlp_numel(sizes: list[int]) -> int:
    """Numbers held by ``mlp(sizes)``: computed from the sizes alone, before building it."""
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with GELU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def all_finite(x: torch.Tensor) -> bool:
    """No NaN or Inf in x. numpy's isfinite on a CPU float tensor's buffer: torch's isfinite(...).all() took 2.7 ms on
    (2,000, 384) float32, numpy's 0.1 ms (one thread, this repo's AMD EPYC VM) -- more than the 8-bit prq encode."""
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.float32, torch.float64):
        return bool(np.isfinite(x.detach().numpy()).all())
    return bool(torch.isfinite(x).all())


class Codec(nn.Module):
    """Base class. Subclasses define ``family``, ``spec_pattern``, ``num_symbols``, ``alphabet`` and
    ``forward`` (training path: returns decoded features and the quantisation loss), ``encode_latent``,
    ``decode_symbols``."""

    family: ClassVar[str]
    spec_pattern: ClassVar[str]  # regex with named groups, e.g. r"pqvae-n(?P<n>\d+)d(?P<d>\d+)k(?P<k>\d+)"
    spec_format: ClassVar[str]  # e.g. "pqvae-n{n}d{d}k{k}"
    extra_params: ClassVar[tuple[str, ...]] = ()  # integer params beyond the spec's, saved in config.json

    def __init__(self, dim: int, **params):
        super().__init__()
        self.check_size(dim, params)  # before any subclass allocates a tensor
        self.dim = int(dim)
        self.params = {k: int(v) for k, v in params.items()}
        # Entropy model: symbol counts on the training features (see fit_entropy_model).
        self.register_buffer("symbol_counts", torch.zeros(0, dtype=torch.int64))
        self.backbone = ""
        self.preprocessing: dict = {}  # the backbone's image preprocessing (codecs.provenance); {} if unknown
        self.backbone_sha256: str | None = None  # the backbone weights it was trained for (card.json); None: unknown
        self._coder: EntropyCoder | None = None
        self._weights_hash: bytes | None = None

    # ---- identity
    @property
    def spec(self) -> str:
        return self.spec_format.format(**self.params)

    @classmethod
    def parse_spec(cls, spec: str) -> dict | None:
        if not isinstance(spec, str) or len(spec) > MAX_SPEC_LEN:
            return None
        m = re.fullmatch(cls.spec_pattern, spec, flags=re.ASCII)
        return {k: int(v) for k, v in m.groupdict().items()} if m else None

    @classmethod
    def param_names(cls) -> set[str]:
        """The integer params a config of this family holds: the spec's fields plus ``extra_params``."""
        return set(re.compile(cls.spec_pattern).groupindex) | set(cls.extra_params)

    # ---- sizes from the config alone (overridden): what building the codec would allocate
    @classmethod
    def symbol_shape(cls, dim: int, params: dict) -> tuple[int, int]:
        """(symbols per item, alphabet) of a codec with these params."""
        raise NotImplementedError

    @classmethod
    def state_numel(cls, dim: int, params: dict) -> int:
        """Numbers in the network's parameters and buffers (the entropy table apart)."""
        raise NotImplementedError

    @classmethod
    def check_size(cls, dim, params: dict) -> int:
        """Refuse, with a CodecError naming the bad value and the limit, params that are not positive ints in
        range or a codec that would be too large; returns the state size. Pure arithmetic: nothing allocated."""
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise CodecError(f"feature dimension must be an int, got {short(dim)}")
        if not 2 <= dim <= MAX_DIM:
            raise CodecError(f"feature dimension {short(dim)} out of range 2..{MAX_DIM} (MAX_DIM)")
        for k, v in params.items():
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise CodecError(f"{cls.family} param {short(k)} must be an int, got {short(v)}")
            if not 1 <= v <= MAX_PARAM:
                raise CodecError(f"{cls.family} param {k}={short(v)} out of range 1..{MAX_PARAM} (MAX_PARAM)")
        p = {k: int(v) for k, v in params.items()}
        n, k = cls.symbol_shape(int(dim), p)
        if n * k > MAX_SYMBOL_TABLE:
            raise CodecError(f"{cls.family} {p} gives {n} symbols x alphabet {k} = {n * k} table entries, over the "
                             f"limit of {MAX_SYMBOL_TABLE} (MAX_SYMBOL_TABLE)")
        numel = cls.state_numel(int(dim), p)
        if numel > MAX_STATE_NUMEL:
            raise CodecError(f"{cls.family} {p} on {dim}-d features would hold {numel:,} numbers, over the limit of "
                             f"{MAX_STATE_NUMEL:,} (MAX_STATE_NUMEL)")
        return numel

    def decoded_bytes_per_item(self, features: bool = True) -> int:
        """What decoding one item allocates: its int64 symbols, plus its float32 feature if ``features``."""
        return 8 * self.num_symbols + (4 * self.dim if features else 0)

    @property
    def num_symbols(self) -> int:
        raise NotImplementedError

    @property
    def alphabet(self) -> int:
        raise NotImplementedError

    @property
    def bits(self) -> int:
        return fixed_bits(self.num_symbols, self.alphabet)

    def config(self) -> dict:
        cfg = {"family": self.family, "spec": self.spec, "dim": self.dim, "params": self.params, "backbone": self.backbone,
               "num_symbols": self.num_symbols, "alphabet": self.alphabet, "bits": self.bits}
        if self.preprocessing:  # only when known: folders saved before issue 22 keep their exact bytes
            cfg["preprocessing"] = dict(self.preprocessing)
        return cfg

    # ---- checks
    def check_features(self, x) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise CodecError(f"features must be a tensor or array, got {type(x).__name__}")
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise CodecError(f"codec {self.spec} expects features of shape (N, {self.dim}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise CodecError(f"features must be floating point, got {x.dtype}")
        if not all_finite(x):
            raise CodecError("features contain NaN or Inf")
        return F.normalize(x.float(), dim=-1)

    def check_symbols(self, s) -> torch.Tensor:
        s = torch.as_tensor(np.asarray(s) if not isinstance(s, torch.Tensor) else s)
        if s.ndim != 2 or s.shape[1] != self.num_symbols:
            raise CodecError(f"codec {self.spec} expects symbols of shape (N, {self.num_symbols}), got {tuple(s.shape)}")
        if s.numel() and (s.min() < 0 or s.max() >= self.alphabet):
            raise CodecError(f"symbols must lie in [0, {self.alphabet})")
        return s.long()

    # ---- training path (overridden)
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # ---- inference: exact inverses
    def _encode(self, x: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def _encoder(self, x: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        """The encoder network, under bf16 autocast when asked; what follows (quantisation) stays fp32."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return self.encoder(x).float()

    def _decode(self, s: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def encode(self, x, precision: str = "fp32") -> torch.Tensor:
        """Features (N, D) -> int64 symbols (N, n).

        ``precision="bf16"`` runs the encoder network under bf16 autocast: ~2x the throughput on CPUs with
        AVX512-BF16/AMX (``semcomp.hardware.cpu_has_bf16``), slower elsewhere. The decoder sees only symbols, so
        the bitstream format is unchanged; a few near-tie symbols differ from fp32 (bench/codec_speed.py
        measures how many)."""
        if precision not in ("fp32", "bf16"):
            raise CodecError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        was = self.training
        self.eval()
        try:
            x = self.check_features(x)
            bf16 = precision == "bf16"
            # in chunks: activation memory stays bounded however many features come in (bench/scale.py)
            return torch.cat([self._encode(c, bf16).long() for c in x.split(CHUNK)]) if len(x) else self._encode(x, bf16).long()
        finally:
            self.train(was)

    @torch.inference_mode()
    def decode(self, symbols) -> torch.Tensor:
        """Symbols (N, n) -> L2-normalised features (N, D)."""
        was = self.training
        self.eval()
        try:
            s = self.check_symbols(symbols)
            if not len(s):
                return F.normalize(self._decode(s).float(), dim=-1)
            # filled chunk by chunk: the output is allocated once (no torch.cat copy), so decoding N items takes
            # N x 4D bytes plus one chunk's activations, the figure max_decoded_bytes bounds
            out = torch.empty(len(s), self.dim)
            for i in range(0, len(s), CHUNK):
                out[i : i + CHUNK] = F.normalize(self._decode(s[i : i + CHUNK]).float(), dim=-1)
            return out
        finally:
            self.train(was)

    def reconstruct(self, x) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def round_to_storage_precision(self) -> None:
        """Round float weights to fp16 as ``save_pretrained`` stores them, so the saved codec encodes exactly
        like the one whose entropy model and metrics were measured."""
        for t in list(self.parameters()) + [b for b in self.buffers() if b.is_floating_point()]:
            t.copy_(t.half().float())
        self._weights_hash = None

    # ---- entropy model
    @torch.inference_mode()
    def fit_entropy_model(self, x, batch: int = 4096) -> None:
        counts = np.zeros((self.num_symbols, self.alphabet), dtype=np.int64)
        for i in range(0, len(x), batch):
            counts += count_symbols(self.encode(x[i : i + batch]).numpy(), self.alphabet)
        self.symbol_counts = torch.from_numpy(counts)
        self._coder = None
        self._weights_hash = None

    @property
    def symbol_model(self) -> SymbolModel:
        if self.symbol_counts.numel() == 0:
            # Without training counts, a uniform model: ANS/Huffman then cost the fixed bits.
            return SymbolModel(np.zeros((self.num_symbols, self.alphabet), dtype=np.int64))
        return SymbolModel(self.symbol_counts.numpy())

    @property
    def entropy_coder(self) -> EntropyCoder:
        if self._coder is None:
            self._coder = EntropyCoder(self.symbol_model)
        return self._coder

    # ---- bytes
    @property
    def weights_hash(self) -> bytes:
        if self._weights_hash is None:
            h = hashlib.sha256(self.spec.encode())
            for k, v in sorted(self.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
            self._weights_hash = h.digest()[:8]
        return self._weights_hash

    def compress(self, x, coder: str = "ans", precision: str = "fp32") -> bytes:
        """Features (N, D) -> one self-describing ``.scf`` bitstream.

        ``coder="auto"`` writes whichever coder gives the smallest payload: ANS carries a 32-bit state, so
        for one or a few features Huffman or raw fixed-length codes are often shorter. With ``"ans"`` or
        ``"huffman"`` the stream falls back to raw (coder id 0 in the header) whenever the entropy-coded payload
        would be longer than the fixed-length one, so a stream never costs more than the fixed bits."""
        if coder not in CODER_IDS and coder != "auto":
            raise CodecError(f"unknown entropy coder {coder!r}; choose one of {sorted(CODER_IDS) + ['auto']}")
        symbols = self.encode(x, precision).numpy()
        if coder == "auto":
            tries = ["raw", "ans"] + (["huffman"] if symbols.size <= 8192 else [])
            payloads = {c: self.entropy_coder.encode(symbols, c) for c in tries}
            coder = min(tries, key=lambda c: (len(payloads[c]), tries.index(c)))
            payload = payloads[coder]
        else:
            payload = self.entropy_coder.encode(symbols, coder)
            if coder != "raw":
                # An entropy model fitted on other data can cost more than the fixed bits (aesq-c128l4 once
                # coded 256 bits as 256.5): then this stream is written raw, and the header's coder id says so.
                raw = self.entropy_coder.encode(symbols, "raw")
                if len(raw) < len(payload):
                    coder, payload = "raw", raw
        header = bitstream.Header(self.family, CODER_IDS[coder], self.dim, len(symbols), self.weights_hash, self.spec, self.backbone)
        return bitstream.pack(header, payload)

    def decompress_symbols(self, data: bytes, max_items: int | None = None,
                           max_decoded_bytes: int | None = None) -> np.ndarray:
        """``.scf`` bitstream -> int64 symbols (N, n); limits as in :meth:`decompress`, counting the symbols only."""
        return self._decompress_symbols(data, self.decoded_bytes_per_item(features=False), max_items, max_decoded_bytes)

    def decompress(self, data: bytes, max_items: int | None = None, max_decoded_bytes: int | None = None) -> torch.Tensor:
        """``.scf`` bitstream -> decoded L2-normalised features (N, D).

        The header's item count is checked against ``max_items`` (None: no bound but the format's MAX_COUNT)
        and ``count x decoded_bytes_per_item()`` against ``max_decoded_bytes`` (None:
        ``bitstream.DEFAULT_MAX_DECODED_BYTES``, 256 MiB) before any entropy decoding or allocation;
        ``bitstream.BitstreamLimitError`` (a ``BitstreamError``) names the limit exceeded."""
        return self.decode(self._decompress_symbols(data, self.decoded_bytes_per_item(), max_items, max_decoded_bytes))

    def _checked_header(self, data) -> tuple[bitstream.Header, bytes]:
        """Unpack a stream and check it was made by this codec (version, spec, weights, dim, backbone)."""
        header, payload = bitstream.unpack(data)
        want = bitstream.PROGRESSIVE_VERSION if self.family in bitstream.PROGRESSIVE_FAMILIES else bitstream.FORMAT_VERSION
        if header.version != want:
            raise bitstream.BitstreamError(f"version {header.version} stream from {header.spec!r} given to {self.spec!r}, "
                                           f"which reads version {want} streams only")
        if header.codec_family != self.family or header.spec != self.spec:
            raise bitstream.BitstreamError(f"bitstream was made by codec {header.spec!r}, this codec is {self.spec!r}")
        if header.weights_hash != self.weights_hash:
            raise bitstream.BitstreamError(f"bitstream was made with other weights of {self.spec} (weights hash differs)")
        if header.dim != self.dim:
            raise bitstream.BitstreamError(f"bitstream is for {header.dim}-d features, codec expects {self.dim}")
        if header.backbone != self.backbone:
            raise bitstream.BitstreamError(f"bitstream is for backbone {header.backbone!r}, codec is for {self.backbone!r}")
        return header, payload

    def _decompress_symbols(self, data, bytes_per_item: int, max_items, max_decoded_bytes) -> np.ndarray:
        header, payload = self._checked_header(data)
        # the caller's bounds, from the header alone: nothing decoded or allocated yet
        bitstream.check_limits(header.count, bytes_per_item, max_items, max_decoded_bytes, what=f"{self.spec} bitstream")
        try:
            return self.entropy_coder.decode(payload, header.count, coder_name(header.coder_id))
        except EntropyCodingError as e:
            raise bitstream.BitstreamError(str(e)) from e

    # ---- persistence
    def save_pretrained(self, out_dir: str | Path, card: dict | None = None, half: bool = True) -> Path:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if half:  # fp16 on disk; weights are cast back to fp32 on load (the hash is taken after that)
            sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
        tmp = out / "model.safetensors.tmp"
        save_file(sd, str(tmp))
        tmp.replace(out / "model.safetensors")
        (out / "config.json").write_text(json.dumps(self.config(), indent=2))
        card = dict(card or {})
        card["sha256"] = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
        card["config_sha256"] = hashlib.sha256((out / "config.json").read_bytes()).hexdigest()
        card["spec"] = self.spec
        card["bits"] = self.bits
        if self.backbone_sha256:  # in the card, not the config: stamping an old folder leaves its config as it is
            card["backbone_sha256"] = self.backbone_sha256
        (out / "card.json").write_text(json.dumps(card, indent=2))
        from ..hub import write_model_card

        write_model_card(out)  # README.md: the Hub's model card (not hashed: documentation only)
        return out

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, revision: str | None = None, backbone=None,
                        verify: bool = True) -> "Codec":
        """A codec from a local folder or a Hugging Face Hub repo id (``org/name``, optional ``revision``), as
        ``semcomp.codecs.load_codec``; called on a family class, the folder must hold that family."""
        from . import load_codec

        codec = load_codec(name_or_path, verify=verify, revision=revision, backbone=backbone)
        if cls is not Codec and not isinstance(codec, cls):
            raise CodecError(f"{name_or_path} holds a {codec.family} codec ({codec.spec}), not {cls.family}")
        return codec

    def push_to_hub(self, repo_id: str, card: dict | None = None, private: bool = False, token: str | None = None,
                    commit_message: str | None = None) -> str:
        """Save this codec (``save_pretrained``, with its model card) to a temporary folder and upload it to the
        Hub repo ``repo_id`` (created if missing). Returns the commit URL. Needs network and a write token."""
        import tempfile

        from ..hub import push_folder

        with tempfile.TemporaryDirectory() as d:
            self.save_pretrained(d, card)
            return push_folder(d, repo_id, private=private, token=token, commit_message=commit_message)

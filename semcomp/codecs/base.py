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


class CodecError(ValueError):
    """Wrong input for a codec (dimension, dtype, symbols out of range) or a bad codec file."""


def fixed_bits(num_symbols: int, alphabet: int) -> int:
    """Exact fixed-length size of one item: the one formula used by training, eval, bench and the app."""
    return int(num_symbols * round(math.log2(alphabet)))


def require_power_of_two(name: str, value: int) -> None:
    if value < 2 or value & (value - 1):
        raise CodecError(f"{name} must be a power of two >= 2, got {value}")


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with GELU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class Codec(nn.Module):
    """Base class. Subclasses define ``family``, ``spec_pattern``, ``num_symbols``, ``alphabet`` and
    ``forward`` (training path: returns decoded features and the quantisation loss), ``encode_latent``,
    ``decode_symbols``."""

    family: ClassVar[str]
    spec_pattern: ClassVar[str]  # regex with named groups, e.g. r"pqvae-n(?P<n>\d+)d(?P<d>\d+)k(?P<k>\d+)"
    spec_format: ClassVar[str]  # e.g. "pqvae-n{n}d{d}k{k}"

    def __init__(self, dim: int, **params):
        super().__init__()
        if dim < 2:
            raise CodecError(f"feature dimension must be >= 2, got {dim}")
        self.dim = int(dim)
        self.params = {k: int(v) if isinstance(v, (int, np.integer)) else v for k, v in params.items()}
        # Entropy model: symbol counts on the training features (see fit_entropy_model).
        self.register_buffer("symbol_counts", torch.zeros(0, dtype=torch.int64))
        self.backbone = ""
        self._coder: EntropyCoder | None = None
        self._weights_hash: bytes | None = None

    # ---- identity
    @property
    def spec(self) -> str:
        return self.spec_format.format(**self.params)

    @classmethod
    def parse_spec(cls, spec: str) -> dict | None:
        m = re.fullmatch(cls.spec_pattern, spec)
        return {k: int(v) for k, v in m.groupdict().items()} if m else None

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
        return {"family": self.family, "spec": self.spec, "dim": self.dim, "params": self.params, "backbone": self.backbone,
                "num_symbols": self.num_symbols, "alphabet": self.alphabet, "bits": self.bits}

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
        if not torch.isfinite(x).all():
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
            return torch.cat([F.normalize(self._decode(c).float(), dim=-1) for c in s.split(CHUNK)]) if len(s) else \
                F.normalize(self._decode(s).float(), dim=-1)
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
        for one or a few features Huffman or raw fixed-length codes are often shorter."""
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
        header = bitstream.Header(self.family, CODER_IDS[coder], self.dim, len(symbols), self.weights_hash, self.spec, self.backbone)
        return bitstream.pack(header, payload)

    def decompress_symbols(self, data: bytes) -> np.ndarray:
        header, payload = bitstream.unpack(data)
        if header.codec_family != self.family or header.spec != self.spec:
            raise bitstream.BitstreamError(f"bitstream was made by codec {header.spec!r}, this codec is {self.spec!r}")
        if header.weights_hash != self.weights_hash:
            raise bitstream.BitstreamError(f"bitstream was made with other weights of {self.spec} (weights hash differs)")
        if header.dim != self.dim:
            raise bitstream.BitstreamError(f"bitstream is for {header.dim}-d features, codec expects {self.dim}")
        if header.backbone != self.backbone:
            raise bitstream.BitstreamError(f"bitstream is for backbone {header.backbone!r}, codec is for {self.backbone!r}")
        try:
            return self.entropy_coder.decode(payload, header.count, coder_name(header.coder_id))
        except EntropyCodingError as e:
            raise bitstream.BitstreamError(str(e)) from e

    def decompress(self, data: bytes) -> torch.Tensor:
        """``.scf`` bitstream -> decoded L2-normalised features (N, D)."""
        return self.decode(self.decompress_symbols(data))

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
        card["spec"] = self.spec
        card["bits"] = self.bits
        (out / "card.json").write_text(json.dumps(card, indent=2))
        return out

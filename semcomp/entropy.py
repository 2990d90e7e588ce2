"""Entropy models and coders for codec symbols.

Models: per-position categorical distributions estimated from symbol *counts* on the training features
(stored with the codec weights, never fitted on evaluation data). Probabilities handed to the coders are
computed from integer counts in float64, so encoder and decoder machines derive identical tables, and
constriction then quantises them to exact fixed-point (its models can never disagree across machines).

Coders (chosen by name, as CompressAI's ``set_entropy_coder``):
- ``raw``: fixed-length packing, log2(K) bits per symbol (numpy, vectorised);
- ``huffman``: constriction's Huffman symbol code, one tree per position (the paper's coder; >= 1 bit/symbol);
- ``ans``: constriction's ANS stack coder (within a fraction of a percent of the model's cross-entropy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CODER_IDS = {"raw": 0, "huffman": 1, "ans": 2}  # fixed: written into bitstream headers, never reorder


class EntropyCodingError(ValueError):
    """Symbols cannot be coded, or a payload cannot be decoded with this model."""


def coder_name(coder_id: int) -> str:
    for k, v in CODER_IDS.items():
        if v == coder_id:
            return k
    raise EntropyCodingError(f"unknown entropy coder id {coder_id}; known: {CODER_IDS}")


def count_symbols(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """(N, n) int symbols -> (n, K) int64 counts per position."""
    symbols = np.asarray(symbols, dtype=np.int64)
    n = symbols.shape[1]
    flat = symbols + alphabet * np.arange(n)[None, :]
    return np.bincount(flat.ravel(), minlength=n * alphabet).reshape(n, alphabet)


@dataclass
class SymbolModel:
    """Per-position categorical model built from training counts (+ smoothing so every symbol is codable)."""

    counts: np.ndarray  # (n, K) int64

    @property
    def num_positions(self) -> int:
        return int(self.counts.shape[0])

    @property
    def alphabet(self) -> int:
        return int(self.counts.shape[1])

    def probabilities(self) -> np.ndarray:
        c = self.counts.astype(np.float64) + 0.5  # Krichevsky–Trofimov smoothing: unseen symbols stay codable
        return c / c.sum(axis=1, keepdims=True)

    def ideal_bits(self, symbols: np.ndarray) -> float:
        """Cross-entropy code length of ``symbols`` under this model (what ideal arithmetic coding costs)."""
        p = self.probabilities()
        s = np.asarray(symbols, dtype=np.int64)
        return float(-np.log2(p[np.arange(s.shape[1])[None, :], s]).sum())


def empirical_entropy_bits(symbols: np.ndarray, alphabet: int) -> float:
    """Sum over positions of the empirical (plug-in) entropy of the given symbols, times item count."""
    c = count_symbols(symbols, alphabet).astype(np.float64)
    p = c / c.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(p > 0, p * np.log2(p), 0.0), axis=1)
    return float(h.sum() * symbols.shape[0])


MAX_SYMBOLS = 1 << 25  # per stream: 32 M symbols (a 256 MB int64 array at most); split larger batches


def bits_per_symbol(alphabet: int) -> int:
    b = int(round(math.log2(alphabet)))
    if 2**b != alphabet:
        raise EntropyCodingError(f"alphabet size must be a power of two, got {alphabet}")
    return b


# ------------------------------------------------------------------ raw fixed-length


def raw_encode(symbols: np.ndarray, alphabet: int) -> bytes:
    b = bits_per_symbol(alphabet)
    s = np.asarray(symbols, dtype=np.int64).ravel()
    if b == 0:
        return b""
    bits = ((s[:, None] >> np.arange(b - 1, -1, -1)[None, :]) & 1).astype(np.uint8)  # MSB first
    return np.packbits(bits.ravel()).tobytes()


def raw_decode(payload: bytes, count: int, positions: int, alphabet: int) -> np.ndarray:
    b = bits_per_symbol(alphabet)
    total = count * positions
    if len(payload) != (total * b + 7) // 8:
        raise EntropyCodingError(f"raw payload has {len(payload)} bytes, expected {(total * b + 7) // 8}")
    if b == 0:
        return np.zeros((count, positions), dtype=np.int64)
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))[: total * b].reshape(total, b).astype(np.int64)
    return (bits << np.arange(b - 1, -1, -1)[None, :]).sum(1).reshape(count, positions)


# ------------------------------------------------------------------ ANS (constriction)


def _ans_models(model: SymbolModel):
    import constriction

    p = model.probabilities()
    return [constriction.stream.model.Categorical(p[j], perfect=False) for j in range(model.num_positions)]


def ans_encode(symbols: np.ndarray, model: SymbolModel, models=None) -> bytes:
    import constriction

    s = np.asarray(symbols, dtype=np.int32)
    models = models or _ans_models(model)
    coder = constriction.stream.stack.AnsCoder()
    # A stack: encode positions last-to-first so the decoder reads position 0 first. All items' symbols
    # of one position go in one vectorised call with that position's model.
    for j in range(s.shape[1] - 1, -1, -1):
        coder.encode_reverse(np.ascontiguousarray(s[:, j]), models[j])
    return coder.get_compressed().astype("<u4").tobytes()  # explicit little-endian words


def ans_decode(payload: bytes, count: int, model: SymbolModel, models=None) -> np.ndarray:
    import constriction

    if len(payload) % 4:
        raise EntropyCodingError(f"ANS payload length {len(payload)} is not a multiple of 4")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    models = models or _ans_models(model)
    out = np.empty((count, model.num_positions), dtype=np.int64)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        for j in range(model.num_positions):
            out[:, j] = coder.decode(models[j], count)
        empty = coder.is_empty()
    except Exception as e:  # constriction raises on invalid compressed data
        raise EntropyCodingError(f"ANS payload cannot be decoded: {e}") from e
    if not empty:
        raise EntropyCodingError("ANS payload has data left after decoding all symbols")
    return out


# ------------------------------------------------------------------ Huffman (constriction)


def _huffman_trees(model: SymbolModel, kind: str):
    import constriction

    h = constriction.symbol.huffman
    cls = h.EncoderHuffmanTree if kind == "enc" else h.DecoderHuffmanTree
    p = model.probabilities()
    return [cls(p[j]) for j in range(model.num_positions)]


def huffman_encode(symbols: np.ndarray, model: SymbolModel, trees=None) -> bytes:
    import constriction

    s = np.asarray(symbols, dtype=np.int64)
    trees = trees or _huffman_trees(model, "enc")
    enc = constriction.symbol.QueueEncoder()
    # constriction's symbol coder takes one symbol per call; this is the slow path (see bench/).
    for row in s.tolist():
        for j, sym in enumerate(row):
            enc.encode_symbol(sym, trees[j])
    words, nbits = enc.get_compressed()
    return int(nbits).to_bytes(4, "little") + np.asarray(words, dtype="<u4").tobytes()


def huffman_decode(payload: bytes, count: int, model: SymbolModel, trees=None) -> np.ndarray:
    import constriction

    if len(payload) < 4 or (len(payload) - 4) % 4:
        raise EntropyCodingError(f"Huffman payload length {len(payload)} is invalid")
    nbits = int.from_bytes(payload[:4], "little")
    words = np.frombuffer(payload[4:], dtype="<u4").astype(np.uint32)
    if not (32 * (len(words) - 1) < nbits <= 32 * len(words)) and not (nbits == 0 and len(words) == 0):
        raise EntropyCodingError(f"Huffman bit length {nbits} does not match {len(words)} words")
    # Every symbol costs at least one bit in a symbol code: a count that the payload cannot hold is corrupt.
    if count * model.num_positions > nbits:
        raise EntropyCodingError("Huffman payload is too short for the announced symbol count")
    trees = trees or _huffman_trees(model, "dec")
    dec = constriction.symbol.QueueDecoder(words)
    out = np.empty((count, model.num_positions), dtype=np.int64)
    try:
        for i in range(count):
            for j in range(model.num_positions):
                out[i, j] = dec.decode_symbol(trees[j])
    except Exception as e:
        raise EntropyCodingError(f"Huffman payload cannot be decoded: {e}") from e
    return out


class EntropyCoder:
    """Caches the per-position coder tables of one model; ``encode``/``decode`` by coder name."""

    def __init__(self, model: SymbolModel):
        self.model = model
        self._cache: dict[str, list] = {}

    def _tables(self, key: str):
        if key not in self._cache:
            self._cache[key] = _ans_models(self.model) if key == "ans" else _huffman_trees(self.model, key)
        return self._cache[key]

    def encode(self, symbols: np.ndarray, coder: str) -> bytes:
        if np.asarray(symbols).size > MAX_SYMBOLS:
            raise EntropyCodingError(f"{np.asarray(symbols).size} symbols exceed the {MAX_SYMBOLS} one stream may hold; "
                                     "compress the batch in parts")
        if coder == "raw":
            return raw_encode(symbols, self.model.alphabet)
        if coder == "ans":
            return ans_encode(symbols, self.model, self._tables("ans"))
        if coder == "huffman":
            return huffman_encode(symbols, self.model, self._tables("enc"))
        raise EntropyCodingError(f"unknown entropy coder {coder!r}; choose one of {sorted(CODER_IDS)}")

    def decode(self, payload: bytes, count: int, coder: str) -> np.ndarray:
        """Exactly ``count`` items from exactly ``payload``: the payload must be the one this coder writes for
        the decoded symbols (re-encoding them gives the same bytes), so a relabelled count, trailing data or
        non-zero padding are all refused, for every coder."""
        out = self._decode(payload, count, coder)
        if self.encode(out, coder) != bytes(payload):
            raise EntropyCodingError(f"{coder} payload of {len(payload)} bytes is not the coding of exactly {count} items "
                                     "(wrong item count, trailing data or bad padding)")
        return out

    def _decode(self, payload: bytes, count: int, coder: str) -> np.ndarray:
        # An ANS decoder invents symbols past the end of its data, and a near-certain model codes thousands of
        # items in zero payload bytes, so the payload size cannot bound the count: cap what one stream may
        # allocate instead (a forged count once made the decoder allocate count x positions symbols).
        if count * self.model.num_positions > MAX_SYMBOLS:
            raise EntropyCodingError(f"{count} items x {self.model.num_positions} symbols exceed the {MAX_SYMBOLS} symbols "
                                     "one stream may hold")
        if coder == "raw":
            return raw_decode(payload, count, self.model.num_positions, self.model.alphabet)
        if coder == "ans":
            return ans_decode(payload, count, self.model, self._tables("ans"))
        if coder == "huffman":
            return huffman_decode(payload, count, self.model, self._tables("dec"))
        raise EntropyCodingError(f"unknown entropy coder {coder!r}; choose one of {sorted(CODER_IDS)}")

"""Framed streams for constrained links: announce the codec once, then one small frame per message.

A ``.scf`` bitstream is self-describing, which costs ~63 bytes of header around a 2–32-byte payload. A
link that sends many items with one codec (a sensor over LoRa, a drone's telemetry) says who it is once:

Announce (once per stream, fits a 51-byte LoRa frame for every shipped codec), little-endian::

    magic      4s   b"SCS\\x89"
    version    u8   STREAM_VERSION
    codec_id   u8   bitstream.CODEC_IDS (the same fixed table as .scf)
    coding     u8   CODINGS: 0 raw fixed-length, 1 Huffman per message (raw when that is not shorter)
    max_frame  u8   the largest frame this stream sends
    dim        u16  feature dimension
    wts_hash   8s   the codec's weights hash (as in .scf)
    stream_id  4s   random per stream: frames of another stream (a restart, another sender) fail the CRC
    spec_len   u8   + spec (ASCII)
    crc32      u32  over every preceding byte

Frame (one message; the link gives its length, as a LoRa packet does)::

    seq        u8   message number mod 256 (the first message of a stream is 0)
    payload         one item's symbols: raw fixed-length (``ceil(bits / 8)`` bytes), or in Huffman streams the
                    codewords packed LSB-first into whole bytes when that is shorter than raw (a payload of
                    exactly the raw length is raw: the length tells which, no flag needed)
    crc16      u16  CRC-16/CCITT-FALSE (``binascii.crc_hqx``) over seq + payload, its register started
                    from the CRC of the whole announce, so the frame is bound to its stream and codec

So a message costs payload + 3 bytes on a datagram link. What each check guarantees:

- corruption: CRC-16/CCITT (x^16+x^12+x^5+1) detects every error of 1–3 bits and of odd weight, and every
  burst of up to 16 bits, in any frame that fits 51 bytes; any other corruption passes with probability
  2^-16. (A CRC-8 would also catch every single-bit flip, but 1 in 256 random corruptions would then be
  decoded as a wrong feature; two bytes buy 1 in 65,536.) Huffman payloads must also decode to exactly
  their own bytes again (decode, re-encode, compare), which rejects most of what slips past the CRC.
- truncation: a raw frame has one valid length; a Huffman frame cut short fails its CRC as any corruption
  does (its last two bytes are then payload bytes) and almost always the re-encode check too.
- foreign codec or stream: the CRC register starts from the announce, so an intact frame of a stream
  whose announce differs (other codec, weights, coding or stream id) is always rejected when the two
  16-bit start values differ, which two random stream ids make the case except with probability 2^-16.
- order: a frame up to 127 numbers ahead of the next expected one is delivered and reports the numbers
  skipped (a gap, wrap-around included); a late frame that fills a reported gap is delivered and marked
  ``late``; a number already delivered is a ``duplicate`` and not delivered again; a number behind that this
  stream never saw (before its start) is ``stale`` and not delivered. The limit of an 8-bit counter: a frame
  delayed by 128 or more messages looks like one ahead (it is delivered with its own feature, and a gap is
  reported for the numbers between), and a run of exactly 256·k lost frames is invisible. Frames lost after
  the last one received show up as a gap when the next one arrives.

In a byte stream (the ``.scfs`` file, a serial line) raw frames follow each other at their fixed size and
Huffman frames carry one length byte before them (see ``write_stream`` / ``read_stream``).

Every problem is a :class:`FrameError` (a ``BitstreamError``) raised by ``parse_announce`` and the
sender, or a :class:`Delivery` with ``ok == False`` and a reason from ``FrameReceiver.accept``: a frame is
never decoded into a feature unless every check passed.
"""
from __future__ import annotations

import binascii
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .bitstream import CODEC_IDS, BitstreamError

STREAM_MAGIC = b"SCS\x89"  # a stream announce
FILE_MAGIC = b"SCFS"  # a .scfs file: announce + frames, see write_stream
STREAM_VERSION = 1
CODINGS = {"raw": 0, "huffman": 1}  # fixed: written into announces, never reorder
LORA_MAX_FRAME = 51  # LoRaWAN's smallest maximum payload (EU868, SF10-SF12)
MAX_FRAME = 255  # a frame's length must fit the one length byte of the byte-stream form
FRAME_OVERHEAD = 3  # seq + CRC-16
WINDOW = 128  # how far behind the next expected number a frame may be and still be recognised
_ANNOUNCE = struct.Struct("<4sBBBBH8s4s")


class FrameError(BitstreamError):
    """An announce or frame is malformed, or a message cannot be framed (too long for the link)."""


def _crc16(data: bytes, start: int) -> int:
    # binascii.crc_hqx is the standard library's CRC-16/CCITT (poly 0x1021, no reflection), in C: no table
    # of our own and no dependency (crcmod, crccheck) needed for one polynomial.
    return binascii.crc_hqx(data, start)


@dataclass(frozen=True)
class Announce:
    codec_family: str
    coding: str
    max_frame: int
    dim: int
    weights_hash: bytes
    stream_id: bytes
    spec: str
    raw: bytes  # the announce's bytes, exactly as sent

    @property
    def crc_start(self) -> int:
        """The CRC-16 register every frame of this stream starts from."""
        return _crc16(self.raw, 0xFFFF)


def build_announce(codec, coding: str, max_frame: int, stream_id: bytes) -> Announce:
    if coding not in CODINGS:
        raise FrameError(f"unknown coding {coding!r}; choose one of {sorted(CODINGS)}")
    if codec.family not in CODEC_IDS:
        raise FrameError(f"codec family {codec.family!r} has no bitstream id; known: {sorted(CODEC_IDS)}")
    if len(stream_id) != 4:
        raise FrameError("stream id must be 4 bytes")
    spec = codec.spec.encode("ascii")
    body = _ANNOUNCE.pack(STREAM_MAGIC, STREAM_VERSION, CODEC_IDS[codec.family], CODINGS[coding], max_frame, codec.dim,
                          codec.weights_hash, stream_id) + bytes([len(spec)]) + spec
    raw = body + struct.pack("<I", zlib.crc32(body))
    return Announce(codec.family, coding, max_frame, codec.dim, codec.weights_hash, stream_id, codec.spec, raw)


def parse_announce(data: bytes) -> Announce:
    """Validate an announce; :class:`FrameError` on anything wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError(f"announce must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _ANNOUNCE.size + 1 + 4:
        raise FrameError(f"announce too short ({len(data)} bytes)")
    if data[:4] != STREAM_MAGIC:
        raise FrameError("not a semcomp stream announce (bad magic)")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if zlib.crc32(body) != crc:
        raise FrameError("announce CRC mismatch: corrupted or truncated")
    _, version, codec_id, coding_id, max_frame, dim, whash, sid = _ANNOUNCE.unpack_from(body, 0)
    if version != STREAM_VERSION:
        raise FrameError(f"unsupported stream version {version}; this semcomp reads version {STREAM_VERSION}")
    family = next((k for k, v in CODEC_IDS.items() if v == codec_id), None)
    coding = next((k for k, v in CODINGS.items() if v == coding_id), None)
    if family is None or coding is None:
        raise FrameError(f"unknown codec id {codec_id} or coding id {coding_id}")
    if not FRAME_OVERHEAD < max_frame <= MAX_FRAME:
        raise FrameError(f"announced max frame {max_frame} out of range {FRAME_OVERHEAD + 1}..{MAX_FRAME}")
    n = body[_ANNOUNCE.size]
    if _ANNOUNCE.size + 1 + n != len(body):
        raise FrameError(f"announce spec length {n} does not match its {len(body) - _ANNOUNCE.size - 1} bytes")
    spec = body[_ANNOUNCE.size + 1:].decode("latin-1")
    if not re.fullmatch(r"[a-z0-9-]{1,64}", spec):  # a spec names a folder: no paths, no glob characters
        raise FrameError(f"announce spec {spec[:64]!r} is not a codec spec (lower-case letters, digits, '-')")
    return Announce(family, coding, max_frame, dim, whash, sid, spec, data)


def check_announce_matches(ann: Announce, codec) -> None:
    """FrameError unless ``codec`` is the one the announce names (spec, dimension and weights)."""
    if ann.codec_family != codec.family or ann.spec != codec.spec:
        raise FrameError(f"stream was made by codec {ann.spec!r}, this codec is {codec.spec!r}")
    if ann.dim != codec.dim:
        raise FrameError(f"stream is for {ann.dim}-d features, codec {codec.spec} is {codec.dim}-d")
    if ann.weights_hash != codec.weights_hash:
        raise FrameError(f"stream was made with other weights of {codec.spec} (weights hash differs)")


# ---------------------------------------------------------------- one item's payload


class _ItemCoder:
    """One item's symbols <-> payload bytes: raw fixed-length, or per-message Huffman with a raw escape."""

    def __init__(self, codec, coding: str):
        from .entropy import bits_per_symbol

        self.codec, self.coding = codec, coding
        self.n, self.alphabet = codec.num_symbols, codec.alphabet
        self.raw_len = (self.n * bits_per_symbol(self.alphabet) + 7) // 8
        self._enc = self._dec = None

    def _trees(self):
        if self._enc is None:
            import constriction

            # The same probabilities (from integer training counts, in float64) as semcomp.entropy's Huffman
            # coder, so sender and receiver build identical trees.
            p = self.codec.symbol_model.probabilities()
            h = constriction.symbol.huffman
            self._enc = [h.EncoderHuffmanTree(p[j]) for j in range(self.n)]
            self._dec = [h.DecoderHuffmanTree(p[j]) for j in range(self.n)]
        return self._enc, self._dec

    def _huffman(self, symbols: np.ndarray) -> bytes:
        import constriction

        enc = constriction.symbol.QueueEncoder()
        trees, _ = self._trees()
        for j, s in enumerate(symbols.tolist()):
            enc.encode_symbol(s, trees[j])
        words, nbits = enc.get_compressed()
        # constriction fills each 32-bit word from its least significant bit, so little-endian bytes put the
        # bits in order and cutting to whole bytes drops only unused zero bits.
        return np.asarray(words, dtype="<u4").tobytes()[: (int(nbits) + 7) // 8]

    def encode(self, symbols: np.ndarray) -> bytes:
        from .entropy import raw_encode

        raw = raw_encode(symbols[None], self.alphabet)
        if self.coding == "raw":
            return raw
        h = self._huffman(symbols)
        return h if len(h) < len(raw) else raw  # exactly raw_len bytes means raw

    def decode(self, payload: bytes) -> np.ndarray:
        """Payload -> (n,) symbols; FrameError when the bytes are not exactly what the sender would write."""
        from .entropy import EntropyCodingError, raw_decode

        if len(payload) == self.raw_len:
            try:
                return raw_decode(payload, 1, self.n, self.alphabet)[0]
            except EntropyCodingError as e:
                raise FrameError(str(e)) from e
        if self.coding == "raw" or len(payload) > self.raw_len:
            raise FrameError(f"payload of {len(payload)} bytes; this stream's messages are {self.raw_len} bytes"
                             + (" or shorter (Huffman)" if self.coding == "huffman" else ""))
        import constriction

        _, trees = self._trees()
        padded = payload + b"\0" * (-len(payload) % 4)
        dec = constriction.symbol.QueueDecoder(np.frombuffer(padded, dtype="<u4").astype(np.uint32))
        try:
            s = np.array([dec.decode_symbol(trees[j]) for j in range(self.n)], dtype=np.int64)
        except Exception as e:  # constriction raises when the data run out mid-codeword
            raise FrameError(f"Huffman payload cannot be decoded: {e}") from e
        if self._huffman(s) != payload:  # trailing bytes, non-zero padding, a cut: not what a sender writes
            raise FrameError("Huffman payload does not re-encode to itself (corrupted or truncated)")
        return s


# ---------------------------------------------------------------- sender


class FrameSender:
    """Frames one codec's items for a link: ``announce()`` once, then ``frame(feature)`` per message.

    ``coding="huffman"`` codes each message with the codec's shipped entropy model and sends raw symbols
    whenever that is not shorter, so a message is never longer than raw; ``"raw"`` keeps every frame the
    same size (no length byte needed in byte streams). ``max_frame`` is the link's largest frame (51 bytes
    for LoRa at its slowest rates); a message that does not fit is refused with :class:`FrameError`.
    ``embed`` turns whatever ``frame`` is given that is not a feature (an image) into one."""

    def __init__(self, codec, coding: str = "huffman", max_frame: int = LORA_MAX_FRAME, stream_id: bytes | None = None,
                 embed: Callable | None = None):
        if not FRAME_OVERHEAD < max_frame <= MAX_FRAME:
            raise FrameError(f"max_frame must be in {FRAME_OVERHEAD + 1}..{MAX_FRAME} bytes, got {max_frame}")
        self.codec, self.embed = codec, embed
        self.item = _ItemCoder(codec, coding)
        self.ann = build_announce(codec, coding, max_frame, os.urandom(4) if stream_id is None else stream_id)
        self._crc_start = self.ann.crc_start
        if coding == "raw" and self.item.raw_len + FRAME_OVERHEAD > max_frame:
            raise FrameError(f"codec {codec.spec} needs {self.item.raw_len + FRAME_OVERHEAD}-byte frames "
                             f"({codec.bits} bits + {FRAME_OVERHEAD}); this link carries at most {max_frame}. "
                             "Pick a codec of at most {} bits".format(8 * (max_frame - FRAME_OVERHEAD)))
        self.seq = 0

    def announce(self) -> bytes:
        return self.ann.raw

    @property
    def coding(self) -> str:
        return self.item.coding

    def frame_symbols(self, symbols) -> bytes:
        s = self.codec.check_symbols(np.asarray(symbols).reshape(1, -1)).numpy()[0]
        payload = self.item.encode(s)
        if len(payload) + FRAME_OVERHEAD > self.ann.max_frame:
            raise FrameError(f"this message needs a {len(payload) + FRAME_OVERHEAD}-byte frame; the link carries at most "
                             f"{self.ann.max_frame} bytes (codec {self.codec.spec}: {self.item.raw_len} bytes raw)")
        body = bytes([self.seq]) + payload
        self.seq = (self.seq + 1) % 256
        return body + struct.pack("<H", _crc16(body, self._crc_start))

    def frame(self, item) -> bytes:
        """One feature (D,) — or, with ``embed``, anything it accepts (an image) — as one frame."""
        import torch

        if not isinstance(item, (torch.Tensor, np.ndarray)):
            if self.embed is None:
                raise FrameError(f"frame() takes a feature tensor, got {type(item).__name__}")
            item = self.embed(item)
        return self.frame_symbols(self.codec.encode(item).numpy())


# ---------------------------------------------------------------- receiver


@dataclass
class Delivery:
    """What became of one frame. ``feature`` is set only when every check passed (``ok``)."""

    status: str  # ok | late | duplicate | stale | bad-crc | bad-length | bad-payload
    seq: int | None = None  # None when the frame was too damaged to trust its number
    feature: "object | None" = None  # (D,) decoded feature
    missing: tuple[int, ...] = ()  # numbers skipped just before this frame (a newly seen gap)
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.feature is not None


@dataclass
class StreamStats:
    delivered: int = 0
    rejected: dict = field(default_factory=dict)  # status -> count
    gaps: list = field(default_factory=list)  # every reported missing number, in order of discovery


class FrameReceiver:
    """Checks and decodes the frames of one announced stream; every frame gets a :class:`Delivery`.

    ``codec`` must be the codec the announce names (spec, dimension and weights hash are checked)."""

    def __init__(self, codec, announce: bytes | Announce):
        self.ann = announce if isinstance(announce, Announce) else parse_announce(announce)
        check_announce_matches(self.ann, codec)
        self.codec = codec
        self.item = _ItemCoder(codec, self.ann.coding)
        self._crc_start = self.ann.crc_start
        self.expected = 0  # the next sequence number in order
        self._state: dict[int, str] = {}  # seq -> "delivered" | "missing", for the last WINDOW numbers
        self.missing: set[int] = set()  # reported gaps not (yet) filled by a late frame
        self.stats = StreamStats()

    def _reject(self, status: str, reason: str, seq: int | None = None) -> Delivery:
        self.stats.rejected[status] = self.stats.rejected.get(status, 0) + 1
        return Delivery(status, seq, reason=reason)

    def _advance_to(self, seq: int) -> tuple[int, ...]:
        """Move ``expected`` past ``seq``; returns the numbers skipped (now marked missing)."""
        skipped = []
        while self.expected != seq:
            skipped.append(self.expected)
            self._mark(self.expected, "missing")
            self.expected = (self.expected + 1) % 256
        self.expected = (seq + 1) % 256
        return tuple(skipped)

    def _mark(self, seq: int, state: str) -> None:
        self._state[seq] = state
        if state == "missing":
            self.missing.add(seq)
        else:
            self.missing.discard(seq)
        old = (seq - WINDOW) % 256  # forget what an 8-bit number can no longer tell apart
        if self._state.pop(old, None) == "missing":
            self.missing.discard(old)

    def accept(self, frame: bytes) -> Delivery:
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            return self._reject("bad-length", f"a frame must be bytes, got {type(frame).__name__}")
        frame = bytes(frame)
        if not FRAME_OVERHEAD < len(frame) <= self.ann.max_frame:
            return self._reject("bad-length", f"{len(frame)}-byte frame; this stream's frames are "
                                f"{FRAME_OVERHEAD + 1}..{self.ann.max_frame} bytes")
        body, (crc,) = frame[:-2], struct.unpack("<H", frame[-2:])
        if _crc16(body, self._crc_start) != crc:
            return self._reject("bad-crc", "CRC mismatch: the frame is corrupted or truncated, or belongs to another "
                                "stream or codec")
        seq, payload = body[0], body[1:]
        try:
            symbols = self.item.decode(payload)
        except FrameError as e:
            return self._reject("bad-payload", str(e), seq)
        ahead = (seq - self.expected) % 256
        if ahead < WINDOW:
            status, missing = "ok", self._advance_to(seq)
            self.stats.gaps.extend(missing)
        elif self._state.get(seq) == "missing":
            status, missing = "late", ()
        elif self._state.get(seq) == "delivered":
            return self._reject("duplicate", f"message {seq} was already delivered", seq)
        else:
            return self._reject("stale", f"message {seq} is {256 - ahead} numbers behind the next expected "
                                f"({self.expected}): too old to tell apart from a new one", seq)
        self._mark(seq, "delivered")
        self.stats.delivered += 1
        feature = self.codec.decode(symbols[None])[0]
        return Delivery(status, seq, feature, missing)


# ---------------------------------------------------------------- byte-stream form (.scfs files, serial lines)


def write_stream(announce: bytes, frames: list[bytes]) -> bytes:
    """``SCFS`` + announce length + announce + frames: raw streams' frames back to back at their fixed size,
    Huffman streams' frames each after one length byte."""
    ann = parse_announce(announce)
    out = [FILE_MAGIC, bytes([len(announce)]), announce]
    for f in frames:
        if len(f) > ann.max_frame:
            raise FrameError(f"{len(f)}-byte frame in a stream announced with at most {ann.max_frame}")
        out.append(f if ann.coding == "raw" else bytes([len(f)]) + f)
    return b"".join(out)


@dataclass
class StreamFile:
    announce: Announce
    frames: list[bytes]
    trailing: bytes  # bytes at the end that do not form a whole frame (reported, never decoded)


def read_announce(data: bytes) -> Announce:
    """The announce at the head of a byte stream (to find its codec before ``read_stream``)."""
    data = bytes(data[:5 + 255])
    if data[:4] != FILE_MAGIC:
        raise FrameError("not a semcomp frame stream (bad magic; expected a file written by `semcomp send --framed`)")
    if len(data) < 5 or len(data) < 5 + data[4]:
        raise FrameError("frame stream truncated inside its announce")
    return parse_announce(data[5:5 + data[4]])


def read_stream(data: bytes, codec) -> StreamFile:
    """Split a byte stream into its announce and frames (each checked later by ``FrameReceiver``); ``codec``
    sizes raw frames and must be the one the announce names."""
    data = bytes(data)
    ann = read_announce(data)
    check_announce_matches(ann, codec)
    pos, frames = 5 + data[4], []
    if ann.coding == "raw":
        size = _ItemCoder(codec, "raw").raw_len + FRAME_OVERHEAD
        while pos + size <= len(data):
            frames.append(data[pos:pos + size])
            pos += size
    else:
        while pos < len(data) and pos + 1 + data[pos] <= len(data):
            frames.append(data[pos + 1:pos + 1 + data[pos]])
            pos += 1 + data[pos]
    return StreamFile(ann, frames, data[pos:])


def codec_for_announce(ann: Announce, codecs_dir=None):
    """The shipped codec an announce names (by spec, then weights hash and dimension, over every backbone's
    folder); FrameError if none matches. The announce carries no backbone name: the weights hash pins the
    codec, and the codec's config names its backbone."""
    import json
    from pathlib import Path

    from .codecs import load_codec
    from .zoo import codec_roots

    roots = [Path(codecs_dir)] if codecs_dir else codec_roots()  # shipped, then the user's (semcomp fit / pull)
    found = []
    # parse_announce allows only [a-z0-9-] in a spec
    for cfg in [c for root in roots for c in sorted(root.glob(f"*/{ann.spec}/config.json"))]:
        try:
            if json.loads(cfg.read_text()).get("dim") != ann.dim:
                continue
            codec = load_codec(cfg.parent)
        except (OSError, ValueError):
            continue
        if codec.weights_hash == ann.weights_hash:
            return codec
        found.append(str(cfg.parent))
    hint = f" ({', '.join(found)} have other weights)" if found else ""
    raise FrameError(f"no shipped codec {ann.spec!r} for {ann.dim}-d features with this stream's weights{hint}")

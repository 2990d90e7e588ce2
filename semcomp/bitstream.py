"""The self-describing ``.scf`` (semantic compressed feature) format.

Layout, all integers little-endian::

    magic      4s   b"SCF\\x89"
    version    u8   FORMAT_VERSION
    codec_id   u8   fixed table CODEC_IDS (never derived from registry order)
    coder_id   u8   entropy.CODER_IDS
    reserved   u8   0 (anything else is refused: a later version may give it a meaning)
    dim        u16  feature dimension the codec expects
    count      u32  number of items (features) in the payload
    wts_hash   8s   first 8 bytes of the sha256 of the codec weights
    spec_len   u8   + spec (ASCII codec spec, e.g. "pqvae-n200d16k8")
    bb_len     u8   + backbone name (UTF-8, e.g. "semcomp-tiny-clip")
    [version 2 only: progressive streams]
    stage_bits u8   bits each stage adds per item (8 for a K=256 stage)
    stages     u16  stages present per item (1..): the stream decodes to this prefix
    payload_len u32 + payload (entropy-coded symbols; version 2: raw stage symbols, stage-major)
    crc32      u32  over every preceding byte

Version 2 is written only by progressive codecs (``PROGRESSIVE_FAMILIES``) and version 1 only by the others, so a
stream of one kind handed to the other kind's codec is refused. A version-2 payload is stage-major (stage 0 of
every item, then stage 1, ...), fixed-length, so :func:`truncate` cuts it at a stage boundary by keeping a prefix
of the payload bytes, without the model.

Every field is validated before use; any problem raises :class:`BitstreamError` (a ``ValueError``).

The item count is the caller's to bound, as zlib's ``max_length`` bounds what it inflates: a near-certain
entropy model codes thousands of items in zero payload bytes, so a 64-byte file can announce millions of
items. ``check_limits`` compares the header's count with the caller's ``max_items`` and ``max_decoded_bytes``
(default :data:`DEFAULT_MAX_DECODED_BYTES`) before any entropy decoding or allocation, and raises
:class:`BitstreamLimitError` naming the limit.
"""
from __future__ import annotations

import numbers
import struct
import zlib
from dataclasses import dataclass, replace

MAGIC = b"SCF\x89"
FORMAT_VERSION = 1  # what non-progressive codecs write (byte-identical to every earlier release)
PROGRESSIVE_VERSION = 2  # progressive codecs: the header records the stage layout
READ_VERSIONS = (FORMAT_VERSION, PROGRESSIVE_VERSION)
# Fixed codec-family ids. Append only: a written id must keep its meaning forever.
CODEC_IDS = {"dsq": 1, "fsq": 2, "vqvae": 3, "pqvae": 4, "aesq": 5, "prq": 6}
PROGRESSIVE_FAMILIES = frozenset({"prq"})  # families whose streams are version 2 and can be cut
MAX_COUNT = 1 << 24  # refuse absurd item counts before allocating anything
# What one decompress call may allocate for its output when the caller names no bound: the decoded float32
# features plus the int64 symbols. 256 MiB is 43,690 items of a shipped dsq codec (512 symbols + a 512-d
# feature = 6 kB an item), 116,508 of fsq-c32l4; it also admits, symbols only, the largest stream compress()
# writes (entropy.MAX_SYMBOLS x 8 bytes). A caller decoding more passes a larger max_decoded_bytes.
DEFAULT_MAX_DECODED_BYTES = 256 << 20
_FIXED = struct.Struct("<4sBBBBHI8s")
_STAGES = struct.Struct("<BH")  # version 2: stage_bits, stages


class BitstreamError(ValueError):
    """A bitstream is truncated, corrupted, of another version, or made by another codec."""


class BitstreamLimitError(BitstreamError):
    """A bitstream asks for more than the caller allows (items or decoded bytes); refused before decoding.

    ``limit_name`` is the keyword that bounds it (``"max_items"``, ``"max_decoded_bytes"`` or
    ``"MAX_COUNT"``), ``limit`` its value and ``value`` what the bitstream asked for."""

    def __init__(self, message: str, limit_name: str, limit: int, value: int):
        super().__init__(message)
        self.limit_name, self.limit, self.value = limit_name, limit, value


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def check_limits(count: int, bytes_per_item: int, max_items: int | None = None, max_decoded_bytes: int | None = None,
                 what: str = "bitstream") -> None:
    """Refuse ``count`` items (from a header) that exceed the caller's bounds, before any decoding work.

    ``bytes_per_item``: what decoding one item allocates (the codec's ``decoded_bytes_per_item``).
    ``max_items=None``: no item bound beyond :data:`MAX_COUNT`; ``max_decoded_bytes=None``:
    :data:`DEFAULT_MAX_DECODED_BYTES`."""
    for name, v in (("max_items", max_items), ("max_decoded_bytes", max_decoded_bytes)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1):
            raise ValueError(f"{name} must be a positive int or None, got {v!r}")
    if count > MAX_COUNT:
        raise BitstreamLimitError(f"{what} announces {count} items, over the format's MAX_COUNT of {MAX_COUNT}",
                                  "MAX_COUNT", MAX_COUNT, count)
    if max_items is not None and count > int(max_items):
        raise BitstreamLimitError(f"{what} announces {count} items, over max_items={max_items} "
                                  "(pass a larger max_items to accept it)", "max_items", max_items, count)
    limit = DEFAULT_MAX_DECODED_BYTES if max_decoded_bytes is None else int(max_decoded_bytes)
    need = count * int(bytes_per_item)
    if need > limit:
        raise BitstreamLimitError(f"{what} announces {count} items that would decode to {_mib(need)}, over "
                                  f"max_decoded_bytes={limit} ({_mib(limit)}; pass a larger max_decoded_bytes or "
                                  "split the batch)", "max_decoded_bytes", limit, need)


@dataclass(frozen=True)
class Header:
    codec_family: str
    coder_id: int
    dim: int
    count: int
    weights_hash: bytes
    spec: str
    backbone: str
    version: int = FORMAT_VERSION
    stage_bits: int = 0  # version 2: bits per stage per item
    stages: int = 0  # version 2: stages present per item

    @property
    def bits_per_item(self) -> int:
        """Version 2: the fixed bits each item carries (stages x stage_bits); 0 for version 1."""
        return self.stage_bits * self.stages


def pack(header: Header, payload: bytes) -> bytes:
    if header.codec_family not in CODEC_IDS:
        raise BitstreamError(f"unknown codec family {header.codec_family!r}; known: {sorted(CODEC_IDS)}")
    progressive = header.codec_family in PROGRESSIVE_FAMILIES
    if header.version != (PROGRESSIVE_VERSION if progressive else FORMAT_VERSION):
        raise BitstreamError(f"codec family {header.codec_family!r} writes format version "
                             f"{PROGRESSIVE_VERSION if progressive else FORMAT_VERSION}, not {header.version}")
    if progressive and not (1 <= header.stage_bits <= 255 and 1 <= header.stages <= 0xFFFF):
        raise BitstreamError(f"stage layout {header.stages} stages x {header.stage_bits} bits out of range "
                             "(1..65535 stages of 1..255 bits)")
    if not 0 < header.count <= MAX_COUNT:
        raise BitstreamError(f"item count {header.count} out of range 1..{MAX_COUNT}")
    spec = header.spec.encode("ascii")
    bb = header.backbone.encode("utf-8")
    if len(spec) > 255 or len(bb) > 255:
        raise BitstreamError("spec and backbone names must be at most 255 bytes")
    if len(header.weights_hash) != 8:
        raise BitstreamError("weights hash must be 8 bytes")
    body = (
        _FIXED.pack(MAGIC, header.version, CODEC_IDS[header.codec_family], header.coder_id, 0, header.dim, header.count,
                    header.weights_hash)
        + bytes([len(spec)]) + spec + bytes([len(bb)]) + bb
        + (_STAGES.pack(header.stage_bits, header.stages) if progressive else b"")
        + struct.pack("<I", len(payload)) + payload
    )
    return body + struct.pack("<I", zlib.crc32(body))


def unpack(data: bytes) -> tuple[Header, bytes]:
    """Parse and validate a bitstream; returns the header and the payload bytes."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"bitstream must be bytes, got {type(data).__name__}")
    data = bytes(data)
    min_len = _FIXED.size + 1 + 1 + 4 + 4
    if len(data) < min_len:
        raise BitstreamError(f"bitstream too short ({len(data)} bytes, need at least {min_len})")
    if data[:4] != MAGIC:
        raise BitstreamError("not a semcomp bitstream (bad magic)")
    body, crc = data[:-4], struct.unpack("<I", data[-4:])[0]
    if zlib.crc32(body) != crc:
        raise BitstreamError("CRC mismatch: the bitstream is corrupted or truncated")
    magic, version, codec_id, coder_id, reserved, dim, count, whash = _FIXED.unpack_from(body, 0)
    if version not in READ_VERSIONS:
        raise BitstreamError(f"unsupported format version {version}; this semcomp reads versions {list(READ_VERSIONS)}")
    if reserved != 0:
        raise BitstreamError(f"reserved header byte is {reserved}, must be 0")
    family = next((k for k, v in CODEC_IDS.items() if v == codec_id), None)
    if family is None:
        raise BitstreamError(f"unknown codec id {codec_id}")
    progressive = family in PROGRESSIVE_FAMILIES
    if version != (PROGRESSIVE_VERSION if progressive else FORMAT_VERSION):
        raise BitstreamError(f"format version {version} stream from codec family {family!r}: "
                             f"{'progressive' if progressive else 'non-progressive'} codecs write version "
                             f"{PROGRESSIVE_VERSION if progressive else FORMAT_VERSION} only")
    if count == 0:
        raise BitstreamError("item count 0: a bitstream holds at least one item")
    if count > MAX_COUNT:
        raise BitstreamLimitError(f"item count {count} is over the format's MAX_COUNT of {MAX_COUNT}", "MAX_COUNT",
                                  MAX_COUNT, count)
    pos = _FIXED.size
    try:
        n = body[pos]
        spec = body[pos + 1 : pos + 1 + n].decode("ascii")
        pos += 1 + n
        n = body[pos]
        backbone = body[pos + 1 : pos + 1 + n].decode("utf-8")
        pos += 1 + n
        stage_bits = stages = 0
        if progressive:
            stage_bits, stages = _STAGES.unpack_from(body, pos)
            pos += _STAGES.size
        (plen,) = struct.unpack_from("<I", body, pos)
    except (IndexError, struct.error, UnicodeDecodeError) as e:
        raise BitstreamError(f"malformed header: {e}") from e
    pos += 4
    if pos + plen != len(body):
        raise BitstreamError(f"payload length {plen} does not match the {len(body) - pos} bytes present")
    if progressive and (stage_bits == 0 or stages == 0):
        raise BitstreamError(f"progressive stream with {stages} stages of {stage_bits} bits: both must be >= 1")
    return Header(family, coder_id, dim, count, whash, spec, backbone, version, stage_bits, stages), body[pos:]


def truncate(data: bytes, bits: int) -> bytes:
    """Cut a progressive (version 2) stream to its first ``bits`` per item, at a stage boundary, without the
    model: the payload is stage-major raw symbols, so the cut keeps a prefix of it and rewrites the header.

    ``bits`` must be a multiple of the stream's stage size, at least one stage and at most what the stream
    holds (asking for exactly what it holds returns it unchanged); anything else is a BitstreamError."""
    header, payload = unpack(data)
    if header.version != PROGRESSIVE_VERSION:
        raise BitstreamError(f"only progressive (version {PROGRESSIVE_VERSION}) streams can be cut; this is a "
                             f"version {header.version} stream of {header.spec!r}")
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise BitstreamError(f"bits must be an int, got {bits!r}")
    b, have = header.stage_bits, header.bits_per_item
    if bits < b:
        raise BitstreamError(f"cannot cut to {bits} bits: below the first stage ({b} bits); a stream holds at least one stage")
    if bits % b:
        raise BitstreamError(f"cannot cut to {bits} bits: inside a stage; cuts fall on multiples of {b} bits "
                             f"(e.g. {bits - bits % b} or {bits - bits % b + b})")
    if bits > have:
        raise BitstreamError(f"cannot cut to {bits} bits: the stream holds only {have} bits per item ({header.stages} stages)")
    if header.coder_id != 0:  # compress() of a progressive codec writes raw only; a forged id is refused here
        raise BitstreamError(f"progressive stream with entropy coder id {header.coder_id}; only raw (0) can be cut")
    stages = bits // b
    need = (header.count * header.stages * b + 7) // 8
    if len(payload) != need:
        raise BitstreamError(f"progressive payload has {len(payload)} bytes, {header.count} items x {header.stages} "
                             f"stages x {b} bits need {need}")
    nbits = header.count * stages * b
    keep = bytearray(payload[: (nbits + 7) // 8])
    if nbits % 8:  # zero the bits of the next stage that share the last byte (raw padding is zero)
        keep[-1] &= (0xFF << (8 - nbits % 8)) & 0xFF
    return pack(replace(header, stages=stages), bytes(keep))

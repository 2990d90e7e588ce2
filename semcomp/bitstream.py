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
    payload_len u32 + payload (entropy-coded symbols)
    crc32      u32  over every preceding byte

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
from dataclasses import dataclass

MAGIC = b"SCF\x89"
FORMAT_VERSION = 1
# Fixed codec-family ids. Append only: a written id must keep its meaning forever.
CODEC_IDS = {"dsq": 1, "fsq": 2, "vqvae": 3, "pqvae": 4, "aesq": 5}
MAX_COUNT = 1 << 24  # refuse absurd item counts before allocating anything
# What one decompress call may allocate for its output when the caller names no bound: the decoded float32
# features plus the int64 symbols. 256 MiB is 43,690 items of a shipped dsq codec (512 symbols + a 512-d
# feature = 6 kB an item), 116,508 of fsq-c32l4; it also admits, symbols only, the largest stream compress()
# writes (entropy.MAX_SYMBOLS x 8 bytes). A caller decoding more passes a larger max_decoded_bytes.
DEFAULT_MAX_DECODED_BYTES = 256 << 20
_FIXED = struct.Struct("<4sBBBBHI8s")


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


def pack(header: Header, payload: bytes) -> bytes:
    if header.codec_family not in CODEC_IDS:
        raise BitstreamError(f"unknown codec family {header.codec_family!r}; known: {sorted(CODEC_IDS)}")
    if not 0 < header.count <= MAX_COUNT:
        raise BitstreamError(f"item count {header.count} out of range 1..{MAX_COUNT}")
    spec = header.spec.encode("ascii")
    bb = header.backbone.encode("utf-8")
    if len(spec) > 255 or len(bb) > 255:
        raise BitstreamError("spec and backbone names must be at most 255 bytes")
    if len(header.weights_hash) != 8:
        raise BitstreamError("weights hash must be 8 bytes")
    body = (
        _FIXED.pack(MAGIC, FORMAT_VERSION, CODEC_IDS[header.codec_family], header.coder_id, 0, header.dim, header.count,
                    header.weights_hash)
        + bytes([len(spec)]) + spec + bytes([len(bb)]) + bb
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
    if version != FORMAT_VERSION:
        raise BitstreamError(f"unsupported format version {version}; this semcomp reads version {FORMAT_VERSION}")
    if reserved != 0:
        raise BitstreamError(f"reserved header byte is {reserved}, must be 0")
    family = next((k for k, v in CODEC_IDS.items() if v == codec_id), None)
    if family is None:
        raise BitstreamError(f"unknown codec id {codec_id}")
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
        (plen,) = struct.unpack_from("<I", body, pos)
    except (IndexError, struct.error, UnicodeDecodeError) as e:
        raise BitstreamError(f"malformed header: {e}") from e
    pos += 4
    if pos + plen != len(body):
        raise BitstreamError(f"payload length {plen} does not match the {len(body) - pos} bytes present")
    return Header(family, coder_id, dim, count, whash, spec, backbone, version), body[pos:]

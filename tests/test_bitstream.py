import numpy as np
import pytest
import torch

from semcomp import BitstreamError, create_codec
from semcomp.bitstream import FORMAT_VERSION, unpack
from semcomp.training.codec import train_codec


@pytest.fixture(scope="module")
def trained(synthetic):
    x, _, _ = synthetic
    codec, _ = train_codec("pqvae-n4d4k8", x, epochs=2, batch_size=64, codec_kwargs={"hidden": 32}, progress=False)
    codec.backbone = "synthetic"
    return codec, x


@pytest.mark.parametrize("coder", ["raw", "huffman", "ans"])
def test_round_trip_is_bit_exact_and_deterministic(trained, coder):
    codec, x = trained
    blob = codec.compress(x[:20], coder)
    assert blob == codec.compress(x[:20], coder)
    assert np.array_equal(codec.decompress_symbols(blob), codec.encode(x[:20]).numpy())
    assert torch.allclose(codec.decompress(blob), codec.reconstruct(x[:20]))
    h, _ = unpack(blob)
    assert (h.spec, h.count, h.dim, h.backbone, h.version) == (codec.spec, 20, 32, "synthetic", FORMAT_VERSION)


@pytest.mark.parametrize("coder", ["raw", "ans"])
def test_every_single_bit_flip_is_rejected(trained, coder):
    codec, x = trained
    blob = codec.compress(x[:3], coder)
    for i in range(len(blob) * 8):
        bad = bytearray(blob)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(BitstreamError):
            codec.decompress(bytes(bad))


def test_every_truncation_and_extension_is_rejected(trained):
    codec, x = trained
    blob = codec.compress(x[:3], "huffman")
    for n in range(len(blob)):
        with pytest.raises(BitstreamError):
            codec.decompress(blob[:n])
    with pytest.raises(BitstreamError):
        codec.decompress(blob + b"\x00")


def test_wrong_codec_and_wrong_weights_are_rejected(trained, synthetic):
    codec, x = trained
    blob = codec.compress(x[:3])
    other = create_codec("pqvae-n8d4k16", 32, hidden=32)
    with pytest.raises(BitstreamError, match="made by codec"):
        other.decompress(blob)
    same_spec = create_codec("pqvae-n4d4k8", 32, hidden=32)
    same_spec.backbone = "synthetic"
    with pytest.raises(BitstreamError, match="weights"):
        same_spec.decompress(blob)


def test_not_bytes_and_garbage_are_rejected(trained):
    codec, _ = trained
    for bad in [b"", b"SCF", b"\x00" * 64, "text"]:
        with pytest.raises(BitstreamError):
            codec.decompress(bad)


def test_auto_coder_picks_the_smallest_and_decodes(trained):
    codec, x = trained
    for n in (1, 40):
        blob = codec.compress(x[:n], "auto")
        assert len(blob) == min(len(codec.compress(x[:n], c)) for c in ("raw", "ans", "huffman"))
        assert np.array_equal(codec.decompress_symbols(blob), codec.encode(x[:n]).numpy())


def test_a_forged_item_count_is_refused_before_allocating(trained):
    """A header claiming 2^24 items with a valid CRC must fail fast, not allocate count x positions symbols."""
    import struct
    import zlib

    from semcomp.bitstream import _FIXED

    codec, x = trained
    messages = {"raw": "exceed", "huffman": "exceed", "ans": "exceed"}
    for coder, msg in messages.items():
        blob = bytearray(codec.compress(x[:2], coder))
        body = blob[:-4]
        fields = list(_FIXED.unpack_from(body, 0))
        fields[6] = 1 << 24  # count
        body[: _FIXED.size] = _FIXED.pack(*fields)
        forged = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
        with pytest.raises(BitstreamError, match=msg):  # refused from the header alone, before allocating
            codec.decompress(forged)

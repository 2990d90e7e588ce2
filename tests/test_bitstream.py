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


def forced(codec, x, coder):
    """A stream coded with exactly ``coder``: compress() falls back to raw where an entropy coder would cost more
    (tiny streams), and these tests check each coder's own decoding."""
    from semcomp.bitstream import Header, pack
    from semcomp.entropy import CODER_IDS

    h, _ = unpack(codec.compress(x, "raw"))
    payload = codec.entropy_coder.encode(codec.encode(x).numpy(), coder)
    return pack(Header(h.codec_family, CODER_IDS[coder], h.dim, h.count, h.weights_hash, h.spec, h.backbone), payload)


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
    blob = forced(codec, x[:3], coder)
    for i in range(len(blob) * 8):
        bad = bytearray(blob)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(BitstreamError):
            codec.decompress(bytes(bad))


def test_every_truncation_and_extension_is_rejected(trained):
    codec, x = trained
    blob = forced(codec, x[:3], "huffman")
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


def forge(blob: bytes, **fields) -> bytes:
    """The same bitstream with header fields replaced (count=, reserved=, coder=) and the CRC recomputed."""
    import struct
    import zlib

    from semcomp.bitstream import _FIXED

    body = bytearray(blob[:-4])
    f = list(_FIXED.unpack_from(body, 0))
    index = {"coder": 3, "reserved": 4, "dim": 5, "count": 6}
    for k, v in fields.items():
        f[index[k]] = v
    body[: _FIXED.size] = _FIXED.pack(*f)
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


@pytest.mark.parametrize("coder", ["raw", "huffman", "ans"])
def test_a_forged_item_count_is_refused_before_decoding(trained, coder, monkeypatch):
    """Counts over the caller's bounds fail from the header alone: the entropy decoder is never called."""
    from semcomp import BitstreamLimitError
    from semcomp.bitstream import DEFAULT_MAX_DECODED_BYTES, MAX_COUNT
    from semcomp.entropy import EntropyCoder

    codec, x = trained
    blob = codec.compress(x[:2], coder)

    def never(*a, **k):
        raise AssertionError("entropy decoding ran before the limit check")

    monkeypatch.setattr(EntropyCoder, "decode", never)
    per_item = codec.decoded_bytes_per_item()
    assert per_item == 4 * 32 + 8 * 4
    cases = [
        (dict(), MAX_COUNT + 1, "MAX_COUNT", MAX_COUNT),  # the format's own bound
        (dict(), DEFAULT_MAX_DECODED_BYTES // per_item + 1, "max_decoded_bytes", DEFAULT_MAX_DECODED_BYTES),  # default
        (dict(max_items=2), 3, "max_items", 2),
        (dict(max_decoded_bytes=2 * per_item), 3, "max_decoded_bytes", 2 * per_item),
    ]
    for kwargs, count, name, limit in cases:
        with pytest.raises(BitstreamLimitError, match=name) as e:
            codec.decompress(forge(blob, count=count), **kwargs)
        assert (e.value.limit_name, e.value.limit) == (name, limit)
        assert isinstance(e.value, BitstreamError)
    # symbols only: the bytes bound counts 8 bytes a symbol, not the features
    with pytest.raises(BitstreamLimitError, match="max_decoded_bytes"):
        codec.decompress_symbols(forge(blob, count=3), max_decoded_bytes=2 * 8 * codec.num_symbols)


def test_limits_let_through_what_they_allow(trained):
    codec, x = trained
    blob = codec.compress(x[:3], "ans")
    assert codec.decompress(blob, max_items=3, max_decoded_bytes=3 * codec.decoded_bytes_per_item()).shape == (3, 32)
    assert codec.decompress_symbols(blob, max_items=3, max_decoded_bytes=3 * 8 * codec.num_symbols).shape == (3, 4)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_items"):
            codec.decompress(blob, max_items=bad)


def test_the_reserved_byte_must_be_zero(trained):
    codec, x = trained
    blob = codec.compress(x[:3], "raw")
    assert codec.decompress(forge(blob, reserved=0)).shape == (3, 32)
    for v in (1, 0x80, 255):
        with pytest.raises(BitstreamError, match="reserved header byte is"):
            codec.decompress(forge(blob, reserved=v))


@pytest.mark.parametrize("coder", ["raw", "huffman", "ans"])
def test_every_coder_decodes_exactly_the_announced_count(trained, coder):
    """A 3-item stream relabelled as fewer items (CRC recomputed) is refused by every coder, and as more items
    by raw and Huffman. ANS is not self-delimiting: once its state is spent, decoding on yields free symbols
    that encode to no bytes, so the same payload can be the canonical coding of more items (a forger could
    write such a stream from scratch anyway). What is checked for it: anything it accepts is exactly the
    payload an encoder writes for the decoded items, never a partial read."""
    codec, x = trained
    blob = forced(codec, x[:3], coder)
    assert codec.decompress_symbols(forge(blob, count=3)).shape == (3, 4)
    for n in (1, 2):
        with pytest.raises(BitstreamError, match="exactly|payload"):
            codec.decompress(forge(blob, count=n))
    for n in (4, 5, 9):
        if coder == "ans":
            try:
                s = codec.decompress_symbols(forge(blob, count=n))
            except BitstreamError:
                continue
            assert s.shape == (n, 4) and codec.entropy_coder.encode(s, "ans") == unpack(blob)[1]
        else:
            with pytest.raises(BitstreamError, match="exactly|payload"):
                codec.decompress(forge(blob, count=n))


def test_a_huffman_stream_relabelled_as_one_item_fails(trained):
    """The issue's case: 3 Huffman items relabelled as 1 (CRC fixed) once decoded the first item silently."""
    codec, x = trained
    blob = forced(codec, x[:3], "huffman")
    with pytest.raises(BitstreamError, match="not the coding of exactly 1 items"):
        codec.decompress(forge(blob, count=1))


@pytest.mark.parametrize("coder", ["raw", "huffman", "ans"])
def test_trailing_bytes_and_padding_in_the_payload_are_refused(trained, coder):
    """Exactly the payload is consumed: a word appended inside the payload (length and CRC fixed) fails."""
    from semcomp.bitstream import pack

    codec, x = trained
    h, payload = unpack(forced(codec, x[:3], coder))
    for extra in (b"\x00\x00\x00\x00", b"\x01\x00\x00\x00"):
        with pytest.raises(BitstreamError):
            codec.decompress(pack(h, payload + extra))
    if coder == "raw":  # 3 items x 12 bits = 36 bits: the last byte carries 4 bits of padding, which must be 0
        bad = payload[:-1] + bytes([payload[-1] | 1])
        with pytest.raises(BitstreamError, match="padding"):
            codec.decompress(pack(h, bad))


def test_default_bounds_admit_whatever_compress_can_write(trained):
    """compress() refuses more than entropy.MAX_SYMBOLS symbols a stream, so the default decoded-bytes bound of
    decompress_symbols (8 bytes a symbol) never refuses a stream this library wrote."""
    from semcomp.bitstream import DEFAULT_MAX_DECODED_BYTES
    from semcomp.entropy import MAX_SYMBOLS

    assert 8 * MAX_SYMBOLS <= DEFAULT_MAX_DECODED_BYTES
    codec, _ = trained
    s = torch.randint(0, codec.alphabet, (8192 + 5, codec.num_symbols))
    assert torch.equal(codec.decode(s), torch.cat([codec.decode(s[:8192]), codec.decode(s[8192:])]))  # chunked fill

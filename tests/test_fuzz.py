"""Fuzzing in CI size: mutated bitstreams give BitstreamError or a valid decode, never another exception."""
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semcomp import BitstreamError
from semcomp.receiver import receive
from semcomp.training.codec import train_codec

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"


@pytest.fixture(scope="module")
def seeds(synthetic):
    x, _, _ = synthetic
    out = []
    for spec in ("pqvae-n4d4k8", "fsq-c8l4"):
        codec, _ = train_codec(spec, x, epochs=1, batch_size=64, codec_kwargs={"hidden": 32}, progress=False)
        codec.backbone = "synthetic"
        out += [(codec, codec.compress(x[:n], coder)) for coder in ("raw", "huffman", "ans") for n in (1, 3)]
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_bitstreams_only_raise_bitstream_error(seeds, data):
    codec, blob = data.draw(st.sampled_from(seeds))
    body = bytearray(blob[:-4])
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(16, len(body)))
    body = bytes(body[:cut])
    fixed = body + struct.pack("<I", zlib.crc32(body))  # past the CRC, into the header checks and decoders
    for candidate in (fixed, bytes(body)):
        try:
            out = codec.decompress(candidate)
            assert out.shape[1] == codec.dim
        except BitstreamError:
            pass


def test_corpus_inputs_are_refused():
    files = sorted(CORPUS.glob("*.scf"))
    assert files, "the corpus keeps at least the forged-count regression input"
    for f in files:
        with pytest.raises(BitstreamError):
            receive(f.read_bytes())


SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "codecs" / "semcomp-tiny-clip"


def _forge_count(blob: bytes, count: int) -> bytes:
    from semcomp.bitstream import _FIXED

    body = bytearray(blob[:-4])
    f = list(_FIXED.unpack_from(body, 0))
    f[6] = count
    body[: _FIXED.size] = _FIXED.pack(*f)
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


def test_forged_counts_on_every_shipped_codec_are_refused_without_memory_or_time():
    """Issue 19's decompression bomb: a tiny .scf announcing up to 2^24 items (CRC fixed). Every shipped codec,
    every coder: receive() refuses it by its one-upload default, decompress() by the default decoded-bytes bound
    or the caller's max_items, each with BitstreamLimitError naming the limit, before decoding anything; the
    whole batch raises the peak RSS by less than 100 MB and takes seconds, not minutes."""
    import time

    import torch

    from rss import peak_rss_growth
    from semcomp import BitstreamLimitError
    from semcomp.bitstream import MAX_COUNT
    from semcomp.codecs import load_codec
    from semcomp.receiver import RECEIVE_MAX_ITEMS

    folders = sorted(p for p in SHIPPED.iterdir() if (p / "config.json").exists())
    assert len(folders) >= 7  # every family of the tiny backbone's pruned ladder
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(2, 512, generator=g), dim=-1)
    cases = []  # (codec, forged blob, coder): every codec and coder loaded and encoded before measuring
    for i, folder in enumerate(folders):
        codec = load_codec(folder)
        for coder in ("raw", "huffman", "ans"):
            blob = codec.compress(x, coder)
            cases.append((codec, blob, coder))
    refused = {"max_items": 0, "max_decoded_bytes": 0, "MAX_COUNT": 0}
    t0 = time.perf_counter()
    with peak_rss_growth() as mem:
        for j, (codec, blob, coder) in enumerate(cases):
            big = [1 << 19, 1 << 24][j % 2]  # the 64-byte file had 2^19; 2^24 is the format's maximum
            for count, call, name in [
                (RECEIVE_MAX_ITEMS + 1, lambda b: receive(b), "max_items"),
                (big, lambda b: receive(b), "max_items"),
                (big, lambda b: receive(b, max_items=None), "max_decoded_bytes"),
                (big, lambda b: codec.decompress(b), "max_decoded_bytes"),
                (MAX_COUNT + 1, lambda b: codec.decompress(b), "MAX_COUNT"),
                (3, lambda b: codec.decompress(b, max_items=2), "max_items"),
            ]:
                with pytest.raises(BitstreamLimitError) as e:
                    call(_forge_count(blob, count))
                assert e.value.limit_name == name, (codec.spec, coder, count, str(e.value))
                assert name in str(e.value)
                refused[name] += 1
    seconds = time.perf_counter() - t0
    assert refused == {"max_items": 3 * len(cases), "max_decoded_bytes": 2 * len(cases), "MAX_COUNT": len(cases)}
    assert mem["bytes"] < 100e6, f"forged counts raised the peak RSS by {mem['bytes'] / 1e6:.0f} MB"
    assert seconds < 30, f"refusing {sum(refused.values())} forged bitstreams took {seconds:.1f} s"


def test_receive_takes_one_upload_by_default_and_more_when_asked():
    """A genuine 17-item file: refused by receive's default (RECEIVE_MAX_ITEMS = 16) before any codec is
    loaded, decoded exactly when the caller allows it."""
    import torch

    from semcomp import BitstreamLimitError
    from semcomp.codecs import load_codec
    from semcomp.receiver import RECEIVE_MAX_ITEMS

    assert RECEIVE_MAX_ITEMS == 16
    codec = load_codec(SHIPPED / "fsq-c32l4")
    x = torch.nn.functional.normalize(torch.randn(17, 512, generator=torch.Generator().manual_seed(0)), dim=-1)
    blob = codec.compress(x, "ans")
    with pytest.raises(BitstreamLimitError, match="max_items=16"):
        receive(blob)
    got, feats = receive(blob, max_items=17)
    assert got.spec == "fsq-c32l4" and torch.equal(feats, codec.decompress(blob))
    assert receive(blob, max_items=None)[1].shape == (17, 512)
    with pytest.raises(BitstreamLimitError, match="max_decoded_bytes"):
        receive(blob, max_items=None, max_decoded_bytes=16 * 512 * 4)
    assert receive(codec.compress(x[:16], "raw"))[1].shape == (16, 512)

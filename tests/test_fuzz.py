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

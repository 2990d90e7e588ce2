"""Golden bitstreams: the shipped codecs must keep producing byte-identical .scf files for a fixed input.

A deliberate format or weights change regenerates them: SEMCOMP_REGEN_GOLDEN=1 pytest tests/test_golden.py
"""
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from semcomp.codecs import load_codec

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "bitstreams.json"
CASES = [("pqvae-n32d8k16", "raw"), ("pqvae-n32d8k16", "ans"), ("aesq-c200l8", "huffman"), ("fsq-c32l4", "ans")]


def fixed_input(dim=512, n=8):
    g = torch.Generator().manual_seed(1234)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)


def digests():
    out = {}
    for spec, coder in CASES:
        codec = load_codec(ROOT / "weights" / "codecs" / "semcomp-tiny-clip" / spec)
        out[f"{spec}/{coder}"] = hashlib.sha256(codec.compress(fixed_input(), coder)).hexdigest()
    return out


def test_bitstreams_match_the_committed_goldens():
    got = digests()
    if os.environ.get("SEMCOMP_REGEN_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=2) + "\n")
        pytest.skip("regenerated golden bitstreams")
    assert got == json.loads(GOLDEN.read_text())


def test_bitstreams_do_not_depend_on_thread_count_or_batching():
    codec = load_codec(ROOT / "weights" / "codecs" / "semcomp-tiny-clip" / "pqvae-n32d8k16")
    x = fixed_input(n=64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = codec.compress(x, "ans")
        torch.set_num_threads(2)
        two = codec.compress(x, "ans")
    finally:
        torch.set_num_threads(before)
    assert one == two
    assert torch.equal(torch.cat([codec.encode(x[i : i + 1]) for i in range(len(x))]), codec.encode(x))

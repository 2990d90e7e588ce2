import numpy as np
import pytest

from semcomp.entropy import EntropyCoder, EntropyCodingError, SymbolModel, count_symbols, empirical_entropy_bits


def skewed_symbols(n=4000, positions=6, k=16, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.3), size=positions)
    return np.stack([rng.choice(k, size=n, p=p[j]) for j in range(positions)], 1), p


@pytest.mark.parametrize("coder", ["raw", "huffman", "ans"])
def test_coders_decode_exactly(coder):
    s, _ = skewed_symbols(n=300)
    ec = EntropyCoder(SymbolModel(count_symbols(s, 16)))
    payload = ec.encode(s, coder)
    assert np.array_equal(ec.decode(payload, len(s), coder), s)


def test_ans_is_within_two_percent_of_the_model_cross_entropy():
    s, _ = skewed_symbols()
    model = SymbolModel(count_symbols(s, 16))
    payload = EntropyCoder(model).encode(s, "ans")
    ideal = model.ideal_bits(s)
    assert 8 * len(payload) <= 1.02 * ideal + 64
    # and the model, fitted on these symbols, is close to their empirical entropy
    assert ideal <= 1.01 * empirical_entropy_bits(s, 16) + 64


def test_huffman_beats_raw_on_skewed_symbols_and_ans_beats_huffman():
    s, _ = skewed_symbols(n=2000)
    ec = EntropyCoder(SymbolModel(count_symbols(s, 16)))
    sizes = {c: len(ec.encode(s, c)) for c in ("raw", "huffman", "ans")}
    assert sizes["ans"] < sizes["huffman"] < sizes["raw"]


def test_unseen_symbols_stay_codable():
    train = np.zeros((50, 2), dtype=np.int64)
    ec = EntropyCoder(SymbolModel(count_symbols(train, 8)))
    s = np.array([[7, 3], [0, 5]])
    for c in ("huffman", "ans"):
        assert np.array_equal(ec.decode(ec.encode(s, c), 2, c), s)


def test_garbage_payloads_raise_typed_errors():
    s, _ = skewed_symbols(n=50)
    ec = EntropyCoder(SymbolModel(count_symbols(s, 16)))
    with pytest.raises(EntropyCodingError):
        ec.decode(b"\x01\x02\x03", 50, "ans")
    with pytest.raises(EntropyCodingError):
        ec.decode(b"\x01\x02\x03", 50, "raw")
    with pytest.raises(EntropyCodingError):
        ec.decode(b"\xff\xff\xff\x7f" + b"\x00" * 8, 50, "huffman")
    with pytest.raises(EntropyCodingError):
        ec.encode(s, "zip")


def test_near_certain_symbols_decode_even_from_an_empty_ans_payload():
    """A model that is almost sure of each symbol codes thousands of items in (nearly) no bytes: still valid."""
    counts = np.zeros((16, 16), dtype=np.int64)
    counts[:, 3] = 4096
    coder = EntropyCoder(SymbolModel(counts))
    s = np.full((4096, 16), 3, dtype=np.int64)
    blob = coder.encode(s, "ans")
    assert len(blob) <= 64
    assert (coder.decode(blob, 4096, "ans") == s).all()


@pytest.mark.parametrize("coder", ["raw", "huffman", "ans"])
def test_decode_takes_exactly_the_count_and_the_payload(coder):
    """Fewer items than coded, or bytes appended, are refused by every coder (the payload must be exactly what
    encoding the decoded items writes)."""
    s, _ = skewed_symbols(n=30)
    ec = EntropyCoder(SymbolModel(count_symbols(s, 16)))
    payload = ec.encode(s, coder)
    assert np.array_equal(ec.decode(payload, 30, coder), s)
    for n in (1, 29):
        with pytest.raises(EntropyCodingError):
            ec.decode(payload, n, coder)
    with pytest.raises(EntropyCodingError):
        ec.decode(payload + b"\x01\x00\x00\x00", 30, coder)

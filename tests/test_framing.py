"""Framed streams (semcomp.framing): payload + 3 bytes a message, and every bad frame reported, never decoded."""
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semcomp.codecs import create_codec
from semcomp.framing import (FRAME_OVERHEAD, FrameError, FrameReceiver, FrameSender, parse_announce, read_announce,
                             read_stream, write_stream)

from conftest import clustered_features

PROPS = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


SPEC, DIM = "fsq-c8l16", 32  # 8 symbols of 4 bits: 4 bytes raw


def _skewed_symbols(n, seed):
    """Symbols as a trained codec emits them: a skewed (Zipf-like) distribution per position."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, 17) ** 1.3
    return np.stack([rng.choice(16, size=n, p=np.roll(p, j) / p.sum()) for j in range(8)], axis=1)


def _codec(spec=SPEC, seed=0):
    from semcomp.entropy import count_symbols

    torch.manual_seed(seed)
    c = create_codec(spec, DIM, hidden=48)
    if spec == SPEC:  # the entropy model of a trained codec (untrained encoders emit one symbol per position)
        c.symbol_counts = torch.from_numpy(count_symbols(_skewed_symbols(5000, 100 + seed), 16))
    return c.eval()


@pytest.fixture(scope="module")
def codec():
    return _codec()


@pytest.fixture(scope="module")
def symbols():
    return _skewed_symbols(300, 1)


@pytest.fixture(scope="module")
def feats(codec, symbols):
    return codec.decode(symbols)  # what the receiver must get back, message by message


@pytest.fixture(scope="module", params=["raw", "huffman"])
def stream(request, codec, symbols):
    s = FrameSender(codec, request.param, stream_id=b"test")
    return s.announce(), [s.frame_symbols(x) for x in symbols]


def test_round_trip_in_order_with_wrap_around(codec, feats, stream):
    announce, frames = stream
    rx = FrameReceiver(codec, announce)
    out = [rx.accept(f) for f in frames]  # 300 frames: the 8-bit number wraps once
    assert [d.status for d in out] == ["ok"] * 300 and [d.seq for d in out] == [i % 256 for i in range(300)]
    assert not any(d.missing for d in out) and rx.stats.gaps == []
    got = torch.stack([d.feature for d in out])
    assert torch.allclose(got, feats, atol=1e-5)


def test_frame_sizes(codec, stream):
    announce, frames = stream
    ann = parse_announce(announce)
    raw = 4 + FRAME_OVERHEAD  # 8 symbols x 4 bits = 4 bytes
    assert len(announce) <= 51 and max(map(len, frames)) <= raw
    if ann.coding == "raw":
        assert {len(f) for f in frames} == {raw}
    else:
        assert min(map(len, frames)) < raw  # some messages are shorter than raw


def test_every_single_bit_flip_is_detected(codec, stream):
    announce, frames = stream
    for f in frames[:40]:
        for bit in range(8 * len(f)):
            bad = bytearray(f)
            bad[bit // 8] ^= 1 << (bit % 8)
            rx = FrameReceiver(codec, announce)
            d = rx.accept(bytes(bad))
            assert not d.ok and d.status in ("bad-crc", "bad-payload"), (bit, d)


@PROPS
@given(data=st.data())
def test_bursts_up_to_16_bits_and_odd_weight_errors_are_always_detected(codec, stream, data):
    announce, frames = stream
    f = bytearray(data.draw(st.sampled_from(frames)))
    nbits = 8 * len(f)
    if data.draw(st.booleans()):  # a burst: first and last bit of a <= 16-bit window flipped, any bits between
        length = data.draw(st.integers(1, 16))
        start = data.draw(st.integers(0, nbits - length))
        pattern = 1 | (1 << (length - 1)) | data.draw(st.integers(0, (1 << length) - 1))
        flips = [start + i for i in range(length) if pattern >> i & 1]
    else:  # any odd number of flipped bits anywhere
        flips = data.draw(st.lists(st.integers(0, nbits - 1), min_size=1, max_size=15, unique=True))
        flips = flips if len(flips) % 2 else flips[:-1]
    for b in flips:
        f[b // 8] ^= 1 << (7 - b % 8)
    assert not FrameReceiver(codec, announce).accept(bytes(f)).ok


@PROPS
@given(data=st.data())
def test_random_corruption_never_decodes_a_wrong_feature(codec, feats, stream, data):
    """Beyond the guarantees, any corruption passes the CRC with probability 2^-16; derandomised, this run
    checks a fixed set of them: each is rejected (or, were it to pass, must decode to the sent feature)."""
    announce, frames = stream
    i = data.draw(st.integers(0, len(frames) - 1))
    f = bytearray(frames[i])
    for _ in range(data.draw(st.integers(1, 6))):
        f[data.draw(st.integers(0, len(f) - 1))] = data.draw(st.integers(0, 255))
    if bytes(f) == frames[i]:
        return
    rx = FrameReceiver(codec, announce)
    rx.expected = i % 256
    d = rx.accept(bytes(f))
    assert not d.ok, "a corrupted frame passed every check"


def test_every_truncation_is_detected(codec, stream):
    announce, frames = stream
    for f in frames[:60]:
        for n in range(len(f)):
            assert not FrameReceiver(codec, announce).accept(f[:n]).ok
        assert not FrameReceiver(codec, announce).accept(f + b"\0").ok  # and one byte too many


def test_gaps_are_reported_across_wrap_around(codec, stream):
    announce, frames = stream
    rx = FrameReceiver(codec, announce)
    lost = {3, 4, 250, 254, 255, 256, 257}  # frame 256 carries number 0 again
    out = {i: rx.accept(f) for i, f in enumerate(frames) if i not in lost}
    assert all(d.status == "ok" for d in out.values())
    assert out[5].missing == (3, 4) and out[251].missing == (250,) and out[258].missing == (254, 255, 0, 1)
    assert rx.stats.gaps == [3, 4, 250, 254, 255, 0, 1]


def test_a_stream_that_starts_late_reports_the_first_numbers_missing(codec, stream):
    announce, frames = stream
    d = FrameReceiver(codec, announce).accept(frames[2])
    assert d.ok and d.missing == (0, 1)


def test_duplicates_are_refused_and_late_frames_fill_their_gap(codec, feats, stream):
    announce, frames = stream
    rx = FrameReceiver(codec, announce)
    assert rx.accept(frames[0]).status == "ok"
    assert rx.accept(frames[0]).status == "duplicate"
    d = rx.accept(frames[3])
    assert d.status == "ok" and d.missing == (1, 2) and rx.missing == {1, 2}
    late = rx.accept(frames[1])
    assert late.status == "late" and late.ok and late.seq == 1 and rx.missing == {2}
    assert torch.allclose(late.feature, feats[1], atol=1e-5)
    assert rx.accept(frames[1]).status == "duplicate" and rx.accept(frames[3]).status == "duplicate"
    assert rx.stats.delivered == 3 and rx.stats.rejected == {"duplicate": 3}


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 120))
def test_shuffled_and_duplicated_frames_deliver_each_message_exactly_once(codec, feats, stream, seed, n):
    """Within the 127-frame window, any order with duplicates delivers every message once, each with its own
    feature, and everything else is reported."""
    announce, frames = stream
    rng = random.Random(seed)
    order = list(range(n)) + [rng.randrange(n) for _ in range(n // 3)]
    rng.shuffle(order)
    rx = FrameReceiver(codec, announce)
    delivered = {}
    for i in order:
        d = rx.accept(frames[i])
        if d.ok:
            assert d.seq == i and i not in delivered
            delivered[i] = d.feature
        else:
            assert d.status == "duplicate" and i in delivered
    assert sorted(delivered) == list(range(n)) and rx.missing == set()
    assert all(torch.allclose(delivered[i], feats[i], atol=1e-5) for i in range(n))


def test_a_frame_from_before_the_window_is_stale_not_delivered(codec, stream):
    announce, frames = stream
    rx = FrameReceiver(codec, announce)
    assert rx.accept(frames[5]).missing == (0, 1, 2, 3, 4)
    d = rx.accept(frames[250])  # number 250: 12 behind the next expected (6), and never seen in this stream
    assert d.status == "stale" and not d.ok


def test_a_frame_delayed_by_128_or_more_looks_new_the_limit_of_an_8_bit_counter(codec, feats, stream):
    announce, frames = stream
    rx = FrameReceiver(codec, announce)
    for f in frames[:200]:
        assert rx.accept(f).ok
    d = rx.accept(frames[10])  # 190 behind = 66 ahead: delivered with its own feature, the 66 between reported
    assert d.status == "ok" and d.missing == tuple(range(200, 256)) + tuple(range(10))
    assert torch.allclose(d.feature, feats[10], atol=1e-5)


def test_frames_of_another_stream_or_codec_are_rejected(codec, symbols, stream):
    announce, frames = stream
    coding = parse_announce(announce).coding
    other_stream = FrameSender(codec, coding, stream_id=b"othr")
    other_codec = _codec(seed=1)  # same spec and frame sizes, other weights
    other_weights = FrameSender(other_codec, coding, stream_id=b"test")
    for sender in (other_stream, other_weights):
        rx = FrameReceiver(codec, announce)
        for x in symbols[:100]:
            d = rx.accept(sender.frame_symbols(x))
            assert d.status == "bad-crc" and not d.ok
    with pytest.raises(FrameError, match="other weights"):
        FrameReceiver(codec, other_weights.announce())
    with pytest.raises(FrameError, match="made by codec"):
        FrameReceiver(_codec("fsq-c8l4"), announce)


def test_announce_is_checked(codec, stream):
    announce, _ = stream
    for bit in range(8 * len(announce)):
        bad = bytearray(announce)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(FrameError):
            parse_announce(bytes(bad))
    for n in range(len(announce)):
        with pytest.raises(FrameError):
            parse_announce(announce[:n])


def test_messages_that_do_not_fit_the_link_are_refused(codec, symbols, feats):
    big = create_codec("fsq-c200l8", 32)  # 600 bits: 75 bytes raw
    with pytest.raises(FrameError, match="at most 51"):
        FrameSender(big, "raw")
    s = FrameSender(big, "huffman")  # an untrained (uniform) model: Huffman is never shorter than raw
    with pytest.raises(FrameError, match="at most 51"):
        s.frame(feats[0])
    assert s.seq == 0  # a refused message uses no sequence number
    with pytest.raises(FrameError):
        FrameSender(codec, max_frame=3)
    s = FrameSender(codec, "raw", max_frame=7)  # exactly 4 payload bytes + 3
    assert len(s.frame_symbols(symbols[0])) == 7


def test_byte_stream_round_trip_and_truncated_tail(codec, feats, stream):
    announce, frames = stream
    blob = write_stream(announce, frames[:20])
    assert read_announce(blob).raw == announce
    sf = read_stream(blob, codec)
    assert sf.frames == frames[:20] and sf.trailing == b""
    raw = parse_announce(announce).coding == "raw"
    assert len(blob) == 4 + 1 + len(announce) + sum(map(len, frames[:20])) + (0 if raw else 20)
    sf = read_stream(blob[:-2], codec)
    assert sf.frames == frames[:19] and len(sf.trailing) == len(frames[19]) - 2 + (0 if raw else 1)
    with pytest.raises(FrameError, match="bad magic"):
        read_stream(b"SCF\x89" + blob[4:], codec)


def test_semantic_link_sender_and_receiver(codec, feats):
    """Features or images in, the codec's reconstruction out."""
    from semcomp.link import SemanticLink

    class StubBackbone:  # an "image" here is an index into feats
        name, dim = "stub", 32

        def encode_images(self, images):
            return feats[list(images)]

    link = SemanticLink(StubBackbone(), codec)
    tx = link.sender(stream_id=b"link")
    frames = [tx.frame(i) for i in range(5)] + [tx.frame(feats[5])]
    rx = link.receiver(tx.announce())
    got = torch.stack([rx.accept(f).feature for f in frames])
    assert torch.allclose(got, codec.decode(codec.encode(feats[:6])), atol=1e-5)


def test_huffman_beats_raw_on_average_with_a_skewed_model(codec, symbols):
    raw = FrameSender(codec, "raw")
    huf = FrameSender(codec, "huffman")
    assert np.mean([len(huf.frame_symbols(x)) for x in symbols]) < np.mean([len(raw.frame_symbols(x)) for x in symbols])


@PROPS
@given(data=st.data())
def test_mangled_byte_streams_raise_frame_error_or_report_never_crash(codec, feats, stream, data):
    """Flips, cuts, inserted and deleted bytes anywhere in a .scfs stream: a FrameError, or frames that are
    each reported; whatever is delivered is a sent message with its own feature."""
    announce, frames = stream
    blob = bytearray(write_stream(announce, frames[:12]))
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        i = data.draw(st.integers(0, max(0, len(blob) - 1)))
        if op == "flip" and blob:
            blob[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del blob[i:]
        elif op == "insert":
            blob[i:i] = data.draw(st.binary(min_size=1, max_size=4))
        elif blob:
            del blob[i]
    try:
        sf = read_stream(bytes(blob), codec)
    except FrameError:
        return
    rx = FrameReceiver(codec, sf.announce)
    delivered = [d for d in map(rx.accept, sf.frames) if d.ok]
    assert len(delivered) <= 12 and len({d.seq for d in delivered}) == len(delivered)
    assert all(d.seq < 12 and torch.allclose(d.feature, feats[d.seq], atol=1e-5) for d in delivered)


def test_an_announce_naming_a_path_or_pattern_is_refused(codec):
    import struct
    import zlib

    good = FrameSender(codec, stream_id=b"test").announce()
    for spec in (b"../../etc", b"*", b"fsq-c8l16/x", b"FSQ"):
        body = good[:22] + bytes([len(spec)]) + spec
        with pytest.raises(FrameError, match="not a codec spec"):
            parse_announce(body + struct.pack("<I", zlib.crc32(body)))

"""The progressive codec (prq): prefixes decode, decoding is additive, streams cut without the model, bad cuts and
foreign streams are refused; and the entropy fallback (a stream never costs more than the fixed bits)."""
import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import semcomp
from semcomp import bitstream
from semcomp.bitstream import BitstreamError
from semcomp.codecs import CodecError, create_codec, load_codec
from semcomp.codecs.progressive import greedy_encode
from semcomp.entropy import CODER_IDS
from semcomp.training.progressive import budget_cuts, train_progressive
from tests.conftest import clustered_features

SPEC = "prq-s6o2k16"  # 6 stages of 4 bits: 2 own codebooks, 4 stages sharing one


@pytest.fixture(scope="module")
def data():
    x, _, _ = clustered_features(n_classes=8, per_class=80, dim=32)
    return x


@pytest.fixture(scope="module")
def prq(data):
    torch.set_num_threads(1)
    codec, card = train_progressive(SPEC, data, epochs=3, kmeans_iters=5, progress=False)
    codec.backbone = "test-backbone"
    return codec, card


def forge(blob: bytes, **fields) -> bytes:
    """Rewrite fixed header bytes (version / codec_id / coder_id) and fix the CRC, as a careful forger would."""
    b = bytearray(blob[:-4])
    for name, pos in (("version", 4), ("codec_id", 5), ("coder_id", 6)):
        if name in fields:
            b[pos] = fields[name]
    return bytes(b) + struct.pack("<I", zlib.crc32(bytes(b)))


def test_training_records_a_curve_and_more_stages_never_hurt(prq):
    codec, card = prq
    assert card["history"][0]["epoch"] == 0 and len(card["history"]) >= 2
    cos = [card["holdout_cosine_at_cuts"][str(c)] for c in card["cuts"]]
    assert all(b >= a - 1e-6 for a, b in zip(cos, cos[1:]))
    assert card["best_epoch"] >= 0 and card["stopped"]


def test_cut_weights_shape_the_nested_loss_and_bad_ones_are_refused(data):
    torch.set_num_threads(1)
    weights = {8: 3.0, 24: 0.0}  # the 2-stage cut counts 3 times, the full depth not at all
    codec, card = train_progressive(SPEC, data, epochs=3, lr=3e-2, kmeans_iters=5, progress=False, cut_weights=weights)
    assert card["cut_weights"] == {"8": 3.0, "24": 0.0}
    h0 = card["history"][0]["val_cosine"]
    w = {c: weights.get(int(c) * 4, 1.0) for c in h0}
    for h in card["history"][1:]:  # the held-out loss is the weighted mean of the normalised terms, not the plain one
        terms = {c: (1 - h["val_cosine"][c]) / (1 - h0[c]) for c in h0}
        want, plain = sum(w[c] * terms[c] for c in h0) / sum(w.values()), sum(terms.values()) / len(h0)
        assert h["val_loss"] == pytest.approx(want, abs=1e-4) and abs(plain - want) > 4e-4  # cosines kept to 1e-5
    for bad in ({12: 2.0, 10: 1.0}, {8: -1.0}, {8: float("nan")}, {c * 4: 0.0 for c in budget_cuts(codec)}):
        with pytest.raises(ValueError, match="cut"):
            train_progressive(SPEC, data, epochs=1, kmeans_iters=5, progress=False, cut_weights=bad)


def test_decoding_is_the_codebook_sum(prq, data):
    codec, _ = prq
    s = codec.encode(data[:20])
    tables, bias = codec.additive_codebooks(), codec.additive_bias()
    assert tables.shape == (6, 16, 32) and tables.dtype == np.float32 and bias.shape == (32,)
    want = bias + tables[np.arange(6)[None], s.numpy()].sum(1)
    torch.testing.assert_close(codec.decode(s), F.normalize(torch.from_numpy(want), dim=-1), atol=1e-6, rtol=0)


def test_a_prefix_decodes_as_the_first_m_stages(prq, data):
    codec, _ = prq
    x = data[:30]
    full = codec.encode(x)
    for m in range(1, 7):
        assert torch.equal(codec.encode(x, stages=m), full[:, :m])  # greedy: a shorter code is a prefix
        blob = codec.compress(x, bits=4 * m)
        assert blob == semcomp.truncate(codec.compress(x), 4 * m)
        assert torch.equal(codec.decompress(blob), codec.decode(full[:, :m]))


def test_truncate_round_trips(prq, data):
    codec, _ = prq
    blob = codec.compress(data[:7])  # 7 items x 4 bits: stages end mid-byte
    assert semcomp.truncate(blob, 24) == blob
    assert semcomp.truncate(semcomp.truncate(blob, 16), 8) == semcomp.truncate(blob, 8)
    h, _ = bitstream.unpack(semcomp.truncate(blob, 12))
    assert (h.version, h.stage_bits, h.stages, h.count) == (2, 4, 3, 7)
    assert np.array_equal(codec.decompress_symbols(semcomp.truncate(blob, 12)), codec.encode(data[:7])[:, :3].numpy())


def test_greedy_encode_is_stage_by_stage_nearest_codeword(prq, data):
    """The shared stages' Gram-matrix score updates pick what the plain residual loop picks, stage by stage."""
    codec, _ = prq
    s = codec.encode(data, stages=6)
    assert torch.equal(greedy_encode(codec, data, 6), s)  # called directly, grad mode on: same codes
    r = data - codec.bias.detach()
    for j, table in enumerate(torch.from_numpy(codec.additive_codebooks())):  # (K, D) per stage, scales applied
        d2 = torch.cdist(r, table) ** 2  # (N, K)
        picked = d2.gather(1, s[:, j : j + 1])[:, 0]
        assert (picked <= d2.min(1).values + 1e-4).all(), f"stage {j}: not the nearest codeword"
        r = r - table[s[:, j]]
    # a parameter change invalidates the cached Gram matrix: a different shared book gives different codes
    before = codec.encode(data[:50]).clone()
    with torch.no_grad():
        codec.shared.mul_(-1)
    try:
        assert not torch.equal(codec.encode(data[:50]), before)
    finally:
        with torch.no_grad():
            codec.shared.mul_(-1)
    assert torch.equal(codec.encode(data[:50]), before)


def test_beam_search_never_loses_to_greedy_at_full_depth(prq, data):
    codec, _ = prq
    x = data[:100]
    tables, bias = torch.from_numpy(codec.additive_codebooks()), torch.from_numpy(codec.additive_bias())

    def err(s):
        return ((x - bias - tables[torch.arange(6)[None], s].sum(1)) ** 2).sum(1)

    g, b = err(codec.encode(x)), err(codec.encode(x, beam=8))
    assert (b <= g + 1e-5).all() and b.mean() < g.mean()


@pytest.mark.parametrize("bits,msg", [(6, "inside a stage"), (2, "below the first stage"), (28, "holds only 24 bits")])
def test_bad_cuts_are_refused(prq, data, bits, msg):
    codec, _ = prq
    with pytest.raises(BitstreamError, match=msg):
        semcomp.truncate(codec.compress(data[:3]), bits)
    with pytest.raises(CodecError, match="multiples of 4"):
        codec.compress(data[:3], bits=bits)


def test_foreign_and_forged_streams_are_refused(prq, data, synthetic):
    codec, _ = prq
    blob = codec.compress(data[:3])
    other = create_codec(SPEC, 32)  # same spec, other weights
    other.backbone = codec.backbone
    with pytest.raises(BitstreamError, match="weights hash differs"):
        other.decompress(blob)
    aesq = create_codec("aesq-c8l4", 32, hidden=16)
    with pytest.raises(BitstreamError, match="version 2 stream .* reads version 1"):
        aesq.decompress(blob)  # a v2 stream given to a v1-only codec
    with pytest.raises(BitstreamError, match="format version 2 stream from codec family 'aesq'"):
        bitstream.unpack(forge(blob, codec_id=bitstream.CODEC_IDS["aesq"]))
    with pytest.raises(BitstreamError, match="format version 1 stream from codec family 'prq'"):
        bitstream.unpack(forge(blob, version=1))
    with pytest.raises(BitstreamError, match="only raw"):
        codec.decompress(forge(blob, coder_id=CODER_IDS["ans"]))
    with pytest.raises(BitstreamError, match="only progressive"):
        semcomp.truncate(aesq.compress(synthetic[0][:2, :32]), 8)
    v1 = aesq.compress(synthetic[0][:2, :32], "raw")
    with pytest.raises(BitstreamError, match="format version 1 stream from codec family 'prq'"):
        codec.decompress(forge(v1, codec_id=bitstream.CODEC_IDS["prq"]))


def test_a_stream_announcing_more_stages_than_the_model_is_refused(prq, data):
    codec, _ = prq
    h, payload = bitstream.unpack(codec.compress(data[:2]))
    bigger = create_codec("prq-s8o2k16", 32)
    bigger.load_state_dict({**codec.state_dict(), "scales": torch.ones(6)})
    bigger.backbone = codec.backbone
    blob = bigger.compress(data[:2])
    hb, pb = bitstream.unpack(blob)
    forged = bitstream.pack(bitstream.Header(h.codec_family, 0, h.dim, h.count, h.weights_hash, h.spec, h.backbone, 2, 4, 8), pb)
    with pytest.raises(BitstreamError, match="announces 8 stages"):
        codec.decompress(forged)


def test_limits_are_checked_before_decoding(prq, data):
    codec, _ = prq
    with pytest.raises(bitstream.BitstreamLimitError):
        codec.decompress(codec.compress(data[:5]), max_items=4)


def test_save_load_and_stream_survive(prq, data, tmp_path):
    codec, _ = prq
    codec.save_pretrained(tmp_path / SPEC, {"data": "synthetic"})
    back = load_codec(tmp_path / SPEC)
    assert back.weights_hash == codec.weights_hash
    blob = codec.compress(data[:4])
    assert torch.equal(back.decompress(semcomp.truncate(blob, 8)), codec.decode(codec.encode(data[:4])[:, :2]))


def test_spec_and_size_checks():
    with pytest.raises(CodecError, match="exceed the stage count"):
        create_codec("prq-s4o6k16", 32)
    with pytest.raises(CodecError, match="power of two"):
        create_codec("prq-s4o2k12", 32)
    assert budget_cuts(create_codec("prq-s128o32k256", 16)) == [1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128]


def test_entropy_fallback_never_exceeds_raw():
    torch.manual_seed(0)
    codec = create_codec("fsq-c8l4", 32, hidden=48)
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(50, 32, generator=g), dim=-1)
    s = codec.encode(x).numpy()
    # an entropy model of other data: nearly all its mass on each position's symbol this data uses least
    counts = np.zeros((codec.num_symbols, codec.alphabet), dtype=np.int64)
    used = np.stack([np.bincount(s[:, j], minlength=codec.alphabet) for j in range(codec.num_symbols)])
    counts[np.arange(codec.num_symbols), used.argmin(1)] = 100_000
    codec.symbol_counts = torch.from_numpy(counts)
    codec._coder = codec._weights_hash = None
    raw = codec.compress(x, "raw")
    for coder in ("ans", "huffman"):
        assert len(codec.entropy_coder.encode(s, coder)) > len(codec.entropy_coder.encode(s, "raw"))  # would cost more
        blob = codec.compress(x, coder)
        assert len(blob) == len(raw)
        header, _ = bitstream.unpack(blob)
        assert header.coder_id == CODER_IDS["raw"]  # it fell back, and the header says so
        assert torch.equal(codec.decompress(blob), codec.decompress(raw))


def test_cli_truncate(prq, data, tmp_path):
    from semcomp.cli import main

    codec, _ = prq
    src = tmp_path / "x.scf"
    src.write_bytes(codec.compress(data[:3]))
    assert main(["truncate", str(src), "--bits", "8", "-o", str(tmp_path / "y.scf")]) == 0
    assert (tmp_path / "y.scf").read_bytes() == semcomp.truncate(src.read_bytes(), 8)
    assert main(["truncate", str(src), "--bits", "6", "-o", str(tmp_path / "z.scf")]) == 2  # inside a stage
    assert not (tmp_path / "z.scf").exists()


def test_cli_encode_bits_and_beam(prq, data, tmp_path):
    from semcomp.cli import main
    from semcomp.data import FeatureSet, save_features

    codec, _ = prq
    folder = tmp_path / SPEC
    codec.save_pretrained(folder)
    feats = tmp_path / "f.safetensors"
    save_features(feats, FeatureSet(data[:50].numpy(), np.zeros(50, np.int64), {"backbone": codec.backbone}))
    out = tmp_path / "x.scf"
    assert main(["encode", "--codec", str(folder), "--features", str(feats), "--bits", "12", "--beam", "4", "--out", str(out)]) == 0
    header, _ = bitstream.unpack(out.read_bytes())
    assert header.stages == 3
    want = codec.encode(data[:50], stages=3, beam=4)
    assert np.array_equal(codec.decompress_symbols(out.read_bytes()), want.numpy())
    assert not torch.equal(want, codec.encode(data[:50], stages=3, beam=1))  # the beam did change some codes
    for bad in (["--bits", "10"], ["--bits", "0"], ["--beam", "0"]):  # inside a stage, no stage, no path
        assert main(["encode", "--codec", str(folder), "--features", str(feats), *bad, "--out", str(tmp_path / "b.scf")]) == 2
        assert not (tmp_path / "b.scf").exists()
    ladder = create_codec("fsq-c4l4", 32)
    ladder.save_pretrained(tmp_path / "fsq-c4l4")
    assert main(["encode", "--codec", str(tmp_path / "fsq-c4l4"), "--features", str(feats), "--bits", "8", "--out",
                 str(tmp_path / "c.scf")]) == 2


def test_the_receiver_decodes_whatever_prefix_arrived(prq, data, tmp_path, monkeypatch):
    from semcomp import receiver, zoo

    codec, _ = prq
    codec.save_pretrained(tmp_path / codec.backbone / SPEC)
    monkeypatch.setattr(zoo, "CODECS_DIR", tmp_path)
    receiver._codec.cache_clear()
    try:
        blob = codec.compress(data[:2])
        for bits in (4, 12, 24):
            got_codec, feats = receiver.receive(semcomp.truncate(blob, bits))
            assert got_codec.spec == SPEC
            assert torch.equal(feats, codec.decode(codec.encode(data[:2])[:, : bits // 4]))
    finally:
        receiver._codec.cache_clear()


def test_faiss_residual_quantizer_init_gives_a_working_codec(data):
    codec, card = train_progressive(SPEC, data, epochs=0, kmeans_iters=3, rq_beam=4, progress=False)
    assert card["init"].startswith("faiss.ResidualQuantizer") and card["stopped"] == "max epochs (0)"
    assert codec.books.abs().sum() > 0
    cos = [card["holdout_cosine_at_cuts"][str(c)] for c in card["cuts"]]
    assert all(b >= a - 1e-6 for a, b in zip(cos, cos[1:]))


def test_training_prefix_decodes_equal_stage_by_stage_sums_and_their_gradients():
    """The training step's stretch sums (embedding_bag) against the plain per-stage sum, values and gradients;
    cut 5 spans own and shared stages, cut 7 ends inside the shared ones."""
    from semcomp.training.progressive import _Tables

    torch.manual_seed(0)
    codec = create_codec("prq-s9o3k16", 8)
    with torch.no_grad():
        for p in (codec.bias, codec.books, codec.shared):
            p.normal_()
        codec.scales.uniform_(0.1, 1.0)
    tables, cuts = _Tables(codec), [1, 2, 5, 7]
    codes = torch.randint(0, 16, (5, 7))

    def reference():
        words = [tables.gain[j] * tables.books[j][codes[:, j]] if j < 3 else
                 tables.log_scales[j - 3].exp() * tables.shared_gain * tables.shared[0][codes[:, j]] for j in range(7)]
        return tables.bias + torch.stack(words, 1).cumsum(1)[:, [c - 1 for c in cuts]]

    results = []
    for fn in (reference, lambda: tables.prefix_decodes(codes, cuts)):
        tables.zero_grad()
        out = fn()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in tables.parameters()]))
    (ref, ref_g), (got, got_g) = results
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(got, codec.prefix_decodes(codes, cuts).transpose(0, 1), atol=1e-5)
    # the codec's own path takes cuts in any order, repeats included, and answers in that order
    assert torch.allclose(codec.prefix_decodes(codes, [7, 2, 7, 1]).transpose(0, 1), ref[:, [3, 1, 3, 0]], atol=1e-5)
    for a, b in zip(got_g, ref_g):
        assert torch.allclose(a, b, atol=1e-5)
    assert ref_g[3][:4].abs().min() > 0 and not ref_g[3][4:].any()  # stages 3..6 use scales 0..3; 7, 8 unused


def test_first_stage_redo_keeps_the_lowest_objective_and_fits_the_rest_on_its_residual(data):
    """--prq-first-redo N: N k-means runs for the first stage (faiss nredo; its first run is the single run), so its
    objective is never worse; the later own stages are fitted after it, by k-means or by the residual quantiser."""
    from semcomp.training.progressive import residual_kmeans_init

    x = F.normalize(torch.as_tensor(data, dtype=torch.float32), dim=-1)

    def first_stage_sse(codec):
        r = x - codec.bias
        return float(torch.cdist(r, codec.books[0]).min(1).values.pow(2).sum())

    one, best = create_codec(SPEC, x.shape[1]), create_codec(SPEC, x.shape[1])
    residual_kmeans_init(one, x, niter=3, seed=1)
    residual_kmeans_init(best, x, niter=3, seed=1, first_redo=6)
    assert first_stage_sse(best) <= first_stage_sse(one) + 1e-4
    assert not torch.equal(best.books[0], one.books[0])  # some other run won (for this data and seed)
    codec, card = train_progressive(SPEC, data, epochs=0, kmeans_iters=3, rq_beam=2, first_redo=3, progress=False)
    assert card["first_redo"] == 3 and "best of 3" in card["init"] and codec.books.abs().sum((1, 2)).min() > 0
    assert F.cosine_similarity(codec.decode(codec.encode(x)), x).mean() > 0.8
    with pytest.raises(ValueError, match="first_redo"):
        train_progressive(SPEC, data, epochs=0, first_redo=0, progress=False)


def test_a_killed_training_resumes_to_the_same_codec(data, tmp_path, monkeypatch):
    from semcomp.training import checkpoint

    kw = dict(epochs=4, kmeans_iters=3, patience=10, epoch_items=256, batch_size=64, progress=False)
    whole, whole_card = train_progressive(SPEC, data, **kw)
    real_save = checkpoint.save_checkpoint

    class Killed(Exception):
        pass

    def save_then_die(state, path):
        real_save(state, path)
        if state["epoch"] == 2:
            raise Killed

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train_progressive(SPEC, data, ckpt_path=tmp_path / "prq.pt", **kw)
    assert len(list(tmp_path.glob("prq-*.pt"))) == 1
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    resumed, card = train_progressive(SPEC, data, ckpt_path=tmp_path / "prq.pt", **kw)
    assert card["resumed_after_epoch"] == 2 and whole_card["resumed_after_epoch"] is None
    assert [h["epoch"] for h in card["history"]] == list(range(5))
    assert card["history"][-1]["val_loss"] == pytest.approx(whole_card["history"][-1]["val_loss"], abs=1e-6)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    assert not list(tmp_path.glob("prq-*.pt"))  # a finished run leaves no checkpoint


def test_frozen_stages_keep_their_initialisation(data):
    kw = dict(kmeans_iters=5, progress=False)
    init, _ = train_progressive(SPEC, data, epochs=0, **kw)
    tuned, card = train_progressive(SPEC, data, epochs=3, frozen_stages=1, **kw)
    assert card["frozen_stages"] == 1 and card["epochs_run"] == 3 and card["best_epoch"] > 0
    assert torch.equal(tuned.bias, init.bias) and torch.equal(tuned.books[0], init.books[0])
    assert not torch.equal(tuned.books[1], init.books[1])  # the stages after it still train
    with pytest.raises(ValueError, match="frozen_stages"):
        train_progressive(SPEC, data, epochs=0, frozen_stages=3, **kw)

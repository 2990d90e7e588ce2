"""Compressed-domain receiver: look-up-table zero-shot equals decode-then-matmul, FAISS searches the codes as
brute force over the decoded vectors does, and `semcomp index` / `semcomp search` round-trip tiny .scf files."""
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semcomp.cli import main
from semcomp.codecs import create_codec
from semcomp.compressed_domain import (AdditiveForm, CompressedIndexError, LUTZeroShot, NotAdditiveError, additive_form,
                                       build_index, load_index, save_index, search, sidecar_path)
from semcomp.codecs.base import CodecError
from semcomp.heads.zeroshot import ZeroShotClassifier

from conftest import clustered_features


class StandIn:
    """The progressive codec's additive interface and nothing else (decode = normalise(bias + sum))."""

    def __init__(self, m=6, k=16, d=24, seed=0):
        g = np.random.default_rng(seed)
        self.books = (0.4 * g.standard_normal((m, k, d)) / np.arange(1, m + 1)[:, None, None]).astype(np.float32)
        self.bias = (0.2 * g.standard_normal(d)).astype(np.float32)
        self.dim, self.num_symbols, self.alphabet, self.spec = d, m, k, f"standin-{m}x{k}"

    def additive_codebooks(self):
        return self.books

    def additive_bias(self):
        return self.bias

    def decode(self, s):
        s = torch.as_tensor(np.asarray(s))
        x = torch.from_numpy(self.bias).clone() + sum(torch.from_numpy(self.books[j])[s[:, j]] for j in range(s.shape[1]))
        return F.normalize(x, dim=-1)


def _codes(n, m, k, seed=1):
    return np.random.default_rng(seed).integers(0, k, (n, m))


def test_lut_top1_and_topk_equal_decode_then_matmul():
    c = StandIn()
    text = np.random.default_rng(2).standard_normal((30, c.dim)).astype(np.float32)
    codes = _codes(3000, 6, 16)
    clf = ZeroShotClassifier(torch.from_numpy(text), [f"c{i}" for i in range(30)])
    ref = clf.logits(c.decode(codes))
    z = LUTZeroShot.from_codec(c, text, clf.class_names)
    assert torch.equal(z.top1(codes), ref.argmax(1))
    assert torch.equal(z.topk(codes, 5), ref.topk(5, dim=1).indices)
    assert torch.allclose(z.logits(codes), ref, atol=1e-3)
    assert z.predict(codes[:2], k=3)[0].labels == clf.predict(c.decode(codes[:2]), k=3)[0].labels


def test_lut_prefix_of_stages():
    c = StandIn()
    form = additive_form(c)
    text = np.random.default_rng(3).standard_normal((12, c.dim)).astype(np.float32)
    z = LUTZeroShot(form, text)
    codes = _codes(500, 6, 16)
    for m in (1, 3, 6):
        ref = F.normalize(torch.from_numpy(form.prefix(m).decode(codes[:, :m])), dim=-1) @ F.normalize(torch.from_numpy(text), dim=-1).T
        assert torch.equal(z.top1(codes[:, :m]), ref.argmax(1))
        assert torch.equal(LUTZeroShot(form.prefix(m), text).top1(codes[:, :m]), ref.argmax(1))


def test_exact_ties_are_rescored_through_decode():
    c = StandIn()
    text = np.random.default_rng(4).standard_normal((5, c.dim)).astype(np.float32)
    text = np.concatenate([text, text[:1] * 3.0])  # class 5 is class 0 again (another norm): exact ties
    z = LUTZeroShot.from_codec(c, text)
    codes = _codes(400, 6, 16)
    ref = ZeroShotClassifier(torch.from_numpy(text), list("abcdef")).logits(c.decode(codes)).argmax(1)
    assert torch.equal(z.top1(codes), ref) and z.last_rescored > 0


def test_dsq_is_additive_and_mlp_codecs_are_refused():
    x, _, centres = clustered_features(n_classes=8, per_class=20, dim=16)
    codec = create_codec("dsq-b2", 16)
    codec.init_from_data(x)
    s = codec.encode(x)
    form = additive_form(codec)
    assert (form.stages, form.alphabet, form.dim) == (16, 4, 16)
    assert np.array_equal(form.decode(s), codec.decode(s).numpy())
    z = LUTZeroShot.from_codec(codec, centres)
    assert torch.equal(z.top1(s), ZeroShotClassifier(centres, list("abcdefgh")).logits(codec.decode(s)).argmax(1))
    for spec in ("pqvae-n4d4k8", "vqvae-n2d8k16", "aesq-c8l4", "fsq-c8l4"):
        with pytest.raises(NotAdditiveError, match="MLP"):
            additive_form(create_codec(spec, 16, hidden=8))


def test_bounds_on_codes_and_labels():
    form = additive_form(StandIn())
    with pytest.raises(CodecError, match="1..2000"):
        LUTZeroShot(form, np.ones((2001, form.dim), np.float32))
    z = LUTZeroShot(form, np.ones((3, form.dim), np.float32))
    for bad in (np.full((2, 6), 16), np.full((2, 6), -1), np.zeros((2, 7), int), np.zeros((2, 6)), np.zeros((2, 2, 2), int)):
        with pytest.raises(CodecError):
            z.top1(bad)
    with pytest.raises(CodecError, match="2\\^nbits"):
        build_index(AdditiveForm(np.zeros((2, 3, 4), np.float32), np.zeros(4, np.float32)), np.zeros((1, 2), int))


def test_faiss_search_equals_brute_force_over_decoded(tmp_path):
    c = StandIn(m=4, k=256, d=32)
    form = additive_form(c)
    codes = _codes(700, 4, 256)
    index = build_index(form, codes)
    assert index.ntotal == 700 and index.code_size == 4
    q = F.normalize(torch.randn(9, 32, generator=torch.Generator().manual_seed(0)), dim=-1).numpy()
    scores, ids = search(index, form.bias, q, 10)
    brute = q @ form.decode(codes, normalise=False).T
    assert np.array_equal(ids, np.argsort(-brute, axis=1, kind="stable")[:, :10])
    assert np.allclose(scores, np.take_along_axis(brute, ids, 1), atol=1e-5)
    # re-ranked over every item: exactly brute force by cosine with the codec's (normalised) decode
    cos, ids_r = search(index, form.bias, q, 10, rerank=700)
    brute_cos = q @ c.decode(codes).numpy().T
    assert np.array_equal(ids_r, np.argsort(-brute_cos, axis=1, kind="stable")[:, :10])
    assert np.allclose(cos, np.take_along_axis(brute_cos, ids_r, 1), atol=1e-5)
    # saved and loaded: same answers; a prefix index (2 stages) answers as brute force over the 2-stage decode
    save_index(index, form, tmp_path / "x.faiss", [{"file": "a.scf", "count": 700}])
    index2, meta = load_index(tmp_path / "x.faiss")
    assert np.array_equal(search(index2, form.bias, q, 10)[1], ids) and meta["count"] == 700
    pre = build_index(form, codes[:, :2])
    brute2 = q @ form.prefix(2).decode(codes[:, :2], normalise=False).T
    assert np.array_equal(search(pre, form.bias, q, 5)[1], np.argsort(-brute2, axis=1, kind="stable")[:, :5])
    # another index's sidecar is refused before FAISS reads the file
    save_index(pre, form.prefix(2), tmp_path / "y.faiss", [{"file": "a.scf", "count": 700}])
    shutil.copy(sidecar_path(tmp_path / "y.faiss"), sidecar_path(tmp_path / "x.faiss"))
    with pytest.raises(CompressedIndexError, match="sha256"):
        load_index(tmp_path / "x.faiss")


# ----------------------------------------------------------------------------- CLI
def _tiny_codec(tmp_path, name, x, seed_shift=0.0):
    codec = create_codec("dsq-b2", x.shape[1])
    codec.init_from_data(x + seed_shift)
    codec.backbone = "synthetic"
    codec.save_pretrained(tmp_path / name)
    from semcomp.codecs import load_codec

    return load_codec(tmp_path / name), tmp_path / name


@pytest.fixture()
def scf_files(tmp_path):
    x, _, _ = clustered_features(n_classes=6, per_class=20, dim=16)
    codec, path = _tiny_codec(tmp_path, "c1", x)
    a, b = tmp_path / "a.scf", tmp_path / "b.scf"
    a.write_bytes(codec.compress(x[:70], "ans"))
    b.write_bytes(codec.compress(x[70:], "raw"))
    return codec, path, x, a, b


def test_cli_index_search_round_trip(tmp_path, scf_files, capsys):
    codec, path, x, a, b = scf_files
    idx = tmp_path / "db.faiss"
    assert main(["index", str(a), str(b), "-o", str(idx), "--codec", str(path)]) == 0
    meta = json.loads(sidecar_path(idx).read_text())
    assert meta["count"] == 120 and meta["spec"] == "dsq-b2" and meta["weights_hash"] == codec.weights_hash.hex()
    assert [s["count"] for s in meta["sources"]] == [70, 50]
    capsys.readouterr()
    assert main(["search", str(idx), str(b), "-k", "5", "--codec", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["queries"]) == 50 and all(len(q["results"]) == 5 for q in out["queries"])
    # default (re-ranked; 120 items < 100 candidates... all of them): brute force by cosine with the decoded features
    form = additive_form(codec)
    q0 = form.decode(codec.encode(x[70:71]).numpy())
    got = out["queries"][0]["results"]
    want = np.argsort(-(q0 @ codec.decode(codec.encode(x)).numpy().T)[0], kind="stable")[:5]
    assert [r["id"] for r in got] == want.tolist()
    assert got[0]["file"] in (str(a), str(b)) and (got[0]["item"] == got[0]["id"] - (70 if got[0]["file"] == str(b) else 0))
    # --rerank 0: FAISS's own ranking, brute force by inner product with the un-normalised additive decode
    assert main(["search", str(idx), str(b), "-k", "5", "--codec", str(path), "--rerank", "0"]) == 0
    got = json.loads(capsys.readouterr().out)["queries"][0]["results"]
    db = form.decode(codec.encode(x).numpy(), normalise=False)
    assert [r["id"] for r in got] == np.argsort(-(q0 @ db.T)[0], kind="stable")[:5].tolist()


def test_cli_image_query(tmp_path, scf_files, capsys, monkeypatch):
    from PIL import Image

    codec, path, x, a, b = scf_files
    idx = tmp_path / "db.faiss"
    assert main(["index", str(a), "-o", str(idx), "--codec", str(path)]) == 0

    class FakeBackbone:  # the image's embedding is item 3's feature
        def encode_images(self, images):
            return x[3:4]

    monkeypatch.setattr("semcomp.backbone.load_backbone", lambda name: FakeBackbone())
    img = tmp_path / "q.png"
    Image.new("RGB", (32, 32), (120, 30, 200)).save(img)
    capsys.readouterr()
    for extra in ([], ["--float-query"]):
        assert main(["search", str(idx), str(img), "-k", "3", "--codec", str(path), *extra]) == 0
        assert len(json.loads(capsys.readouterr().out)["queries"][0]["results"]) == 3


def test_cli_bad_inputs_one_line_exit_2(tmp_path, scf_files, caplog):
    codec, path, x, a, b = scf_files
    other, other_path = _tiny_codec(tmp_path, "c2", x, seed_shift=0.3)  # same spec, other weights
    c = tmp_path / "c.scf"
    c.write_bytes(other.compress(x[:10], "raw"))
    idx = tmp_path / "db.faiss"

    def fails(argv, match):
        caplog.clear()
        assert main(argv) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "\n" not in errors[0] and match in errors[0], errors

    fails(["index", str(a), str(c), "-o", str(idx), "--codec", str(path)], "one codec's codes")
    assert not idx.exists()
    fails(["index", str(c), "-o", str(idx), "--codec", str(path)], "not the one the codes were made with")
    fails(["index", str(a), "-o", str(idx), "--codec", str(path), "--max-items", "10"], "--max-items")
    fails(["index", str(a), "-o", str(idx), "--codec", str(path), "--bits", "8"], "not progressive")
    pq = create_codec("pqvae-n4d4k8", 16, hidden=8)
    pq.backbone = "synthetic"
    pq.save_pretrained(tmp_path / "pq")
    from semcomp.codecs import load_codec

    (tmp_path / "p.scf").write_bytes(load_codec(tmp_path / "pq").compress(x[:5], "raw"))
    fails(["index", str(tmp_path / "p.scf"), "-o", str(idx), "--codec", str(tmp_path / "pq")], "MLP")
    junk = tmp_path / "junk.scf"
    junk.write_bytes(b"SCF\x89" + bytes(40))
    fails(["index", str(junk), "-o", str(idx), "--codec", str(path)], "CRC")

    assert main(["index", str(a), "-o", str(idx), "--codec", str(path)]) == 0
    idx2 = tmp_path / "db2.faiss"
    assert main(["index", str(b), "-o", str(idx2), "--codec", str(path)]) == 0
    fails(["index", str(a), "-o", str(idx), "--codec", str(path)], "--force")
    fails(["search", str(idx), str(c), "--codec", str(path)], "the index holds")  # query of other weights
    fails(["search", str(idx), str(b), "--codec", str(path), "--max-queries", "5"], "max_items")
    fails(["search", str(idx), str(tmp_path / "nothing.png")], "not found")
    shutil.copy(sidecar_path(idx2), sidecar_path(idx))  # wrong sidecar
    fails(["search", str(idx), str(b), "--codec", str(path)], "does not match its sidecar")
    sidecar_path(idx).write_text("{not json")
    fails(["search", str(idx), str(b), "--codec", str(path)], "not JSON")
    sidecar_path(idx).unlink()
    fails(["search", str(idx), str(b), "--codec", str(path)], "sidecar")


def test_cli_shipped_codec_found_from_the_stream(tmp_path, capsys):
    from semcomp.codecs import load_codec
    from semcomp.zoo import shipped_codecs

    found = [c for c in shipped_codecs("semcomp-lite-clip") if c["spec"] == "dsq-b1"]
    if not found:
        pytest.skip("shipped dsq-b1 for semcomp-lite-clip not present")
    codec = load_codec(found[0]["path"])
    x = F.normalize(torch.randn(40, codec.dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    (tmp_path / "a.scf").write_bytes(codec.compress(x, "raw"))
    (tmp_path / "q.scf").write_bytes(codec.compress(x[:2], "raw"))
    idx = tmp_path / "db.faiss"
    assert main(["index", str(tmp_path / "a.scf"), "-o", str(idx)]) == 0
    capsys.readouterr()
    assert main(["search", str(idx), str(tmp_path / "q.scf"), "-k", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [q["results"][0]["id"] for q in out["queries"]] == [0, 1]  # each query's own code is its best match


def _prq(tmp_path, dim=24):
    """A tiny progressive codec with random tables, saved and loaded (the weights hash is that of the saved file)."""
    from semcomp.codecs import load_codec

    codec = create_codec("prq-s6o3k16", dim)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p, std in ((codec.books, 0.3), (codec.shared, 0.2), (codec.bias, 0.1)):
            p.copy_(std * torch.randn(p.shape, generator=g))
    codec.backbone = "synthetic"
    codec.save_pretrained(tmp_path / "prq")
    return load_codec(tmp_path / "prq"), tmp_path / "prq"


def test_progressive_codec_lut_and_cli_with_cut_streams(tmp_path, capsys, caplog):
    import semcomp

    codec, path = _prq(tmp_path)
    x, _, centres = clustered_features(n_classes=8, per_class=25, dim=24)
    s = codec.encode(x)
    clf = ZeroShotClassifier(centres, list("abcdefgh"))
    z = LUTZeroShot.from_codec(codec, centres)
    for m in (2, 6):  # a cut stream decodes its prefix; the tables score it the same
        assert torch.equal(z.top1(s[:, :m]), clf.logits(codec.decode(s[:, :m])).argmax(1))
    full, cut = tmp_path / "full.scf", tmp_path / "cut.scf"
    full.write_bytes(codec.compress(x[:120]))
    cut.write_bytes(semcomp.truncate(codec.compress(x[120:]), 8))  # 2 stages of 4 bits
    idx = tmp_path / "db.faiss"
    assert main(["index", str(full), str(cut), "-o", str(idx), "--codec", str(path)]) == 2  # 6 stages vs 2
    assert "--bits" in caplog.records[-1].getMessage()
    assert main(["index", str(full), str(cut), "-o", str(idx), "--codec", str(path), "--bits", "8"]) == 0
    meta = json.loads(sidecar_path(idx).read_text())
    assert (meta["stages"], meta["count"], meta["spec"]) == (2, 200, "prq-s6o3k16")
    capsys.readouterr()
    assert main(["search", str(idx), str(full), "-k", "4", "--codec", str(path), "--max-queries", "200"]) == 0
    out = json.loads(capsys.readouterr().out)
    q = additive_form(codec).prefix(2).decode(s[:1, :2].numpy())
    brute = (q @ codec.decode(s[:, :2]).numpy().T)[0]  # 2 stages of 16 codewords: many items share a code, so
    got = [r["id"] for r in out["queries"][0]["results"]]  # compare scores, not the order of equal ones
    assert np.allclose(brute[got], np.sort(brute)[::-1][:4], atol=1e-5)
    assert main(["index", str(cut), "-o", str(tmp_path / "x.faiss"), "--codec", str(path), "--bits", "16"]) == 2
    assert "fewer than the 4" in caplog.records[-1].getMessage()

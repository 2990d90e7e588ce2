"""Malformed codec folders (issue 19): every one ends in CodecError with one line of reason, never KeyError,
TypeError or RuntimeError, and none allocates anything large; absurd specs are refused by create_codec."""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rss import peak_rss_growth
from semcomp import CodecError, create_codec, load_codec
from semcomp.codecs import CODECS, base

ROOT = Path(__file__).resolve().parents[1]
SPECS = ["fsq-c8l4", "pqvae-n4d4k8", "dsq-b2", "aesq-c8l4", "vqvae-n2d8k16"]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """One small saved codec folder per family (fitted entropy model, so symbol_counts is (n, K))."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(64, 32, generator=g), dim=-1)
    out = {}
    for spec in SPECS:
        codec = create_codec(spec, 32, **({} if spec.startswith("dsq") else {"hidden": 16}))
        codec.fit_entropy_model(x)
        codec.backbone = "synthetic"
        out[spec] = codec.save_pretrained(tmp_path_factory.mktemp("good") / spec, {"note": "test"})
    return out


# ---- the corpus: (name, edit) where edit(folder) damages a copy of a good folder
def cfg_edit(fn):
    def edit(d: Path):
        cfg = json.loads((d / "config.json").read_text())
        fn(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
    return edit


def set_key(k, v):
    return cfg_edit(lambda c: c.__setitem__(k, v))


def set_param(k, v):
    return cfg_edit(lambda c: c["params"].__setitem__(k, v))


def drop_key(k):
    return cfg_edit(lambda c: c.pop(k))


def drop_param(k):
    return cfg_edit(lambda c: c["params"].pop(k))


def write(name, data):
    def edit(d: Path):
        p = d / name
        p.write_bytes(data) if isinstance(data, bytes) else p.write_text(data)
    return edit


def weights_edit(fn):
    def edit(d: Path):
        sd = load_file(str(d / "model.safetensors"))
        fn(sd)
        save_file(sd, str(d / "model.safetensors"))
    return edit


def first_float(sd):
    """The first non-square 2-D float tensor (so that a transpose changes its shape)."""
    return next(k for k, v in sorted(sd.items()) if v.is_floating_point() and v.ndim == 2 and v.shape[0] != v.shape[1])


def remove(name):
    def edit(d: Path):
        p = d / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return edit


def make_dir(name):
    def edit(d: Path):
        (d / name).unlink()
        (d / name).mkdir()
    return edit


def sparse_weights(size):
    def edit(d: Path):
        with open(d / "model.safetensors", "r+b") as f:
            f.truncate(size)  # a sparse file: no disk used, but the loader must not read it
    return edit


def header_claims(n):
    def edit(d: Path):
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(struct.pack("<Q", n) + data[8:])
    return edit


CONFIG_EDITS = [
    ("missing family", drop_key("family")), ("missing spec", drop_key("spec")), ("missing dim", drop_key("dim")),
    ("missing params", drop_key("params")), ("extra key", set_key("surprise", 1)),
    ("dim as string", set_key("dim", "32")), ("dim as float", set_key("dim", 32.0)), ("dim as bool", set_key("dim", True)),
    ("dim null", set_key("dim", None)), ("dim 1", set_key("dim", 1)), ("dim negative", set_key("dim", -32)),
    ("dim huge", set_key("dim", 10**6)), ("dim astronomically huge", set_key("dim", 10**400)),
    ("params as list", set_key("params", [1, 2])), ("family as int", set_key("family", 5)),
    ("unknown family", set_key("family", "zzz")), ("family of another codec", set_key("family", "dsq")),
    ("spec as int", set_key("spec", 7)), ("spec mismatch", set_key("spec", "fsq-c16l4")),
    ("spec huge digits", set_key("spec", "fsq-c" + "9" * 5000 + "l4")), ("spec unicode digits", set_key("spec", "fsq-c\u0668l4")),
    ("backbone as int", set_key("backbone", 3)), ("backbone too long", set_key("backbone", "b" * 300)),
    ("bits wrong", set_key("bits", 3)), ("num_symbols wrong", set_key("num_symbols", 99)), ("alphabet as str", set_key("alphabet", "4")),
    ("param missing", drop_param("hidden")), ("param extra", set_param("zz", 1)), ("hidden as string", set_param("hidden", "16")),
    ("hidden as float", set_param("hidden", 16.5)), ("hidden as bool", set_param("hidden", True)), ("hidden 0", set_param("hidden", 0)),
    ("hidden negative", set_param("hidden", -5)), ("hidden 20000", set_param("hidden", 20000)),
    ("hidden absurd", set_param("hidden", 10**30)), ("c 99999999", set_param("c", 99999999)), ("l 3", set_param("l", 3)),
    ("l 2", set_param("l", 2)), ("l huge", set_param("l", 1 << 20)), ("hidden nested", set_param("hidden", {"a": 1})),
    ("config not json", write("config.json", "{not json")), ("config binary", write("config.json", b"\xff\xfe\x00garbage")),
    ("config a list", write("config.json", "[1, 2, 3]")), ("config null", write("config.json", "null")),
    ("config empty", write("config.json", "")), ("config deeply nested", write("config.json", "[" * 100000 + "]" * 100000)),
    ("config 2 MB", write("config.json", '{"family": "fsq", "pad": "' + "x" * (2 << 20) + '"}')),
]
FILE_EDITS = [
    ("config missing", remove("config.json")), ("weights missing", remove("model.safetensors")),
    ("config is a folder", make_dir("config.json")), ("weights is a folder", make_dir("model.safetensors")),
    ("weights empty", write("model.safetensors", b"")), ("weights garbage", write("model.safetensors", b"\x00" * 100)),
    ("weights truncated", lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:200])),
    ("weights header claims 2^40 bytes", header_claims(1 << 40)), ("weights header length 0", header_claims(0)),
    ("weights 1 GiB sparse", sparse_weights(1 << 30)),
    ("weights tensor missing", weights_edit(lambda sd: sd.pop(first_float(sd)))),
    ("weights tensor extra", weights_edit(lambda sd: sd.__setitem__("extra.weight", torch.zeros(3)))),
    ("weights tensor wrong shape", weights_edit(lambda sd: sd.__setitem__(first_float(sd), torch.zeros(3, 5, dtype=torch.float16)))),
    ("weights tensor transposed", weights_edit(lambda sd: sd.__setitem__(first_float(sd), sd[first_float(sd)].T.contiguous()))),
    ("weights tensor int", weights_edit(lambda sd: sd.__setitem__(first_float(sd), sd[first_float(sd)].to(torch.int32)))),
    ("weights NaN", weights_edit(lambda sd: sd[first_float(sd)].fill_(float("nan")))),
    ("symbol_counts wrong shape", weights_edit(lambda sd: sd.__setitem__("symbol_counts", torch.zeros(3, 3, dtype=torch.int64)))),
    ("symbol_counts negative", weights_edit(lambda sd: sd["symbol_counts"].fill_(-1))),
    ("symbol_counts float", weights_edit(lambda sd: sd.__setitem__("symbol_counts", sd["symbol_counts"].double()))),
    ("card not json", write("card.json", "{oops")), ("card a list", write("card.json", "[]")),
    ("card sha256 not a string", write("card.json", '{"sha256": 5}')),
]
HASHED_EDITS = [  # caught by the card's hashes (verify=True) even though the folder is otherwise well-formed
    ("weights of another codec of the same shape", None), ("config edited, card kept", set_param("hidden", 20000)),
]


def damaged(good, tmp_path, spec, edit):
    d = tmp_path / "bad"
    shutil.copytree(good[spec], d)
    edit(d)
    return d


def assert_codec_error(d, verify):
    with pytest.raises(CodecError) as e:
        load_codec(d, verify=verify)
    msg = str(e.value)
    assert msg and "\n" not in msg and len(msg) < 400, msg
    return msg


@pytest.mark.parametrize("name,edit", CONFIG_EDITS, ids=[n for n, _ in CONFIG_EDITS])
def test_malformed_configs_raise_codec_error(good, tmp_path, name, edit):
    spec = "fsq-c8l4"
    d = damaged(good, tmp_path, spec, edit)
    msg_hashed = assert_codec_error(d, verify=True)
    if "2 MB" not in name and "deeply" not in name:
        assert "config_sha256" in msg_hashed  # the card's hash sees the edit before the config is read
    card = json.loads((d / "card.json").read_text())
    card.pop("config_sha256")  # an old card: the validator alone must refuse it
    (d / "card.json").write_text(json.dumps(card))
    assert_codec_error(d, verify=True)
    assert_codec_error(d, verify=False)


@pytest.mark.parametrize("name,edit", FILE_EDITS, ids=[n for n, _ in FILE_EDITS])
@pytest.mark.parametrize("spec", ["fsq-c8l4", "pqvae-n4d4k8"])
def test_malformed_files_raise_codec_error(good, tmp_path, name, edit, spec):
    d = damaged(good, tmp_path, spec, edit)
    assert_codec_error(d, verify=True)
    if not name.startswith("card"):
        assert_codec_error(d, verify=False)


def test_every_family_refuses_wrong_shapes_and_sizes(good, tmp_path):
    for spec in SPECS:
        first = next(iter(json.loads((good[spec] / "config.json").read_text())["params"]))
        for edit in (set_param(first, 99999999), set_key("dim", 31), weights_edit(lambda sd: sd.__setitem__(
                first_float(sd) if any(v.ndim == 2 and v.is_floating_point() for v in sd.values()) else "points",
                torch.zeros(7, 7, dtype=torch.float16)))):
            d = damaged(good, tmp_path / spec / str(id(edit)), spec, edit)
            assert_codec_error(d, verify=False)


def test_hashes_catch_swapped_weights_and_edited_configs(good, tmp_path):
    d = damaged(good, tmp_path, "fsq-c8l4", lambda d: None)
    other = create_codec("fsq-c8l4", 32, hidden=16)  # same shapes, other numbers
    save_file({k: v.half() if v.is_floating_point() else v for k, v in other.state_dict().items()} |
              {"symbol_counts": load_file(str(d / "model.safetensors"))["symbol_counts"]}, str(d / "model.safetensors"))
    assert "sha256" in assert_codec_error(d, verify=True)
    assert load_codec(d, verify=False).spec == "fsq-c8l4"  # well-formed, just not the carded weights
    d2 = damaged(good, tmp_path / "2", "fsq-c8l4", cfg_edit(lambda c: c.__setitem__("backbone", "other")))
    assert "config_sha256" in assert_codec_error(d2, verify=True)
    assert load_codec(d2, verify=False).backbone == "other"  # a valid config: without the hash check it loads


def test_the_whole_corpus_allocates_nothing_large(good, tmp_path):
    """Every malformed folder above, loaded in turn, raises the peak RSS by < 100 MB (the issue's edits once
    allocated 2 GiB - 35 TB)."""
    folders = []
    for i, (name, edit) in enumerate(CONFIG_EDITS + FILE_EDITS):
        d = damaged(good, tmp_path / str(i), "fsq-c8l4", edit)
        if name.startswith(("dim", "hidden", "c ", "l ", "param", "spec")):
            card = json.loads((d / "card.json").read_text())
            card.pop("config_sha256")
            (d / "card.json").write_text(json.dumps(card))
        folders.append(d)
    load_codec(good["fsq-c8l4"])  # warm: imports and first-use allocations outside the measurement
    with peak_rss_growth() as mem:
        for d in folders:
            with pytest.raises(CodecError):
                load_codec(d)
    assert mem["bytes"] < 100e6, f"malformed folders raised the peak RSS by {mem['bytes'] / 1e6:.0f} MB"


def test_good_folders_load_and_old_cards_without_config_hash_still_load(good, tmp_path):
    for spec, path in good.items():
        card = json.loads((path / "card.json").read_text())
        assert card["config_sha256"] == hashlib.sha256((path / "config.json").read_bytes()).hexdigest()
        assert load_codec(path).spec == spec
    d = damaged(good, tmp_path, "pqvae-n4d4k8", lambda d: None)
    card = json.loads((d / "card.json").read_text())
    card.pop("config_sha256")
    (d / "card.json").write_text(json.dumps(card))
    assert load_codec(d).spec == "pqvae-n4d4k8"
    (d / "card.json").unlink()  # no card at all: loads unverified, as before
    assert load_codec(d).spec == "pqvae-n4d4k8"


def test_shipped_cards_hash_their_configs():
    folders = sorted((ROOT / "weights" / "codecs").glob("*/*/config.json"))
    assert len(folders) >= 25  # both backbones' shipped folders (27 when written)
    for cfg in folders:
        card = json.loads((cfg.parent / "card.json").read_text())
        assert card.get("config_sha256") == hashlib.sha256(cfg.read_bytes()).hexdigest(), cfg.parent.name


@pytest.mark.parametrize("spec,dim,limit", [
    ("fsq-c99999999l2", 512, "MAX_PARAM"), ("fsq-c500000l4", 512, "MAX_STATE_NUMEL"), ("aesq-c4l4", 512, None), ("pqvae-n4d4k8", 10**6, "MAX_DIM"),
    ("dsq-b8", 16384, None), ("vqvae-n1d64k1048576", 512, "MAX_STATE_NUMEL"), ("pqvae-n8192d1k1024", 64, "MAX_SYMBOL_TABLE"),
    ("fsq-c8l2097152", 32, "MAX_PARAM"), ("aesq-c" + "9" * 5000 + "l4", 32, "at most 64 characters"),
])
def test_create_codec_refuses_absurd_specs_naming_the_limit(spec, dim, limit):
    with peak_rss_growth() as mem:
        if limit is None:  # large but sane: builds
            assert create_codec(spec, dim, **({} if spec.startswith("dsq") else {"hidden": 8})).spec == spec
        else:
            with pytest.raises(CodecError, match=limit):
                create_codec(spec, dim)
    assert mem["bytes"] < 100e6


def test_create_codec_refuses_bad_options_and_types():
    for kwargs, match in [({"hidden": 2.5}, "must be an int"), ({"hidden": "64"}, "must be an int"), ({"nope": 1}, "bad options"),
                          ({"hidden": 0}, "out of range")]:
        with pytest.raises(CodecError, match=match):
            create_codec("fsq-c8l4", 32, **kwargs)
    for dim in (1.5, "32", True, 0):
        with pytest.raises(CodecError, match="feature dimension"):
            create_codec("fsq-c8l4", dim)
    with pytest.raises(CodecError, match="L >= 4"):
        create_codec("fsq-c8l2", 32)
    with pytest.raises(CodecError, match="a codec spec"):
        create_codec(None, 32)


@pytest.mark.parametrize("spec", ["fsq-c8l4", "aesq-c8l4", "dsq-b3", "pqvae-n4d4k8", "vqvae-n2d8k16", "vqvae-n1d8k64"])
def test_size_formulas_match_the_built_codecs(spec):
    """state_numel / symbol_shape (what the bounds use, computed before building) equal what building gives."""
    codec = create_codec(spec, 24, **({} if spec.startswith("dsq") else {"hidden": 12}))
    cls = CODECS[codec.family]
    numel = sum(v.numel() for k, v in codec.state_dict().items() if k != "symbol_counts")
    assert cls.state_numel(24, codec.params) == numel
    assert cls.symbol_shape(24, codec.params) == (codec.num_symbols, codec.alphabet)
    assert base.MAX_STATE_NUMEL >= 50 * 1_116_736  # far above the largest shipped codec


def test_read_verified_card_checks_the_config_hash_and_refuses_bad_cards(good, tmp_path):
    """The helper every weights folder uses (codecs, heads, backbones, pixel codecs): same signature as before,
    plus the card's config_sha256 when it has one; a malformed card raises the caller's error type."""
    from semcomp.weights import read_verified_card

    class Mine(Exception):
        pass

    d = damaged(good, tmp_path, "dsq-b2", lambda d: None)
    assert read_verified_card(d, "model.safetensors", Mine, True)["spec"] == "dsq-b2"
    (d / "config.json").write_text((d / "config.json").read_text().replace('"dim": 32', '"dim": 33'))
    with pytest.raises(Mine, match="config_sha256"):
        read_verified_card(d, "model.safetensors", Mine)
    assert read_verified_card(d, "model.safetensors", Mine, verify=False)["spec"] == "dsq-b2"
    (d / "card.json").write_text("{broken")
    with pytest.raises(Mine, match="not valid JSON"):
        read_verified_card(d, error=Mine)
    with pytest.raises(Mine, match="weights not found"):
        read_verified_card(d, "nope.safetensors", Mine)

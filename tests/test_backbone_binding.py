"""Codecs and heads are bound to the backbone *weights* they were trained for, not only its name: the card's
``backbone_sha256`` (the backbone card's sha256 of its weights) is written by every trainer, checked on load
(CodecError / the head's error naming both short hashes), skipped with a warning by discovery, absent from old
cards (which still load), and added to old folders by ``python -m semcomp.zoo stamp`` without touching anything
else. A stand-in backbone folder (config.json + card.json, no model) gives a name whose weights are known."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from semcomp import backbone as backbone_mod
from semcomp import receiver  # noqa: F401  imported before weights_dir patches WEIGHTS_DIR: it derives HEADS_DIR at import
from semcomp import zoo
from semcomp.backbone import BackboneRef, weights_sha256_of
from semcomp.codecs import CodecError, create_codec, load_codec
from semcomp.data import FeatureSet, load_features, save_features
from semcomp.heads.generate import GeneratorConfig, GeneratorError, ImageGenerator

from conftest import clustered_features

torch.set_num_threads(1)
OLD, NEW = "a" * 64, "b" * 64  # two weights of one backbone name
NAME = "stub-clip"


class Stub:
    """What load_codec compares: a loaded backbone's name, dimension, preprocessing and weights identity."""

    preprocessing: dict = {}

    def __init__(self, weights_sha256=None, name=NAME, dim=32):
        self.name, self.dim, self.weights_sha256 = name, dim, weights_sha256


@pytest.fixture()
def weights_dir(tmp_path, monkeypatch):
    """A weights/ tree whose backbones/stub-clip card says the stub's current weights are NEW."""
    d = tmp_path / "weights"
    (d / "backbones" / NAME).mkdir(parents=True)
    (d / "backbones" / NAME / "config.json").write_text("{}")
    (d / "backbones" / NAME / "card.json").write_text(json.dumps({"sha256": NEW}))
    monkeypatch.setattr(backbone_mod, "WEIGHTS_DIR", d)
    return d


def tiny_codec(weights_sha256=OLD):
    x, _, _ = clustered_features(dim=32)
    codec = create_codec("fsq-c8l4", 32, hidden=48)
    codec.fit_entropy_model(x)
    codec.backbone, codec.backbone_sha256 = NAME, weights_sha256
    return codec


def test_codec_loads_for_its_weights_and_refuses_other_weights_of_the_same_backbone(tmp_path):
    path = tiny_codec(OLD).save_pretrained(tmp_path / "c")
    card, cfg = json.loads((path / "card.json").read_text()), json.loads((path / "config.json").read_text())
    assert card["backbone_sha256"] == OLD and "backbone_sha256" not in cfg  # card only: config_sha256 unchurned
    assert load_codec(path, backbone=Stub(OLD)).backbone_sha256 == OLD
    for unknown in (Stub(None), NAME, BackboneRef(NAME), None):  # weights unknown: nothing to compare
        load_codec(path, backbone=unknown)
    for other in (Stub(NEW), BackboneRef(NAME, NEW)):
        with pytest.raises(CodecError) as e:
            load_codec(path, backbone=other)
        msg = str(e.value)
        assert "fsq-c8l4" in msg and repr(NAME) in msg and OLD[:12] in msg and NEW[:12] in msg
        assert "trained for other weights" in msg and "retrain" in msg and "semcomp fit --backbone stub-clip" in msg


def test_codec_name_resolves_to_the_backbone_folders_card(tmp_path, weights_dir):
    assert weights_sha256_of(NAME) == NEW and weights_sha256_of("ViT-B-32/openai") is None
    with pytest.raises(CodecError, match="trained for other weights"):
        load_codec(tiny_codec(OLD).save_pretrained(tmp_path / "old"), backbone=NAME)
    load_codec(tiny_codec(NEW).save_pretrained(tmp_path / "new"), backbone=NAME)


def test_old_cards_without_the_field_still_load(tmp_path):
    path = tiny_codec(None).save_pretrained(tmp_path / "c")
    assert "backbone_sha256" not in json.loads((path / "card.json").read_text())
    assert load_codec(path, backbone=Stub(NEW)).backbone_sha256 is None


def test_semcomp_train_records_the_feature_files_weights(tmp_path):
    from semcomp.cli import main

    x, y, _ = clustered_features(n_classes=10, per_class=30, dim=32)
    f = tmp_path / "f.safetensors"
    save_features(f, FeatureSet(x.numpy(), y.numpy(), {"backbone": NAME, "backbone_sha256": OLD}))
    out = tmp_path / "codecs"
    assert main(["train", "--features", str(f), "--spec", "fsq-c4l4", "--epochs", "1", "--out-dir", str(out),
                 "--ckpt-dir", str(tmp_path / "ck")]) == 0
    assert json.loads((out / "fsq-c4l4" / "card.json").read_text())["backbone_sha256"] == OLD
    # features of the new weights: eval and encode refuse the codec (it was trained for the old ones)
    other = tmp_path / "new.safetensors"
    save_features(other, FeatureSet(x.numpy(), y.numpy(), {"backbone": NAME, "backbone_sha256": NEW}))
    assert main(["encode", "--codec", str(out / "fsq-c4l4"), "--features", str(other), "--out", str(tmp_path / "x.scf")]) == 2
    assert main(["encode", "--codec", str(out / "fsq-c4l4"), "--features", str(f), "--out", str(tmp_path / "x.scf")]) == 0
    dec = tmp_path / "dec.safetensors"
    assert main(["decode", "--codec", str(out / "fsq-c4l4"), "--in", str(tmp_path / "x.scf"), "--out", str(dec)]) == 0
    assert load_features(dec).metadata["backbone_sha256"] == OLD


def test_fit_records_the_weights_and_never_reuses_features_of_other_weights(tmp_path):
    from semcomp.data import DataError
    from semcomp.datasets import image_folder
    from semcomp.training.fit import fit, work_dir_for

    from test_fit import FakeBackbone, image_dir

    images = image_dir(tmp_path / "imgs", n=330)
    bb = FakeBackbone()
    bb.weights_sha256 = OLD
    kw = dict(specs=["fsq-c8l4"], out_dir=tmp_path / "codecs", work_dir=tmp_path / "work", epochs=1, batch_size=32,
              chunk_size=64, extract_batch=32, progress=False)
    (path,) = fit(bb, image_folder(images), **kw)
    assert json.loads((path / "card.json").read_text())["backbone_sha256"] == OLD
    assert load_features(tmp_path / "work" / "features.safetensors").metadata["backbone_sha256"] == OLD
    bb.weights_sha256 = NEW  # the backbone retrained under its name: the cached features are the old weights'
    with pytest.raises(DataError, match="other weights"):
        fit(bb, image_folder(images), **{**kw, "force": True})
    assert work_dir_for("x", "src", None, OLD) != work_dir_for("x", "src", None, NEW) != work_dir_for("x", "src", None)


def test_codec_discovery_skips_codecs_for_other_weights(tmp_path, weights_dir, monkeypatch, caplog):
    root = tmp_path / "user-codecs"
    monkeypatch.setenv("SEMCOMP_CODECS", str(root))
    tiny_codec(OLD).save_pretrained(root / NAME / "fsq-c8l4")
    c = create_codec("dsq-b2", 32)
    c.backbone, c.backbone_sha256 = NAME, NEW
    c.save_pretrained(root / NAME / "dsq-b2")
    with caplog.at_level(logging.WARNING, logger="semcomp.zoo"):
        assert [r["spec"] for r in zoo.shipped_codecs(NAME)] == ["dsq-b2"]
    assert "fsq-c8l4" in caplog.text and "other weights" in caplog.text


TINY_GEN = GeneratorConfig(embed_dim=8, image_size=16, block_out_channels=(32, 64), attention_levels=(False, True),
                           attention_head_dim=8, backbone=NAME)


def tiny_generator(path: Path, weights_sha256: str | None) -> Path:
    torch.manual_seed(0)
    card = {"kind": "generate", "command": "semcomp train-generator --backbone stub-clip"}
    if weights_sha256:
        card["backbone_sha256"] = weights_sha256
    return ImageGenerator.from_config(TINY_GEN).save_pretrained(path, card)


def test_head_refuses_other_weights_and_discovery_skips_it(tmp_path, weights_dir, monkeypatch, caplog):
    from semcomp import receiver

    heads = tmp_path / "heads"
    old = tiny_generator(heads / "a-old", OLD)  # sorts first: must be skipped, not crash the app
    new = tiny_generator(heads / "b-new", NEW)
    unbound = tiny_generator(heads / "c-unbound", None)  # an old card without the field
    with pytest.raises(GeneratorError) as e:
        ImageGenerator.from_pretrained(old, backbone=Stub(NEW))
    msg = str(e.value)
    assert OLD[:12] in msg and NEW[:12] in msg and "trained for other weights" in msg and "train-generator" in msg
    ImageGenerator.from_pretrained(old, backbone=Stub(OLD))
    ImageGenerator.from_pretrained(old)  # no backbone given: no check
    ImageGenerator.from_pretrained(unbound, backbone=Stub(NEW))
    monkeypatch.setattr(receiver, "HEADS_DIR", heads)
    receiver.load_head.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="semcomp.receiver"):
            assert receiver.head_candidates(NAME) == {"generate": [new, unbound]}
        assert "a-old" in caplog.text and "other weights" in caplog.text
        assert isinstance(receiver.load_head("generate", NAME), ImageGenerator)
        with pytest.raises(GeneratorError, match="trained for other weights"):
            receiver._load_head_folder("generate", old, NAME)
    finally:
        receiver.load_head.cache_clear()


def test_stamp_adds_only_the_key(tmp_path, weights_dir, capsys):
    a = tiny_codec(None).save_pretrained(tmp_path / "a")
    b = tiny_generator(tmp_path / "b", None)
    before = {p: p.read_bytes() for d in (a, b) for p in sorted(d.rglob("*"))}
    cards = {d: json.loads((d / "card.json").read_text()) for d in (a, b)}
    zoo.main(["stamp", "--backbone", NAME, str(a), str(b)])
    assert capsys.readouterr().out.count("stamped:") == 2
    for p, raw in before.items():
        if p.name != "card.json":
            assert p.read_bytes() == raw, p  # config.json, weights, README untouched
    for d in (a, b):
        card = json.loads((d / "card.json").read_text())
        assert card == {**cards[d], "backbone_sha256": NEW} and list(card)[:-1] == list(cards[d])
    assert load_codec(a, backbone=NAME).backbone_sha256 == NEW  # config_sha256 and sha256 still verify
    stamped = (a / "card.json").read_bytes()
    zoo.main(["stamp", "--backbone", NAME, str(a)])
    assert (a / "card.json").read_bytes() == stamped and "already stamped" in capsys.readouterr().out
    # other weights already recorded: refused without --force; a folder of another backbone: nothing written
    with pytest.raises(SystemExit, match="already names other backbone weights"):
        zoo.main(["stamp", "--backbone", NAME, "--sha256", OLD, str(a)])
    c = tiny_codec(None)
    c.backbone = "another-clip"
    c = c.save_pretrained(tmp_path / "c")
    d = tiny_codec(None).save_pretrained(tmp_path / "d")
    d_card = (d / "card.json").read_bytes()
    with pytest.raises(SystemExit, match="another-clip"):
        zoo.main(["stamp", "--backbone", NAME, str(d), str(c)])
    assert (d / "card.json").read_bytes() == d_card  # every folder checked before any is written
    zoo.main(["stamp", "--backbone", NAME, "--sha256", OLD, "--force", str(a)])
    assert json.loads((a / "card.json").read_text())["backbone_sha256"] == OLD
    with pytest.raises(SystemExit, match="no known weights identity"):
        zoo.main(["stamp", "--backbone", "ViT-B-32/openai", str(d)])

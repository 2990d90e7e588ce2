import json

import numpy as np
import pytest

from semcomp.cli import main
from semcomp.data import FeatureSet, load_features, save_features

from conftest import clustered_features


@pytest.fixture()
def feature_file(tmp_path):
    x, y, centres = clustered_features(n_classes=10, per_class=30, dim=32)
    meta = {"backbone": "synthetic", "class_names": [f"class{i}" for i in range(10)]}
    p = tmp_path / "f.safetensors"
    save_features(p, FeatureSet(x.numpy(), y.numpy(), meta), extra={"text_features": centres.numpy()})
    return p


def test_train_eval_encode_decode(tmp_path, feature_file):
    out = tmp_path / "codecs"
    assert main(["train", "--features", str(feature_file), "--spec", "pqvae-n4d4k8", "--epochs", "2",
                 "--batch-size", "64", "--out-dir", str(out), "--ckpt-dir", str(tmp_path / "ck")]) == 0
    card = json.loads((out / "pqvae-n4d4k8" / "card.json").read_text())
    assert card["bits"] == 12 and card["backbone"] == "synthetic" and card["command"].startswith("semcomp train")
    rep = tmp_path / "eval.json"
    assert main(["eval", "--features", str(feature_file), "--codec", str(out / "pqvae-n4d4k8"), "--out", str(rep)]) == 0
    r = json.loads(rep.read_text())["results"][0]
    assert r["fixed_bits"] == 12 and 0 < r["top1"] <= 1 and 0 < r["mean_cosine"] <= 1
    assert r["ans_bits_per_item"] <= 12 + 1
    scf = tmp_path / "x.scf"
    assert main(["encode", "--codec", str(out / "pqvae-n4d4k8"), "--features", str(feature_file), "--out", str(scf)]) == 0
    dec = tmp_path / "dec.safetensors"
    assert main(["decode", "--codec", str(out / "pqvae-n4d4k8"), "--in", str(scf), "--out", str(dec)]) == 0
    assert load_features(dec).features.shape == (300, 32)
    # existing output without --force: refused, file untouched
    before = scf.read_bytes()
    assert main(["encode", "--codec", str(out / "pqvae-n4d4k8"), "--features", str(feature_file), "--out", str(scf)]) == 2
    assert scf.read_bytes() == before


def test_bad_inputs_exit_nonzero_without_output(tmp_path, feature_file):
    assert main(["decode", "--codec", str(tmp_path / "nope"), "--in", str(feature_file), "--out", str(tmp_path / "o")]) == 2
    assert main(["encode", "--codec", str(tmp_path / "nope"), "--features", str(feature_file), "--out", str(tmp_path / "o.scf")]) == 2
    assert not (tmp_path / "o.scf").exists()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert main(["train", "--features", str(bad), "--spec", "fsq-c4l4", "--out-dir", str(tmp_path / "c")]) == 2


def test_corrupt_scf_is_refused(tmp_path, feature_file):
    out = tmp_path / "codecs"
    main(["train", "--features", str(feature_file), "--spec", "fsq-c4l4", "--epochs", "1", "--out-dir", str(out), "--ckpt-dir", str(tmp_path / "ck")])
    scf = tmp_path / "x.scf"
    main(["encode", "--codec", str(out / "fsq-c4l4"), "--features", str(feature_file), "--out", str(scf)])
    data = bytearray(scf.read_bytes())
    data[20] ^= 4
    scf.write_bytes(bytes(data))
    assert main(["decode", "--codec", str(out / "fsq-c4l4"), "--in", str(scf), "--out", str(tmp_path / "d.safetensors")]) == 2
    assert not (tmp_path / "d.safetensors").exists()


def test_send_receive_segment_on_a_users_image(tmp_path, capsys):
    """The shipped embedded models end to end from the CLI: image -> .scf -> labels + caption + image; segmentation."""
    from pathlib import Path

    from PIL import Image

    img = Path(__file__).resolve().parents[1] / "assets" / "examples" / "tin_val_2253_goldfish.jpg"
    scf = tmp_path / "x.scf"
    assert main(["send", str(img), "--bits", "64", "--out", str(scf)]) == 0
    assert main(["send", str(img), "--out", str(scf)]) == 2  # exists, no --force
    capsys.readouterr()
    png = tmp_path / "gen.png"
    assert main(["receive", str(scf), "--generate", str(png), "--steps", "2", "--labels", "goldfish, car, hat"]) == 0
    out = json.loads(capsys.readouterr().out)
    item = out["items"][0]
    assert out["bits"] == 64 and item["caption"] and item["labels"][0].startswith("goldfish")
    assert Image.open(png).size == (256, 256)
    seg = tmp_path / "seg.png"
    assert main(["segment", str(img), "--command", "a goldfish", "--bits", "64", "--out", str(seg)]) == 0
    assert Image.open(seg).size == Image.open(img).size
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["send", str(bad), "--out", str(tmp_path / "y.scf")]) == 2
    assert not (tmp_path / "y.scf").exists()
    scf.write_bytes(scf.read_bytes()[:-1])
    assert main(["receive", str(scf)]) == 2


def test_a_full_disk_leaves_no_partial_output(tmp_path, feature_file, monkeypatch):
    import errno
    from pathlib import Path

    out = tmp_path / "codecs"
    assert main(["train", "--features", str(feature_file), "--spec", "fsq-c8l4", "--epochs", "1", "--batch-size", "64",
                 "--out-dir", str(out), "--ckpt-dir", str(tmp_path / "ck")]) == 0
    real = Path.write_bytes

    def full_disk(self, data):
        real(self, data[: len(data) // 2])  # half written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    scf = tmp_path / "x.scf"
    assert main(["encode", "--codec", str(out / "fsq-c8l4"), "--features", str(feature_file), "--out", str(scf)]) == 2
    assert not scf.exists() and not (tmp_path / "x.scf.tmp").exists()

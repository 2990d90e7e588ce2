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



def test_features_of_another_backbone_are_refused_by_encode_and_eval(tmp_path, feature_file, caplog):
    out = tmp_path / "codecs"
    assert main(["train", "--features", str(feature_file), "--spec", "fsq-c4l4", "--epochs", "1", "--out-dir", str(out),
                 "--ckpt-dir", str(tmp_path / "ck")]) == 0
    fs = load_features(feature_file)
    other = tmp_path / "other.safetensors"
    meta = {k: v for k, v in fs.metadata.items() if k != "_extra"}
    save_features(other, FeatureSet(fs.features, fs.labels, {**meta, "backbone": "another-clip"}),
                  extra={"text_features": fs.metadata["_extra"]["text_features"]})
    scf = tmp_path / "x.scf"
    assert main(["encode", "--codec", str(out / "fsq-c4l4"), "--features", str(other), "--out", str(scf)]) == 2
    assert not scf.exists() and "made for backbone 'synthetic', not 'another-clip'" in caplog.text
    assert main(["eval", "--features", str(other), "--codec", str(out / "fsq-c4l4")]) == 2

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


@pytest.mark.slow  # loads the embedded models
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


# ----------------------------------------------------------------------------- every failure: one line, exit 2
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
GOLDFISH = ROOT / "assets" / "examples" / "tin_val_2253_goldfish.jpg"
LEMON = ROOT / "assets" / "examples" / "tin_val_2616_lemon.jpg"
SHIPPED = ROOT / "weights" / "codecs" / "semcomp-tiny-clip"


def _fails_cleanly(capsys, caplog, argv, match):
    """Exit 2 with one error line naming the problem, and no traceback."""
    caplog.clear()
    assert main(argv) == 2, argv
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0] and match in errors[0], (argv, errors)
    assert "Traceback" not in capsys.readouterr().err


def test_directories_and_devices_as_input_exit_2(tmp_path, feature_file, capsys, caplog):
    codec = str(SHIPPED / "fsq-c32l4")
    for bad, why in ((tmp_path, "is a directory"), ("/dev/zero", "not a regular file"), (tmp_path / "nope", "not found")):
        _fails_cleanly(capsys, caplog, ["decode", "--codec", codec, "--in", str(bad), "--out", str(tmp_path / "d.st")], why)
        _fails_cleanly(capsys, caplog, ["receive", str(bad)], why)
        _fails_cleanly(capsys, caplog, ["encode", "--codec", codec, "--features", str(bad), "--out", str(tmp_path / "e.scf")], why)
        _fails_cleanly(capsys, caplog, ["send", str(bad), "--out", str(tmp_path / "s.scf")], why)
        _fails_cleanly(capsys, caplog, ["segment", str(bad), "--command", "a dog", "--out", str(tmp_path / "g.png")], why)
        _fails_cleanly(capsys, caplog, ["segment", str(GOLDFISH), "--command", "a dog", "--sam-checkpoint", str(bad),
                                        "--out", str(tmp_path / "g.png")], why)
        _fails_cleanly(capsys, caplog, ["convert-clipcap", str(bad), "--out", str(tmp_path / "cc")], why)
        _fails_cleanly(capsys, caplog, ["train-caption", "--pairs", str(bad), "--out", str(tmp_path / "tc")], why)
    written = [p.name for p in tmp_path.rglob("*") if not p.is_dir()]
    assert written == ["f.safetensors"]  # nothing written, no temp files


def test_unwritable_full_or_odd_outputs_exit_2_and_leave_nothing(tmp_path, capsys, caplog, monkeypatch):
    import errno

    import safetensors.numpy
    import torch

    from semcomp.codecs import load_codec

    codec = str(SHIPPED / "fsq-c32l4")
    scf = tmp_path / "x.scf"
    scf.write_bytes(load_codec(codec).compress(torch.nn.functional.normalize(torch.randn(1, 512), dim=-1), "raw"))
    afile = tmp_path / "afile"
    afile.write_text("")
    for cmd in (["decode", "--codec", codec, "--in", str(scf), "--out"], ["segment", str(GOLDFISH), "--command", "a fish", "--out"],
                ["receive", str(scf), "--generate"]):
        _fails_cleanly(capsys, caplog, cmd + [str(afile / "out.png")], "cannot create the folder")  # parent is a file
        _fails_cleanly(capsys, caplog, cmd + [str(tmp_path), "--force"], "is a directory")
        _fails_cleanly(capsys, caplog, cmd + ["/dev/null", "--force"], "not a regular file")  # never replaced
        if cmd[0] != "decode":
            _fails_cleanly(capsys, caplog, cmd + [str(tmp_path / "out.xyz")], "image format")
    out_dir = tmp_path / "existing"
    out_dir.mkdir()
    _fails_cleanly(capsys, caplog, ["decode", "--codec", codec, "--in", str(scf), "--out", str(out_dir), "--force"], "is a directory")
    assert not (tmp_path / "existing.tmp").exists() and out_dir.is_dir()

    real = safetensors.numpy.save_file

    def full_disk(tensors, path, metadata=None):
        real(tensors, path, metadata)
        with open(path, "r+b") as f:
            f.truncate(10)  # half written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", full_disk)
    dec = tmp_path / "dec.safetensors"
    _fails_cleanly(capsys, caplog, ["decode", "--codec", codec, "--in", str(scf), "--out", str(dec)], "No space left")
    assert not dec.exists() and not (tmp_path / "dec.safetensors.tmp").exists()


@pytest.mark.slow  # loads the embedded models
def test_full_disk_while_writing_generated_image_or_mask_exits_2(tmp_path, capsys, caplog, monkeypatch):
    import errno
    from pathlib import Path

    scf = tmp_path / "x.scf"
    assert main(["send", str(GOLDFISH), "--codec", "fsq-c32l4", "--out", str(scf)]) == 0
    real = Path.write_bytes

    def full_disk(self, data):
        real(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    _fails_cleanly(capsys, caplog, ["receive", str(scf), "--generate", str(tmp_path / "gen.png"), "--steps", "1"], "No space left")
    _fails_cleanly(capsys, caplog, ["segment", str(GOLDFISH), "--command", "a fish", "--codec", "fsq-c32l4",
                                    "--out", str(tmp_path / "seg.png")], "No space left")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.scf"]


def test_receive_bounds_the_item_count_before_decoding(tmp_path, capsys, caplog):
    import torch

    from semcomp.codecs import load_codec

    codec = load_codec(SHIPPED / "fsq-c32l4")
    scf = tmp_path / "many.scf"
    scf.write_bytes(codec.compress(torch.nn.functional.normalize(torch.randn(1001, codec.dim), dim=-1), "raw"))
    _fails_cleanly(capsys, caplog, ["receive", str(scf)], "max_items=1000")
    _fails_cleanly(capsys, caplog, ["receive", str(scf), "--max-items", "10"], "max_items=10")
    _fails_cleanly(capsys, caplog, ["decode", "--codec", str(SHIPPED / "fsq-c32l4"), "--in", str(scf), "--max-items", "1000",
                                    "--out", str(tmp_path / "d.safetensors")], "max_items=1000")
    assert main(["decode", "--codec", str(SHIPPED / "fsq-c32l4"), "--in", str(scf), "--out", str(tmp_path / "d.safetensors")]) == 0


@pytest.mark.slow  # loads the embedded models
def test_framed_send_and_receive(tmp_path, capsys, caplog):
    """`send --framed` writes an announce + one frame per image; `receive` reads it and reports every frame."""
    scfs = tmp_path / "x.scfs"
    assert main(["send", str(GOLDFISH), str(LEMON), str(GOLDFISH), "--codec", "fsq-c32l4", "--framed", "--out", str(scfs)]) == 0
    said = capsys.readouterr().out
    assert "3 image(s)" in said and "one 36-byte announce" in said
    data = scfs.read_bytes()
    assert len(data) <= 4 + 1 + 36 + 3 * (1 + 8 + 3)  # magic, announce, frames of <= raw size after a length byte
    assert main(["receive", str(scfs), "--labels", "goldfish, lemon, car"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stream"]["delivered"] == 3 and [f["status"] for f in out["stream"]["report"]] == ["ok"] * 3
    assert [i["labels"][0].split()[0] for i in out["items"]] == ["goldfish", "lemon", "goldfish"]
    # raw coding: fixed 11-byte frames; one corrupted frame and a cut tail are reported, the rest delivered
    assert main(["send", str(GOLDFISH), str(LEMON), str(GOLDFISH), "--codec", "fsq-c32l4", "--framed", "--coding", "raw",
                 "--out", str(scfs), "--force"]) == 0
    data = bytearray(scfs.read_bytes())
    assert len(data) == 4 + 1 + 36 + 3 * 11
    data[4 + 1 + 36 + 11 + 5] ^= 0x10  # a bit of the second frame's payload
    scfs.write_bytes(bytes(data[:-4]))  # and the third frame cut short
    capsys.readouterr()
    assert main(["receive", str(scfs), "--labels", "goldfish, lemon, car"]) == 0
    stream = json.loads(capsys.readouterr().out)["stream"]
    assert [f["status"] for f in stream["report"]] == ["ok", "bad-crc", "truncated"] and stream["delivered"] == 1
    # a codec too large for a 51-byte frame is refused with the reason
    _fails_cleanly(capsys, caplog, ["send", str(GOLDFISH), "--codec", "fsq-c200l8", "--framed", "--coding", "raw",
                                    "--out", str(tmp_path / "big.scfs")], "at most 51")
    _fails_cleanly(capsys, caplog, ["receive", str(tmp_path / "big.scfs")], "not found")


def test_an_unexpected_error_is_one_line_exit_1_traceback_only_with_v(tmp_path, capsys, caplog, monkeypatch):
    import semcomp.cli as cli

    def boom(a):
        raise TypeError("a bug")

    monkeypatch.setattr(cli, "cmd_decode", boom)
    argv = ["decode", "--codec", "c", "--in", "i", "--out", str(tmp_path / "o")]
    caplog.clear()
    assert main(argv) == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "TypeError: a bug" in errors[0].getMessage() and errors[0].exc_info is None
    caplog.clear()
    assert main(["-v"] + argv) == 2
    assert any(r.exc_info for r in caplog.records)  # -v: the traceback, for a bug report


def test_train_keeps_unlabelled_photo_views_only_when_asked(tmp_path):
    """A codec-training file marks photo views outside the split's classes -1; --split-name alone drops them (the
    shipped prq's recipe), --keep-unlabelled trains on them too, and neither ever keeps a test-class item."""
    from semcomp.cli import _select
    from semcomp.splits import class_split

    split = class_split("tiny-imagenet")
    seen, unseen = split["train_classes"][:3], split["test_classes"][:2]
    labels = np.array([seen[0]] * 40 + [seen[1]] * 40 + [seen[2]] * 40 + [unseen[0]] * 30 + [unseen[1]] * 30 + [-1] * 60)
    x = np.random.default_rng(0).standard_normal((len(labels), 16)).astype(np.float32)
    fs = FeatureSet(x, labels, {"backbone": "synthetic", "class_names": [f"c{i}" for i in range(200)]})
    assert len(_select(fs, "tiny-imagenet", "train").labels) == 120
    kept = _select(fs, "tiny-imagenet", "train", keep_unlabelled=True).labels
    assert len(kept) == 180 and not np.isin(kept, unseen).any()
    p = tmp_path / "f.safetensors"
    save_features(p, fs)
    cards = {}
    for flag in ([], ["--keep-unlabelled"]):
        out = tmp_path / ("keep" if flag else "drop")
        assert main(["train", "--features", str(p), "--split-name", "tiny-imagenet", *flag, "--spec", "fsq-c4l4",
                     "--epochs", "1", "--out-dir", str(out)]) == 0
        cards[bool(flag)] = json.loads((out / "fsq-c4l4" / "card.json").read_text())
    assert cards[False]["train_items"] + cards[False]["holdout_items"] == 120
    assert cards[True]["train_items"] + cards[True]["holdout_items"] == 180
    assert cards[True]["data"]["classes"] == "train + unlabelled" and cards[False]["data"]["classes"] == "train"

"""`semcomp train` resumes only the same run (issue 19): a checkpoint is keyed by spec + features hash +
hyper-parameters and removed when its run finishes, so a later run on other features never picks it up."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from semcomp.data import FeatureSet, save_features
from semcomp.training import codec as training
from semcomp.training.checkpoint import load_checkpoint
from semcomp.training.codec import features_sha256, run_checkpoint_path, train_codec

from conftest import clustered_features

SPEC = "fsq-c8l4"
KW = dict(epochs=3, batch_size=32, lr=3e-3, codec_kwargs={"hidden": 16}, progress=False)


def feats(seed):
    x, _, _ = clustered_features(n_classes=6, per_class=40, dim=16, seed=seed)
    return x


def crash_after_first_epoch(monkeypatch):
    """Make the run die right after its first checkpoint (the second validation raises)."""
    calls = {"n": 0}
    real = training.mean_cosine

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(training, "mean_cosine", dying)


def test_a_finished_run_leaves_nothing_to_resume_and_b_is_trained_on_b(tmp_path):
    a, b = feats(0), feats(1)
    ck = tmp_path / "ck" / f"{SPEC}.pt"
    codec_a, card_a = train_codec(SPEC, a, ckpt_path=ck, **KW)
    assert not list(ck.parent.glob("*.pt")), "a finished run removes its checkpoint"
    codec_b, card_b = train_codec(SPEC, b, ckpt_path=ck, **KW)
    fresh_b, _ = train_codec(SPEC, b, **KW)  # B with no checkpoint directory at all
    assert card_b["features_sha256"] == features_sha256(b) != card_a["features_sha256"] == features_sha256(a)
    assert [h["epoch"] for h in card_b["history"]] == [1, 2, 3]
    sa, sb, sf = codec_a.state_dict(), codec_b.state_dict(), fresh_b.state_dict()
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if sa[k].is_floating_point()), "B's weights equal A's"
    for k in sb:
        assert torch.equal(sb[k], sf[k]), k  # B is exactly what training on B alone gives


def test_an_interrupted_run_resumes_only_itself(tmp_path, monkeypatch, caplog):
    a, b = feats(0), feats(1)
    ck = tmp_path / "ck" / f"{SPEC}.pt"
    with monkeypatch.context() as m:
        crash_after_first_epoch(m)
        with pytest.raises(KeyboardInterrupt):
            train_codec(SPEC, a, ckpt_path=ck, **KW)
    (left,) = ck.parent.glob("*.pt")
    state = load_checkpoint(left)
    assert state["epoch"] == 1 and state["run"]["features_sha256"] == features_sha256(a)
    assert left == run_checkpoint_path(ck, state["run_key"])

    # other features, or the same features with other settings: start fresh, A's checkpoint untouched
    caplog.set_level("INFO")
    for other_feats, kw in [(b, KW), (a, {**KW, "epochs": 2}), (a, {**KW, "lr": 1e-3}), (a, {**KW, "seed": 1})]:
        caplog.clear()
        _, card = train_codec(SPEC, other_feats, ckpt_path=ck, **kw)
        assert "resumed" not in caplog.text
        assert len(card["history"]) == kw["epochs"] and card["history"][0]["epoch"] == 1
    assert load_checkpoint(left)["epoch"] == 1

    # the same run again resumes from epoch 1 and ends where an uninterrupted run ends
    caplog.clear()
    resumed, card = train_codec(SPEC, a, ckpt_path=ck, **KW)
    assert "resumed after epoch 1" in caplog.text and not left.exists()
    whole, _ = train_codec(SPEC, a, **KW)
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, atol=1e-4, rtol=1e-4)


def test_a_checkpoint_with_another_runs_key_is_never_resumed(tmp_path, monkeypatch, caplog):
    """Even under the right file name (a renamed file or a key-prefix clash), the key inside must match."""
    a, b = feats(0), feats(1)
    ck = tmp_path / "ck" / f"{SPEC}.pt"
    with monkeypatch.context() as m:
        crash_after_first_epoch(m)
        with pytest.raises(KeyboardInterrupt):
            train_codec(SPEC, a, ckpt_path=ck, **KW)
    (left,) = ck.parent.glob("*.pt")
    _, card_b = train_codec(SPEC, b, **KW)
    left.rename(run_checkpoint_path(ck, card_b["run_key"]))  # A's state under B's name
    caplog.set_level("INFO")
    codec_b, card = train_codec(SPEC, b, ckpt_path=ck, **KW)
    assert "belongs to another run" in caplog.text and "resumed" not in caplog.text
    assert card["features_sha256"] == features_sha256(b) and len(card["history"]) == 3


def test_cli_train_on_a_then_b_writes_b(tmp_path):
    """The issue's report, through the CLI and one shared --ckpt-dir: B's weights differ and its card names B."""
    from semcomp.cli import main

    paths = {}
    for name, seed in (("A", 0), ("B", 1)):
        x, y, centres = clustered_features(n_classes=6, per_class=40, dim=16, seed=seed)
        paths[name] = tmp_path / f"{name}.safetensors"
        save_features(paths[name], FeatureSet(x.numpy(), y.numpy(), {"backbone": "synthetic"}),
                      extra={"text_features": centres.numpy()})
        rc = main(["train", "--features", str(paths[name]), "--spec", SPEC, "--epochs", "2", "--batch-size", "32",
                   "--out-dir", str(tmp_path / name), "--ckpt-dir", str(tmp_path / "ck")])
        assert rc in (0, None)
    wa = load_file(str(tmp_path / "A" / SPEC / "model.safetensors"))
    wb = load_file(str(tmp_path / "B" / SPEC / "model.safetensors"))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa if wa[k].is_floating_point())
    card_a = json.loads((tmp_path / "A" / SPEC / "card.json").read_text())
    card_b = json.loads((tmp_path / "B" / SPEC / "card.json").read_text())
    assert card_b["data"]["features"] == str(paths["B"])
    assert card_b["features_sha256"] != card_a["features_sha256"] and card_b["run_key"] != card_a["run_key"]
    assert card_b["history"][0]["epoch"] == 1 and len(card_b["history"]) == 2
    assert not list((tmp_path / "ck").glob("*.pt"))


def test_cli_train_prq_defaults_to_the_shipped_recipe(tmp_path):
    """No recipe flags: beam-5 residual-quantiser init, the first codebook kept, trained until early stopping."""
    from semcomp.cli import main

    x, y, centres = clustered_features(n_classes=6, per_class=40, dim=16, seed=0)
    path = tmp_path / "f.safetensors"
    save_features(path, FeatureSet(x.numpy(), y.numpy(), {"backbone": "synthetic"}), extra={"text_features": centres.numpy()})
    assert main(["train", "--features", str(path), "--spec", "prq-s4o2k4", "--batch-size", "32",
                 "--out-dir", str(tmp_path / "c"), "--ckpt-dir", str(tmp_path / "ck")]) in (0, None)
    card = json.loads((tmp_path / "c" / "prq-s4o2k4" / "card.json").read_text())
    assert card["frozen_stages"] == 1 and "faiss.ResidualQuantizer (beam 5" in card["init"]
    assert card["stopped"].startswith("early stop") and card["epochs_run"] < 1000

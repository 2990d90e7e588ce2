"""Crash-safe training: `kill -9` mid-run, resume, and end where an uninterrupted run of the same seed ends."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from semcomp.data import FeatureSet, save_features
from semcomp.training.checkpoint import load_checkpoint, save_checkpoint

from conftest import clustered_features


def _train_cmd(features, out, ckpt, epochs=6):
    return [sys.executable, "-m", "semcomp.cli", "train", "--features", str(features), "--spec", "fsq-c8l4",
            "--epochs", str(epochs), "--batch-size", "16", "--out-dir", str(out), "--ckpt-dir", str(ckpt)]


def test_kill_9_mid_training_then_resume_matches_an_uninterrupted_run(tmp_path):
    x, y, centres = clustered_features(n_classes=10, per_class=200, dim=32)
    f = tmp_path / "f.safetensors"
    save_features(f, FeatureSet(x.numpy(), y.numpy(), {"backbone": "synthetic"}), extra={"text_features": centres.numpy()})
    ckpt = tmp_path / "ck" / "fsq-c8l4.pt"
    proc = subprocess.Popen(_train_cmd(f, tmp_path / "a", tmp_path / "ck"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # as hard as a crash gets, right after the first checkpoint
    proc.wait()
    state = load_checkpoint(ckpt)
    assert state is not None and 1 <= state["epoch"] < 6, "the kill must land mid-run"
    assert not (tmp_path / "a" / "fsq-c8l4" / "model.safetensors").exists()
    assert subprocess.run(_train_cmd(f, tmp_path / "a", tmp_path / "ck"), capture_output=True).returncode == 0  # resume
    assert subprocess.run(_train_cmd(f, tmp_path / "b", tmp_path / "ck2"), capture_output=True).returncode == 0  # no crash
    wa = load_file(str(tmp_path / "a" / "fsq-c8l4" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "fsq-c8l4" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-3, rtol=1e-3)


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    p = tmp_path / "c.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, p)

    def dying_save(obj, path, *a, **k):
        Path(path).write_bytes(b"half a checkpo")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, p)
    state = load_checkpoint(p)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))

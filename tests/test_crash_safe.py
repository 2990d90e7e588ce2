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
    ck = tmp_path / "ck"  # the run's checkpoint is ck/fsq-c8l4-<run key>.pt (keyed by features + settings)
    proc = subprocess.Popen(_train_cmd(f, tmp_path / "a", ck), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(ck.glob("fsq-c8l4-*.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # as hard as a crash gets, right after the first checkpoint
    proc.wait()
    (ckpt,) = ck.glob("fsq-c8l4-*.pt")
    state = load_checkpoint(ckpt)
    assert state is not None and 1 <= state["epoch"] < 6, "the kill must land mid-run"
    assert not (tmp_path / "a" / "fsq-c8l4" / "model.safetensors").exists()
    resumed = subprocess.run(_train_cmd(f, tmp_path / "a", ck), capture_output=True, text=True)
    assert resumed.returncode == 0 and f"resumed after epoch {state['epoch']}" in resumed.stderr
    assert not ckpt.exists(), "a finished run removes its checkpoint"
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


HEAD_SCRIPT = r'''
import sys, torch, torch.nn.functional as F
from safetensors.torch import save_file
from semcomp.heads.caption import CaptionConfig, ClipCapModel
from semcomp.heads.generate import GeneratorConfig
from semcomp.training.caption import train_captioner
from semcomp.training.generator import train_generator
kind, ckpt, out = sys.argv[1:4]
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
if kind == "generator":
    cfg = GeneratorConfig(embed_dim=8, image_size=16, block_out_channels=(32, 64), attention_levels=(False, True), attention_head_dim=8)
    imgs = torch.randint(0, 256, (16, 16, 16, 3), generator=g, dtype=torch.uint8)
    emb = F.normalize(torch.randn(16, 8, generator=g), dim=-1)
    model, _ = train_generator(imgs, emb, cfg, steps=40, batch_size=4, lr=1e-3, warmup=1, ckpt_path=ckpt, ckpt_every=5, log_every=5)
else:
    cfg = CaptionConfig(embed_dim=8, prefix_length=2, n_embd=32, n_layer=1, n_head=2, n_positions=32, vocab_size=7, eos_id=6, mapping_hidden=32)
    torch.manual_seed(0)
    model = ClipCapModel(cfg)
    emb = torch.randn(64, 8, generator=g)
    toks = [[int(t) for t in torch.randint(0, 6, (5,), generator=g)] + [6] for _ in range(64)]
    train_captioner(model, emb, toks, noise_std=0.05, epochs=5, batch_size=4, lr=1e-3, warmup=1, ckpt_path=ckpt, ckpt_every=5, log_every=5)
save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, out)
'''


@pytest.mark.parametrize("kind", ["generator", "caption"])
def test_head_trainings_survive_kill_9(tmp_path, kind):
    script = tmp_path / "train_head.py"
    script.write_text(HEAD_SCRIPT)
    ckpt = tmp_path / "ck.pt"
    run = [sys.executable, str(script), kind, str(ckpt)]
    proc = subprocess.Popen(run + [str(tmp_path / "a.safetensors")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (tmp_path / "a.safetensors").exists(), "the kill must land mid-run"
    assert subprocess.run(run + [str(tmp_path / "a.safetensors")], capture_output=True).returncode == 0  # resume
    assert subprocess.run([sys.executable, str(script), kind, str(tmp_path / "ck2.pt"), str(tmp_path / "b.safetensors")],
                          capture_output=True).returncode == 0
    wa, wb = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-4, rtol=1e-4)

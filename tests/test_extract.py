"""semcomp extract: image sources, resumable chunks, torchrun data parallelism (2 gloo processes), prompt ensembles."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semcomp.data import DataError, load_features
from semcomp.datasets import ImageSource, open_source
from semcomp.extract import extract, text_features

ROOT = Path(__file__).resolve().parents[1]


def _folder(tmp_path, n=10):
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    rows = ["path,label"]
    for i in range(n):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(d / f"{i}.png")
        rows.append(f"{i}.png,{'cat' if i % 3 else 'fire truck'}")
    (d / "labels.csv").write_text("\n".join(rows) + "\n")
    return d


@pytest.fixture(scope="module")
def backbone():
    from semcomp.backbone import load_backbone

    return load_backbone("semcomp-tiny-clip")


def test_folder_source_and_its_errors(tmp_path):
    d = _folder(tmp_path)
    src = open_source("folder", "val", str(d))
    assert src.class_names == ["cat", "fire truck"]
    samples = list(src.samples())
    assert [s[2] for s in samples[:3]] == [1, 0, 0] and samples[0][1]().mode == "RGB"
    (d / "3.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="3.png"):
        [load() for _, load, _ in src.samples()]
    with pytest.raises(DataError, match="labels.csv"):
        open_source("folder", "val", str(tmp_path))
    with pytest.raises(DataError, match="unknown dataset"):
        open_source("mnist", "val")
    (d / "labels.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(DataError, match="'path' and 'label'"):
        open_source("folder", "val", str(d))
    with pytest.raises(DataError, match="1000"):
        (tmp_path / "inet" / "val" / "n01440764").mkdir(parents=True)
        open_source("imagenet", "val", str(tmp_path / "inet"))


def test_torchvision_sources_read_labels_and_names(monkeypatch):
    import torchvision.datasets as tvd

    class FakeCIFAR:
        classes = ["airplane", "pickup_truck"]

        def __init__(self, root, train, download):
            self.targets = [1, 0, 1]

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return Image.new("L", (32, 32), 40 * i), self.targets[i]

    monkeypatch.setattr(tvd, "CIFAR10", FakeCIFAR)
    src = open_source("cifar10", "val")
    assert src.class_names == ["airplane", "pickup truck"]
    got = [(i, load().mode, lab) for i, load, lab in src.samples()]
    assert got == [(0, "RGB", 1), (1, "RGB", 0), (2, "RGB", 1)]


def test_extract_resumes_from_finished_chunks(tmp_path, backbone):
    d = _folder(tmp_path, 10)
    good = open_source("folder", "val", str(d))
    calls = []

    def crashing():
        for i, load, lab in good.samples():
            if i == 7:
                raise KeyboardInterrupt  # the process dies mid-run
            yield i, (lambda load=load, i=i: calls.append(i) or load()), lab

    out = tmp_path / "f.safetensors"
    with pytest.raises(KeyboardInterrupt):
        extract(backbone, ImageSource("folder", "all", good.class_names, crashing, good.description), out,
                batch_size=2, chunk_size=4, progress=False)
    assert sorted(p.name for p in (tmp_path / "f.safetensors.parts").glob("*.safetensors")) == ["r0-c000000.safetensors"]
    calls.clear()

    def counting():
        for i, load, lab in good.samples():
            yield i, (lambda load=load, i=i: calls.append(i) or load()), lab

    extract(backbone, ImageSource("folder", "all", good.class_names, counting, good.description), out,
            batch_size=2, chunk_size=4, progress=False)
    assert calls == [4, 5, 6, 7, 8, 9]  # the first chunk was not decoded again
    fs = load_features(out)
    ref = backbone.encode_images([load() for _, load, _ in good.samples()])
    assert np.allclose(fs.features, ref.numpy(), atol=1e-5)
    assert list(fs.labels) == [lab for *_, lab in good.samples()]
    assert not (tmp_path / "f.safetensors.parts").exists()


def test_torchrun_two_gloo_processes_match_one_process(tmp_path):
    d = _folder(tmp_path, 9)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    base = ["extract", "--dataset", "folder", "--source", str(d), "--batch-size", "2", "--chunk-size", "2", "--no-progress"]
    one = subprocess.run([sys.executable, "-m", "semcomp.cli", *base, "--out", str(tmp_path / "one.safetensors")],
                         env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "semcomp.cli", *base, "--out", str(tmp_path / "two.safetensors")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_features(tmp_path / "one.safetensors"), load_features(tmp_path / "two.safetensors")
    assert np.allclose(a.features, b.features, atol=1e-5) and (a.labels == b.labels).all()
    assert b.metadata["processes"] == 2 and a.metadata["processes"] == 1


def test_prompt_ensemble(backbone):
    single, name = text_features(backbone, ["cat", "dog"], "a photo of a {}.")
    ens, ename = text_features(backbone, ["cat", "dog"], "openai")
    assert ename == "openai-80-ensemble" and ens.shape == single.shape
    assert torch.allclose(ens.norm(dim=-1), torch.ones(2), atol=1e-5) and not torch.allclose(ens, single)
    with pytest.raises(DataError, match="{}"):
        text_features(backbone, ["cat"], "a photo")

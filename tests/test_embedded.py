"""Checks on the shipped embedded models (they are in the repo): real images, real semantics."""
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from semcomp.backbone import load_backbone
from semcomp.codecs import load_codec
from semcomp.heads.zeroshot import ZeroShotClassifier
from semcomp.zoo import shipped_codecs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "assets" / "examples").glob("tin_val_*.jpg"))


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("semcomp-tiny-clip")


@pytest.fixture(scope="module")
def tin_classifier(backbone):
    import json

    names = [c["name"] for c in json.loads((ROOT / "assets" / "labels" / "tiny-imagenet-200.json").read_text())]
    return ZeroShotClassifier.from_backbone(backbone, names)


def test_backbone_features_are_normalised_and_text_works(backbone):
    imgs = [Image.open(p) for p in EXAMPLES]
    f = backbone.encode_images(imgs)
    assert f.shape == (len(imgs), 512)
    assert torch.allclose(f.norm(dim=-1), torch.ones(len(imgs)), atol=1e-4)
    t = backbone.encode_text(["a photo of a goldfish.", "a photo of a lemon."])
    assert t.shape == (2, 512)


def test_top_budget_keeps_float_zero_shot_accuracy_on_bundled_images(backbone, tin_classifier):
    imgs = [Image.open(p) for p in EXAMPLES]
    truth = [re.match(r"tin_val_\d+_(.+)\.jpg", p.name).group(1).replace("_", " ") for p in EXAMPLES]
    f = backbone.encode_images(imgs)
    float_hits = sum(r.labels[0] == t for r, t in zip(tin_classifier.predict(f), truth))
    top = max(shipped_codecs(backbone.name), key=lambda c: c["bits"])
    codec = load_codec(top["path"])
    dec = codec.decompress(codec.compress(f))
    dec_hits = sum(r.labels[0] == t for r, t in zip(tin_classifier.predict(dec), truth))
    assert float_hits >= len(EXAMPLES) // 2  # the backbone itself recognises most bundled images
    assert dec_hits >= 0.95 * float_hits


def test_more_bits_keep_more_cosine_on_real_features(backbone):
    f = backbone.encode_images([Image.open(p) for p in sorted((ROOT / "assets" / "examples").glob("*.jpg"))])
    fsq = [c for c in shipped_codecs(backbone.name) if c["family"] == "fsq"]  # 64 and 256 bits
    cos = []
    for c in sorted(fsq, key=lambda c: c["bits"]):
        codec = load_codec(c["path"])
        cos.append(torch.nn.functional.cosine_similarity(codec.reconstruct(f), f).mean().item())
    assert len(cos) >= 2 and cos[-1] > cos[0]


def test_readme_python_snippet_runs():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## Python API\s+```python\n(.*?)```", text, re.S).group(1)
    import os

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        exec(compile(code, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)


def test_shipped_heads_run_on_decoded_features(backbone):
    """Caption and generator heads load from weights/heads, verify their sha256 and take decoded features."""
    from semcomp.receiver import load_head, shipped_heads

    assert {"caption", "generate"} <= set(shipped_heads("semcomp-tiny-clip"))
    x = backbone.encode_images([Image.open(p) for p in EXAMPLES[:2]])
    codec = load_codec(next(c["path"] for c in shipped_codecs("semcomp-tiny-clip") if c["spec"] == "fsq-c32l4"))
    dec = codec.decompress(codec.compress(x))
    cap = load_head("caption", "semcomp-tiny-clip")
    caps = cap.caption(dec)
    assert len(caps) == 2 and all(isinstance(c, str) and c for c in caps)
    assert caps == cap.caption(dec)  # deterministic
    gen = load_head("generate", "semcomp-tiny-clip")
    a = gen.generate(dec[:1], steps=2, seed=1)
    assert a.shape == (1, 64, 64, 3) and (a == gen.generate(dec[:1], steps=2, seed=1)).all()


def test_downloadable_label_sets_fail_clearly_offline(tmp_path, monkeypatch):
    import torchvision

    import semcomp.labels as labels

    monkeypatch.setattr(labels, "CACHE", tmp_path)

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(labels.LabelSetError, match="CIFAR-10 class names"):
        labels.downloadable_label_set("CIFAR-10")
    (tmp_path / "CIFAR-100.json").write_text('["apple", "aquarium fish"]')  # cached after one download
    assert labels.downloadable_label_set("CIFAR-100") == ["apple", "aquarium fish"]
    with pytest.raises(labels.LabelSetError):
        labels.downloadable_label_set("MNIST")

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
    pq = [c for c in shipped_codecs(backbone.name) if c["family"] == "pqvae" and c["spec"].endswith("d8k16")]
    cos = []
    for c in sorted(pq, key=lambda c: c["bits"]):
        codec = load_codec(c["path"])
        cos.append(torch.nn.functional.cosine_similarity(codec.reconstruct(f), f).mean().item())
    assert len(cos) >= 3 and cos[-1] > cos[0]


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


def gr_error():
    import gradio as gr

    return gr.Error


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


def test_app_transmits_an_example_end_to_end():
    import importlib.util

    spec = importlib.util.spec_from_file_location("app", ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    demo = app.Demo("semcomp-tiny-clip")
    assert "pqvae" in demo.families() and len(demo.budgets("pqvae")) >= 3
    stats, orig, dec, scf, fig, cap_o, cap_d, seg_o, seg_d, note, px_jpeg, px_learned, px_note = demo.run(
        Image.open(EXAMPLES[0]), "pqvae", 130, "auto", "Tiny-ImageNet-200", "", "the fish")
    # a ~40-byte .scf buys no JPEG at all: the app says so and shows the smallest JPEG there is
    assert "no JPEG fits" in px_note and px_jpeg is not None
    assert ("learned pixel codec (`" in px_note) == (px_learned is not None)
    assert "cosine(original, decoded)" in stats and len(orig) == 5 and len(dec) == 5
    assert Path(scf).read_bytes()[:4] == b"SCF\x89"
    assert isinstance(cap_o, str) and cap_o and isinstance(cap_d, str) and cap_d
    assert seg_o.shape == seg_d.shape == (256, 256, 3) and "bits" in note
    # the receiver-only tab gets everything from the bitstream file alone
    info, labels, caption, img = demo.receive(scf, "Tiny-ImageNet-200", "", True, 0, 2, 3.0)
    assert "pqvae" in info and labels == dec and caption == cap_d and img.size == (256, 256)
    with pytest.raises(gr_error()):
        bad = Path(scf).with_name("bad.scf")
        bad.write_bytes(Path(scf).read_bytes()[:-3])
        demo.receive(str(bad), "Tiny-ImageNet-200", "", False, 0, 2, 3.0)
    stats, orig, dec, *_ = demo.run(Image.open(EXAMPLES[0]), "aesq", 600, "ans", "Custom", "fish, hat, car")
    assert set(orig) == {"fish", "hat", "car"}
    import gradio as gr

    with pytest.raises(gr.Error):
        demo.run(Image.open(EXAMPLES[0]), "pqvae", 128, "ans", "Custom", " , ")
    with pytest.raises(gr.Error):
        demo.run(None, "pqvae", 128, "ans", "Tiny-ImageNet-200", "")


def test_app_takes_awkward_images_and_commands(tmp_path):
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("app", ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    base = Image.open(EXAMPLES[0]).convert("RGB")
    gif = tmp_path / "a.gif"
    base.save(gif, save_all=True, append_images=[base.rotate(90)], duration=100)
    awkward = [base.convert("CMYK"), base.convert("RGBA"), base.convert("L"), base.convert("P"),
               Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257)), Image.open(gif),
               base.resize((3000, 2000)), np.random.default_rng(0).random((40, 50, 3))]
    for im in awkward:
        out = app.prepare_image(im)
        assert out.mode == "RGB" and max(out.size) <= app.MAX_SIDE
    with pytest.raises(ValueError):
        app.prepare_image(None)
    with pytest.raises(ValueError):
        app.prepare_image(np.zeros((0,)))
    demo = app.Demo("semcomp-tiny-clip")
    seg_o, seg_d, note = demo.run(base.convert("CMYK"), "fsq", 64, "auto", "Tiny-ImageNet-200", "", "x" * 10000)[7:10]
    assert seg_o is None and "characters" in note
    big = tmp_path / "big.scf"
    big.write_bytes(b"SCF\x89" + bytes(2 << 20))
    with pytest.raises(gr_error(), match="1 MB"):
        demo.receive(str(big), "Tiny-ImageNet-200", "", False, 0, 2, 3.0)
    junk = tmp_path / "junk.scf"
    junk.write_bytes(b"hello")
    with pytest.raises(gr_error(), match="not a valid semcomp bitstream"):
        demo.receive(str(junk), "Tiny-ImageNet-200", "", False, 0, 2, 3.0)


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

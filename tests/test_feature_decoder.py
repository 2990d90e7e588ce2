"""The one-pass generator (semcomp.heads.feature_decoder) and its trainer, built tiny."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from semcomp.heads.feature_decoder import FeatureDecoderConfig, FeatureDecoderGenerator
from semcomp.heads.generate import GeneratorError
from semcomp.training.feature_decoder import PerceptualDistance, anneal_factor, train_feature_decoder

TINY = FeatureDecoderConfig(embed_dim=12, image_size=32, channels=(16, 8), base_channels=16, groups=4, out_upsample=2,
                            backbone="semcomp-lite-clip")


def tiny_perceptual() -> PerceptualDistance:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
    return PerceptualDistance(net, taps=(1, 3), size=16)


def tiny_data(n: int = 8):
    g = torch.Generator().manual_seed(0)
    colours = torch.randint(0, 256, (n, 1, 1, 3), generator=g, dtype=torch.uint8)
    images = colours.expand(n, 32, 32, 3).contiguous()  # flat colours: learnable in a few steps
    embeds = torch.nn.functional.normalize(torch.randn(n, 12, generator=g), dim=-1)
    return images, embeds


def test_training_lowers_the_loss_and_resumes_exactly(tmp_path):
    images, embeds = tiny_data()
    kw = dict(perceptual=tiny_perceptual(), batch_size=8, lr=3e-3, warmup=1, log_every=10, cond_noise=0.02)
    model, hist = train_feature_decoder(images, embeds, TINY, steps=60, **kw)
    first, last = hist["losses"][0], hist["losses"][-1]
    assert last["l1"] < 0.6 * first["l1"]
    assert hist["steps"] == 60 and hist["images_seen"] == 480
    # a run stopped at step 30 and resumed from its checkpoint ends where the uninterrupted one did
    ck = tmp_path / "ck.pt"
    train_feature_decoder(images, embeds, TINY, steps=30, ckpt_path=ck, ckpt_every=10, **kw)
    resumed, hist2 = train_feature_decoder(images, embeds, TINY, steps=60, ckpt_path=ck, ckpt_every=10, **kw)
    assert hist2["steps"] == 60
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_jitter_and_anneal_resume_exactly(tmp_path):
    images, embeds = tiny_data()
    kw = dict(perceptual=tiny_perceptual(), batch_size=8, lr=3e-3, warmup=1, log_every=10, anneal=(10, 20), jitter=3)
    model, _ = train_feature_decoder(images, embeds, TINY, steps=40, **kw)
    ck = tmp_path / "ck.pt"
    train_feature_decoder(images, embeds, TINY, steps=20, ckpt_path=ck, ckpt_every=10, **kw)
    resumed, _ = train_feature_decoder(images, embeds, TINY, steps=40, ckpt_path=ck, ckpt_every=10, **kw)
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_anneal_and_shift_are_what_they_say():
    assert anneal_factor(5, None, 0.02) == 1.0
    assert anneal_factor(10, (10, 20), 0.02) == 1.0
    assert anneal_factor(20, (10, 20), 0.02) == pytest.approx(0.51)
    assert anneal_factor(30, (10, 20), 0.02) == anneal_factor(99, (10, 20), 0.02) == pytest.approx(0.02)
    per = tiny_perceptual()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    # cropping the padded image back at (pad, pad) is no shift at all; another offset sees other pixels
    torch.testing.assert_close(per(x, y, (4, 4, 4)), per(x, y))
    assert not torch.allclose(per(x, y, (4, 0, 7)), per(x, y))
    assert float(per(x, x, (4, 1, 6))) == 0.0


def test_generate_is_one_deterministic_pass_and_checks_its_input():
    torch.manual_seed(0)
    gen = FeatureDecoderGenerator.from_config(TINY)
    e = torch.randn(3, 12)
    calls = []
    a = gen.generate(e, steps=20, guidance=3.0, seed=1, callback=lambda i, n: calls.append((i, n)))
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, gen.generate(e, seed=7))  # seed and steps change nothing: one pass
    assert calls == [(1, 1)]
    assert not np.array_equal(a[0], a[1])  # the embedding does
    with pytest.raises(GeneratorError, match="12-d"):
        gen.generate(torch.randn(1, 9))
    with pytest.raises(GeneratorError, match="NaN"):
        gen.generate(torch.full((1, 12), float("nan")))
    with pytest.raises(GeneratorError, match="semcomp-lite-clip"):
        gen.generate(e, backbone="semcomp-tiny-clip")


def test_saved_decoder_loads_through_the_receiver_and_refuses_bad_files(tmp_path):
    from semcomp.receiver import _load_head_folder

    torch.manual_seed(0)
    gen = FeatureDecoderGenerator.from_config(TINY)
    folder = gen.save_pretrained(tmp_path / "dec", {"kind": "generate"})
    loaded = _load_head_folder("generate", folder)
    assert isinstance(loaded, FeatureDecoderGenerator)
    e = torch.randn(2, 12)
    assert np.abs(loaded.generate(e).astype(int) - gen.generate(e).astype(int)).max() <= 2  # fp16 on disk
    # a config whose sizes do not add up
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "image_size": 48}))
    with pytest.raises(GeneratorError, match="image_size"):
        FeatureDecoderGenerator.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(cfg))
    # altered weights: the card's sha256 no longer matches
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(GeneratorError):
        FeatureDecoderGenerator.from_pretrained(folder)


def test_shipped_decoder_draws_what_each_feature_says():
    """The shipped semcomp-lite-decoder is the lite backbone's generator, and what it draws from a bundled example's
    feature carries that example's meaning in the backbone's own space (which never took part in its training)."""
    from pathlib import Path

    from PIL import Image

    from semcomp.backbone import features_from_uint8, load_backbone
    from semcomp.receiver import load_head

    examples = sorted((Path(__file__).resolve().parent.parent / "assets" / "examples").glob("*.jpg"))
    bb = load_backbone("semcomp-lite-clip")
    gen = load_head("generate", bb.name)
    assert isinstance(gen, FeatureDecoderGenerator)
    x = bb.encode_images([Image.open(p).convert("RGB") for p in examples])
    imgs = gen.generate(x, backbone=bb.name)
    z = torch.nn.functional.normalize(features_from_uint8(bb, imgs), dim=-1)
    assert imgs.shape == (len(examples), 64, 64, 3)
    sim = z @ x.T  # (generated, source)
    # a decoder that ignored its input would match 1 in 8 by chance; the shipped one matches 4 of the 8 (the two
    # Tiny-ImageNet images and two of the six Kodak photos) and its images sit nearer their own feature on average
    assert int((sim.argmax(1) == torch.arange(len(examples))).sum()) >= 3
    assert sim.diag().mean() > sim.mean() + 0.1

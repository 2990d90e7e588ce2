"""semcomp fit (issue 22): images -> features -> codec -> evaluation -> a folder the app and receiver find;
resumable; too few images refused before work; backbone and preprocessing stored and checked; DDP on 2 gloo ranks.
A weightless stand-in backbone (a fixed projection of 8 px images) keeps every test in seconds."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semcomp.codecs import CodecError, load_codec
from semcomp.datasets import ImageSource, image_folder
from semcomp.training.fit import NotEnoughImages, check_enough_images, fit, images_needed, progressive_spec

torch.set_num_threads(1)
SPECS = ["prq-s4o2k4", "fsq-c8l4"]


class FakeBackbone:
    """A 'CLIP' without weights: a fixed random projection of 8x8 pixels; texts hash to vectors."""

    logit_scale = 100.0

    def __init__(self, name="fake-clip", size=8, dim=16):
        import torchvision.transforms as T

        self.name, self.dim = name, dim
        self.preprocess = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                                     T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
        self.W = torch.randn(3 * 8 * 8, dim, generator=torch.Generator().manual_seed(0))

    @property
    def preprocessing(self):
        from semcomp.backbone import preprocessing_of

        return preprocessing_of(self.preprocess)

    def encode_images(self, images, batch_size=256):
        x = torch.stack([self.preprocess(im) for im in images])
        x = F.interpolate(x, size=8).flatten(1)
        return F.normalize(x @ self.W, dim=-1)

    def encode_text(self, texts):
        return F.normalize(torch.stack([torch.randn(self.dim, generator=torch.Generator().manual_seed(sum(map(ord, t))))
                                        for t in texts]), dim=-1)


def image_dir(root: Path, n: int = 330, classes=("red", "green", "blue")) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        c = i % len(classes)
        d = root / classes[c]
        d.mkdir(parents=True, exist_ok=True)
        a = (rng.random((10, 12, 3)) * 120).astype(np.uint8)
        a[..., c] += 120
        Image.fromarray(a).save(d / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return image_dir(tmp_path_factory.mktemp("imgs"))


def _fit(images, tmp_path, **kw):
    args = dict(specs=SPECS, out_dir=tmp_path / "codecs", work_dir=tmp_path / "work", epochs=2, batch_size=32,
                chunk_size=64, extract_batch=32, progress=False)
    return fit(FakeBackbone(), image_folder(images), **{**args, **kw})


def test_fit_writes_codecs_the_app_and_receiver_find(images, tmp_path, monkeypatch):
    from semcomp import receiver, zoo

    out = _fit(images, tmp_path)
    assert sorted(p.name for p in out) == sorted(SPECS)
    card = json.loads((tmp_path / "codecs/fake-clip/prq-s4o2k4/card.json").read_text())
    assert card["backbone"] == "fake-clip" and card["preprocessing"]["image_size"] == 8 and card["dim"] == 16
    # the shipped prq recipe unless told otherwise: beam-5 residual-quantiser init, the first codebook kept
    assert card["frozen_stages"] == 1 and "faiss.ResidualQuantizer (beam 5" in card["init"]
    ev = card["fit_eval"]
    assert ev["items"] == 33 and ev["classes"] == 3 and [r["bits"] for r in ev["budgets"]] == card["budgets"]
    cos = [r["mean_cosine"] for r in ev["budgets"]]
    assert cos == sorted(cos) and all(r["top1"] is not None for r in ev["budgets"])  # more bits: cosine not lower
    readme = (out[0] / "README.md").read_text()
    assert "library_name: semcomp" in readme and "fake-clip" in readme and "How to load" in readme
    cfg = json.loads((out[0] / "config.json").read_text())
    assert cfg["preprocessing"] == FakeBackbone().preprocessing
    # found by backbone through the user codec root, and by the receiver from a stream's header
    monkeypatch.setenv("SEMCOMP_CODECS", str(tmp_path / "codecs"))
    assert {c["spec"] for c in zoo.shipped_codecs("fake-clip")} == set(SPECS)
    codec = load_codec(tmp_path / "codecs/fake-clip/fsq-c8l4")
    receiver._codec.cache_clear()
    try:
        got, feats = receiver.receive(codec.compress(torch.randn(2, 16)))
        assert got.spec == "fsq-c8l4" and feats.shape == (2, 16)
    finally:
        receiver._codec.cache_clear()


def test_load_checks_backbone_name_dimension_and_preprocessing(images, tmp_path):
    (path,) = _fit(images, tmp_path, specs=["prq-s4o2k4"])
    assert load_codec(path, backbone="fake-clip").backbone == "fake-clip"
    assert load_codec(path, backbone=FakeBackbone()).preprocessing["resize"] == "shortest"
    with pytest.raises(CodecError, match="made for backbone 'fake-clip', not 'ViT-L-14-336/openai'"):
        load_codec(path, backbone="ViT-L-14-336/openai")
    with pytest.raises(CodecError, match="16-d features; backbone 'fake-clip' gives 32-d"):
        load_codec(path, backbone=FakeBackbone(dim=32))
    with pytest.raises(CodecError, match="other image preprocessing.*image_size: codec 8, backbone 12"):
        load_codec(path, backbone=FakeBackbone(size=12))
    # an old folder without the field loads, and is checked on name and dimension only
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("preprocessing")
    (path / "config.json").write_text(json.dumps(cfg))
    card = json.loads((path / "card.json").read_text())
    card.pop("config_sha256")
    (path / "card.json").write_text(json.dumps(card))
    assert load_codec(path, backbone=FakeBackbone(size=12)).preprocessing == {}
    cfg["preprocessing"] = {"image_size": 8, "colour": "rgb"}
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CodecError, match="unknown preprocessing keys"):
        load_codec(path)


def test_too_few_images_are_refused_before_any_work_naming_the_counts(images, tmp_path):
    assert progressive_spec() == "prq-s128o32k256"
    assert progressive_spec([16, 64], codebook_size=16) == "prq-s16o16k16"
    with pytest.raises(CodecError, match="not multiples of 4 bits"):
        progressive_spec([6], codebook_size=16)
    need, spec = images_needed(["prq-s128o32k256"])
    assert (need, spec) == (12326, "prq-s128o32k256")  # 39 x 256 training points / (0.9 x 0.9)
    with pytest.raises(NotEnoughImages, match=r"1000 images are too few to fit prq-s128o32k256: .*39 x 256 = 9984 .*"
                                              r"12326 images .*given 1000.*--codebook-size 16"):
        check_enough_images(1000, ["prq-s128o32k256"])
    calls = []

    class Never(FakeBackbone):
        def encode_images(self, *a, **k):
            calls.append(1)
            raise AssertionError("extraction ran")

    with pytest.raises(NotEnoughImages, match="330 images are too few"):
        fit(Never(), image_folder(images), out_dir=tmp_path / "c", work_dir=tmp_path / "w", progress=False)
    assert not calls


def test_a_killed_fit_resumes_without_redoing_finished_work(images, tmp_path, monkeypatch):
    good = image_folder(images)
    decoded = []

    def samples(crash_at=None):
        for i, load, lab in good.samples():
            if i == crash_at:
                raise KeyboardInterrupt  # killed during extraction
            yield i, (lambda load=load, i=i: decoded.append(i) or load()), lab

    src = lambda crash_at=None: ImageSource(good.name, good.split, good.class_names, lambda: samples(crash_at),
                                             good.description, good.count)
    with pytest.raises(KeyboardInterrupt):
        fit(FakeBackbone(), src(200), specs=SPECS, out_dir=tmp_path / "codecs", work_dir=tmp_path / "work", epochs=2,
            batch_size=32, chunk_size=64, extract_batch=32, progress=False)
    decoded.clear()
    out = fit(FakeBackbone(), src(), specs=SPECS, out_dir=tmp_path / "codecs", work_dir=tmp_path / "work", epochs=2,
              batch_size=32, chunk_size=64, extract_batch=32, progress=False)
    assert min(decoded) == 192  # the three finished chunks of 64 were not decoded again
    # a second run trains nothing: the folders are there for these features and settings
    import semcomp.training.fit as fit_mod

    monkeypatch.setattr(fit_mod, "train_codec", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained again")))
    assert _fit(images, tmp_path) == out
    with pytest.raises(CodecError, match="other images or settings; pass --force"):
        _fit(images, tmp_path, epochs=3)


def test_cli_refuses_too_few_images_before_loading_the_backbone(tmp_path, caplog):
    from semcomp.cli import main

    d = image_dir(tmp_path / "few", 40)
    rc = main(["fit", "--backbone", "no-such-backbone/anywhere", "--images", str(d), "--no-progress"])
    assert rc == 2
    assert "40 images are too few to fit prq-s128o32k256" in caplog.text and "12326 images" in caplog.text


def test_app_shows_the_fit_command_for_a_backbone_without_codecs(tmp_path, monkeypatch):
    from semcomp.demo import DemoError, check_backbone, codec_command

    monkeypatch.setenv("SEMCOMP_CODECS", str(tmp_path))
    assert codec_command("ViT-L-14-336/openai") == "semcomp fit --backbone ViT-L-14-336/openai --dataset cifar10"
    with pytest.raises(DemoError, match=r"make them with: semcomp fit --backbone ViT-L-14-336/openai --dataset cifar10"):
        check_backbone("ViT-L-14-336/openai")


# ----------------------------------------------------------------------------- torchrun / DDP: two gloo ranks
def _ddp_worker(rank, world, port, images, out, queue):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world)})
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        got = fit(FakeBackbone(), image_folder(images), specs=SPECS, out_dir=out / "codecs", work_dir=out / "work",
                  epochs=2, batch_size=32, chunk_size=64, extract_batch=32, progress=False)
        queue.put((rank, [str(p) for p in got]))
    finally:
        dist.destroy_process_group()


def test_fit_on_two_gloo_ranks_matches_one_process(images, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(2, port, images, tmp_path / "two", q), nprocs=2, join=True, start_method="spawn")
    res = dict(q.get() for _ in range(2))
    assert res[1] == [] and sorted(Path(p).name for p in res[0]) == sorted(SPECS)
    one = _fit(images, tmp_path / "one")
    for spec in SPECS:
        a, b = (load_codec(tmp_path / w / "codecs/fake-clip" / spec) for w in ("one", "two"))
        card = json.loads((tmp_path / "two/codecs/fake-clip" / spec / "card.json").read_text())
        assert card["processes"] == 2 and card["data"]["images"] == 330
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            if va.is_floating_point():  # DDP's averaged half-batch gradients = the whole batch's (fp16 storage)
                assert torch.allclose(va, vb, atol=2e-3), (spec, k, (va - vb).abs().max())
    assert len(one) == 2

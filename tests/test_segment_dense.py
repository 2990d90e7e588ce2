"""Dense text-pixel segmentation (CAM over the tower's map), tiny random models; the pasted-pair set."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semcomp.backbone import Backbone
from semcomp.data import DataError, pasted_pairs
from semcomp.heads.segment import SegmentError, TextSegmenter, tower_size
from semcomp.lite_clip import LiteClip, LiteClipConfig


@pytest.fixture(scope="module")
def tiny_lite():
    torch.manual_seed(0)
    model = LiteClip(LiteClipConfig(image_size=64), pretrained_tower=False, load_text_encoder=False)
    return Backbone("t", model, model.preprocess(), None, 384)


def test_tower_size_keeps_aspect_and_is_bounded():
    assert tower_size(64, 64, 320) == (320, 320)
    assert tower_size(64, 128, 320) == (320, 640)
    assert tower_size(2, 3000, 320) == (320, 1280)  # aspect capped at 4
    h, w = tower_size(500, 333, 224)
    assert h % 32 == 0 and w % 32 == 0 and w == 224


def test_dense_map_shape_and_pointing_inside_the_image(tiny_lite):
    seg = TextSegmenter(tiny_lite, proposals="boxes", dense_size=64)
    assert seg.method == "dense"
    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    d = seg.dense_map(img)
    assert d.shape == (384, 2, 3)  # 64x96 input (aspect kept), stride 32
    t = torch.randn(384)
    r = seg.segment(img, t)
    x, y = r.peak
    assert 0 <= x < 64 and 0 <= y < 48
    assert r.score_map.shape == (48, 64) and r.best_mask.shape == (48, 64) and r.best_mask.dtype == bool
    assert r.best_mask[y, x]  # the peak's region holds the peak
    assert len(r.masks) == len(r.scores) == len(r.boxes) == 3
    big = np.asarray(np.kron(img, np.ones((5, 5, 1), np.uint8)))  # 240x320: proposals at work size, answer at input size
    rb = seg.segment(big, t)
    assert rb.best_mask.shape == (240, 320) and 0 <= rb.peak[0] < 320 and 0 <= rb.peak[1] < 240
    for kw in ({"mask": "proposal"}, {"background": True}, {"smooth": 0.0}):
        if "background" in kw:
            seg2 = TextSegmenter(tiny_lite, proposals="boxes", dense_size=64, **kw)
            seg2._background = F.normalize(torch.randn(384), dim=0)  # no text tower in the tiny model
        else:
            seg2 = TextSegmenter(tiny_lite, proposals="boxes", dense_size=64, **kw)
        assert seg2.segment(img, t).best_mask.shape == (48, 64)
    with pytest.raises(SegmentError, match="dims"):
        seg.segment(img, torch.ones(5))
    with pytest.raises(SegmentError, match="empty"):
        seg.rank_prepared(seg.prepare(img), torch.zeros(384))


class _ColourDense:
    """A 'tower' whose projected map is each 8x8 cell's mean colour (minus grey): 'red' lights up red cells."""

    def normalize_uint8_batch(self, x, size):
        return x.permute(0, 3, 1, 2).float()

    def dense_features(self, x, normalize=True):
        z = F.avg_pool2d(x, 8) - 110.0
        return F.normalize(z, dim=1) if normalize else z


class _DenseColourBackbone:
    dim = 3
    name = "colour-dense"
    model = _ColourDense()


def test_dense_path_points_at_the_named_region_off_centre():
    img = np.full((64, 128, 3), 100, np.uint8)
    img[8:40, 80:112] = (250, 20, 20)  # red square in the right half
    seg = TextSegmenter(_DenseColourBackbone(), proposals="boxes", dense_size=64)
    seg.dense_map = lambda image: _ColourDense().dense_features(torch.from_numpy(image)[None].permute(0, 3, 1, 2).float(), False)[0]
    r = seg.segment(img, torch.tensor([1.0, -0.6, -0.6]))
    x, y = r.peak
    assert 80 <= x < 112 and 8 <= y < 40
    x0, y0, x1, y1 = r.boxes[0]
    assert x0 >= 72 and x1 <= 119 and y0 <= 12 and y1 >= 32


def test_falls_back_to_proposals_without_dense_features():
    from test_heads import ColourBackbone

    seg = TextSegmenter(ColourBackbone(), "boxes")
    assert seg.method == "proposals" and not seg.dense
    img = np.full((64, 64, 3), 100, np.uint8)
    img[36:60, 8:30] = (250, 20, 20)
    r = seg.segment(img, torch.tensor([1.0, -0.6, -0.6]))
    assert 8 <= r.peak[0] < 30 and 36 <= r.peak[1] < 60
    prep = seg.prepare(img)
    assert prep.dense is None and seg.rank_prepared(prep, torch.tensor([1.0, -0.6, -0.6])).peak == r.peak
    with pytest.raises(SegmentError, match="dense_features"):
        TextSegmenter(ColourBackbone(), method="dense")
    with pytest.raises(SegmentError, match="choose one of"):
        TextSegmenter(ColourBackbone(), method="sam")


def test_pasted_pairs_are_deterministic_and_off_centre():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    boxes = [(1, 2, 9, 12)] * 12
    a = pasted_pairs(images, labels, boxes, 20, seed=3)
    b = pasted_pairs(images, labels, boxes, 20, seed=3)
    assert [(p.left, p.right, p.target) for p in a] == [(p.left, p.right, p.target) for p in b]
    assert all(np.array_equal(p.image, q.image) for p, q in zip(a, b))
    assert [(p.left, p.right) for p in pasted_pairs(images, labels, boxes, 20, seed=4)] != [(p.left, p.right) for p in a]
    for p in a:
        assert p.image.shape == (16, 32, 3) and labels[p.left] != labels[p.right]
        assert p.label == labels[(p.left, p.right)[p.target]]
        assert p.box == ((1, 2, 9, 12) if p.target == 0 else (17, 2, 25, 12))
        assert np.array_equal(p.image[:, :16], images[p.left]) and np.array_equal(p.image[:, 16:], images[p.right])
    assert {p.target for p in a} == {0, 1}
    with pytest.raises(DataError, match="two classes"):
        pasted_pairs(images, np.zeros(12, int), boxes, 2)

"""The open_clip path with a tiny randomly initialised model (no download, no ../shared)."""
import json

import pytest
import torch
from PIL import Image

from semcomp.backbone import BackboneError, available_backbones, load_backbone, load_open_clip


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    import open_clip

    d = tmp_path_factory.mktemp("cfg")
    cfg = {"embed_dim": 32,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (d / "semcomp-test-tiny.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d)
    return "semcomp-test-tiny"


def test_tiny_open_clip_encodes_images_and_text(tiny_open_clip):
    bb = load_open_clip(tiny_open_clip)
    img = Image.new("RGB", (50, 40), (200, 30, 30))
    f = bb.encode_images([img, img])
    t = bb.encode_text(["a photo of a cat.", "a photo of a dog."])
    assert f.shape == (2, 32) and t.shape == (2, 32) and bb.dim == 32
    assert torch.allclose(f.norm(dim=-1), torch.ones(2), atol=1e-4)


def test_unknown_backbones_and_missing_checkpoints_are_refused():
    with pytest.raises(BackboneError, match="unknown open_clip model"):
        load_backbone("NoSuchModel-1/openai")
    with pytest.raises(BackboneError, match="checkpoint not found"):
        load_open_clip("ViT-B-32:/nonexistent/weights.safetensors")


def test_menu_marks_real_models_as_downloads():
    menu = available_backbones()
    assert menu["semcomp-tiny-clip"] == "embedded, offline"
    assert menu["ViT-B-32/openai"] == "needs download"

"""Receiver heads built tiny: generator (diffusion), captioner (ClipCap) and the text-targeted segmenter."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from semcomp.heads.caption import CaptionConfig, CaptionError, Captioner, ClipCapModel
from semcomp.heads.generate import (GeneratorConfig, GeneratorError, ImageGenerator, diffusion_loss, images_to_model,
                                    make_scheduler)
from semcomp.heads.segment import SegmentError, TextSegmenter, overlay
from semcomp.training.caption import class_sentence, clean_caption, mentions_class, pad_batch, token_f1, train_captioner
from semcomp.training.generator import train_generator

TINY_GEN = GeneratorConfig(embed_dim=8, image_size=16, block_out_channels=(32, 64), attention_levels=(False, True),
                           attention_head_dim=8)


# ---------------------------------------------------------------- generator


def test_generator_training_lowers_the_loss():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (8, 16, 16, 3), generator=g, dtype=torch.uint8)
    imgs[:4] = 255  # two easy modes: white and black images with two embeddings
    imgs[4:] = 0
    emb = F.normalize(torch.cat([torch.ones(4, 8), -torch.ones(4, 8)]), dim=-1)
    model, hist = train_generator(imgs, emb, TINY_GEN, steps=40, batch_size=8, lr=2e-3, warmup=1, log_every=10, cond_noise=0)
    losses = [l for _, l in hist["losses"]]
    assert losses[-1] < losses[0]


def test_generator_is_deterministic_and_checks_its_input(tmp_path):
    torch.manual_seed(0)
    gen = ImageGenerator.from_config(TINY_GEN)
    e = torch.randn(2, 8)
    a = gen.generate(e, steps=2, guidance=2.0, seed=3)
    b = gen.generate(e, steps=2, guidance=2.0, seed=3)
    assert a.shape == (2, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, gen.generate(e, steps=2, guidance=2.0, seed=4))
    with pytest.raises(GeneratorError, match="8-d"):
        gen.generate(torch.randn(1, 9), steps=1)
    with pytest.raises(GeneratorError, match="trained on"):
        gen.generate(e, steps=1, backbone="ViT-L-14/openai")
    gen.save_pretrained(tmp_path / "g", {"note": "test"})
    again = ImageGenerator.from_pretrained(tmp_path / "g")
    assert again.generate(e, steps=2, seed=3).shape == (2, 16, 16, 3)
    w = tmp_path / "g" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    with pytest.raises(GeneratorError, match="sha256"):
        ImageGenerator.from_pretrained(tmp_path / "g")


def test_diffusion_loss_uses_the_condition():
    import dataclasses

    cfg = dataclasses.replace(TINY_GEN, cond_drop=0.0)
    torch.manual_seed(0)
    gen = ImageGenerator.from_config(cfg)
    x = images_to_model(torch.zeros(2, 16, 16, 3, dtype=torch.uint8))
    assert x.min() == -1
    sched = make_scheduler(cfg, "ddpm")
    loss = lambda e: diffusion_loss(gen.model, sched, x, e, generator=torch.Generator().manual_seed(0))  # noqa: E731
    e = torch.randn(2, 8)
    assert torch.isfinite(loss(e))
    assert loss(e) == loss(e)  # same noise, same timesteps: only the embedding may change the loss
    assert loss(e) != loss(-e)


# ---------------------------------------------------------------- captioner


class ToyTokenizer:
    """Word-level stand-in for GPT2TokenizerFast (tests need no tokenizer files)."""

    def __init__(self, words):
        self.words = list(words)

    def __call__(self, text):
        return {"input_ids": [self.words.index(w) for w in text.split()]}

    def decode(self, ids):
        return " ".join(self.words[i] for i in ids)


def tiny_captioner(vocab=("a", "red", "cat", "blue", "dog", ".", "<eos>")):
    cfg = CaptionConfig(embed_dim=8, prefix_length=2, n_embd=32, n_layer=1, n_head=2, n_positions=32,
                        vocab_size=len(vocab), eos_id=len(vocab) - 1, mapping_hidden=32)
    torch.manual_seed(0)
    return Captioner(ClipCapModel(cfg), ToyTokenizer(vocab))


def test_captioner_learns_two_captions_and_decodes_greedy_and_beam():
    cap = tiny_captioner()
    e = F.normalize(torch.cat([torch.ones(1, 8), -torch.ones(1, 8)]), dim=-1)
    texts = ["a red cat .", "a blue dog ."]
    toks = [cap.encode_text(t) for t in texts]
    hist = train_captioner(cap.model, e.repeat(16, 1), toks * 16, epochs=40, batch_size=8, lr=3e-3, warmup=5, log_every=20)
    assert hist["losses"][-1][1] < hist["losses"][0][1]
    assert cap.caption(e) == texts
    assert cap.caption(e, beam=3) == texts
    with pytest.raises(CaptionError, match="8-d"):
        cap.caption(torch.randn(1, 5))


def test_caption_text_tools():
    c = {"names": ["goldfish", "Carassius auratus"], "name": "goldfish"}
    assert clean_caption("A dog runs  through grass .") == "a dog runs through grass."
    assert mentions_class("a photo of a goldfish.", c) and not mentions_class("a gold fish.", c)
    import random

    s = class_sentence(c, random.Random(0))
    assert "goldfish" in s and "carassius" not in s
    assert token_f1("a red cat", "a red cat") == 1.0 and token_f1("a red cat", "blue dog") == 0.0
    tok, mask = pad_batch([[1, 2], [3]], 9)
    assert tok.tolist() == [[1, 2], [3, 9]] and mask.tolist() == [[1, 1], [1, 0]]


# ---------------------------------------------------------------- segmentation


class ColourBackbone:
    """Stand-in CLIP: a crop's feature is its mean colour (so 'red' points at red pixels)."""

    dim = 3
    name = "colour"

    def encode_images(self, images):
        z = torch.tensor(np.stack([np.asarray(im, dtype=np.float32).reshape(-1, 3).mean(0) for im in images]))
        return F.normalize(z - 110.0, dim=-1)


def test_segmenter_points_at_the_region_the_command_names():
    img = np.full((64, 64, 3), 100, np.uint8)
    img[36:60, 8:30] = (250, 20, 20)  # a red square, lower left
    seg = TextSegmenter(ColourBackbone())
    red = torch.tensor([1.0, -0.6, -0.6])
    r = seg.segment(img, red)
    x, y = r.peak
    assert 8 <= x < 30 and 36 <= y < 60
    x0, y0, x1, y1 = r.boxes[0]
    assert x0 >= 4 and y0 >= 30 and x1 <= 34 and y1 <= 63
    assert r.scores[0] >= r.scores[-1]
    assert overlay(img, r).shape == img.shape
    big = np.asarray(Image.fromarray(img).resize((256, 256)))  # proposals at work_size, masks back at 256
    assert seg.segment(big, red).best_mask.shape == (256, 256)
    with pytest.raises(SegmentError, match="dims"):
        seg.segment(img, torch.ones(5))
    with pytest.raises(SegmentError, match="empty"):
        seg.segment(img, torch.zeros(3))
    with pytest.raises(SegmentError, match="RGB"):
        seg.segment(np.zeros((4, 4), np.uint8), red)


def test_convert_clipcap_checkpoint_format(tmp_path):
    """A tiny checkpoint in the public ClipCap layout converts, loads and captions; pickled objects are refused."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from semcomp.heads.caption import convert_clipcap

    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=32, n_embd=16, n_layer=2, n_head=2))
    sd = {f"gpt.{k}": v for k, v in gpt.state_dict().items()}
    sd.update({"clip_project.model.0.weight": torch.randn(40, 8), "clip_project.model.0.bias": torch.zeros(40),
               "clip_project.model.2.weight": torch.randn(16 * 3, 40), "clip_project.model.2.bias": torch.zeros(48)})
    ck = tmp_path / "coco_prefix-009.pt"
    torch.save(sd, ck)
    tok = Path(__file__).resolve().parents[1] / "weights" / "heads" / "semcomp-tiny-clipcap" / "tokenizer"
    out = convert_clipcap(ck, tmp_path / "cc", tok, n_head=2, backbone="ViT-B-32/openai")
    cap = Captioner.from_pretrained(out)
    assert cap.cfg.prefix_length == 3 and cap.cfg.n_layer == 2 and cap.cfg.vocab_size == 50257
    assert torch.equal(cap.model.gpt.transformer.wte.weight, gpt.transformer.wte.weight.half().float())
    assert isinstance(cap.caption(torch.randn(1, 8), max_tokens=4)[0], str)
    evil = tmp_path / "evil.pt"
    torch.save({"x": ToyTokenizer(["a"])}, evil)  # an arbitrary object: weights_only refuses to unpickle it
    with pytest.raises(CaptionError):
        convert_clipcap(evil, tmp_path / "e", tok)


def test_sam_proposals_with_a_tiny_random_sam():
    """The SAM path (real users pass --sam-checkpoint): a tiny Sam built from segment_anything's modeling classes."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    d = 32
    sam = Sam(image_encoder=ImageEncoderViT(img_size=64, patch_size=16, embed_dim=d, depth=1, num_heads=2, out_chans=d,
                                            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True),
              prompt_encoder=PromptEncoder(embed_dim=d, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=4),
              mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=1, embedding_dim=d, mlp_dim=64, num_heads=2),
                                       transformer_dim=d, iou_head_depth=1, iou_head_hidden_dim=16),
              pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()
    img = np.full((64, 64, 3), 100, np.uint8)
    img[36:60, 8:30] = (250, 20, 20)
    kw = {"points_per_side": 4, "pred_iou_thresh": -10, "stability_score_thresh": -10, "box_nms_thresh": 1.0}
    boxes_only = TextSegmenter(ColourBackbone(), "boxes")
    with_sam = TextSegmenter(ColourBackbone(), "sam+boxes", sam_checkpoint=sam, sam_kwargs=kw)
    n_boxes = len(boxes_only.propose(img))
    props = with_sam.propose(img)
    assert len(props) > n_boxes and all(p.shape == (64, 64) and p.dtype == bool for p in props)
    r = with_sam.segment(img, torch.tensor([1.0, -0.6, -0.6]))
    assert r.best_mask.shape == (64, 64) and r.scores[0] >= r.scores[-1]
    with pytest.raises(SegmentError, match="checkpoint"):
        TextSegmenter(ColourBackbone(), "sam").propose(img)


def tiny_stable_unclip(tmp_path, e=32):
    """StableUnCLIPImg2ImgPipeline from tiny random parts (a character-level CLIP tokenizer written here)."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(vocab_file=str(tmp_path / "vocab.json"), merges_file=str(tmp_path / "merges.txt"), model_max_length=77)
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=e, projection_dim=e,
                                        intermediate_size=37, num_attention_heads=4, num_hidden_layers=1, vocab_size=len(vocab)))
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=e, projection_dim=e, num_hidden_layers=1, num_attention_heads=4,
                                                            image_size=32, intermediate_size=37, patch_size=8))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64), attention_head_dim=(2, 4),
                                class_embed_type="projection", projection_class_embeddings_input_dim=2 * e, cross_attention_dim=e,
                                layers_per_block=1, upcast_attention=True, use_linear_projection=True)
    return StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32), image_encoder=vision,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=e), image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tok, text_encoder=text, unet=unet, vae=AutoencoderKL(block_out_channels=(32,), latent_channels=4),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
                                set_alpha_to_one=False, steps_offset=1))


def test_stable_unclip_path_takes_the_decoded_embedding(tmp_path):
    from semcomp.heads.generate import StableUnCLIPGenerator

    gen = StableUnCLIPGenerator(tiny_stable_unclip(tmp_path), embed_dim=32)
    e = torch.randn(1, 32)
    seen = []
    a = gen.generate(e, steps=2, guidance=3.0, seed=0, height=16, width=16, callback=lambda i, n: seen.append(i))
    b = gen.generate(e, steps=2, guidance=3.0, seed=0, height=16, width=16)
    assert a[0].size == (16, 16) and seen == [1, 2]
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))  # deterministic under a seed
    c = gen.generate(-e, steps=2, guidance=3.0, seed=0, height=16, width=16)
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))  # the embedding reaches the image
    with pytest.raises(GeneratorError, match="32-d"):
        gen.generate(torch.randn(1, 31), steps=1)


def test_train_caption_on_a_users_csv_and_coco_pairs(tmp_path):
    """The user's own captioned images (CSV and COCO layouts), trained through a shipped codec, lowers the loss."""
    import json

    import numpy as np
    from PIL import Image

    from semcomp.data import DataError
    from semcomp.training.caption_pairs import caption_pairs, train_pairs_captioner

    rng = np.random.default_rng(0)
    rows, coco = ["image,caption"], {"images": [], "annotations": []}
    for i in range(12):
        colour = (255, 40, 40) if i % 2 else (40, 40, 255)
        img = np.clip(np.array(colour)[None, None] + rng.normal(0, 10, (48, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        cap = "a red square." if i % 2 else "a blue square."
        rows.append(f"{i}.png,{cap}")
        coco["images"].append({"id": i, "file_name": f"{i}.png"})
        coco["annotations"].append({"image_id": i, "caption": cap})
    (tmp_path / "caps.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "caps.json").write_text(json.dumps(coco))
    pairs = caption_pairs(tmp_path / "caps.csv")
    assert pairs == caption_pairs(tmp_path / "caps.json", tmp_path)
    with pytest.raises(DataError, match="--images"):
        caption_pairs(tmp_path / "caps.json")
    (tmp_path / "bad.csv").write_text("file,text\n")
    with pytest.raises(DataError, match="'image' and 'caption'"):
        caption_pairs(tmp_path / "bad.csv")
    card = train_pairs_captioner(tmp_path / "cap", pairs, through_codec="pqvae-n32d8k16", epochs=60, batch_size=8, lr=2e-3,
                                 cfg_overrides={"n_embd": 32, "n_layer": 1, "n_head": 2, "prefix_length": 2, "mapping_hidden": 64},
                                 holdout=0.2)
    assert card["final_loss"] < 0.6 * card["first_loss"] and card["data"]["held_out_images"] == 2
    assert "token_f1_decoded_vs_float (pqvae-n32d8k16)" in card["eval"]
    from semcomp.heads.caption import Captioner

    assert Captioner.from_pretrained(tmp_path / "cap").cfg.embed_dim == 512


def test_karlo_gets_the_decoded_embedding_scaled(monkeypatch):
    """Karlo's pipeline is a download; a stand-in records what our wrapper hands it."""
    import torch

    from semcomp.heads.generate import GeneratorError, KarloGenerator

    seen = {}

    class Pipe:
        dtype = torch.float32

        def __call__(self, **kw):
            seen.update(kw)
            return type("Out", (), {"images": ["img"] * len(kw["image_embeddings"])})()

    gen = KarloGenerator(Pipe(), embed_dim=8, input_scale=3.0)
    e = torch.randn(2, 8)
    steps = []
    assert gen.generate(e, steps=5, seed=1, callback=lambda i, n: steps.append((i, n))) == ["img", "img"]
    assert torch.allclose(seen["image_embeddings"], 3.0 * torch.nn.functional.normalize(e, dim=-1))
    assert seen["decoder_num_inference_steps"] == 5 and steps == [(5, 5)]
    with pytest.raises(GeneratorError, match="768|8-d"):
        gen.generate(torch.randn(1, 4))


def test_sam_types_and_mobilesam_without_its_package():
    from semcomp.heads.segment import SegmentError, sam_mask_generator

    with pytest.raises(SegmentError, match="unknown SAM model type"):
        sam_mask_generator("x.pth", model_type="vit_x")
    try:
        import mobile_sam  # noqa: F401
    except ImportError:
        with pytest.raises(SegmentError, match="MobileSAM"):
            sam_mask_generator("x.pth", model_type="vit_t")

"""semcomp.demo without a web server: the app's logic, its bounds and its messages (the live server is in
test_app_server.py)."""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semcomp.demo import CLASSIFIER_CACHE, Demo, DemoError, TransmitResult, check_backbone
from semcomp.images import MAX_PIXELS, MAX_SIDE, ImageError, open_image, prepare_image
from semcomp.labels import MAX_LABELS, LabelSetError, parse_custom_labels

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "assets" / "examples" / "tin_val_2253_goldfish.jpg"


@pytest.fixture(scope="module")
def demo():  # every test that takes it is marked slow: loading the models takes ~10 s, each transmit ~1 s
    return Demo()


@pytest.fixture(scope="module")
def scf_blob(demo):
    return demo.transmit(str(EXAMPLE), "fsq", 64).blob


@pytest.mark.slow
def test_transmit_an_example_end_to_end(demo):
    assert "pqvae" in demo.families() and len(demo.budgets("pqvae")) >= 3
    r = demo.transmit(str(EXAMPLE), "pqvae", 128, "auto", "Tiny-ImageNet-200", "", "the fish")
    assert isinstance(r, TransmitResult) and r.fixed_bits == 128 and r.blob[:4] == b"SCF\x89"
    assert r.payload_bits <= 128 and len(r.labels_original) == 5 and len(r.labels_decoded) == 5
    assert r.caption_original and r.caption_decoded and 0 < r.cosine <= 1
    assert r.segment_original.shape == r.segment_decoded.shape == (256, 256, 3) and "bits" in r.segment_note
    # a ~40-byte .scf buys no JPEG at all: the demo says so and shows the smallest JPEG there is
    assert "no JPEG fits" in r.pixels_note and r.pixels_jpeg is not None
    assert ("learned pixel codec (`" in r.pixels_note) == (r.pixels_learned is not None)
    assert r.plot.ndim == 3 and r.elapsed_s > 0 and set(r.timings) >= {"captions", "segmentation"}
    assert r.coder in ("raw", "ans", "huffman") and ("not entropy-coded" in r.coder_text) == (r.coder == "raw")
    # a framed message costs at most the raw payload + 3 bytes, far below the self-describing .scf
    assert 3 < r.frame_bytes <= 128 // 8 + 3 < len(r.blob) and r.announce_bytes > 0
    # the receiver gets the same labels and caption from the bytes alone
    rx = demo.receive(r.blob, "Tiny-ImageNet-200", "", True, 0, 2, 3.0)
    assert rx.spec == r.spec and rx.labels == r.labels_decoded and rx.caption == r.caption_decoded
    assert rx.image.shape == (256, 256, 3) and rx.n_items == 1
    r2 = demo.transmit(Image.open(EXAMPLE), "aesq", 600, "ans", "Custom", "fish, hat, car, fish")
    # "ans" asked; a stream ANS would make longer than raw falls back to raw (never more than the fixed bits)
    assert set(r2.labels_original) == {"fish", "hat", "car"} and r2.coder in ("ans", "raw") and r2.payload_bits <= 600
    g = demo.generate(str(EXAMPLE), "fsq", 64, "auto", seed=1, steps=2, guidance=3.0)
    assert g.original.shape == g.decoded.shape == (256, 256, 3) and g.steps == 2 and g.elapsed_s > 0


@pytest.mark.slow
def test_one_progressive_model_serves_every_budget_by_cutting_its_stream(demo):
    assert demo.is_progressive("prq") and not demo.is_progressive("fsq")
    budgets = demo.budgets("prq")
    assert budgets[:3] == [8, 16, 24] and budgets[-1] == 1024 and len(budgets) == 128
    cosines = []
    photo = str(ROOT / "assets" / "examples" / "kodim05.jpg")  # not in any training set (the goldfish trained prq)
    for bits in (8, 64, 1024):
        r = demo.transmit(photo, "prq", bits, "auto", "Tiny-ImageNet-200", "", "")
        assert r.fixed_bits == r.payload_bits == bits and r.full_stream_bits == 1024
        assert len(r.blob) < r.full_stream_bytes or bits == 1024  # the same stream, cut shorter
        assert r.frame_bytes == 0  # framing carries whole codes only; the cut travels as .scf
        cosines.append(r.cosine)
    assert cosines[0] < cosines[1] < cosines[2]
    rx = demo.receive(r.blob, "Tiny-ImageNet-200", "", False, 0, 2, 3.0)  # the receiver decodes whatever prefix came
    assert rx.spec.startswith("prq") and rx.fixed_bits >= 8
    with pytest.raises(DemoError, match="multiples of 8 bits"):
        demo.transmit(str(EXAMPLE), "prq", 12, "auto", "Tiny-ImageNet-200", "", "")


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (dict(family="fsq", bits=100), "no 100-bit codec; its shipped budgets are"),
    (dict(family="nope"), "unknown codec family"),
    (dict(bits="abc"), "whole number"),
    (dict(bits=float("nan")), "whole number"),
    (dict(coder="zip"), "unknown entropy coder"),
    (dict(label_set="Klingon"), "unknown label set"),
    (dict(label_set="Custom", custom=" , ,"), "at least one"),
    (dict(label_set="Custom", custom=",".join(f"l{i}" for i in range(MAX_LABELS + 1))), "limit is 2,000"),
    (dict(label_set="Custom", custom="x" * 200), "characters long"),
    (dict(label_set="Custom", custom="a," * 40_000), "characters long"),
])
def test_transmit_says_what_is_wrong(demo, args, message):
    kw = dict(image=str(EXAMPLE), family="fsq", bits=64, coder="auto", label_set="Tiny-ImageNet-200", custom="", command="")
    kw.update(args)
    t = time.perf_counter()
    with pytest.raises(DemoError, match=message):
        demo.transmit(**kw)
    assert time.perf_counter() - t < 5  # refused before the work


@pytest.mark.slow
@pytest.mark.parametrize("seed, steps, guidance, message", [
    (2**40, 4, 3.0, "seed must be a whole number in 0..4294967295"),
    (-1, 4, 3.0, "seed"),
    (0.5, 4, 3.0, "seed"),
    (0, 0, 3.0, "denoising steps"),
    (0, 10**6, 3.0, "denoising steps"),
    (0, 4, float("nan"), "guidance must be a finite number"),
    (0, 4, float("inf"), "guidance"),
    (0, 4, "x", "guidance"),
])
def test_generation_numbers_are_bounded(demo, scf_blob, seed, steps, guidance, message):
    with pytest.raises(DemoError, match=message):
        demo.generate(str(EXAMPLE), "fsq", 64, "auto", seed, steps, guidance)
    with pytest.raises(DemoError, match=message):
        demo.receive(scf_blob, "Tiny-ImageNet-200", "", True, seed, steps, guidance)


@pytest.mark.slow
def test_awkward_images_work_or_get_a_message(demo, tmp_path):
    base = Image.open(EXAMPLE).convert("RGB")
    gif = tmp_path / "a.gif"
    base.save(gif, save_all=True, append_images=[base.rotate(90)], duration=100)
    awkward = [base.convert("CMYK"), base.convert("RGBA"), base.convert("L"), base.convert("P"),
               Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257)), Image.open(gif),
               base.resize((3000, 2000)), np.random.default_rng(0).random((40, 50, 3)), str(gif)]
    for im in awkward:
        out = prepare_image(im)
        assert out.mode == "RGB" and max(out.size) <= MAX_SIDE
    for bad in (None, np.zeros((0,)), np.zeros((4, 4, 7))):
        with pytest.raises(ImageError):
            prepare_image(bad)
    # thin, tiny and odd images go through; what cannot be done (segmentation under 8x8) is said
    for size in [(3000, 2), (2, 3000), (1, 1), (7, 7)]:
        r = demo.transmit(Image.new("RGB", size, (200, 30, 30)), "fsq", 64, "auto", "Tiny-ImageNet-200", "", "the dog")
        assert r.segment_original is None and "at least 8×8" in r.segment_note and "JPEG" in r.pixels_note
    r = demo.transmit(base.convert("CMYK"), "fsq", 64, "auto", "Tiny-ImageNet-200", "", "x" * 10000)
    assert r.segment_original is None and "characters" in r.segment_note


@pytest.mark.slow
def test_files_that_are_not_images_get_a_message(demo, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("hello, I am a text file")
    with pytest.raises(DemoError, match="not an image Pillow can read"):
        demo.transmit(str(text))
    data = EXAMPLE.read_bytes()
    trunc = tmp_path / "half.jpg"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(DemoError, match="damaged or truncated"):
        demo.transmit(str(trunc))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(DemoError, match="not an image"):
        demo.transmit(str(empty))
    rng = np.random.default_rng(0)
    for i in range(5):  # random bytes, with and without an image format's magic in front
        f = tmp_path / f"random{i}.png"
        f.write_bytes([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF\0\0\0\0WEBP"][i] + rng.bytes(500))
        with pytest.raises(DemoError):
            demo.transmit(str(f))


def test_pixels_are_bounded_before_decoding(tmp_path):
    big = tmp_path / "big.png"
    Image.new("L", (13000, 13000)).save(big, optimize=False)  # ~0.5 MB on disk, 169 MP
    t = time.perf_counter()
    with pytest.raises(ImageError, match="13000x13000 = 169 MP; the limit is 40 MP"):
        open_image(big)
    assert time.perf_counter() - t < 1.0  # the header only: no 169 MP decode
    assert 13000 * 13000 > MAX_PIXELS
    # a huge JPEG is decoded at reduced scale (libjpeg DCT scaling), not refused
    buf = io.BytesIO()
    Image.new("RGB", (9000, 6000), (10, 120, 200)).save(buf, format="JPEG", quality=50)
    t = time.perf_counter()
    im = open_image(buf.getvalue())
    assert max(im.size) == MAX_SIDE and time.perf_counter() - t < 2.0


@pytest.mark.slow
def test_labels_are_bounded_and_the_classifier_cache_too(demo):
    assert parse_custom_labels(" cat, dog ,, cat,fire truck ") == ["cat", "dog", "fire truck"]
    assert parse_custom_labels("猫, 🐕, Ölfass") == ["猫", "🐕", "Ölfass"]
    for bad in ("", " , ", ",".join(map(str, range(MAX_LABELS + 1))), "y" * 101, "z," * 30000):
        with pytest.raises(LabelSetError):
            parse_custom_labels(bad)
    tin = demo.classifier("Tiny-ImageNet-200")
    for i in range(CLASSIFIER_CACHE + 4):
        demo.classifier("Custom", f"cat, dog, thing {i}")
    assert len(demo._classifiers) == CLASSIFIER_CACHE
    assert demo.classifier("Tiny-ImageNet-200") is tin  # named sets are not pushed out by custom lists
    r = demo.transmit(str(EXAMPLE), "fsq", 64, "auto", "Custom", "猫, 🐕, goldfish, Ölfass")
    assert set(r.labels_decoded) == {"猫", "🐕", "goldfish", "Ölfass"}


@pytest.mark.slow
def test_receive_says_what_is_wrong(demo, tmp_path):
    blob = demo.transmit(str(EXAMPLE), "fsq", 64).blob
    for bad, message in [(blob[:-2], "not a valid semcomp bitstream"), (b"hello", "not a valid semcomp bitstream"),
                         (b"", "empty"), (b"SCF\x89" + bytes(2 << 20), "over 1 MB")]:
        with pytest.raises(DemoError, match=message):
            demo.receive(bad, "Tiny-ImageNet-200", "", False)
        f = tmp_path / "x.scf"
        f.write_bytes(bad)
        with pytest.raises(DemoError, match=message):
            demo.receive(str(f), "Tiny-ImageNet-200", "", False)
    with pytest.raises(DemoError, match="Upload a .scf"):
        demo.receive(None)
    with pytest.raises(DemoError, match="not a file"):
        demo.receive(str(tmp_path))


@pytest.mark.slow
def test_receive_bounds_the_item_count_before_decoding(demo):
    """More features than one upload needs (here 80, as a forged count would claim): refused before decoding,
    by the bitstream layer's max_items, with the limit named."""
    import torch

    from semcomp.receiver import RECEIVE_MAX_ITEMS

    codec, _ = demo.codec_for("fsq", 64)
    feats = torch.nn.functional.normalize(torch.randn(RECEIVE_MAX_ITEMS + 64, codec.dim), dim=-1)
    many = codec.compress(feats, "ans")
    with pytest.raises(DemoError, match=f"not a valid semcomp bitstream: .*{RECEIVE_MAX_ITEMS}"):
        demo.receive(many, "Tiny-ImageNet-200", "", False)
    few = codec.compress(feats[:RECEIVE_MAX_ITEMS], "ans")
    assert demo.receive(few, "Tiny-ImageNet-200", "", False).n_items == RECEIVE_MAX_ITEMS


def test_a_backbone_without_codecs_stops_before_any_download():
    t = time.perf_counter()
    with pytest.raises(DemoError, match=r"no codecs for backbone 'ViT-B-32/openai'.*weights/codecs/ViT-B-32_openai.*"
                                        r"make them with: semcomp fit --backbone ViT-B-32/openai --dataset cifar10"):
        check_backbone("ViT-B-32/openai")
    with pytest.raises(DemoError, match="no codecs"):
        Demo("ViT-B-32/openai")
    with pytest.raises(DemoError, match="unknown backbone 'nonsense'; choose one of"):
        check_backbone("nonsense")
    assert time.perf_counter() - t < 2
    from semcomp.backbone import EMBEDDED_DEFAULT

    assert check_backbone(EMBEDDED_DEFAULT)


def test_progressive_curve_plots_only_the_shipped_weights_cuts():
    """The bench measures several seeds of one recipe; the page's curve must be the loaded weights' own cuts."""
    from types import SimpleNamespace

    def row(bits, top1, sha):
        return {"method": "semcomp prq", "spec": "prq-s4o2k256", "bits": bits, "top1": top1, "codec_sha256": sha}

    prog = {"float": {"top1": 0.8}, "test_items": 10,
            "results": [row(8, 0.40, "aa"), row(16, 0.50, "aa"), row(8, 0.45, "bb"), row(16, 0.55, "bb")]}
    page = SimpleNamespace(rate_report={"results": []}, progressive_report=prog, is_progressive=lambda f: f == "prq",
                           backbone=SimpleNamespace(name="test-backbone"),
                           codecs=[{"spec": "prq-s4o2k256", "card": {"sha256": "bb"}}])
    line = Demo._plot(page, "prq", "prq-s4o2k256", 16).axes[0].lines[0]
    assert list(line.get_xdata()) == [8, 16] and list(line.get_ydata()) == pytest.approx([45.0, 55.0])
    page.codecs = [{"spec": "prq-s4o2k256", "card": {"sha256": "cc"}}]  # weights nobody measured: no curve
    assert "no measured curve" in Demo._plot(page, "prq", "prq-s4o2k256", 16).axes[0].get_title()

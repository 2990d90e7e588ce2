"""Pixel codecs (JPEG/WebP through Pillow): exact bytes, a decoded image of the same size, clear errors."""
import numpy as np
import pytest

from semcomp.pixel import PillowCodec, PixelCodecError


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_round_trip_and_rate_ordering(fmt):
    rng = np.random.default_rng(0)
    img = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    img[:, :32] = 40  # some structure so quality matters
    small, big = PillowCodec(fmt, 5).compress(img), PillowCodec(fmt, 95).compress(img)
    assert len(small) < len(big)
    out = PillowCodec(fmt, 95).decompress(big)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img).mean() < np.abs(PillowCodec(fmt, 5).decompress(small).astype(int) - img).mean()


def test_errors():
    with pytest.raises(PixelCodecError):
        PillowCodec("png", 50)
    with pytest.raises(PixelCodecError):
        PillowCodec("jpeg", 101)
    with pytest.raises(PixelCodecError, match="cannot decode"):
        PillowCodec("jpeg", 50).decompress(b"\xff\xd8garbage")


# ---------------------------------------------------------------- learned pixel codecs (tiny CompressAI models)

import torch  # noqa: E402

from semcomp.pixel import JPEG_LADDER, best_within  # noqa: E402


def _image(seed=0, h=40, w=56):
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (rng.random(3) * 255).astype(np.uint8)
    img[h // 3 :, w // 2 :] = (rng.random(3) * 255).astype(np.uint8)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def _tiny(arch):
    from semcomp.embedded_clip import EmbeddedClipConfig
    from semcomp.pixel.learned import build_model

    cfg = {"arch": arch, "N": 16, "M": 16}
    if arch == "attention-pyramid":
        cfg.update({"tower": {"widths": [8, 16, 32, 64], "blocks": [1, 1, 1, 1], "embed_dim": 16}})
        EmbeddedClipConfig.from_dict(cfg["tower"])
    torch.manual_seed(0)
    return build_model(cfg), cfg


def _train(model, loss_fn, steps, lr=1e-3, **kw):
    from semcomp.training.pixel import train_pixel_codec

    imgs = torch.from_numpy(np.stack([_image(s, 32, 32) for s in range(32)]))
    return train_pixel_codec(model, imgs, loss_fn, steps=steps, batch_size=4, lr=lr, final_lr=lr, log_every=2, **kw)


def test_learned_codec_payload_is_lossless_rans_of_the_rounded_latent():
    from semcomp.pixel.learned import LearnedPixelCodec

    model, _ = _tiny("factorized-prior")
    model.eval().update(force=True)
    codec = LearnedPixelCodec(model, "tiny")
    img = _image()
    data = codec.compress(img)
    out = codec.decompress(data)
    assert out.shape == img.shape and out.dtype == np.uint8
    # what the receiver decodes is exactly the synthesis of the rounded latent: rANS lost nothing
    x = torch.nn.functional.pad(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255, (0, 8, 0, 8), mode="replicate")
    with torch.no_grad():
        y = model.g_a(x)
        y_hat = torch.round(y - model.entropy_bottleneck._get_medians()) + model.entropy_bottleneck._get_medians()
        ref = model.g_s(y_hat).clamp(0, 1)[0, :, :40, :56]
    ref = (ref.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.abs(ref.astype(int) - out).max() <= 1
    # the payload is header (tag + two varints) + the rANS string, nothing hidden
    strings = model.compress(x)["strings"][0][0]
    assert len(data) == 3 + len(strings)


def test_rate_ordering_higher_lambda_more_bits():
    from semcomp.pixel.learned import LearnedPixelCodec
    from semcomp.training.pixel import FactorizedLoss

    bits = []
    for lmbda in (1e-4, 1.0):
        model, _ = _tiny("factorized-prior")
        model, hist = _train(model, FactorizedLoss(lmbda), 40, lr=1e-2)
        model.update(force=True)
        bits.append(8 * len(LearnedPixelCodec(model, "t").compress(_image(1, 64, 64))))
    assert bits[0] < bits[1]


def test_pyramid_two_levels_from_one_model_and_saved_weights_code_identically(tmp_path):
    from semcomp.pixel.learned import codecs_from_folder, save_pixel_model
    from semcomp.pixel.pyramid import perceptual_features
    from semcomp.training.pixel import PyramidLoss

    model, cfg = _tiny("attention-pyramid")
    loss = PyramidLoss((0.001, 0.05), (0.1, 0.2), perceptual_net=perceptual_features(_tower(cfg)))
    model, hist = _train(model, loss, 30)
    assert {"bpp1", "bpp2", "perceptual1", "mse2"} <= set(hist["log"][-1][1])
    save_pixel_model(model, cfg, tmp_path / "pyr", {"note": "test"})
    level1, level2 = codecs_from_folder(tmp_path / "pyr")
    img = _image(2, 48, 48)
    d1, d2 = level1.compress(img), level2.compress(img)
    assert len(d1) < len(d2)  # the coarse level is the cheap one
    for codec, data in ((level1, d1), (level2, d2)):
        assert codec.decompress(data).shape == img.shape
    with pytest.raises(PixelCodecError, match="level"):
        level1.decompress(d2)
    # reloading gives the very same bytes (the CDF tables travel with the weights)
    again = codecs_from_folder(tmp_path / "pyr")[1]
    assert again.compress(img) == d2


def _tower(cfg):
    from semcomp.embedded_clip import EmbeddedClipConfig, ImageTower

    return ImageTower(EmbeddedClipConfig.from_dict(cfg["tower"]))


def test_pyramid_loss_keeps_the_papers_ordering():
    from semcomp.training.pixel import PyramidLoss

    with pytest.raises(ValueError, match="a_1 < a_2"):
        PyramidLoss((0.01, 0.001))


def test_training_resumes_exactly(tmp_path):
    from semcomp.training.pixel import FactorizedLoss

    a, _ = _tiny("factorized-prior")
    a, _ = _train(a, FactorizedLoss(0.01), 6)
    b, _ = _tiny("factorized-prior")
    ck = tmp_path / "ck.pt"
    _train(b, FactorizedLoss(0.01), 3, ckpt_path=ck)
    b, _ = _tiny("factorized-prior")  # a fresh process: everything comes from the checkpoint
    b, hist = _train(b, FactorizedLoss(0.01), 6, ckpt_path=ck)
    assert hist["steps"] == 6
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k


def test_learned_codec_refuses_bad_input_and_tampered_weights(tmp_path):
    from semcomp.pixel.learned import LearnedPixelCodec, codecs_from_folder, save_pixel_model

    model, cfg = _tiny("factorized-prior")
    save_pixel_model(model, cfg, tmp_path / "f")
    codec = codecs_from_folder(tmp_path / "f")[0]
    data = codec.compress(_image())
    with pytest.raises(PixelCodecError, match="tag"):
        codec.decompress(b"\x00" + data[1:])
    with pytest.raises(PixelCodecError, match="short"):
        codec.decompress(data[:2])
    with pytest.raises(PixelCodecError, match="header"):
        codec.decompress(data[:1] + b"\xff\xff\xff\xff\xff\xff")
    with pytest.raises(PixelCodecError, match="uint8"):
        codec.compress(np.zeros((8, 8), np.float32))
    with pytest.raises(PixelCodecError, match="LearnedPixelCodec|architecture"):
        from semcomp.pixel.learned import build_model

        build_model({"arch": "hyperprior"})
    w = tmp_path / "f" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(PixelCodecError, match="sha256"):
        codecs_from_folder(tmp_path / "f")
    assert isinstance(codec, LearnedPixelCodec)


def test_compressai_zoo_path_builds_without_weights():
    from semcomp.pixel.learned import from_compressai_zoo

    codec = from_compressai_zoo(1, pretrained=False)  # users with internet pass pretrained=True
    img = _image(3, 64, 64)
    assert codec.decompress(codec.compress(img)).shape == img.shape


def test_best_within_budget():
    img = _image(4, 128, 128)
    got = best_within(JPEG_LADDER, img, 700)
    assert len(got["data"]) <= 700 and got["bytes"] == len(got["data"])
    assert got["image"].shape == img.shape
    bigger = best_within(JPEG_LADDER, img, 5000)
    assert bigger["width"] * bigger["height"] >= got["width"] * got["height"]
    assert best_within(JPEG_LADDER, img, 40) is None  # JPEG's headers alone are bigger


def test_pyramid_attention_is_sagans_softmax_attention():
    from semcomp.pixel.pyramid import SelfAttention2d

    torch.manual_seed(0)
    m = SelfAttention2d(16)
    m.gain.data.fill_(1.0)
    x = torch.randn(2, 16, 6, 5)
    q, k, v = m.query(x).flatten(2).transpose(1, 2), m.key(x).flatten(2), m.value(x).flatten(2)
    ref = x + (v @ torch.softmax(q @ k, -1).transpose(1, 2)).view(2, 16, 6, 5)  # unscaled energy, as SAGAN
    assert torch.allclose(m(x), ref, atol=1e-5)

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

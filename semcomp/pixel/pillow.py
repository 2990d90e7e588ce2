"""JPEG and WebP through Pillow (libjpeg / libwebp): the field's own encoders, exact byte counts."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image


class PixelCodecError(ValueError):
    pass


@dataclass(frozen=True)
class PillowCodec:
    format: str  # "jpeg" or "webp"
    quality: int

    def __post_init__(self):
        if self.format not in ("jpeg", "webp"):
            raise PixelCodecError(f"unknown pixel codec {self.format!r}; choose jpeg or webp")
        if not 0 <= self.quality <= 100:
            raise PixelCodecError("quality must be in 0..100")

    @property
    def name(self) -> str:
        return f"{self.format}-q{self.quality}"

    def compress(self, image) -> bytes:
        im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        buf = io.BytesIO()
        if self.format == "jpeg":
            im.convert("RGB").save(buf, format="JPEG", quality=max(1, self.quality), optimize=True)
        else:
            im.convert("RGB").save(buf, format="WEBP", quality=self.quality, method=6)
        return buf.getvalue()

    def decompress(self, data: bytes) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(im.convert("RGB"))
        except Exception as e:  # Pillow raises several types on bad data
            raise PixelCodecError(f"cannot decode {self.format} data: {e}") from e


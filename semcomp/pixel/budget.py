"""What a byte budget buys as pixels: the most pixels any of a ladder of codecs can fit into ``max_bytes``.

The app shows it next to the semantic outputs ("what the same bytes buy as a JPEG"): at tens of bytes a JPEG
does not exist at all (its headers alone are ~120 bytes), a learned codec fits a thumbnail of a few pixels.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from .pillow import PillowCodec

JPEG_LADDER = [PillowCodec("jpeg", q) for q in (95, 85, 75, 60, 45, 30, 20, 12, 8, 5, 3, 1)]


def best_within(codecs, image, max_bytes: int, min_side: int = 8, start_side: int = 256) -> dict | None:
    """Try sizes from ``start_side`` (longest side, never above the image's) halving down to ``min_side``;
    at each size the codecs in order (best quality first); the first payload within ``max_bytes`` wins.

    Returns ``{"codec", "bytes", "width", "height", "data", "image"}`` (``image``: decoded and resized back to
    the input's size for display) or ``None`` when nothing fits.
    """
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    im = im.convert("RGB")
    w0, h0 = im.size
    scale = min(1.0, start_side / max(w0, h0))
    while min(w0, h0) * scale >= min_side:
        small = im if scale == 1.0 else im.resize((max(1, round(w0 * scale)), max(1, round(h0 * scale))), Image.BICUBIC)
        for codec in codecs:
            data = codec.compress(small)
            if len(data) <= max_bytes:
                dec = Image.fromarray(codec.decompress(data)).resize((w0, h0), Image.BICUBIC)
                return {"codec": codec.name, "bytes": len(data), "width": small.size[0], "height": small.size[1],
                        "data": data, "image": np.asarray(dec)}
        scale /= 2
    return None

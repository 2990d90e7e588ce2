"""Turning whatever a user uploads into the RGB image the backbone expects (shared by the app and the CLI)."""
from __future__ import annotations

import numpy as np

MAX_SIDE = 1024  # larger uploads are downscaled first: bounded memory and time
MAX_COMMAND = 300  # characters


def prepare_image(image):
    """Any upload -> an RGB PIL image of at most MAX_SIDE px: first frame of animations, 16-bit/float scaled
    to 8 bits, alpha dropped, CMYK/palette/grayscale converted. Raises ValueError for what is not an image."""
    from PIL import Image

    if image is None:
        raise ValueError("Upload an image (or click an example) first.")
    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.ndim not in (2, 3) or arr.size == 0:
            raise ValueError(f"not an image: array of shape {arr.shape}")
        if arr.dtype != np.uint8:
            arr = arr.astype(np.float64)
            arr = (255 * (arr - arr.min()) / max(1e-9, arr.max() - arr.min())).astype(np.uint8)
        image = Image.fromarray(arr)
    if getattr(image, "is_animated", False):
        image.seek(0)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(image, dtype=np.float64)
        image = Image.fromarray((255 * (a - a.min()) / max(1e-9, a.max() - a.min())).astype(np.uint8))
    image = image.convert("RGB")
    if max(image.size) > MAX_SIDE:
        image = image.copy()
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.BICUBIC)
    return image

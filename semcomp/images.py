"""Turning whatever a user uploads into the RGB image the backbone expects (shared by the app and the CLI).

Sizes are bounded before work, as Pillow's ``MAX_IMAGE_PIXELS`` does: ``open_image`` reads only the header to
learn the size, decodes JPEGs of any size at a reduced scale (libjpeg's DCT scaling, ``Image.draft``) and
refuses other formats above ``MAX_PIXELS`` before decoding a single pixel.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

MAX_SIDE = 1024  # larger uploads are downscaled first: bounded memory and time
MAX_PIXELS = 40_000_000  # non-JPEG uploads above this are refused before decoding (40 MP ~ 160 MB as RGBA)
MAX_COMMAND = 300  # characters


class ImageError(ValueError):
    """An upload that is not a readable image, or one over the size limits; the message says which."""


def open_image(source, max_pixels: int = MAX_PIXELS):
    """A path, bytes or file object -> an RGB PIL image of at most MAX_SIDE px (see ``prepare_image``).

    Only the header is read before the size check; JPEGs are decoded at 1/2-1/8 scale when that still gives
    at least MAX_SIDE px; EXIF orientation is applied. Raises ImageError with the reason."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    name = Path(source).name if isinstance(source, (str, Path)) else "the upload"
    try:
        with warnings.catch_warnings():  # the size is checked below, against our own (lower) limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source)  # lazy: header only
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image Pillow can read (a JPEG, PNG, WebP, GIF, BMP or TIFF is expected)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name} is too large to open safely: {e}") from None
    except (OSError, ValueError) as e:
        raise ImageError(f"could not read {name} as an image: {e}") from None
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageError(f"{name} has an empty size {w}x{h}")
    if im.format == "JPEG":
        im.draft("RGB", (MAX_SIDE, MAX_SIDE))  # never more than needed: a 13000 px JPEG decodes at 1/8 scale
    elif w * h > max_pixels:
        raise ImageError(f"{name} is {w}x{h} = {w * h / 1e6:.0f} MP; the limit is {max_pixels / 1e6:.0f} MP "
                         f"(downscale it first; JPEGs of any size are read at reduced size)")
    try:
        if getattr(im, "is_animated", False):
            im.seek(0)
        im.load()
        im = ImageOps.exif_transpose(im) or im
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name} is too large to decode safely: {e}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or damaged data
        raise ImageError(f"{name} is damaged or truncated and cannot be decoded ({e})") from None
    return prepare_image(im)


def prepare_image(image):
    """Any upload -> an RGB PIL image of at most MAX_SIDE px: first frame of animations, 16-bit/float scaled
    to 8 bits, alpha dropped, CMYK/palette/grayscale converted. A path or bytes goes through ``open_image``
    (bounded). Raises ImageError (a ValueError) for what is not an image."""
    from PIL import Image

    if image is None:
        raise ImageError("Upload an image (or click an example) first.")
    if isinstance(image, (str, Path, bytes, bytearray)):
        return open_image(image)
    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.ndim not in (2, 3) or arr.size == 0 or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise ImageError(f"not an image: array of shape {arr.shape}")
        if arr.size > 4 * MAX_PIXELS:
            raise ImageError(f"the image array has {arr.size} values; the limit is {4 * MAX_PIXELS}")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.dtype != np.uint8:
            arr = np.nan_to_num(arr.astype(np.float64))
            arr = (255 * (arr - arr.min()) / max(1e-9, arr.max() - arr.min())).astype(np.uint8)
        image = Image.fromarray(arr)
    if getattr(image, "is_animated", False):
        image.seek(0)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.nan_to_num(np.asarray(image, dtype=np.float64))
        image = Image.fromarray((255 * (a - a.min()) / max(1e-9, a.max() - a.min())).astype(np.uint8))
    try:
        image = image.convert("RGB")
    except (OSError, ValueError) as e:
        raise ImageError(f"could not convert the image to RGB: {e}") from None
    if max(image.size) > MAX_SIDE:
        image = image.copy()
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.BICUBIC)
    return image

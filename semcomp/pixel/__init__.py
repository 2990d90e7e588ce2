"""Pixel codecs beside the semantic ones: what the same bits buy when you send the image itself.

* ``PillowCodec("jpeg", q)`` / ``PillowCodec("webp", q)``: Pillow's libjpeg / libwebp, exact byte counts.
* ``LearnedPixelCodec``: CompressAI models trained here — the ``bmshj2018-factorized`` architecture and seed
  002's variable-rate attention-pyramid codec (``semcomp.pixel.pyramid``) — with CompressAI's rANS.
* ``best_within``: the most pixels a codec ladder fits into a byte budget (the app's "what the same bytes buy").

Every codec: ``compress(image) -> bytes`` and ``decompress(bytes) -> (H, W, 3) uint8``; bad data raises
``PixelCodecError``.
"""
from .budget import JPEG_LADDER, best_within
from .pillow import PillowCodec, PixelCodecError

__all__ = ["PillowCodec", "PixelCodecError", "JPEG_LADDER", "best_within", "LearnedPixelCodec", "codecs_from_folder", "load_pixel_model"]


def __getattr__(name):  # CompressAI is imported only when a learned codec is asked for
    if name in ("LearnedPixelCodec", "codecs_from_folder", "load_pixel_model", "save_pixel_model"):
        from . import learned

        return getattr(learned, name)
    raise AttributeError(name)

"""semcomp: send what an image means, not its pixels — compress CLIP features to 32–2000 bits."""
from .bitstream import BitstreamError, BitstreamLimitError, truncate
from .codecs import CODECS, Codec, CodecError, create_codec, list_codecs, load_codec
from .framing import FrameError

__version__ = "0.1.0"
__all__ = ["BitstreamError", "BitstreamLimitError", "CODECS", "Codec", "CodecError", "FrameError", "create_codec", "list_codecs", "load_codec", "truncate", "__version__"]

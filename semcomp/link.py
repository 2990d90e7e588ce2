"""A semantic link: image -> backbone feature -> codec -> ``.scf`` bytes -> decoded feature.

The sender and receiver halves are separate methods so the receiver provably sees only the bytes."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .backbone import Backbone
from .bitstream import truncate, unpack
from .codecs import Codec
from .entropy import coder_name
from .framing import LORA_MAX_FRAME, FrameReceiver, FrameSender


@dataclass
class Transmission:
    blob: bytes  # the .scf bitstream, everything the receiver gets
    fixed_bits: int  # the codec's fixed-length budget per feature
    payload_bits: int  # entropy-coded symbol bits
    original: torch.Tensor  # (D,) sender's float feature
    decoded: torch.Tensor  # (D,) receiver's feature, decoded from blob
    full_blob: bytes | None = None  # a progressive codec's whole stream before it was cut to ``blob`` (else None)

    @property
    def cosine(self) -> float:
        return float(F.cosine_similarity(self.original, self.decoded, dim=0))


class SemanticLink:
    def __init__(self, backbone: Backbone, codec: Codec, coder: str = "auto"):
        if backbone.dim is not None and backbone.dim != codec.dim:
            raise ValueError(f"codec {codec.spec} is for {codec.dim}-d features, backbone {backbone.name} gives {backbone.dim}-d")
        self.backbone, self.codec, self.coder = backbone, codec, coder

    def send_feature(self, feature: torch.Tensor) -> bytes:
        return self.codec.compress(feature.reshape(1, -1), self.coder)

    def receive(self, blob: bytes) -> torch.Tensor:
        return self.codec.decompress(blob)[0]

    def transmit_image(self, image, bits: int | None = None) -> Transmission:
        """``bits``: for a progressive codec, send its whole stream cut to this many bits per feature (the cut is
        :func:`semcomp.truncate`, made without the model, as a relay would make it); None sends everything."""
        f = self.backbone.encode_images([image])[0]
        full = self.send_feature(f)
        blob = full if bits is None else truncate(full, bits)
        header, payload = unpack(blob)
        fixed = self.codec.bits if bits is None else header.stage_bits * header.stages
        return Transmission(blob, fixed, 8 * len(payload), f, self.receive(blob), None if bits is None else full)

    # ---- framed streams for constrained links (semcomp.framing): the codec announced once, then payload + 3 bytes
    def sender(self, coding: str = "huffman", max_frame: int = LORA_MAX_FRAME, stream_id: bytes | None = None) -> FrameSender:
        """``s = link.sender(); s.announce()`` once, then ``s.frame(image_or_feature)`` per message."""
        return FrameSender(self.codec, coding, max_frame, stream_id, embed=lambda image: self.backbone.encode_images([image])[0])

    def receiver(self, announce: bytes) -> FrameReceiver:
        """``r = link.receiver(announce)``, then ``r.accept(frame)`` -> ``Delivery`` (``.feature`` when it passed every check)."""
        return FrameReceiver(self.codec, announce)

    @staticmethod
    def coder_of(blob: bytes) -> str:
        return coder_name(unpack(blob)[0].coder_id)

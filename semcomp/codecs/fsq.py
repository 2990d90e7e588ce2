"""Finite scalar quantisation (Mentzer et al., 2023) baseline: MLP encoder -> C channels, each bounded
and rounded to L levels with a straight-through gradient, -> MLP decoder.

The bound is the FSQ paper's, which gives exactly L levels for even L too (the seed's
``round(L/2 * tanh(z))`` gives L+1 values for even L). Written here rather than taken from
vector-quantize-pytorch because that module packs all channels into one mixed-radix index, while our
entropy models and bit accounting work per channel.
"""
from __future__ import annotations

import math

import torch

from .base import Codec, CodecError, mlp, mlp_numel, require_power_of_two


class FSQCodec(Codec):
    family = "fsq"
    spec_pattern = r"fsq-c(?P<c>\d+)l(?P<l>\d+)"
    spec_format = "fsq-c{c}l{l}"
    extra_params = ("hidden",)

    def __init__(self, dim: int, c: int = 64, l: int = 8, hidden: int = 512):
        super().__init__(dim, c=c, l=l, hidden=hidden)
        require_power_of_two("levels L", l)
        if l < 4:  # L=2 puts the bound's shift at atanh(1) = inf
            raise CodecError(f"fsq needs L >= 4 levels, got {l}")
        self.encoder = mlp([dim, hidden, hidden, c])
        self.decoder = mlp([c, hidden, hidden, dim])
        half = (l - 1) / 2
        self.half, self.offset = half, 0.5 if l % 2 == 0 else 0.0
        self.shift = math.atanh(self.offset / half)

    @classmethod
    def symbol_shape(cls, dim, p):
        return p.get("c", 64), p.get("l", 8)

    @classmethod
    def state_numel(cls, dim, p):
        c, h = p.get("c", 64), p.get("hidden", 512)
        return mlp_numel([dim, h, h, c]) + mlp_numel([c, h, h, dim])

    @property
    def num_symbols(self):
        return self.params["c"]

    @property
    def alphabet(self):
        return self.params["l"]

    def _bound(self, z):
        return torch.tanh(z + self.shift) * self.half - self.offset

    def forward(self, x):
        z = self._bound(self.encoder(x))
        q = z + (torch.round(z) - z).detach()  # straight-through
        return self.decoder(q / self.half), torch.zeros((), device=x.device)

    def _encode(self, x, bf16=False):
        q = torch.round(self._bound(self._encoder(x, bf16)))
        return (q + self.offset + self.half).round().long().clamp(0, self.alphabet - 1)

    def _decode(self, s):
        q = s.float() - self.half - self.offset
        return self.decoder(q / self.half)

"""Direct scalar quantisation of the CLIP feature itself (baseline; seed 000 §3.3).

Each dimension has its own 2^b learned quantisation points. Features are first standardised per dimension
(mean/std fitted on the training features, stored as buffers), so that the points' initialisation,
uniform in (-0.5, 0.5) as in the seed, covers about ±2 standard deviations. Training uses softmax soft
quantisation with temperature 1 measured in units of the initial point spacing (a raw temperature of 1
on distances of ~0.01 would make the softmax uniform); inference is hard nearest-point.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Codec, CodecError


class DirectScalarQuantizer(Codec):
    family = "dsq"
    spec_pattern = r"dsq-b(?P<b>\d+)"
    spec_format = "dsq-b{b}"

    def __init__(self, dim: int, b: int = 1, temperature: float = 1.0):
        if isinstance(b, int) and not 1 <= b <= 8:
            raise CodecError(f"dsq supports 1..8 bits per dimension, got {b}")
        super().__init__(dim, b=b)
        self.temperature = temperature
        g = torch.Generator().manual_seed(0)
        pts = torch.rand(dim, 2**b, generator=g) - 0.5  # uniform in (-0.5, 0.5)
        self.points = torch.nn.Parameter(pts.sort(dim=1).values)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.full((dim,), 0.25))  # 4 std: ±2 std -> ±0.5

    @classmethod
    def symbol_shape(cls, dim, p):
        return dim, 2 ** min(p.get("b", 1), 64)

    @classmethod
    def state_numel(cls, dim, p):
        return dim * 2 ** min(p.get("b", 1), 64) + 2 * dim  # points, mean, scale

    @property
    def num_symbols(self) -> int:
        return self.dim

    @property
    def alphabet(self) -> int:
        return 2 ** self.params["b"]

    def init_from_data(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(0))
        self.scale.copy_(1.0 / (4 * x.std(0).clamp_min(1e-6)))

    def _u(self, x):
        return (x - self.mean) * self.scale  # (N, D)

    def forward(self, x):
        u = self._u(x)
        d2 = (u[:, :, None] - self.points[None]) ** 2  # (N, D, K)
        spacing = 1.0 / self.alphabet
        w = F.softmax(-d2 / (self.temperature * spacing**2), dim=-1)
        soft = (w * self.points[None]).sum(-1)
        return self._from_u(soft), torch.zeros((), device=x.device)

    def _from_u(self, u):
        return u / self.scale + self.mean

    def _encode(self, x, bf16=False):  # no network: bf16 changes nothing
        u = self._u(x)
        return (u[:, :, None] - self.points[None]).abs().argmin(-1)

    def _decode(self, s):
        u = torch.gather(self.points[None].expand(len(s), -1, -1), 2, s[:, :, None]).squeeze(-1)
        return self._from_u(u)

"""Autoencoder scalar quantisation (seed 000 §2.3; best at 600–2000 bits).

MLP encoder -> C channels -> 0.5*tanh -> each channel snapped to the nearest of its L learned points
(initialised uniform in [-0.5, 0.5]), straight-through to the encoder; the points learn through a
codebook loss, as the seed's second stage makes them learnable. -> MLP decoder.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Codec, mlp, mlp_numel, require_power_of_two


class AutoencoderScalarQuantizer(Codec):
    family = "aesq"
    spec_pattern = r"aesq-c(?P<c>\d+)l(?P<l>\d+)"
    spec_format = "aesq-c{c}l{l}"
    extra_params = ("hidden",)

    def __init__(self, dim: int, c: int = 200, l: int = 8, hidden: int = 512, commitment: float = 0.25):
        super().__init__(dim, c=c, l=l, hidden=hidden)
        require_power_of_two("levels L", l)
        self.commitment = commitment
        self.encoder = mlp([dim, hidden, hidden, c])
        self.decoder = mlp([c, hidden, hidden, dim])
        self.points = torch.nn.Parameter(torch.linspace(-0.5, 0.5, l).repeat(c, 1))  # (C, L)

    @classmethod
    def symbol_shape(cls, dim, p):
        return p.get("c", 200), p.get("l", 8)

    @classmethod
    def state_numel(cls, dim, p):
        c, l, h = p.get("c", 200), p.get("l", 8), p.get("hidden", 512)
        return mlp_numel([dim, h, h, c]) + mlp_numel([c, h, h, dim]) + c * l

    @property
    def num_symbols(self):
        return self.params["c"]

    @property
    def alphabet(self):
        return self.params["l"]

    def _latent(self, x, bf16: bool = False):
        return 0.5 * torch.tanh(self._encoder(x, bf16))  # (N, C)

    def _nearest(self, z):
        return (z[:, :, None] - self.points[None]).abs().argmin(-1)  # (N, C)

    def _points_of(self, s):
        return torch.gather(self.points[None].expand(len(s), -1, -1), 2, s[:, :, None]).squeeze(-1)

    def forward(self, x):
        z = self._latent(x)
        q = self._points_of(self._nearest(z.detach()))
        loss = F.mse_loss(q, z.detach()) + self.commitment * F.mse_loss(z, q.detach())
        q_st = z + (q - z).detach()
        return self.decoder(q_st), loss

    def _encode(self, x, bf16=False):
        return self._nearest(self._latent(x, bf16))

    def _decode(self, s):
        return self.decoder(self._points_of(s))

"""Seed 002's variable-rate image codec: a frozen contrastive tower's features, a self-attention map, a
two-level GDN feature pyramid with a factorized entropy model per level, and one decoder shared by both levels.

What the paper does, and what stands in for it here:

* Encoder input: SimCLR ResNet-50 "group 1" features (stride 4). Here: the embedded CLIP image tower's stem +
  first stage (``weights/backbones/semcomp-tiny-clip``, 32 channels at stride 2), frozen — the only contrastive
  image tower we have; there are no SimCLR weights offline.
* Self-attention after the tower (SAGAN: 1x1 query/key/value, softmax energy, learned residual gain), the
  placement the paper's ablation found best.
* Pyramid: strided conv + GDN per step; level 2 (finer, more bits) at stride 8, level 1 (coarser) at stride 16,
  each quantised by additive uniform noise in training and rounding + rANS at test time, through CompressAI's
  ``EntropyBottleneck`` (the non-parametric factorized density of Ballé et al., the paper's eq. 1).
* Decoder: a trunk from stride 8 to pixels shared by both levels; level 1 adds its own upsampling step
  (4x4 → 8x8 for a 64 px image), level 2 its own input conv — "one architecture decodes both rates".
* Loss (``semcomp.training.pixel``): sum over levels of a_i·MSE + b_i·perceptual + g_i·rate, with a_1 < a_2,
  b_1 < b_2, g_1 >= g_2 as the paper asks. Its perceptual term uses VGG-19 features; here the frozen embedded
  tower's deeper features stand in (no VGG weights offline).
* Trained at 64x64 on Tiny-ImageNet (the paper: 240x240 CLIC crops).

Why a hand-written module: no library ships this architecture; its parts (GDN, EntropyBottleneck, conv
helpers, the CompressionModel base with CDF updates) are CompressAI's.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck
from compressai.layers import GDN
from compressai.models import CompressionModel
from compressai.models.utils import conv, deconv

from ..embedded_clip import IMAGE_MEAN, IMAGE_STD, EmbeddedClipConfig, ImageTower

LEVELS = (1, 2)  # 1: coarse (fewest bits), 2: fine


class SelfAttention2d(nn.Module):
    """SAGAN self-attention (Zhang et al. 2018): energy from 1x1 query/key, softmax over positions."""

    def __init__(self, channels: int):
        super().__init__()
        inner = max(1, channels // 8)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gain = nn.Parameter(torch.zeros(1))  # starts as identity, learns how much attention to mix in

    def forward(self, x):
        b, c, h, w = x.shape
        # contiguous (B, 1, HW, ch): the fused kernel needs a unit stride on the last dim, else PyTorch falls back
        # to the math path and materialises the HW x HW map (38 GB for a Kodak image)
        q = self.query(x).flatten(2).transpose(1, 2)[:, None].contiguous()  # (B, 1, HW, c')
        k = self.key(x).flatten(2).transpose(1, 2)[:, None].contiguous()
        v = self.value(x).flatten(2).transpose(1, 2)[:, None].contiguous()  # (B, 1, HW, C)
        # softmax(q k^T) v, SAGAN's unscaled energy. Through PyTorch's fused attention so a full-size image
        # (Kodak: 98k positions) never materialises the HW x HW map; query/key are zero-padded to the value
        # width (same dot products) because the fused CPU kernel wants one head size.
        pad = v.shape[-1] - q.shape[-1]
        out = F.scaled_dot_product_attention(F.pad(q, (0, pad)).contiguous(), F.pad(k, (0, pad)).contiguous(), v, scale=1.0)
        return x + self.gain * out[:, 0].transpose(1, 2).reshape(b, c, h, w)


def frozen_tower_stem(tower: ImageTower, stages: int) -> nn.Sequential:
    """The tower's stem + its first ``stages`` ResNet stages, frozen and kept in eval mode (BatchNorm)."""
    blocks = sum(tower.cfg_blocks[:stages])
    return nn.Sequential(tower.stem, *list(tower.stages)[:blocks]).requires_grad_(False).eval()


class AttentionPyramidCodec(CompressionModel):
    """Two rates from one model. ``forward`` returns both levels; ``compress``/``decompress`` take a level."""

    #: total downsampling of the coarse level: inputs are padded to a multiple of this
    stride = 16

    def __init__(self, N: int = 64, M: int = 64, tower: EmbeddedClipConfig | None = None):
        super().__init__()
        cfg = tower or EmbeddedClipConfig()
        self.features = frozen_tower_stem(ImageTower(cfg), 1)  # stem + stage 1, stride 2; weights loaded by the caller
        c = cfg.widths[0]
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)
        self.attention = SelfAttention2d(c)
        # pyramid: tower (stride 2) -> stride 4 -> level 2 (stride 8) -> level 1 (stride 16); GDN after every conv
        self.down = nn.Sequential(conv(c, N), GDN(N))
        self.to_level2 = nn.Sequential(conv(N, M), GDN(M))
        self.to_level1 = nn.Sequential(conv(M, M), GDN(M))
        self.entropy_level1 = EntropyBottleneck(M)
        self.entropy_level2 = EntropyBottleneck(M)
        # decoder: level-specific heads into one shared trunk at stride 8
        self.head_level1 = nn.Sequential(deconv(M, N), GDN(N, inverse=True))
        self.head_level2 = nn.Sequential(conv(M, N, kernel_size=3, stride=1), GDN(N, inverse=True))
        self.trunk = nn.Sequential(deconv(N, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True), deconv(N, 3))

    def train(self, mode: bool = True):
        super().train(mode)
        self.features.eval()  # the borrowed tower's BatchNorm statistics stay as trained
        return self

    def _bottleneck(self, level: int) -> EntropyBottleneck:
        return self.entropy_level1 if level == 1 else self.entropy_level2

    def analysis(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [0, 1], (B, 3, H, W) with H, W multiples of 16 -> (level-1 latent, level-2 latent)."""
        with torch.no_grad():
            phi = self.features((x - self.mean) / self.std)
        h = self.down(self.attention(phi))
        y2 = self.to_level2(h)
        return self.to_level1(y2), y2

    def synthesis(self, y_hat: torch.Tensor, level: int) -> torch.Tensor:
        head = self.head_level1 if level == 1 else self.head_level2
        return self.trunk(head(y_hat))

    def forward(self, x: torch.Tensor) -> dict:
        y1, y2 = self.analysis(x)
        out = {"x_hat": {}, "likelihoods": {}}
        for level, y in ((1, y1), (2, y2)):
            y_hat, lik = self._bottleneck(level)(y)
            out["x_hat"][level] = self.synthesis(y_hat, level)
            out["likelihoods"][level] = lik
        return out

    def compress(self, x: torch.Tensor, level: int = 2) -> dict:
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}")
        y = self.analysis(x)[0 if level == 1 else 1]
        return {"strings": [self._bottleneck(level).compress(y)], "shape": y.shape[-2:]}

    def decompress(self, strings: list, shape, level: int = 2) -> dict:
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}")
        y_hat = self._bottleneck(level).decompress(strings[0], shape)
        return {"x_hat": self.synthesis(y_hat, level).clamp_(0, 1)}


def perceptual_features(tower: ImageTower, stages: int = 3) -> nn.Module:
    """Frozen deeper tower features for the perceptual loss (stands in for the paper's VGG-19)."""
    net = frozen_tower_stem(tower, stages)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)

    class _Perceptual(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, a, b):
            return F.mse_loss(self.net((a - mean) / std), self.net((b - mean) / std))

    return _Perceptual().requires_grad_(False).eval()

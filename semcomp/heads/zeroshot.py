"""Zero-shot classification from a (decoded) image feature against class text features."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass
class ZeroShotResult:
    labels: list[str]  # top-k class names, best first
    probs: list[float]  # softmax probabilities (with the backbone's logit scale)


class ZeroShotClassifier:
    def __init__(self, text_features: torch.Tensor, class_names: list[str], logit_scale: float = 100.0):
        if len(class_names) == 0:
            raise ValueError("zero-shot classification needs at least one class name")
        tf = torch.as_tensor(text_features, dtype=torch.float32)
        if tf.ndim != 2 or tf.shape[0] != len(class_names):
            raise ValueError(f"text features {tuple(tf.shape)} do not match {len(class_names)} class names")
        self.text_features = F.normalize(tf, dim=-1)
        self.class_names = list(class_names)
        self.logit_scale = float(logit_scale)

    @property
    def dim(self) -> int:
        return int(self.text_features.shape[1])

    @classmethod
    def from_backbone(cls, backbone, class_names: list[str], template: str = DEFAULT_TEMPLATE) -> "ZeroShotClassifier":
        names = [c.strip() for c in class_names if c and c.strip()]
        if not names:
            raise ValueError("zero-shot classification needs at least one non-empty class name")
        return cls(backbone.encode_text([template.format(c) for c in names]), names, backbone.logit_scale)

    def logits(self, feats) -> torch.Tensor:
        f = torch.as_tensor(np.asarray(feats) if not isinstance(feats, torch.Tensor) else feats, dtype=torch.float32)
        if f.ndim == 1:
            f = f[None]
        if f.shape[-1] != self.dim:
            raise ValueError(f"features are {f.shape[-1]}-d but the class text features are {self.dim}-d (another backbone?)")
        return self.logit_scale * F.normalize(f, dim=-1) @ self.text_features.T

    def predict(self, feats, k: int = 5) -> list[ZeroShotResult]:
        p = self.logits(feats).softmax(-1)
        k = min(k, len(self.class_names))
        top = p.topk(k, dim=-1)
        return [ZeroShotResult([self.class_names[i] for i in idx.tolist()], [float(v) for v in vals])
                for vals, idx in zip(top.values, top.indices)]

    def accuracy(self, feats, labels, k: int = 5) -> dict[str, float]:
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        top = self.logits(feats).topk(min(k, len(self.class_names)), dim=-1).indices
        return {"top1": float((top[:, 0] == y).float().mean()), f"top{k}": float((top == y[:, None]).any(1).float().mean())}

"""Run a head trained in one backbone's embedding space on another backbone's (decoded) features.

A head folder whose ``config.json`` names a ``base`` head holds only a small learned map (``EmbeddingBridge``)
from its own backbone's space into the base head's space, fitted on the embeddings both backbones give the
same images. It is a stop-gap, said so on its card: the base head's limits (what it was trained to say or
draw) stay, and the map adds its own error; a head retrained on the new space replaces it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class BridgeConfig:
    backbone: str  # the space the bridge takes (the head folder answers for this backbone)
    base: str  # folder name under weights/heads of the head it feeds
    in_dim: int = 384
    out_dim: int = 512
    hidden: int = 1024

    @classmethod
    def from_dict(cls, d: dict) -> "BridgeConfig":
        from ..weights import config_from_dict

        cfg = config_from_dict(cls, d)
        for k in ("in_dim", "out_dim", "hidden"):
            v = getattr(cfg, k)
            if not isinstance(v, int) or not 1 <= v <= 8192:
                raise ValueError(f"bridge config {k}={v!r} out of range 1..8192")
        return cfg


class EmbeddingBridge(nn.Module):
    """Normalised embedding (B, in) -> normalised embedding (B, out): a linear map plus a GELU MLP branch (fp16 on disk)."""

    def __init__(self, cfg: BridgeConfig):
        super().__init__()
        self.cfg = cfg
        self.linear = nn.Linear(cfg.in_dim, cfg.out_dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.in_dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.float(), dim=-1)
        return F.normalize(self.linear(x) + self.mlp(x), dim=-1)


def fit_bridge(bridge: EmbeddingBridge, src: torch.Tensor, dst: torch.Tensor, epochs: int = 60, lr: float = 2e-3,
               noise: float = 0.02, seed: int = 0, batch_size: int = 512) -> list[float]:
    """Maximise cosine(bridge(src + noise), dst); the noise stands in for a codec's decoding error."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(bridge.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    losses = []
    for _ in range(epochs):
        perm, tot = torch.randperm(len(src), generator=g), 0.0
        for i in range(0, len(src), batch_size):
            idx = perm[i : i + batch_size]
            x = src[idx] + noise * torch.randn(len(idx), src.shape[1], generator=g)
            loss = 1 - F.cosine_similarity(bridge(x), dst[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
        sched.step()
        losses.append(tot / len(src))
    return losses


class BridgedHead:
    """A base head behind an embedding bridge; same ``caption`` / ``generate`` calls as the base head."""

    def __init__(self, base, bridge: EmbeddingBridge):
        self.base, self.bridge = base, bridge
        self.backbone = bridge.cfg.backbone

    def _map(self, embeds, backbone: str | None):
        from .caption import CaptionError

        e = torch.as_tensor(embeds, dtype=torch.float32)
        if e.ndim == 1:
            e = e[None]
        if e.ndim != 2 or e.shape[1] != self.bridge.cfg.in_dim:
            raise CaptionError(f"this head expects {self.bridge.cfg.in_dim}-d embeddings, got shape {tuple(e.shape)}")
        if backbone is not None and backbone != self.backbone:
            raise CaptionError(f"this head takes {self.backbone!r} embeddings; these come from {backbone!r}")
        with torch.no_grad():
            return self.bridge(e)

    def caption(self, embeds, *args, backbone: str | None = None, **kw):
        return self.base.caption(self._map(embeds, backbone), *args, **kw)

    def generate(self, embeds, *args, backbone: str | None = None, **kw):
        return self.base.generate(self._map(embeds, backbone), *args, **kw)

    def __getattr__(self, name):  # cfg, tokenizer, ... of the base head
        return getattr(self.base, name)


def save_bridge(bridge: EmbeddingBridge, out_dir: str | Path, card: dict) -> Path:
    from safetensors.torch import save_file

    from ..weights import file_sha256

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in bridge.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(asdict(bridge.cfg), indent=2))
    card = dict(card, sha256=file_sha256(out / "model.safetensors"), config_sha256=file_sha256(out / "config.json"))
    (out / "card.json").write_text(json.dumps(card, indent=2))
    return out


def load_bridge(path: str | Path, error: type[Exception] = ValueError, backbone=None, base_backbone=None) -> EmbeddingBridge:
    """``backbone`` / ``base_backbone`` (names or loaded backbones): refuse, with ``error``, a bridge fitted on other
    weights of the backbone it takes or of the one its base head was trained on (``backbone_sha256`` /
    ``base_backbone_sha256`` in its card)."""
    from safetensors.torch import load_file

    from ..backbone import check_trained_for
    from ..weights import read_verified_card

    path = Path(path)
    card = read_verified_card(path, "model.safetensors", error)
    try:
        cfg = BridgeConfig.from_dict(json.loads((path / "config.json").read_text()))
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise error(f"head folder {path} is malformed: {e}") from e
    retrain = f"python -m semcomp.training.bridge --backbone {cfg.backbone}"
    check_trained_for(card, cfg.backbone, backbone, f"bridged head {path}", error, retrain)
    if base_backbone is not None:
        base_name = base_backbone if isinstance(base_backbone, str) else getattr(base_backbone, "name", None)
        check_trained_for(card, base_name, base_backbone, f"bridged head {path} (fitted into {base_name!r})", error,
                          retrain, key="base_backbone_sha256")
    try:
        bridge = EmbeddingBridge(cfg)
        bridge.load_state_dict(load_file(str(path / "model.safetensors")))
    except (ValueError, TypeError, KeyError, RuntimeError, OSError) as e:
        raise error(f"head folder {path} is malformed: {e}") from e
    return bridge.eval()

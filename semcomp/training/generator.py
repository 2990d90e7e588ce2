"""Train the embedded unCLIP-style generator: (image, CLIP image embedding) pairs -> conditional diffusion.

Runs on a CPU (hours) or a GPU (minutes); the loop is the same. Compression robustness: with probability
``cond_noise_p`` the conditioning embedding gets Gaussian noise of a random size (up to ``cond_noise``
per dimension, i.e. cosine ~0.88 to the clean one at the top end, about what a 64-bit code keeps), so the
decoder sees embeddings like the decoded ones the receiver will hand it.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..heads.generate import EmbeddingConditionedUNet, GeneratorConfig, diffusion_loss, images_to_model, make_scheduler
from .checkpoint import restore_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm.detach(), 1.0 - decay)


def train_generator(images: torch.Tensor, embeds: torch.Tensor, cfg: GeneratorConfig | None = None, *,
                    embeds_flipped: torch.Tensor | None = None, steps: int = 10000, time_budget_s: float | None = None,
                    batch_size: int = 128, lr: float = 2e-4, warmup: int = 500, ema_decay: float = 0.999,
                    cond_noise: float = 0.03, cond_noise_p: float = 0.5, device: str = "cpu", bf16: bool = False,
                    ckpt_path: str | Path | None = None, ckpt_every: int = 500, seed: int = 0, log_every: int = 100,
                    progress=None) -> tuple[EmbeddingConditionedUNet, dict]:
    """images (N, H, W, 3) uint8; embeds (N, E) L2-normalised image embeddings (flipped images' optional).

    Stops after ``steps`` or ``time_budget_s``; returns the EMA model and a history dict
    (``losses`` per log interval, ``steps``, ``seconds``, ``images_per_s``).
    """
    cfg = cfg or GeneratorConfig(embed_dim=embeds.shape[1], image_size=images.shape[1])
    torch.manual_seed(seed)
    model = EmbeddingConditionedUNet(cfg).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = make_scheduler(cfg, "ddpm")
    sched.alphas_cumprod = sched.alphas_cumprod.to(device)
    start, history = 0, {"losses": [], "steps": 0, "seconds": 0.0}
    state = restore_checkpoint(ckpt_path, model=model, ema=ema, opt=opt)
    if state is not None:
        start, history = state["step"], state["history"]
        torch.set_rng_state(state["rng"])
        logger.info("resumed generator training at step %d", start)
    images = images.to(device)
    embeds = embeds.to(device)
    if embeds_flipped is not None:
        embeds_flipped = embeds_flipped.to(device)
    n = images.shape[0]
    t0, seen, window = time.time(), 0, []
    step = start
    while step < steps:
        if time_budget_s is not None and time.time() - t0 > time_budget_s:
            break
        # one random stream per step: a resumed run draws exactly what an uninterrupted one would
        g = torch.Generator(device).manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, n, (batch_size,), generator=g, device=device)
        x = images_to_model(images[idx])
        e = embeds[idx]
        if embeds_flipped is not None:  # horizontal flip, with the flipped image's own embedding
            flip = torch.rand(batch_size, generator=g, device=device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            e = torch.where(flip[:, None], embeds_flipped[idx], e)
        if cond_noise > 0:
            sigma = torch.rand(batch_size, 1, generator=g, device=device) * cond_noise
            sigma = sigma * (torch.rand(batch_size, 1, generator=g, device=device) < cond_noise_p)
            e = F.normalize(e + sigma * torch.randn(e.shape, generator=g, device=device), dim=-1)
        for pg in opt.param_groups:
            pg["lr"] = lr * min(1.0, (step + 1) / max(1, warmup))
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion_loss(model, sched, x, e, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        _ema_update(ema, model, min(ema_decay, (1 + step) / (10 + step)))
        step += 1
        seen += batch_size
        window.append(loss.item() if step % 10 == 0 or step < 50 else math.nan)
        if step % log_every == 0:
            vals = [v for v in window if not math.isnan(v)]
            history["losses"].append((step, sum(vals) / max(1, len(vals))))
            window = []
            logger.info("step %d loss %.4f (%.0f img/s)", step, history["losses"][-1][1], seen / (time.time() - t0))
            if progress is not None:
                progress(step, steps, history["losses"][-1][1])
        if ckpt_path and step % ckpt_every == 0:
            save_checkpoint({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                             "step": step, "history": history, "rng": torch.get_rng_state()}, ckpt_path)
    history["steps"] = step
    history["seconds"] = history.get("seconds", 0.0) + time.time() - t0
    history["images_per_s"] = seen / max(1e-9, time.time() - t0)
    if ckpt_path:
        save_checkpoint({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                         "step": step, "history": history, "rng": torch.get_rng_state()}, ckpt_path)
    return ema.eval(), history

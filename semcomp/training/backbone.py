"""Train the embedded CLIP (``semcomp train-backbone``).

Recipe (chosen for a 2-core CPU): the image tower is trained from scratch against *text* classifiers —
each step, every class's prompt is drawn from varied templates and synonyms, embedded by the frozen
MiniLM sentence encoder, projected by the trainable text head, and the image batch is scored against all
200 class texts with a learnable logit scale (CLIP's loss with the whole class set as negatives, as in
UniCL). The evaluation prompt "a photo of a {name}" is never used in training.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import tiny_imagenet_classes, tiny_imagenet_split
from ..embedded_clip import EmbeddedClip, EmbeddedClipConfig, normalize_uint8_batch, save_embedded_clip
from ..evaluation import embedding_spread
from ..hardware import cpu_has_bf16
from .checkpoint import load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

EVAL_TEMPLATE = "a photo of a {}."


def training_templates() -> list[str]:
    """OpenAI's ImageNet prompt templates (from open_clip) minus the evaluation prompt."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    out = []
    for t in OPENAI_IMAGENET_TEMPLATES:
        s = t("{}")
        if s.rstrip(".") != EVAL_TEMPLATE.rstrip("."):
            out.append(s)
    return out + ["{}", "a {}", "the {}"]


def augment(x: torch.Tensor, pad: int = 6) -> torch.Tensor:
    """Random translate (reflect pad + crop) and horizontal flip on a uint8 (B, H, W, 3) batch."""
    b, h, w, _ = x.shape
    xp = F.pad(x.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="reflect")
    i = torch.randint(0, 2 * pad + 1, (b,))
    j = torch.randint(0, 2 * pad + 1, (b,))
    rows = (i.view(b, 1) + torch.arange(h).view(1, h))  # (B, H)
    cols = (j.view(b, 1) + torch.arange(w).view(1, w))  # (B, W)
    out = xp[torch.arange(b).view(b, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1), rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
    flip = torch.rand(b) < 0.5
    out[flip] = out[flip].flip(-1)
    return out.permute(0, 2, 3, 1)  # back to (B, H, W, 3) float in [0, 255]


def prompt_bank(model: EmbeddedClip, classes: list[dict], templates: list[str]):
    """Sentence embeddings of every (class, synonym, template) prompt, grouped by class."""
    texts, owner = [], []
    for c in classes:
        for name in c["names"]:
            for t in templates:
                texts.append(t.format(name))
                owner.append(c["index"])
    emb = model.sentence_encoder(texts)
    owner = torch.tensor(owner)
    return emb, [torch.nonzero(owner == c["index"]).flatten() for c in classes]


@torch.no_grad()
def zero_shot_eval(model: EmbeddedClip, images: np.ndarray, labels: np.ndarray, classes: list[dict], batch: int = 500):
    model.eval()
    text = model.encode_text([EVAL_TEMPLATE.format(c["name"]) for c in classes])
    feats = []
    for i in range(0, len(images), batch):
        feats.append(model.encode_image(normalize_uint8_batch(torch.from_numpy(images[i : i + batch]))))
    feats = torch.cat(feats)
    logits = feats @ text.T
    top5 = logits.topk(5, dim=1).indices
    y = torch.from_numpy(labels)
    return {
        "top1": float((top5[:, 0] == y).float().mean()),
        "top5": float((top5 == y[:, None]).any(1).float().mean()),
    }, feats


def train_backbone(out_dir: str, ckpt_dir: str, train_source: str | None = None, epochs: int = 16, batch_size: int = 256,
                   lr: float = 3e-3, weight_decay: float = 0.05, seed: int = 0, threads: int | None = None,
                   limit_steps: int | None = None, cfg: EmbeddedClipConfig | None = None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    t_start = time.time()
    classes = tiny_imagenet_classes()
    train = tiny_imagenet_split("train", source=train_source)
    val = tiny_imagenet_split("val")
    logger.info("train %s val %s", train.images.shape, val.images.shape)

    model = EmbeddedClip(cfg or EmbeddedClipConfig())
    model.visual = model.visual.to(memory_format=torch.channels_last)
    templates = training_templates()
    bank, groups = prompt_bank(model, classes, templates)
    params = [p for n, p in model.named_parameters()]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = len(train.images) // batch_size
    total = epochs * steps_per_epoch
    warm = steps_per_epoch

    def lr_at(step):
        if step < warm:
            return lr * (step + 1) / warm
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    ckpt_path = Path(ckpt_dir) / "backbone_last.pt"
    state = load_checkpoint(ckpt_path)
    step, history = 0, []
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, history = state["step"], state["history"]
        torch.set_rng_state(state["rng"])
        t_start -= state["elapsed"]
        logger.info("resumed at step %d", step)
    use_bf16 = cpu_has_bf16()
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    logger.info("bf16 autocast: %s; %d steps/epoch, %d total", use_bf16, steps_per_epoch, total)

    from tqdm import tqdm

    n = len(train.images)
    images_t = torch.from_numpy(train.images)
    labels_t = torch.from_numpy(train.labels)
    while step < total:
        epoch = step // steps_per_epoch
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        perm = torch.randperm(n, generator=g)
        model.train()
        bar = tqdm(range(step % steps_per_epoch, steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", mininterval=30)
        t0, seen = time.time(), 0
        for it in bar:
            idx = perm[it * batch_size : (it + 1) * batch_size]
            x = normalize_uint8_batch(augment(images_t[idx]).to(torch.uint8)).contiguous(memory_format=torch.channels_last)
            y = labels_t[idx]
            pick = torch.stack([gr[torch.randint(len(gr), (1,))] for gr in groups]).flatten()
            for gparam in opt.param_groups:
                gparam["lr"] = lr_at(step)
            with autocast():
                img = F.normalize(model.visual(x).float(), dim=-1)
                txt = F.normalize(model.text_projection(bank[pick]).float(), dim=-1)
                logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
                loss = F.cross_entropy(logits, y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += len(idx)
            if it % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}", ips=f"{seen / (time.time() - t0):.0f}")
            if limit_steps and step >= limit_steps:
                break
        metrics, _ = zero_shot_eval(model, val.images[:2000], val.labels[:2000], classes)
        history.append({"epoch": epoch + 1, "step": step, "loss": float(loss), "val2k_top1": metrics["top1"],
                        "img_per_s": seen / (time.time() - t0), "logit_scale": float(model.logit_scale.exp())})
        logger.info("epoch %d: %s", epoch + 1, history[-1])
        save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "history": history,
                         "rng": torch.get_rng_state(), "elapsed": time.time() - t_start}, ckpt_path)
        if limit_steps and step >= limit_steps:
            break

    metrics, feats = zero_shot_eval(model, val.images, val.labels, classes)
    spread = embedding_spread(feats)
    card = {
        "name": Path(out_dir).name,
        "architecture": "EmbeddedClip: ResNet image tower (from scratch) + frozen all-MiniLM-L6-v2 + trained projection",
        "data": f"Tiny-ImageNet-200 train, {len(train.images)} images ({'folder ' + str(train_source) if train_source else 'shared shards'}), "
                f"prompts from {len(templates)} templates x WordNet synonyms; eval prompt never used in training",
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "seed": seed,
        "steps": step, "wall_time_s": round(time.time() - t_start, 1), "bf16_autocast": use_bf16,
        "zero_shot_tiny_imagenet_val": {"prompt": EVAL_TEMPLATE, **metrics, "n": int(len(val.images))},
        "embedding_spread_val": spread, "history": history,
        "params_trained": sum(p.numel() for p in model.parameters()),
    }
    save_embedded_clip(model, out_dir, card)
    logger.info("saved %s: %s", out_dir, json.dumps(card["zero_shot_tiny_imagenet_val"]))
    return card

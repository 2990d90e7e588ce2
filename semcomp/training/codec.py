"""Codec training (``semcomp train``): task-agnostic, cosine loss, checkpoint picked on held-out items of
the *training* classes (never on the evaluation classes), entropy model fitted on training features only.

Crash-safe and resumable, but only the same run resumes: the checkpoint file is keyed by a hash of the spec,
the features (their sha256) and every hyper-parameter (``run_key``), the key is stored inside it and checked
again on load, and the checkpoint is deleted once the run has finished. A later run on other features or with
other settings therefore never picks up an earlier run's state (it once wrote weights bit-identical to another
run's, under a card naming its own features).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..codecs import Codec, create_codec
from ..codecs.dsq import DirectScalarQuantizer
from .checkpoint import load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)


def cosine_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (1 - F.cosine_similarity(x_hat, x, dim=-1)).mean()


@torch.no_grad()
def mean_cosine(codec: Codec, x: torch.Tensor, batch: int = 4096) -> float:
    cos = [F.cosine_similarity(codec.reconstruct(x[i : i + batch]), x[i : i + batch], dim=-1) for i in range(0, len(x), batch)]
    return float(torch.cat(cos).mean())


def holdout_split(n: int, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    k = max(1, int(round(n * val_frac)))
    return perm[k:], perm[:k]


def features_sha256(features) -> str:
    """sha256 of the features as float32 C-order bytes, shape included (what ``run_key`` and the card name)."""
    a = np.ascontiguousarray(features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else features,
                             dtype=np.float32)
    h = hashlib.sha256(json.dumps(list(a.shape)).encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def run_key(run: dict) -> str:
    """The identity of a training run: sha256 of its spec, features hash and hyper-parameters."""
    return hashlib.sha256(json.dumps(run, sort_keys=True, default=str).encode()).hexdigest()


def run_checkpoint_path(ckpt_path: str | Path, key: str) -> Path:
    """Where the run with this key keeps its checkpoint: ``<dir>/<stem>-<key[:16]><suffix>`` next to the path
    the caller named (``~/.cache/semcomp/codec-ckpt/pqvae-n200d16k8.pt`` -> ``pqvae-n200d16k8-1a2b...pt``)."""
    p = Path(ckpt_path)
    return p.with_name(f"{p.stem}-{key[:16]}{p.suffix or '.pt'}")


def train_codec(spec: str, features: np.ndarray, epochs: int = 30, batch_size: int = 256, lr: float = 1e-3,
                weight_decay: float = 0.0, seed: int = 0, val_frac: float = 0.1, ckpt_path: str | Path | None = None,
                codec_kwargs: dict | None = None, progress: bool = True, max_seconds: float | None = None,
                prq_init_beam: int = 0, prq_frozen_stages: int = 0, prq_first_redo: int = 1,
                prq_cut_weights: dict[int, float] | None = None) -> tuple[Codec, dict]:
    """Train one codec on (N, D) L2-normalised features. Returns the best (by held-out cosine) codec and a
    card with the training record (including ``features_sha256`` and ``run_key``).

    Under ``torch.distributed`` (``torchrun``; ``semcomp fit`` sets it up, gloo on CPU) every rank calls this
    with the same features: each takes its ``rank::world`` share of every batch and DistributedDataParallel
    averages the gradients, so a step equals the one-process step on the whole batch; rank 0 alone writes the
    checkpoint. Progressive (prq) codecs are data-parallel too (``train_progressive``: rank 0 initialises, every
    rank re-encodes and trains on its share).

    With ``ckpt_path``, checkpoints go to ``run_checkpoint_path(ckpt_path, run_key)`` after every epoch; a run
    with the same spec, features and hyper-parameters resumes from there, any other run starts fresh. The
    checkpoint is deleted when the run finishes."""
    from tqdm import tqdm

    if spec.startswith("prq-"):  # progressive codecs: residual k-means + nested fine-tuning with early stopping
        from .progressive import train_progressive

        return train_progressive(spec, features, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, val_frac=val_frac,
                                 codec_kwargs=codec_kwargs, progress=progress, max_seconds=max_seconds, rq_beam=prq_init_beam,
                                 frozen_stages=prq_frozen_stages, first_redo=prq_first_redo, cut_weights=prq_cut_weights,
                                 ckpt_path=ckpt_path)
    if max_seconds is not None:
        raise ValueError(f"a time budget (max_seconds) is supported for progressive (prq) codecs only, not {spec!r}")
    import torch.distributed as dist

    ddp = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    if world > batch_size:
        raise ValueError(f"batch size {batch_size} is smaller than the {world} processes sharing each batch")
    run = {"spec": spec, "features_sha256": features_sha256(features), "epochs": epochs, "batch_size": batch_size,
           "lr": lr, "weight_decay": weight_decay, "seed": seed, "val_frac": val_frac,
           "codec_kwargs": dict(sorted((codec_kwargs or {}).items()))}
    if world > 1:  # only then: the keys of one-process runs (and their checkpoints) stay as they were
        run["world"] = world
    key = run_key(run)
    ckpt = run_checkpoint_path(ckpt_path, key) if ckpt_path else None
    torch.manual_seed(seed)
    x_all = F.normalize(torch.as_tensor(features, dtype=torch.float32), dim=-1)
    tr_idx, va_idx = holdout_split(len(x_all), val_frac, seed)
    x_tr, x_va = x_all[tr_idx], x_all[va_idx]
    codec = create_codec(spec, x_all.shape[1], **(codec_kwargs or {}))
    if isinstance(codec, DirectScalarQuantizer):
        codec.init_from_data(x_tr)
    model = torch.nn.parallel.DistributedDataParallel(codec) if ddp else codec  # averages gradients over ranks
    opt = torch.optim.Adam(codec.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, len(x_tr) // batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    start_epoch, history, best = 0, [], (-1.0, None)
    state = load_checkpoint(ckpt) if ckpt else None
    if state is not None and state.get("run_key") != key:  # a hash-prefix clash or a renamed file: never resume it
        logger.warning("%s: checkpoint %s belongs to another run; starting fresh (it will be overwritten)", spec, ckpt)
        state = None
    if state is not None:
        # Buffers that the library resizes lazily must exist before load_state_dict.
        codec.load_state_dict(state["codec"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start_epoch, history = state["epoch"], state["history"]
        best = (state["best_cos"], state["best_state"])
        torch.set_rng_state(state["rng"])
        logger.info("%s: resumed after epoch %d", spec, start_epoch)
    t0 = time.time() - (state["elapsed"] if state is not None else 0.0)
    for epoch in range(start_epoch, epochs):
        codec.train()
        perm = torch.randperm(len(x_tr))
        bar = tqdm(range(steps_per_epoch), desc=f"{spec} {epoch + 1}/{epochs}" + (f" [rank {rank}/{world}]" if ddp else ""),
                   disable=not progress or rank != 0, leave=False)
        tot = 0.0
        for it in bar:
            xb = x_tr[perm[it * batch_size : (it + 1) * batch_size]][rank::world]  # same perm on every rank (same seed)
            x_hat, aux = model(xb)
            loss = cosine_loss(x_hat, xb) + aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item()
        if ddp:  # the logged loss is the mean over every rank's share
            t = torch.tensor([tot / world])
            dist.all_reduce(t)
            tot = float(t)
        val_cos = mean_cosine(codec, x_va)
        history.append({"epoch": epoch + 1, "train_loss": tot / steps_per_epoch, "val_cosine": val_cos})
        if val_cos > best[0]:
            best = (val_cos, {k: v.detach().clone() for k, v in codec.state_dict().items()})
        if ckpt and rank == 0:
            save_checkpoint({"spec": spec, "run_key": key, "run": run, "codec": codec.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                             "epoch": epoch + 1, "history": history, "best_cos": best[0], "best_state": best[1],
                             "rng": torch.get_rng_state(), "elapsed": time.time() - t0}, ckpt)
        logger.info("%s epoch %d: %s", spec, epoch + 1, history[-1])
    codec.load_state_dict(best[1])
    codec.eval()
    codec.round_to_storage_precision()
    codec.fit_entropy_model(x_tr)
    card = {
        "spec": spec, "bits": codec.bits, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
        "train_items": int(len(x_tr)), "holdout_items": int(len(x_va)),
        "holdout_cosine": mean_cosine(codec, x_va), "wall_time_s": round(time.time() - t0, 1), "history": history,
        "params": int(sum(p.numel() for p in codec.parameters())),
        "features_sha256": run["features_sha256"], "run_key": key,
    }
    if world > 1:
        card["processes"] = world  # data-parallel (DDP) over this many ranks
    if ckpt and rank == 0:  # finished: nothing left to resume, and nothing a later run could pick up
        ckpt.unlink(missing_ok=True)
        logger.info("%s: finished; removed checkpoint %s", spec, ckpt)
    return codec, card

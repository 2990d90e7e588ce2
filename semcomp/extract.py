"""Images → one feature file: streaming, resumable, and data-parallel under ``torchrun`` / ``accelerate launch``.

Work is cut into chunks of ``chunk_size`` images; each finished chunk is written as its own part file
(``<out>.parts/r<rank>-c<chunk>.safetensors``: features, labels and the images' global indices). A killed run
skips the chunks already on disk when started again. Under ``torchrun`` (``WORLD_SIZE`` > 1) image ``i`` goes to
rank ``i % world``; after a barrier, rank 0 merges every part in global index order — the file is identical
to a one-process run — adds the class text features, and removes the parts. Memory: one batch of images plus
the features (2 KiB a 512-d feature).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .backbone import weights_sha256_of
from .data import DataError, FeatureSet, save_features
from .datasets import ImageSource

logger = logging.getLogger(__name__)


def text_features(backbone, class_names: list[str], templates: str) -> tuple[torch.Tensor, str]:
    """One prompt (``"a photo of a {}."``) or ``openai``: the mean of the 80 OpenAI ImageNet prompts per class
    (open_clip's ``OPENAI_IMAGENET_TEMPLATES``), renormalised — CLIP's prompt ensemble."""
    import torch.nn.functional as F

    if templates == "openai":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        per = [backbone.encode_text([t(c) for t in OPENAI_IMAGENET_TEMPLATES]) for c in class_names]
        return F.normalize(torch.stack([F.normalize(p, dim=-1).mean(0) for p in per]), dim=-1), "openai-80-ensemble"
    if "{}" not in templates:
        raise DataError(f"a prompt template needs a '{{}}' for the class name, got {templates!r}")
    return backbone.encode_text([templates.format(c) for c in class_names]), templates


def _encode(backbone, images: list) -> torch.Tensor:
    return backbone.encode_images(images, batch_size=len(images))


def extract(backbone, src: ImageSource, out: str | Path, *, batch_size: int = 256, chunk_size: int = 5000,
            limit: int | None = None, templates: str = "a photo of a {}.", rank: int = 0, world: int = 1,
            progress: bool = True) -> Path | None:
    """Write ``out`` (rank 0) and return its path; other ranks return ``None`` after their parts are written."""
    from safetensors.numpy import load_file, save_file
    from tqdm import tqdm

    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    chunk_size = max(batch_size, chunk_size // batch_size * batch_size)
    sha = weights_sha256_of(backbone)
    manifest = {"backbone": backbone.name, "source": src.description, "split": src.split, "limit": limit, "world": world,
                "chunk_size": chunk_size, **({"backbone_sha256": sha} if sha else {})}
    mf = parts / f"manifest-r{rank}.json"
    # the weights are part of the manifest: parts begun with other weights of the backbone are never merged
    if mf.exists() and json.loads(mf.read_text()) != manifest:
        raise DataError(f"{parts} holds parts of another extraction ({mf.read_text()}); delete it or pick another --out")
    mf.write_text(json.dumps(manifest))
    mine = (s for s in src.samples() if (limit is None or s[0] < limit) and s[0] % world == rank)
    bar = tqdm(desc=f"extract {src.name} {src.split}" + (f" [rank {rank}/{world}]" if world > 1 else ""), unit="img",
               disable=not progress, total=None if limit is None else len(range(rank, limit, world)))
    chunk, pending = 0, []

    def flush(batch):
        feats, labels, idx = [], [], []
        for start in range(0, len(batch), batch_size):
            part = batch[start : start + batch_size]
            feats.append(_encode(backbone, [load() for _, load, _ in part]).numpy())
            labels += [lab for _, _, lab in part]
            idx += [i for i, _, _ in part]
            bar.update(len(part))
        tmp = parts / f"r{rank}-c{chunk:06d}.tmp.safetensors"
        save_file({"features": np.concatenate(feats).astype(np.float32), "labels": np.asarray(labels, np.int64),
                   "indices": np.asarray(idx, np.int64)}, str(tmp))
        os.replace(tmp, parts / f"r{rank}-c{chunk:06d}.safetensors")

    for sample in mine:
        pending.append(sample)
        if len(pending) == chunk_size:
            if not (parts / f"r{rank}-c{chunk:06d}.safetensors").exists():  # resumed runs skip finished chunks
                flush(pending)
            else:
                bar.update(len(pending))
            chunk, pending = chunk + 1, []
    if pending and not (parts / f"r{rank}-c{chunk:06d}.safetensors").exists():
        flush(pending)
    bar.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank's parts are on disk before rank 0 merges
    if rank != 0:
        return None
    files = sorted(parts.glob("r*-c*.safetensors"))
    files = [f for f in files if ".tmp." not in f.name]
    if not files:
        raise DataError(f"no images read from {src.description}")
    # merge into one preallocated array, one part at a time: peak memory ~ the features once (+ the writer's copy)
    from safetensors import safe_open

    idx_parts = []
    for f in files:
        with safe_open(str(f), "np") as sf:
            idx_parts.append(sf.get_tensor("indices"))
    all_idx = np.concatenate(idx_parts)
    if len(np.unique(all_idx)) != len(all_idx):
        raise DataError(f"{parts} holds overlapping parts (a run with another --world or --limit?); delete it and rerun")
    order = np.sort(all_idx)
    feats, labels = None, np.empty(len(all_idx), np.int64)
    for f, idx in zip(files, idx_parts):
        part = load_file(str(f))
        if feats is None:
            feats = np.empty((len(all_idx), part["features"].shape[1]), np.float32)
        pos = np.searchsorted(order, idx)
        feats[pos], labels[pos] = part["features"], part["labels"]
        del part
    extra = {}
    template = None
    if src.class_names:  # an unlabelled folder (semcomp fit --images) has no classes to prompt for
        text, template = text_features(backbone, src.class_names, templates)
        extra["text_features"] = text.numpy()
    meta = {"backbone": backbone.name, "dataset": src.name, "split": src.split, "class_names": src.class_names,
            "template": template, "source": src.description, "images": int(len(feats)), "processes": world}
    if sha:  # the weights these features come from: codecs trained on them record it (semcomp train, fit)
        meta["backbone_sha256"] = sha
    save_features(out, FeatureSet(feats, labels, meta), extra=extra)
    shutil.rmtree(parts, ignore_errors=True)
    logger.info("wrote %s: %s features (%s)", out, feats.shape, json.dumps({"dataset": src.name, "split": src.split}))
    return out

"""``semcomp fit``: codecs for your own backbone in one command (issue 22).

images -> features (``semcomp.extract``: chunked, resumable, data-parallel under torchrun) -> codec training
(``train_codec``: the progressive codec by default, ladder specs on request; DDP for the gradient-trained ones) ->
evaluation on held-out images the codec never saw -> a codec folder under ``<out>/<backbone>/<spec>/`` (default
``zoo.user_codecs_dir()``), where the app, the CLI and the receiver find it.

Resumable after a kill at every stage: extraction keeps its finished chunks, ladder training its per-epoch
checkpoint (``semcomp train``'s), and a codec folder already written for the same features and settings is
not trained again. Too few images for the chosen codebooks are refused before any work, with the count needed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..codecs import CODECS, CodecError, create_codec
from ..data import DataError, load_features
from .codec import features_sha256, holdout_split, train_codec

logger = logging.getLogger(__name__)

POINTS_PER_CENTROID = 39  # FAISS's k-means rule: it warns below 39 training points per centroid
MIN_TRAIN_ITEMS = 256  # codecs without codebooks (fsq, aesq, dsq): at least one batch to train on
DEFAULT_BUDGETS = (8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024)  # as training.progressive.BUDGETS
FIT_CACHE = Path(os.environ.get("SEMCOMP_FIT_CACHE", Path.home() / ".cache" / "semcomp" / "fit"))


class NotEnoughImages(DataError):
    """Fewer images than the chosen codebooks need (the message says how many are needed and were given)."""


def progressive_spec(budgets=None, codebook_size: int = 256, own_stages: int = 32) -> str:
    """The prq spec whose stages reach the largest budget: ``prq-s{max/log2 k}o{min(own, s)}k{k}``; every budget
    must be a multiple of ``log2(k)`` bits (a stage boundary), since the codec is cut there."""
    k = int(codebook_size)
    if k < 2 or k & (k - 1):
        raise CodecError(f"codebook size must be a power of two >= 2, got {codebook_size}")
    b = int(math.log2(k))
    budgets = sorted(set(budgets or DEFAULT_BUDGETS))
    bad = [x for x in budgets if x < b or x % b]
    if bad:
        raise CodecError(f"budgets {bad} are not multiples of {b} bits, the stage size of a {k}-entry codebook; "
                         f"choose budgets from {b}, {2 * b}, {3 * b}, ... or another --codebook-size")
    s = budgets[-1] // b
    return f"prq-s{s}o{min(own_stages, s)}k{k}"


def codebook_size(spec: str) -> int | None:
    """Entries of the codebooks k-means (or a VQ's k-means init) fits, or None for codecs without codebooks."""
    family = spec.split("-", 1)[0]
    params = CODECS[family].parse_spec(spec) if family in CODECS else None
    if params is None:
        raise CodecError(f"bad spec {spec!r}; families: {sorted(CODECS)}")
    return params.get("k") if family in ("prq", "pqvae", "vqvae") else None


def images_needed(specs: list[str], val_frac: float = 0.1, eval_frac: float = 0.1) -> tuple[int, str]:
    """(images, the spec that needs most): FAISS's 39 x K training points per codebook (``MIN_TRAIN_ITEMS`` for
    codecs without codebooks), after the evaluation and model-selection hold-outs are taken out."""
    keep = (1 - val_frac) * (1 - eval_frac)
    best = (0, specs[0])
    for spec in specs:
        k = codebook_size(spec)
        train = POINTS_PER_CENTROID * k if k else MIN_TRAIN_ITEMS
        best = max(best, (math.ceil(train / keep), spec))
    return best


def check_enough_images(n: int, specs: list[str], val_frac: float = 0.1, eval_frac: float = 0.1) -> None:
    """NotEnoughImages naming how many images the codebooks need and how many were given."""
    need, spec = images_needed(specs, val_frac, eval_frac)
    if n >= need:
        return
    k = codebook_size(spec)
    rule = (f"its codebooks of {k} entries need {POINTS_PER_CENTROID} x {k} = {POINTS_PER_CENTROID * k} training points "
            f"each (FAISS's k-means rule)" if k else f"it needs {MIN_TRAIN_ITEMS} training items")
    hint = ""
    if k and k > 16:
        smaller = max(16, 1 << int(math.log2(max(1, n * (1 - val_frac) * (1 - eval_frac) / POINTS_PER_CENTROID))))
        if smaller < k:
            hint = f"; or use smaller codebooks (--codebook-size {smaller} fits {n} images)"
    raise NotEnoughImages(f"{n} images are too few to fit {spec}: {rule}, i.e. {need} images once {eval_frac:.0%} are "
                          f"held out for evaluation and {val_frac:.0%} of the rest for model selection; given {n}. "
                          f"Add images (--images DIR or a larger --dataset/--limit){hint}")


def _run_key(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def work_dir_for(backbone_name: str, source_description: str, limit: int | None,
                 backbone_sha256: str | None = None) -> Path:
    """Where a fit keeps its features and checkpoints: one folder per (backbone, its weights where known, image
    source, limit), so features of a backbone's old weights are never reused for its new ones."""
    from ..zoo import backbone_dirname

    key = {"backbone": backbone_name, "source": source_description, "limit": limit}
    if backbone_sha256:  # absent when unknown: the folders of open_clip backbones keep their key
        key["backbone_sha256"] = backbone_sha256
    key = _run_key(key)[:16]
    return FIT_CACHE / backbone_dirname(backbone_name) / key


@torch.no_grad()
def evaluate_budgets(codec, x: torch.Tensor, labels: np.ndarray, text: np.ndarray | None, class_names: list[str],
                     budgets: list[int]) -> dict:
    """Mean cosine and (with labels and class texts) zero-shot top-1 of the decoded features at each budget, on
    items the codec never saw; a progressive codec is cut at each budget, another is measured at its own bits."""
    from ..heads.zeroshot import ZeroShotClassifier

    clf = None
    ok = torch.from_numpy(np.asarray(labels) >= 0)
    labels = torch.as_tensor(np.asarray(labels))
    if text is not None and len(class_names) > 1 and ok.any():
        clf = ZeroShotClassifier(torch.as_tensor(text, dtype=torch.float32), class_names)
    rows = []
    progressive = hasattr(codec, "stages_for_bits")
    for b in (budgets if progressive else [codec.bits]):
        s = codec.encode(x, stages=codec.stages_for_bits(b)) if progressive else codec.encode(x)
        x_hat = codec.decode(s)
        row = {"bits": int(b), "mean_cosine": float(F.cosine_similarity(x_hat, x, dim=-1).mean()), "top1": None,
               "float_top1": None}
        if clf is not None:
            row["top1"] = float(clf.accuracy(x_hat[ok], labels[ok])["top1"])
            row["float_top1"] = float(clf.accuracy(x[ok], labels[ok])["top1"])
        rows.append(row)
    return {"items": int(len(x)), "classes": len(class_names) if clf is not None else None, "budgets": rows}


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def fit(backbone, source, *, specs: list[str] | None = None, budgets: list[int] | None = None, codebook: int = 256,
        out_dir: str | Path | None = None, work_dir: str | Path | None = None, limit: int | None = None,
        epochs: int | None = None, batch_size: int = 256, lr: float = 1e-3, seed: int = 0, val_frac: float = 0.1,
        eval_frac: float = 0.1, max_minutes: float | None = None, chunk_size: int = 5000, extract_batch: int = 64,
        templates: str = "a photo of a {}.", license: str = "apache-2.0", force: bool = False, progress: bool = True,
        command: str | None = None, prq_init_beam: int | None = None, prq_frozen_stages: int | None = None) -> list[Path]:
    """Fit codecs for ``backbone`` (a loaded ``semcomp.backbone.Backbone``) on ``source`` (a
    ``semcomp.datasets.ImageSource``); returns the codec folders written (rank 0; other ranks return ``[]``).

    ``specs``: codec specs to train (default: one progressive codec, ``progressive_spec(budgets, codebook)``).
    Under ``torch.distributed`` (``semcomp fit`` under ``torchrun``) extraction is split by rank, ladder specs train
    data-parallel on every rank (ladder specs with DDP; progressive codecs initialised on rank 0, then each rank
    re-encodes and trains on its share); evaluation and writing happen on rank 0.

    Progressive codecs train with the shipped recipe unless told otherwise: ``prq_init_beam`` (default
    ``RECIPE_INIT_BEAM``), ``prq_frozen_stages`` (``RECIPE_FROZEN_STAGES``) and, when ``epochs`` is None, up to
    ``RECIPE_MAX_EPOCHS`` epochs that early stopping ends."""
    from ..backbone import weights_sha256_of
    from ..extract import extract
    from ..zoo import backbone_dirname, user_codecs_dir
    from .progressive import RECIPE_FROZEN_STAGES, RECIPE_INIT_BEAM, RECIPE_MAX_EPOCHS

    rank, world = _distributed()
    weights = weights_sha256_of(backbone)  # recorded in each card: loads for other weights of this backbone fail
    specs = list(specs) if specs else [progressive_spec(budgets, codebook)]
    for spec in specs:
        codebook_size(spec)  # a bad spec fails now, not after an hour of extraction
    n_known = source.count if limit is None else min(limit, source.count or limit)
    if n_known is not None:
        check_enough_images(n_known, specs, val_frac, eval_frac)  # before any image is read
    work = Path(work_dir) if work_dir else work_dir_for(backbone.name, source.description, limit, weights)
    work.mkdir(parents=True, exist_ok=True)
    feats_path = work / "features.safetensors"
    t0 = time.time()
    if not feats_path.exists():
        extract(backbone, source, feats_path, batch_size=extract_batch, chunk_size=chunk_size, limit=limit,
                templates=templates, rank=rank, world=world, progress=progress)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # rank 0 has merged the parts: every rank reads the same file
    fs = load_features(feats_path)
    if fs.metadata.get("backbone") != backbone.name:
        raise DataError(f"{feats_path} holds features of backbone {fs.metadata.get('backbone')!r}, not {backbone.name!r}; "
                        f"delete it or pass another work dir")
    if weights and fs.metadata.get("backbone_sha256") != weights:
        got = fs.metadata.get("backbone_sha256")
        raise DataError(f"{feats_path} holds features of " + (f"other weights of {backbone.name!r} ({got[:12]}, in use "
                        f"{weights[:12]})" if got else f"{backbone.name!r} with no record of its weights (extracted "
                        f"before they were recorded)") + "; delete it or pass another work dir")
    extract_s = time.time() - t0
    check_enough_images(len(fs.features), specs, val_frac, eval_frac)
    fit_idx, eval_idx = holdout_split(len(fs.features), eval_frac, seed + 1)  # images no codec trains or selects on
    x = F.normalize(torch.as_tensor(fs.features, dtype=torch.float32), dim=-1)
    x_fit, x_eval = x[fit_idx], x[eval_idx]
    text = fs.metadata["_extra"].get("text_features") if "_extra" in fs.metadata else None
    feats_sha = features_sha256(x_fit)
    out_root = Path(out_dir) if out_dir else user_codecs_dir()
    written = []
    for spec in specs:
        progressive = spec.startswith("prq-")
        hyper = {"spec": spec, "features_sha256": feats_sha, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                 "seed": seed, "val_frac": val_frac, "max_minutes": max_minutes}
        kw = {"epochs": epochs} if epochs is not None else {}
        if progressive:
            kw = {"epochs": RECIPE_MAX_EPOCHS if epochs is None else epochs,
                  "prq_init_beam": RECIPE_INIT_BEAM if prq_init_beam is None else prq_init_beam,
                  "prq_frozen_stages": RECIPE_FROZEN_STAGES if prq_frozen_stages is None else prq_frozen_stages}
            hyper.update(kw)  # a folder fitted with another recipe is "other settings"
        key = _run_key(hyper)
        out = out_root / backbone_dirname(backbone.name) / spec
        done = _fit_key(out)
        if done == key and not force:
            logger.info("%s: already fitted for these features and settings (%s); skipped", spec, out)
            if rank == 0:
                written.append(out)
            continue
        if done is not None and not force:  # every rank sees the same folder: none of them trains
            raise CodecError(f"{out} holds a codec made from other images or settings; pass --force to replace it, or "
                             f"--out-dir for another folder")
        t1 = time.time()
        codec, card = train_codec(spec, x_fit, batch_size=batch_size, lr=lr, seed=seed, val_frac=val_frac,
                                  ckpt_path=work / "ckpt" / f"{spec}.pt", progress=progress and rank == 0,
                                  max_seconds=60 * max_minutes if (max_minutes and progressive) else None, **kw)
        if rank != 0:
            continue
        codec.backbone = backbone.name
        codec.preprocessing = backbone.preprocessing
        codec.backbone_sha256 = weights
        if progressive:  # the budgets asked for, else every cut the nested loss weighed (card["cuts"], in stages)
            wanted = budgets or [c * codec.stage_bits for c in card.get("cuts", [codec.num_symbols])]
            spec_budgets = sorted({b for b in wanted if b <= codec.bits and b % codec.stage_bits == 0})
        else:
            spec_budgets = [codec.bits]
        ev = evaluate_budgets(codec, x_eval, fs.labels[eval_idx], text, fs.metadata.get("class_names", []), spec_budgets)
        card.update({
            "backbone": backbone.name, "preprocessing": codec.preprocessing, "dim": codec.dim, "license": license,
            "budgets": spec_budgets, "fit_key": key, "fit_eval": ev,
            "data": {"source": source.description, "dataset": fs.metadata.get("dataset"), "images": int(len(fs.features)),
                     "fit_images": int(len(fit_idx)), "eval_images": int(len(eval_idx)), "limit": limit},
            "timing_s": {"extract": round(extract_s, 1), "train": round(time.time() - t1, 1)},
            "command": command or f"semcomp.training.fit.fit(spec={spec})",
            "processes": world,
        })
        _save_atomically(codec, card, out)
        logger.info("%s: wrote %s (%s)", spec, out, ", ".join(
            f"{r['bits']} bits cos {r['mean_cosine']:.3f}" + (f" top-1 {r['top1']:.3f}" if r["top1"] is not None else "")
            for r in ev["budgets"]))
        written.append(out)
    return written


def _fit_key(out: Path) -> str | None:
    """The ``fit_key`` of the codec already at ``out`` ("" if a codec not made by fit; None if none)."""
    card = out / "card.json"
    if not (out / "model.safetensors").exists() or not card.exists():
        return None
    try:
        return str(json.loads(card.read_text()).get("fit_key", ""))
    except (OSError, ValueError):
        return ""


def _save_atomically(codec, card: dict, out: Path) -> None:
    """Write the folder beside ``out`` and swap it in: a kill never leaves a half-written codec where the app looks."""
    from ..codecs import load_codec

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    codec.save_pretrained(tmp, card)
    load_codec(tmp)  # the folder passes every check a user's load will make
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)

"""The task-agnostic class split: codecs train on a fixed 80 % of classes and are evaluated on the unseen 20 %.

The split is drawn once with a fixed seed and committed under ``assets/splits/`` so that it never
changes with library versions; ``class_split`` reads the committed file when there is one.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPLITS_DIR = Path(__file__).resolve().parent.parent / "assets" / "splits"


def make_class_split(num_classes: int, train_frac: float = 0.8, seed: int = 0) -> dict:
    perm = np.random.default_rng(seed).permutation(num_classes)
    k = int(round(num_classes * train_frac))
    return {"num_classes": num_classes, "seed": seed, "train_frac": train_frac,
            "train_classes": sorted(int(i) for i in perm[:k]), "test_classes": sorted(int(i) for i in perm[k:])}


def fit_mask(labels, split_name: str, keep_unlabelled: bool = False) -> np.ndarray:
    """(N,) bool: the items a codec may be fitted on — those of the split's training classes, and with
    ``keep_unlabelled`` those labelled -1 too (a codec-training file's photo views outside the split's classes:
    ``tower_features --codec-train-file`` leaves the test classes out)."""
    labels = np.asarray(labels)
    keep = np.isin(labels, class_split(split_name)["train_classes"])
    return keep | (labels < 0) if keep_unlabelled else keep


def class_split(name: str) -> dict:
    """A committed split by name, e.g. ``tiny-imagenet`` (160/40) or ``imagenet`` (800/200)."""
    path = SPLITS_DIR / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"no committed class split {path}; known: {sorted(p.stem for p in SPLITS_DIR.glob('*.json'))}")
    return json.loads(path.read_text())

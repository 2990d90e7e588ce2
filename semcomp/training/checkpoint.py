"""Atomic, resumable checkpoints (temp file + os.replace, loaded with weights_only=True)."""
from __future__ import annotations

import os
from pathlib import Path

import torch


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a broken latest checkpoint


def load_checkpoint(path: str | os.PathLike) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def restore_checkpoint(path: str | os.PathLike | None, **parts) -> dict | None:
    """Load the checkpoint at ``path`` (None: no checkpoint) into each named part (``model=..., opt=...``: each
    ``part.load_state_dict(state[name])``); returns the whole state (step, history, ...) or None if there is none."""
    state = load_checkpoint(path) if path else None
    if state is not None:
        for name, part in parts.items():
            part.load_state_dict(state[name])
    return state

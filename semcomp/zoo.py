"""Codec folders by backbone: ``<root>/<backbone>/<spec>/`` (config.json, model.safetensors, card.json).

Roots, searched in this order: the shipped ``weights/codecs/``, then the user's codec folders: every entry of
``$SEMCOMP_CODECS`` (``os.pathsep``-separated), else ``~/.cache/semcomp/codecs``. ``semcomp fit`` and
``semcomp pull`` write to :func:`user_codecs_dir`, so the app, the CLI and the receiver find those codecs too.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .backbone import WEIGHTS_DIR

CODECS_DIR = WEIGHTS_DIR / "codecs"
USER_CODECS_DEFAULT = Path.home() / ".cache" / "semcomp" / "codecs"


def user_codec_dirs() -> list[Path]:
    """The user's codec roots: ``$SEMCOMP_CODECS`` (read at each call), else ``~/.cache/semcomp/codecs``."""
    env = os.environ.get("SEMCOMP_CODECS")
    return [Path(p).expanduser() for p in env.split(os.pathsep) if p] if env else [USER_CODECS_DEFAULT]


def user_codecs_dir() -> Path:
    """Where ``semcomp fit`` and ``semcomp pull`` put codecs: the first user codec root."""
    return user_codec_dirs()[0]


def codec_roots() -> list[Path]:
    """Every root holding ``<backbone>/<spec>/`` codec folders: shipped first, then the user's."""
    roots = [CODECS_DIR]
    for r in user_codec_dirs():
        if r.resolve() != CODECS_DIR.resolve():
            roots.append(r)
    return roots


def backbone_dirname(backbone: str) -> str:
    """A backbone's folder name under a codec root (``ViT-L-14-336/openai`` -> ``ViT-L-14-336_openai``)."""
    return backbone.replace("/", "_")


def shipped_codecs(backbone: str) -> list[dict]:
    """Every codec for a backbone, shipped or the user's (:func:`codec_roots`):
    ``{"spec", "family", "bits", "path", "card"}``, sorted by bits (at equal bits and spec, shipped first)."""
    out = []
    for root in codec_roots():
        out += _folder_codecs(root / backbone_dirname(backbone))
    return sorted(out, key=lambda r: (r["bits"], r["spec"]))


def _folder_codecs(d: Path) -> list[dict]:
    out = []
    if d.is_dir():
        for p in sorted(d.iterdir()):
            if p.name.startswith("."):  # a folder being written (semcomp fit, pull) is not a codec yet
                continue
            if (p / "config.json").exists() and (p / "model.safetensors").exists():
                try:
                    cfg = json.loads((p / "config.json").read_text())
                    card = json.loads((p / "card.json").read_text()) if (p / "card.json").exists() else {}
                    out.append({"spec": str(cfg["spec"]), "family": str(cfg["family"]), "bits": int(cfg["bits"]), "path": p,
                                "card": card if isinstance(card, dict) else {}})
                except (OSError, ValueError, KeyError, TypeError) as e:
                    from .codecs import CodecError

                    raise CodecError(f"malformed codec folder {p}: {e}") from e
    return out


def best_per_budget(rows: list[dict], bits_key: str = "fixed_bits", score_key: str = "top1") -> list[dict]:
    """A family's frontier: the best-scoring row at each bit budget, sorted by bits."""
    best: dict[int, dict] = {}
    for r in rows:
        if r[bits_key] not in best or r[score_key] > best[r[bits_key]][score_key]:
            best[r[bits_key]] = r
    return [best[b] for b in sorted(best)]


RATE_RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "rate_accuracy.json"


def best_measured(backbone: str) -> dict[int, dict]:
    """{bits: shipped codec row} — at each budget, the shipped codec with the best measured zero-shot top-1
    (``bench/results/rate_accuracy.json``); empty where nothing was measured for this backbone."""
    if not RATE_RESULTS.exists():
        return {}
    rep = json.loads(RATE_RESULTS.read_text())
    if rep.get("backbone") != backbone:
        return {}
    shipped = {c["spec"]: c for c in shipped_codecs(backbone)}
    return {r["fixed_bits"]: shipped[r["codec"]] for r in best_per_budget(rep["results"]) if r["codec"] in shipped}

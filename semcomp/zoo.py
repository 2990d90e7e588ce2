"""Codec folders by backbone: ``<root>/<backbone>/<spec>/`` (config.json, model.safetensors, card.json).

Roots, searched in this order: the shipped ``weights/codecs/``, then the user's codec folders: every entry of
``$SEMCOMP_CODECS`` (``os.pathsep``-separated), else ``~/.cache/semcomp/codecs``. ``semcomp fit`` and
``semcomp pull`` write to :func:`user_codecs_dir`, so the app, the CLI and the receiver find those codecs too.

A codec whose card binds it to other weights of its backbone (``backbone_sha256``, see ``semcomp.weights``) is
left out of :func:`shipped_codecs` with a warning: the app, ``semcomp send`` and the receiver offer only codecs
for the weights in use, and an old ``semcomp fit`` folder does not stop the app from starting.

Maintenance: after retraining folders with code that predates the field, record the backbone weights they were
trained for (only card.json changes)::

    python -m semcomp.zoo stamp --backbone semcomp-lite-clip weights/codecs/semcomp-lite-clip/* weights/heads/semcomp-lite-*
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from .backbone import WEIGHTS_DIR

logger = logging.getLogger(__name__)

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
    from .backbone import weights_sha256_of

    out = []
    for root in codec_roots():
        out += _folder_codecs(root / backbone_dirname(backbone))
    current = weights_sha256_of(backbone)
    if current:
        stale = [r for r in out if isinstance(r["card"].get("backbone_sha256"), str) and r["card"]["backbone_sha256"] != current]
        for r in stale:
            logger.warning("skipping codec %s: trained for other weights of backbone %r (%s, in use %s); retrain it "
                           "(semcomp fit --backbone %s)", r["path"], backbone, r["card"]["backbone_sha256"][:12],
                           current[:12], backbone)
        out = [r for r in out if r not in stale]
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


def stamp(folders, backbone: str, weights_sha256: str | None = None, force: bool = False) -> list[Path]:
    """Record in each folder's card.json (codec or head) that it was trained for ``backbone``'s weights: its card
    ``sha256`` as :func:`semcomp.backbone.weights_sha256_of` reads it, or ``weights_sha256`` if given. Every folder
    is checked before any is written (a card, a config naming ``backbone``, no other weights recorded unless
    ``force``). Returns the folders whose card changed."""
    from .backbone import backbone_folder, weights_sha256_of
    from .weights import stamp_backbone

    sha = weights_sha256 or weights_sha256_of(backbone)
    if not sha:
        raise ValueError(f"backbone {backbone!r} has no known weights identity (not a backbone folder with a card); "
                         f"pass the sha256 of the weights the folders were trained for")
    folder = backbone_folder(backbone)
    name = folder.name if folder is not None else backbone
    folders = [Path(f) for f in folders]
    todo = [f for f in folders if stamp_backbone(f, sha, name, force, dry_run=True)]
    for f in todo:
        stamp_backbone(f, sha, name, force)
    return todo


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m semcomp.zoo", description="Codec and head folder maintenance.")
    sub = ap.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stamp", help="record in card.json the backbone weights the folders were trained for "
                                      "(backbone_sha256); config.json and weights are left as they are")
    st.add_argument("--backbone", required=True, help="a shipped backbone name or a backbone folder")
    st.add_argument("--sha256", help="these weights instead of the backbone's current ones (64 hex characters)")
    st.add_argument("--force", action="store_true", help="replace a backbone_sha256 already recorded")
    st.add_argument("folders", nargs="+", help="codec or head folders (config.json + card.json)")
    a = ap.parse_args(argv)
    try:
        changed = stamp(a.folders, a.backbone, a.sha256, a.force)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    for f in a.folders:
        print(f"{'stamped' if Path(f) in changed else 'already stamped'}: {f}")


if __name__ == "__main__":
    main()

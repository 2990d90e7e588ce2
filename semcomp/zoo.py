"""The shipped codec weights: ``weights/codecs/<backbone>/<spec>/`` (config.json, model.safetensors, card.json)."""
from __future__ import annotations

import json
from pathlib import Path

from .backbone import WEIGHTS_DIR

CODECS_DIR = WEIGHTS_DIR / "codecs"


def shipped_codecs(backbone: str) -> list[dict]:
    """Every shipped codec for a backbone: ``{"spec", "family", "bits", "path", "card"}``, sorted by bits."""
    d = CODECS_DIR / backbone.replace("/", "_")
    out = []
    if d.is_dir():
        for p in sorted(d.iterdir()):
            if (p / "config.json").exists() and (p / "model.safetensors").exists():
                try:
                    cfg = json.loads((p / "config.json").read_text())
                    card = json.loads((p / "card.json").read_text()) if (p / "card.json").exists() else {}
                    out.append({"spec": str(cfg["spec"]), "family": str(cfg["family"]), "bits": int(cfg["bits"]), "path": p,
                                "card": card if isinstance(card, dict) else {}})
                except (OSError, ValueError, KeyError, TypeError) as e:
                    from .codecs import CodecError

                    raise CodecError(f"malformed codec folder {p}: {e}") from e
    return sorted(out, key=lambda r: (r["bits"], r["spec"]))


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

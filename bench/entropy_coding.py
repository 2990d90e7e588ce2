"""Entropy coders on real codec symbols: coded size against the entropy, and speed.

Symbols: the best shipped codec (best measured zero-shot top-1 in ``bench/results/rate_accuracy.json``) at
each ``--bits`` budget (default 64 / 128 / 256 / 600), applied to the 10,000 Tiny-ImageNet val features of
``--backbone`` (default the embedded ``semcomp-lite-clip``; ``--features`` overrides the file). A budget with no
measured codec takes the nearest measured one (or, for a backbone without a measured table, the nearest
shipped codec), and the result says which. For each coder (ANS via constriction, Huffman, raw fixed-length) the coded payload is
compared with (a) the ideal code length under the shipped model (sum of -log2 p; what a perfect arithmetic
coder with that model costs, so the gap is the coder's own overhead) and (b) the empirical entropy of these
very symbols (plug-in, per position; the gap adds the train→val model mismatch). Speed: M symbols/s and MB/s of
fixed-length input, encode and decode, one thread.

    python bench/entropy_coding.py
    python bench/entropy_coding.py --backbone semcomp-tiny-clip --bits 64,256,600
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, record, timeit  # noqa: E402
from semcomp.codecs import load_codec  # noqa: E402
from semcomp.data import load_features  # noqa: E402
from semcomp.entropy import empirical_entropy_bits  # noqa: E402
from semcomp.zoo import best_measured, shipped_codecs  # noqa: E402

FEATURE_DIR = Path.home() / ".cache" / "semcomp" / "features"
VAL_FEATURES = {"semcomp-lite-clip": "lite-val.safetensors", "semcomp-tiny-clip": "tin-val.safetensors"}


def pick_codecs(backbone: str, budgets: list[int]) -> list[tuple[int, dict, str]]:
    """(requested bits, codec row, how it was picked) per budget: the best measured codec at that budget, else
    at the nearest measured budget; for a backbone without a measured table, the shipped codec nearest in bits."""
    best = best_measured(backbone)
    how = "best measured top-1 at this budget (rate_accuracy.json)"
    if not best:
        best = {}
        for c in shipped_codecs(backbone):
            best.setdefault(c["bits"], c)
        how = "shipped codec at this budget (no measured table for this backbone)"
    if not best:
        raise SystemExit(f"no codecs for {backbone}")
    out = []
    for b in budgets:
        near = min(best, key=lambda k: (abs(k - b), k))
        out.append((b, best[near], how if near == b else f"nearest available budget ({near} bits; none at {b}); " + how))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default=None, help="default: the --features file's backbone, else semcomp-lite-clip")
    ap.add_argument("--features", default=None, help="val features (default: the backbone's file in ~/.cache/semcomp/features)")
    ap.add_argument("--bits", default="64,128,256,600", help="comma-separated budgets")
    a = ap.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()  # speed is only comparable at equal load: record it
    if a.backbone is None:
        a.backbone = load_features(a.features).metadata["backbone"] if a.features else "semcomp-lite-clip"
    features = Path(a.features) if a.features else FEATURE_DIR / VAL_FEATURES.get(a.backbone, f"{a.backbone.replace('/', '_')}-val.safetensors")
    fs = load_features(features)
    if fs.metadata["backbone"] != a.backbone:
        raise SystemExit(f"{features} holds {fs.metadata['backbone']} features, not {a.backbone}")
    rows = []
    for bits, shipped, how in pick_codecs(a.backbone, [int(b) for b in a.bits.split(",")]):
        codec = load_codec(shipped["path"])
        sym = codec.encode(torch.from_numpy(fs.features)).numpy()
        model = codec.entropy_coder.model
        ideal = model.ideal_bits(sym)
        emp = empirical_entropy_bits(sym, model.alphabet)
        fixed_bytes = sym.size * np.log2(model.alphabet) / 8
        for coder in ("ans", "huffman", "raw"):
            payload = codec.entropy_coder.encode(sym, coder)
            back = codec.entropy_coder.decode(payload, len(sym), coder)
            assert np.array_equal(back, sym), f"{coder} did not round-trip"
            t_enc = timeit(lambda: codec.entropy_coder.encode(sym, coder))
            t_dec = timeit(lambda: codec.entropy_coder.decode(payload, len(sym), coder))
            coded = 8 * len(payload)
            rows.append({"codec": codec.spec, "fixed_bits": codec.bits, "requested_bits": bits, "picked": how, "coder": coder, "items": len(sym), "symbols": int(sym.size),
                         "alphabet": model.alphabet, "coded_bits_per_item": coded / len(sym),
                         "ideal_bits_per_item": ideal / len(sym), "empirical_entropy_bits_per_item": emp / len(sym),
                         "overhead_vs_ideal_pct": 100 * (coded / ideal - 1), "overhead_vs_empirical_pct": 100 * (coded / emp - 1),
                         "encode_msymbols_per_s": sym.size / t_enc / 1e6, "decode_msymbols_per_s": sym.size / t_dec / 1e6,
                         "encode_mb_per_s": fixed_bytes / t_enc / 1e6, "decode_mb_per_s": fixed_bytes / t_dec / 1e6})
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    record("entropy_coding", {"data": f"{len(fs.features)} Tiny-ImageNet val features ({features.name}), backbone {fs.metadata['backbone']}",
                              "backbone": a.backbone, "threads": 1,
                              "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()}, "results": rows})
    md = ["| codec | coder | coded bits/item | ideal (model) | empirical entropy | vs ideal | vs empirical | enc MB/s | dec MB/s |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['codec']} ({r['fixed_bits']} b) | {r['coder']} | {r['coded_bits_per_item']:.1f} | {r['ideal_bits_per_item']:.1f} | "
                  f"{r['empirical_entropy_bits_per_item']:.1f} | {r['overhead_vs_ideal_pct']:+.2f} % | {r['overhead_vs_empirical_pct']:+.2f} % | "
                  f"{r['encode_mb_per_s']:.1f} | {r['decode_mb_per_s']:.1f} |")
    (RESULTS / "entropy_coding.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

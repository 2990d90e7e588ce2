"""Entropy coders on real codec symbols: coded size against the entropy, and speed.

Symbols: the best shipped codec at 64 / 256 / 600 bits applied to the 10,000 Tiny-ImageNet val features of
the embedded backbone. For each coder (ANS via constriction, Huffman, raw fixed-length) the coded payload is
compared with (a) the ideal code length under the shipped model (sum of -log2 p; what a perfect arithmetic
coder with that model costs, so the gap is the coder's own overhead) and (b) the empirical entropy of these
very symbols (plug-in, per position; the gap adds the train→val model mismatch). Speed: M symbols/s and MB/s of
fixed-length input, encode and decode, one thread.

    python bench/entropy_coding.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, record, timeit  # noqa: E402
from semcomp.codecs import load_codec  # noqa: E402
from semcomp.data import load_features  # noqa: E402
from semcomp.entropy import empirical_entropy_bits  # noqa: E402
from semcomp.zoo import best_measured  # noqa: E402

FEATURES = Path.home() / ".cache" / "semcomp" / "features" / "tin-val.safetensors"



def main() -> None:
    torch.set_num_threads(1)
    fs = load_features(FEATURES)
    best = best_measured(fs.metadata["backbone"])
    rows = []
    for bits in (64, 256, 600):
        codec = load_codec(best[bits]["path"])
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
            rows.append({"codec": codec.spec, "fixed_bits": codec.bits, "coder": coder, "items": len(sym), "symbols": int(sym.size),
                         "alphabet": model.alphabet, "coded_bits_per_item": coded / len(sym),
                         "ideal_bits_per_item": ideal / len(sym), "empirical_entropy_bits_per_item": emp / len(sym),
                         "overhead_vs_ideal_pct": 100 * (coded / ideal - 1), "overhead_vs_empirical_pct": 100 * (coded / emp - 1),
                         "encode_msymbols_per_s": sym.size / t_enc / 1e6, "decode_msymbols_per_s": sym.size / t_dec / 1e6,
                         "encode_mb_per_s": fixed_bytes / t_enc / 1e6, "decode_mb_per_s": fixed_bytes / t_dec / 1e6})
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    record("entropy_coding", {"data": f"{len(fs.features)} Tiny-ImageNet val features ({FEATURES.name}), backbone {fs.metadata['backbone']}",
                              "threads": 1, "results": rows})
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

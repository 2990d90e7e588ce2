"""Codec throughput on CPU: encode (+ entropy coding) and decode, features/s, at 64/256/600 bits.

The shipped codecs (weights/codecs/<backbone>/, ``--backbone`` default the embedded ``semcomp-lite-clip``) on
the first ``--batch`` Tiny-ImageNet val features of that backbone (``--features`` overrides the file) when it is there; otherwise untrained codecs of the same architectures on
random unit vectors (speed does not depend on the weights). Encode is timed in fp32 and, on CPUs with
AVX512-BF16/AMX, with the encoder under bf16 autocast (``encode(precision="bf16")``), with the share of symbols
that match fp32. FAISS ProductQuantizer at the nearest budgets, same vectors, same threads. The load average
before and after is recorded: on a shared machine the absolute numbers move with it.
    python bench/codec_speed.py --threads 1
    python bench/codec_speed.py --threads 1 --backbone semcomp-tiny-clip
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import record, timeit  # noqa: E402
from semcomp.codecs import create_codec, load_codec  # noqa: E402
from semcomp.hardware import cpu_has_bf16  # noqa: E402

FEATURE_DIR = Path.home() / ".cache" / "semcomp" / "features"
CODECS = Path(__file__).resolve().parents[1] / "weights" / "codecs"
BACKBONES = {  # val feature file, feature dim, specs per budget
    "semcomp-lite-clip": ("lite-val.safetensors", 384,
                          {64: ["pqvae-n16d8k16", "aesq-c32l4", "fsq-c32l4"], 256: ["pqvae-n64d8k16", "aesq-c128l4", "fsq-c128l4"],
                           600: ["pqvae-n200d16k8", "aesq-c200l8", "fsq-c200l8"]}),
    "semcomp-tiny-clip": ("tin-val.safetensors", 512,
                          {64: ["pqvae-n16d8k16", "aesq-c32l4", "fsq-c32l4"], 256: ["pqvae-n64d8k16", "aesq-c128l4"],
                           600: ["pqvae-n200d16k8", "pqvae-n50d64k4096", "aesq-c200l8"]}),
}



def faiss_pq_rows(x: torch.Tensor, threads: int) -> list[dict]:
    """FAISS product quantisation at the ladder's budgets (M sub-quantisers x 8 bits), same batch, same threads."""
    import faiss
    import numpy as np

    faiss.omp_set_num_threads(threads)
    xn = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    out = []
    for m in (8, 32, 64):
        pq = faiss.ProductQuantizer(xn.shape[1], m, 8)
        pq.train(xn)
        codes = pq.compute_codes(xn)
        one = xn[:1]
        lat = []
        for _ in range(200):
            t0 = time.perf_counter()
            pq.decode(pq.compute_codes(one))
            lat.append(time.perf_counter() - t0)
        lat.sort()
        out.append({"spec": f"faiss-PQ{m}x8", "bits": 8 * m, "batch": len(xn),
                    "encode_per_s": len(xn) / timeit(lambda: pq.compute_codes(xn)),
                    "decode_per_s": len(xn) / timeit(lambda: pq.decode(codes)),
                    "single_item_roundtrip_ms_p50": 1e3 * lat[100], "single_item_roundtrip_ms_p99": 1e3 * lat[197]})
        print({k: (round(v) if isinstance(v, float) and v > 10 else v) for k, v in out[-1].items()}, flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backbone", default=None, choices=sorted(BACKBONES), help="default: the --features file's, else semcomp-lite-clip")
    ap.add_argument("--features", default=None, help="val features (default: the backbone's file in ~/.cache/semcomp/features)")
    ap.add_argument("--dim", type=int, default=None, help="feature dim (default: the backbone's); another dim times untrained codecs")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--huffman-batch", type=int, default=256)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    if a.backbone is None:
        from semcomp.data import load_features

        a.backbone = load_features(a.features).metadata["backbone"] if a.features else "semcomp-lite-clip"
    feature_name, dim, specs = BACKBONES[a.backbone]
    a.dim = a.dim or dim
    features = Path(a.features) if a.features else FEATURE_DIR / feature_name
    shipped_dir = CODECS / a.backbone
    real = features.exists() and a.dim == dim
    if real:
        from semcomp.data import load_features

        fs = load_features(features)
        if fs.metadata["backbone"] != a.backbone:
            raise SystemExit(f"{features} holds {fs.metadata['backbone']} features, not {a.backbone}")
        x = torch.from_numpy(fs.features[: a.batch])
    else:
        x = F.normalize(torch.randn(a.batch, a.dim), dim=-1)
    rows = []
    for bits, budget_specs in specs.items():
        for spec in budget_specs:
            shipped = real and (shipped_dir / spec / "model.safetensors").exists()
            if shipped:
                c = load_codec(shipped_dir / spec)
            else:
                c = create_codec(spec, a.dim)
                c.eval()
                c.fit_entropy_model(x)
            s = c.encode(x)
            row = {"spec": spec, "bits": c.bits, "batch": a.batch, "weights": "shipped" if shipped else "untrained"}
            row["encode_symbols_per_s"] = a.batch / timeit(lambda: c.encode(x))
            if cpu_has_bf16():
                row["encode_bf16_symbols_per_s"] = a.batch / timeit(lambda: c.encode(x, precision="bf16"))
                row["bf16_symbols_equal_to_fp32"] = float((c.encode(x, precision="bf16") == s).float().mean())
            row["decode_symbols_per_s"] = a.batch / timeit(lambda: c.decode(s))
            for coder in ("raw", "ans"):
                row[f"encode+{coder}_per_s"] = a.batch / timeit(lambda: c.compress(x, coder))
                blob = c.compress(x, coder)
                row[f"decompress_{coder}_per_s"] = a.batch / timeit(lambda: c.decompress(blob))
            xh = x[: a.huffman_batch]
            blob = c.compress(xh, "huffman")
            row["encode+huffman_per_s"] = a.huffman_batch / timeit(lambda: c.compress(xh, "huffman"), 0.5)
            row["decompress_huffman_per_s"] = a.huffman_batch / timeit(lambda: c.decompress(blob), 0.5)
            one = x[:1]
            lat = []
            for _ in range(200):
                t0 = time.perf_counter()
                c.decompress(c.compress(one, "ans"))
                lat.append(time.perf_counter() - t0)
            lat.sort()
            row["single_item_roundtrip_ms_p50"] = 1e3 * lat[100]
            row["single_item_roundtrip_ms_p99"] = 1e3 * lat[197]
            row["batch1_roundtrip_per_s"] = 1e3 / row["single_item_roundtrip_ms_p50"]
            rows.append(row)
            print({k: (round(v) if isinstance(v, float) and v > 10 else v) for k, v in row.items()}, flush=True)
    faiss_rows = faiss_pq_rows(x, a.threads)
    for r in rows:  # same-run ratios at (nearest) equal bits
        f = min(faiss_rows, key=lambda fr: abs(fr["bits"] - r["bits"]))
        r["vs_faiss_pq"] = {"faiss": f["spec"], "encode_ratio": r["encode_symbols_per_s"] / f["encode_per_s"],
                            "decode_ratio": r["decode_symbols_per_s"] / f["decode_per_s"]}
        if "encode_bf16_symbols_per_s" in r:
            r["vs_faiss_pq"]["encode_bf16_ratio"] = r["encode_bf16_symbols_per_s"] / f["encode_per_s"]
    data = f"first {len(x)} Tiny-ImageNet val features ({features.name})" if real else "random unit vectors"
    path = record(f"codec_speed_{a.threads}thread", {"backbone": a.backbone, "dim": a.dim, "threads": a.threads, "data": data,
                  "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()}, "results": rows, "faiss_pq": faiss_rows,
                  "note": "shipped codecs where they exist, else untrained codecs of the same architecture (speed "
                          "does not depend on the weights). FAISS ProductQuantizer trained on the same vectors; 600 bits "
                          f"is not expressible for d={a.dim} with 8-bit PQ, so 512 bits (M=64) stands in"})
    print("wrote", path)


if __name__ == "__main__":
    main()

"""Scale: ``semcomp extract --stream`` then ``semcomp encode`` over 10k, 50k and 100k Tiny-ImageNet images.

Each step runs as its own process (the real CLI), timed, with its peak resident memory (``ru_maxrss``). The
features themselves grow with the set (512 floats = 2 KiB a feature, held until the file is written), so the
report also gives peak RSS minus that output: flat if nothing else grows with the set.

    python bench/scale.py --source ~/.cache/semcomp/data/tiny-imagenet-200   # all 500 train images per class
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import record  # noqa: E402


def child(argv: list[str]) -> None:
    from semcomp.cli import main

    t0 = time.perf_counter()
    rc = main(argv)
    print(json.dumps({"seconds": time.perf_counter() - t0, "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rc": rc or 0}))


def run(argv: list[str]) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"semcomp {' '.join(argv)} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", help="Tiny-ImageNet folder layout (train, 500 per class); default: the shared shards (60k train)")
    ap.add_argument("--sizes", default="10000,50000,100000")
    ap.add_argument("--codec", default="pqvae-n16d32k256", help="shipped codec spec to encode with")
    ap.add_argument("--backbone", default="semcomp-tiny-clip")
    a = ap.parse_args()
    from semcomp.zoo import shipped_codecs

    codec = next(c for c in shipped_codecs(a.backbone) if c["spec"] == a.codec)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(s) for s in a.sizes.split(",")]:
            feats = Path(tmp) / f"f{n}.safetensors"
            argv = ["extract", "--split", "train", "--limit", str(n), "--no-progress", "--out", str(feats), "--backbone", a.backbone]
            if a.source:
                argv += ["--source", a.source]
            ex = run(argv)
            from safetensors import safe_open

            with safe_open(str(feats), "np") as f:
                got = f.get_slice("features").get_shape()[0]
            scf = Path(tmp) / f"f{n}.scf"
            en = run(["encode", "--codec", codec["path"], "--features", str(feats), "--coder", "ans", "--out", str(scf)])
            out_mib = got * 512 * 4 / 2**20
            rows.append({"images": got, "extract_seconds": ex["seconds"], "extract_images_per_s": got / ex["seconds"],
                         "extract_peak_rss_mib": ex["maxrss_mib"], "feature_output_mib": out_mib,
                         "extract_peak_rss_minus_output_mib": ex["maxrss_mib"] - out_mib,
                         "encode_seconds": en["seconds"], "encode_features_per_s": got / en["seconds"],
                         "encode_peak_rss_mib": en["maxrss_mib"], "scf_bytes": scf.stat().st_size,
                         "scf_bits_per_feature": 8 * scf.stat().st_size / got})
            print(rows[-1], flush=True)
    growth = {}
    if len(rows) > 1:  # resident memory per extra image, against the 2 KiB each feature itself takes
        lo, hi = rows[0], rows[-1]
        di = hi["images"] - lo["images"]
        growth = {"extract_rss_kib_per_image": (hi["extract_peak_rss_mib"] - lo["extract_peak_rss_mib"]) * 1024 / di,
                  "encode_rss_kib_per_image": (hi["encode_peak_rss_mib"] - lo["encode_peak_rss_mib"]) * 1024 / di,
                  "feature_kib_per_image": 2.0}
        print(growth)
    path = record("scale", {"backbone": a.backbone, "codec": a.codec, "source": a.source or "shared shards", "rss_growth": growth,
                            "note": "wall times include process start, model loading and JPEG decoding; encode includes "
                                    "reading the feature file and ANS coding into one .scf", "results": rows})
    print("wrote", path)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()

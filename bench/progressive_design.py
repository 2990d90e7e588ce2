"""Design alternatives of the progressive codec, measured on held-out items of the *training* classes only:
how many stages own a codebook (the rest share one, with a per-stage scale), after residual k-means
initialisation (no fine-tuning), with the weight size each costs in fp16.

    python bench/progressive_design.py --features ~/.cache/semcomp/features/lite-val.safetensors \\
        --split-name tiny-imagenet --specs prq-s128o8k256 prq-s128o16k256 prq-s128o32k256 prq-s128o48k256 prq-s128o128k256

Writes bench/results/progressive_design.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, record  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True)
    ap.add_argument("--split-name", default="tiny-imagenet")
    ap.add_argument("--specs", nargs="+", required=True)
    ap.add_argument("--kmeans-iters", type=int, default=10)
    ap.add_argument("--out-name", default="progressive_design")
    a = ap.parse_args()
    import faiss

    from semcomp.codecs import create_codec
    from semcomp.data import load_features
    from semcomp.splits import fit_mask
    from semcomp.training.progressive import train_progressive

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    fs = load_features(a.features)
    keep = fit_mask(fs.labels, a.split_name, keep_unlabelled=True)
    x = fs.features[keep]
    rows = []
    for spec in a.specs:
        t0 = time.time()
        codec, card = train_progressive(spec, x, finetune=False, kmeans_iters=a.kmeans_iters, progress=False)
        numel = create_codec(spec, x.shape[1]).state_numel(x.shape[1], codec.params)
        rows.append({"spec": spec, "own_stages": codec.params["o"], "fp16_MB": round(2 * numel / 1e6, 2),
                     "init_s": round(time.time() - t0, 1), "holdout_cosine": card["holdout_cosine_at_cuts"],
                     "train_items": card["train_items"], "holdout_items": card["holdout_items"]})
        print(rows[-1], flush=True)
    path = record(a.out_name, {"data": f"{a.features}: {int(keep.sum())} features of the {a.split_name} training classes "
                                       "(90 % fit, 10 % held out); no test class", "results": rows})
    rep = json.loads(path.read_text())
    cuts = list(rows[0]["holdout_cosine"])
    lines = [rep["data"] + ". Held-out mean cosine of the decoded prefix after residual k-means (no fine-tuning).", "",
             "| spec | own stages | fp16 MB | " + " | ".join(f"{8 * int(c)} b" for c in cuts) + " |",
             "|---|---:|---:|" + "---:|" * len(cuts)]
    for r in rows:
        lines.append(f"| `{r['spec']}` | {r['own_stages']} | {r['fp16_MB']} | " + " | ".join(f"{r['holdout_cosine'][c]:.4f}" for c in cuts) + " |")
    lines += ["", f"Command: `{rep['command']}` ({rep['date']}, commit {rep['git_commit']})."]
    (RESULTS / f"{a.out_name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Is the progressive codec's gap to a peer at a budget larger than its standard error? (issue 20, goal 2)

bench/progressive.py reports each method's mean top-1 over 3 seeds with the seeds' spread. A tie should also count
the test images: the 2,000 unseen-class images are a sample. This script keeps every image's zero-shot outcome for
the prq seeds (beam and greedy) and for the peers' seeds, fitted exactly as that bench fits them (same configs,
same seeds, same training subsets), and bootstraps the difference of the seed-mean top-1s two ways at once: the
images are resampled (paired: both methods see the same resample) and each method's seeds are resampled. The spread
of the difference over those resamples is its standard error; the seeds-only and images-only parts are reported
beside it.

    python bench/paired_se.py --codec ~/.cache/semcomp/codecs-plateau/seed{0,1,2}/prq-s128o32k256 \\
        --train ~/.cache/semcomp/features/lite-tin-train.safetensors --test ~/.cache/semcomp/features/lite-val.safetensors

Writes bench/results/<--out-name, default paired_se>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, record  # noqa: E402
from bench.progressive import load_split, peer_configs, seeded_fit  # noqa: E402


def correct(rec: np.ndarray, y: np.ndarray, text: np.ndarray) -> np.ndarray:
    """(N,) bool: the top-1 class of each reconstruction is its label (bench.peers.zero_shot's arithmetic)."""
    f = F.normalize(torch.as_tensor(rec, dtype=torch.float32), dim=-1)
    t = F.normalize(torch.as_tensor(text, dtype=torch.float32), dim=-1)
    return ((f @ t.T).topk(1, dim=1).indices[:, 0] == torch.as_tensor(y)).numpy()


def bootstrap(a: np.ndarray, b: np.ndarray, draws: int, seed: int) -> dict:
    """a, b: (seeds, N) bool outcomes of two methods on the same N images. Mean top-1 difference (points) and the
    standard errors of the difference of seed means: both levels resampled, seeds only, images only."""
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    # image resamples as count weights: acc[r, s] = outcomes of seed s weighted by resample r's image counts
    w = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(draws)]).astype(np.float32)
    acc_a, acc_b = w @ a.T.astype(np.float32) / n, w @ b.T.astype(np.float32) / n  # (draws, seeds)

    def seed_means(acc: np.ndarray) -> np.ndarray:  # a fresh draw of seeds, with replacement, per resample
        pick = rng.integers(0, acc.shape[1], acc.shape)
        return np.take_along_axis(acc, pick, 1).mean(1)

    both = 100 * (seed_means(acc_a) - seed_means(acc_b))
    images = 100 * (acc_a.mean(1) - acc_b.mean(1))
    per_a, per_b = a.mean(1), b.mean(1)
    seeds_only = 100 * (per_a[rng.integers(0, len(per_a), (draws, len(per_a)))].mean(1)
                        - per_b[rng.integers(0, len(per_b), (draws, len(per_b)))].mean(1))
    diff = 100 * (per_a.mean() - per_b.mean())
    lo, hi = np.percentile(both, [2.5, 97.5])
    return {"diff_points": float(diff), "se_points": float(both.std(ddof=1)), "ci95_points": [float(lo), float(hi)],
            "se_seeds_only": float(seeds_only.std(ddof=1)), "se_images_only": float(images.std(ddof=1)),
            "discordant_images_mean": float(np.mean([(a[i] != b[j]).sum() for i in range(len(a)) for j in range(len(b))]))}


def main() -> None:
    import faiss

    from semcomp.codecs import load_codec

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--codec", required=True, nargs="+", help="prq codec folders: the seeds of one recipe")
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--split-name", default="tiny-imagenet")
    ap.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 24, 32, 48, 64, 96, 128, 256, 384, 512, 768, 1024])
    ap.add_argument("--peers", nargs="+", default=["faiss LSQ", "faiss RQ (beam 5)", "faiss PQ", "PCA + uniform SQ4",
                                                   "PCA + sign", "random rotation + SQ"],
                    help="bench/progressive.py's names; each budget's best of them in its table is among these")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-train", type=int, default=10000, help="as the LSQ-seeds run of bench/progressive.py")
    ap.add_argument("--beam", type=int, default=8)
    ap.add_argument("--beam-max", type=int, default=128, help="beam only up to this budget, as bench/progressive.py")
    ap.add_argument("--draws", type=int, default=10000)
    ap.add_argument("--out-name", default="paired_se")
    ap.add_argument("--drop-unlabelled", action="store_true", help="fit the peers on --train's training-class items "
                    "only, as `semcomp train --split-name` does (a photo file's -1 views left out)")
    # the peer configs of bench/progressive.py, at its defaults
    ap.add_argument("--rq-max", type=int, default=64)
    ap.add_argument("--rq-beam", type=int, default=5)
    ap.add_argument("--lsq-max", type=int, default=16)
    ap.add_argument("--opq-budgets", type=int, nargs="*", default=[])
    a = ap.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    x_tr, x_te, y_te, text = load_split(a.train, a.test, a.split_name, keep_unlabelled=not a.drop_unlabelled)
    xt = torch.from_numpy(x_te)
    codecs = [load_codec(c) for c in a.codec]
    outcomes, top1 = {}, {}
    for bits in a.budgets:
        for beam in (1, a.beam) if bits <= a.beam_max else (1,):
            name = f"semcomp prq (beam {beam})" if beam > 1 else "semcomp prq"
            outcomes[name, bits] = np.stack([correct(c.decode(c.encode(xt, stages=c.stages_for_bits(bits), beam=beam)).numpy(),
                                                     y_te, text) for c in codecs])
        for name, make in peer_configs(x_te.shape[1], bits, a):
            if name in a.peers:
                outcomes[name, bits] = np.stack([correct(seeded_fit(make, x_tr, s, a.max_train).reconstruct(x_te), y_te, text)
                                                 for s in range(a.seeds)])
        for (name, b), o in outcomes.items():
            if b == bits:
                top1[f"{name} @ {bits}"] = [round(100 * float(v), 2) for v in o.mean(1)]
                print(name, bits, top1[f"{name} @ {bits}"], flush=True)
    rows = []
    for bits in a.budgets:
        for prq in ("semcomp prq", f"semcomp prq (beam {a.beam})"):
            for peer in a.peers:
                if (prq, bits) in outcomes and (peer, bits) in outcomes:
                    r = {"bits": bits, "prq": prq, "peer": peer,
                         **bootstrap(outcomes[prq, bits], outcomes[peer, bits], a.draws, seed=bits)}
                    # the rule: a difference within one standard error is a tie
                    r["verdict"] = ("tie (|d| <= SE)" if abs(r["diff_points"]) <= r["se_points"]
                                    else "above by > 1 SE" if r["diff_points"] > 0 else "below by > 1 SE")
                    lo, hi = r["ci95_points"]
                    r["ci95_excludes_0"] = "above" if lo > 0 else "below" if hi < 0 else "no"
                    rows.append(r)
                    print(r, flush=True)
    which = "the training classes only" if a.drop_unlabelled else "the training classes and any unlabelled items"
    rep = {"data": f"fit: {a.train} (peers: {which}, {len(x_tr)} features, no test class; peers on {a.max_train} sampled items "
                   f"per seed as bench/progressive.py); test: {a.test} ({len(x_te)} images of the unseen classes)",
           "codecs": a.codec, "seeds": a.seeds, "draws": a.draws, "top1_per_seed": top1, "comparisons": rows,
           "method": "difference of seed-mean top-1; SE = std over bootstrap draws resampling images (paired) and each "
                     "method's seeds (with replacement); seeds-only and images-only SEs resample one level"}
    path = record(a.out_name, rep)
    lines = ["# prq vs peers: the top-1 difference and its standard error", "",
             f"Zero-shot top-1 on {len(x_te)} unseen-class images, {len(codecs)} prq seeds vs {a.seeds} seeds of each peer; "
             f"{a.draws} bootstrap draws. SE: images (paired) and seeds resampled together.", "",
             "| bits | prq | peer | prq − peer (points) | SE | verdict (ties: within 1 SE) | 95 % interval | interval excludes 0 | SE, seeds only | SE, images only |",
             "|---:|---|---|---:|---:|---|---|---|---:|---:|"]
    lines += [f"| {r['bits']} | {r['prq']} | {r['peer']} | {r['diff_points']:+.2f} | {r['se_points']:.2f} | {r['verdict']} | "
              f"[{r['ci95_points'][0]:+.2f}, {r['ci95_points'][1]:+.2f}] | {r['ci95_excludes_0']} | {r['se_seeds_only']:.2f} | "
              f"{r['se_images_only']:.2f} |" for r in rows]
    lines += ["", "Per-seed top-1 (%): " + "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in top1.items()) + ".",
              "", f"Command: `python {' '.join(sys.argv)}`."]
    (RESULTS / f"{a.out_name}.md").write_text("\n".join(lines) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()

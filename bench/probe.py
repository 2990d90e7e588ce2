"""Linear probe and few-shot classifiers on float vs decoded features (seed 001's protocol, issue #5).

On the 40 classes the codecs never saw: probe-train = their Tiny-ImageNet *train* images, test = their val
images. Linear probe: scikit-learn logistic regression, C chosen on a 10 % split of probe-train. Few-shot:
a linear classifier trained on k shots per class, initialised either from the zero-shot text weights
(W = logit_scale * text features, b = 0) or at random, k = 1, 2, 4, 8, 16 (5 draws each), learning rate
chosen on held-out probe-train images.

    python bench/probe.py --train features/tin-train.safetensors --test features/tin-val.safetensors
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, record  # noqa: E402

CODECS = ["pqvae-n4d32k256", "pqvae-n16d8k16", "pqvae-n64d8k16", "aesq-c200l8"]


def linear_probe(x_tr, y_tr, x_te, y_te, seed=0):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x_tr))
    k = len(x_tr) // 10
    va, tr = perm[:k], perm[k:]
    best = None
    for c in (0.1, 1.0, 10.0):
        m = LogisticRegression(C=c, max_iter=300).fit(x_tr[tr], y_tr[tr])
        acc = m.score(x_tr[va], y_tr[va])
        if best is None or acc > best[0]:
            best = (acc, c)
    m = LogisticRegression(C=best[1], max_iter=300).fit(x_tr, y_tr)
    return {"C": best[1], "top1": float(m.score(x_te, y_te))}


def few_shot(x_tr, y_tr, x_te, y_te, text, scale, shots, init, seed, lrs=(1e-4, 1e-3, 1e-2)):
    """k shots per class from the first 90 % of probe-train; the learning rate is chosen on the last 10 %
    (never on the test set)."""
    g = np.random.default_rng(seed)
    n_pool = int(0.9 * len(x_tr))
    idx = np.concatenate([g.choice(np.nonzero(y_tr[:n_pool] == c)[0], shots, replace=False) for c in range(len(text))])
    xs, ys = torch.as_tensor(x_tr[idx]), torch.as_tensor(y_tr[idx])
    xv, yv = torch.as_tensor(x_tr[n_pool:]), torch.as_tensor(y_tr[n_pool:])
    best = max(lrs, key=lambda lr: _train_eval(xs, ys, xv, yv, text, scale, init, seed, lr))
    return _train_eval(xs, ys, torch.as_tensor(x_te), torch.as_tensor(y_te), text, scale, init, seed, best)


def _train_eval(xs, ys, x_ev, y_ev, text, scale, init, seed, lr, steps=100):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(xs.shape[1], len(text))
    with torch.no_grad():
        if init == "zero-shot":
            lin.weight.copy_(scale * torch.as_tensor(text))
            lin.bias.zero_()
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        loss = F.cross_entropy(lin(xs), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((lin(x_ev).argmax(1) == y_ev).float().mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--split-name", default="tiny-imagenet")
    a = ap.parse_args()
    from semcomp.backbone import load_backbone
    from semcomp.codecs import load_codec
    from semcomp.data import load_features
    from semcomp.splits import class_split
    from semcomp.zoo import shipped_codecs

    classes = class_split(a.split_name)["test_classes"]
    remap = {c: i for i, c in enumerate(classes)}
    tr, te = load_features(a.train), load_features(a.test)
    mtr, mte = np.isin(tr.labels, classes), np.isin(te.labels, classes)
    x_tr, x_te = tr.features[mtr], te.features[mte]
    y_tr = np.asarray([remap[int(v)] for v in tr.labels[mtr]])
    perm = np.random.default_rng(0).permutation(len(x_tr))  # random order: the last 10 % is held out
    x_tr, y_tr = x_tr[perm], y_tr[perm]
    y_te = np.asarray([remap[int(v)] for v in te.labels[mte]])
    text = te.metadata["_extra"]["text_features"][classes]
    scale = load_backbone(te.metadata["backbone"]).logit_scale
    paths = {c["spec"]: c["path"] for c in shipped_codecs(te.metadata["backbone"])}
    variants = {"float": (x_tr, x_te)}
    missing = [s for s in CODECS if s not in paths]  # a backbone's pruned ladder: say so in the report
    for spec in (s for s in CODECS if s in paths):
        codec = load_codec(paths[spec])
        variants[spec] = (codec.reconstruct(x_tr).numpy(), codec.reconstruct(x_te).numpy())
    rows = []
    for name, (ftr, fte) in variants.items():
        zs = float(((torch.as_tensor(fte) @ torch.as_tensor(text).T).argmax(1) == torch.as_tensor(y_te)).float().mean())
        row = {"features": name, "zero_shot_top1": zs, "linear_probe": linear_probe(ftr, y_tr, fte, y_te)}
        for init in ("zero-shot", "random"):
            row[f"few_shot_{init}"] = {k: float(np.mean([few_shot(ftr, y_tr, fte, y_te, text, scale, k, init, s) for s in range(5)]))
                                      for k in (1, 2, 4, 8, 16)}
        rows.append(row)
        print(row, flush=True)
    record("probe", {"backbone": te.metadata["backbone"], "data": f"{len(x_tr)} probe-train features (Tiny-ImageNet train) and "
                     f"{len(x_te)} test features (val) of the {len(classes)} classes unseen by the codecs", "results": rows,
                     "codecs_not_shipped": missing})
    lines = ["| features | zero-shot | linear probe | 1-shot ZS-init / random | 4-shot ZS-init / random | 16-shot ZS-init / random |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        fz, fr = r["few_shot_zero-shot"], r["few_shot_random"]
        lines.append(f"| {r['features']} | {100 * r['zero_shot_top1']:.1f} | {100 * r['linear_probe']['top1']:.1f} | "
                     + " | ".join(f"{100 * fz[k]:.1f} / {100 * fr[k]:.1f}" for k in (1, 4, 16)) + " |")
    (RESULTS / "probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

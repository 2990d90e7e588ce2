"""Linear probe and few-shot classifiers on float vs decoded features (seed 001's protocol, issue #5).

On the 40 classes the codecs never saw: probe-train = their Tiny-ImageNet *train* images, test = their val
images. Linear probe: scikit-learn logistic regression, C chosen on a 10 % split of probe-train. Few-shot:
a linear classifier trained on k shots per class, initialised either from the zero-shot text weights
(W = logit_scale * text features, b = 0) or at random, k = 1, 2, 4, 8, 16 (5 draws each), learning rate
chosen on held-out probe-train images.

Backbone: ``--backbone`` (default the embedded ``semcomp-lite-clip``) picks the default feature files in
``~/.cache/semcomp/features`` (``lite-train`` / ``lite-val``; ``tin-train`` / ``tin-val`` for
``semcomp-tiny-clip``); ``--train`` / ``--test`` override them. Two variants where the train file lacks the
unseen classes (the lite train features hold only the 160 codec-training classes):

- ``--probe-train val-half``: the unseen classes' own val images, split per class into two seeded halves;
  each half is probe-train once and test once (two folds, every val image tested once), results averaged.
- ``--classes seen``: the 160 codec-*training* classes, probe-train = the train file's items of those classes
  (labels >= 0), test = their val images. The codecs were trained on these classes (and possibly on these
  very train features), so this is not the task-agnostic protocol; it is written to ``--name`` (e.g. probe_seen).

    python bench/probe.py --backbone semcomp-tiny-clip --train features/tin-train.safetensors --test features/tin-val.safetensors
    python bench/probe.py --probe-train val-half
    python bench/probe.py --classes seen --name probe_seen
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
FEATURE_DIR = Path.home() / ".cache" / "semcomp" / "features"
FEATURE_FILES = {"semcomp-lite-clip": ("lite-train.safetensors", "lite-val.safetensors"),
                 "semcomp-tiny-clip": ("tin-train.safetensors", "tin-val.safetensors")}
SHOTS = (1, 2, 4, 8, 16)


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
    pools = [np.nonzero(y_tr[:n_pool] == c)[0] for c in range(len(text))]
    if min(len(q) for q in pools) < shots:
        raise SystemExit(f"{shots}-shot: a class has only {min(len(q) for q in pools)} probe-train items in the few-shot pool")
    idx = np.concatenate([g.choice(q, shots, replace=False) for q in pools])
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


def evaluate(name, ftr, y_tr, fte, y_te, text, scale, shots=SHOTS) -> dict:
    zs = float(((torch.as_tensor(fte) @ torch.as_tensor(text).T).argmax(1) == torch.as_tensor(y_te)).float().mean())
    row = {"features": name, "zero_shot_top1": zs, "linear_probe": linear_probe(ftr, y_tr, fte, y_te)}
    for init in ("zero-shot", "random"):
        row[f"few_shot_{init}"] = {k: float(np.mean([few_shot(ftr, y_tr, fte, y_te, text, scale, k, init, s) for s in range(5)]))
                                  for k in shots}
    return row


def mean_rows(rows: list[dict]) -> dict:
    """The folds' average (each fold tests a disjoint half of the same images)."""
    out = {"features": rows[0]["features"], "zero_shot_top1": float(np.mean([r["zero_shot_top1"] for r in rows])),
           "linear_probe": {"C": [r["linear_probe"]["C"] for r in rows], "top1": float(np.mean([r["linear_probe"]["top1"] for r in rows]))},
           "folds": rows}
    for init in ("zero-shot", "random"):
        out[f"few_shot_{init}"] = {k: float(np.mean([r[f"few_shot_{init}"][k] for r in rows])) for k in rows[0][f"few_shot_{init}"]}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default=None, help="default: the --test file's backbone, else semcomp-lite-clip")
    ap.add_argument("--train", default=None, help="train features (default: the backbone's file in ~/.cache/semcomp/features)")
    ap.add_argument("--test", default=None, help="val features (default: the backbone's file)")
    ap.add_argument("--split-name", default="tiny-imagenet")
    ap.add_argument("--classes", choices=["unseen", "seen"], default="unseen",
                    help="unseen: the 40 classes the codecs never saw (the protocol); seen: the 160 codec-training classes")
    ap.add_argument("--probe-train", choices=["train", "val-half"], default="train",
                    help="train: the train file's images of those classes; val-half: two folds over the test file's own images")
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--name", default="probe", help="result name: bench/results/<name>.{json,md}")
    ap.add_argument("--shots", default=",".join(map(str, SHOTS)), help="few-shot k values (the table shows 1, 4, 16)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the few-shot steps are tiny: more threads only contend)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from semcomp.backbone import load_backbone
    from semcomp.codecs import load_codec
    from semcomp.data import load_features
    from semcomp.splits import class_split
    from semcomp.zoo import shipped_codecs

    if a.backbone is None:
        a.backbone = load_features(a.test).metadata["backbone"] if a.test else "semcomp-lite-clip"
    files = FEATURE_FILES.get(a.backbone, tuple(f"{a.backbone.replace('/', '_')}-{s}.safetensors" for s in ("train", "val")))
    train_path = Path(a.train) if a.train else FEATURE_DIR / files[0]
    test_path = Path(a.test) if a.test else FEATURE_DIR / files[1]
    split = class_split(a.split_name)
    classes = split["test_classes"] if a.classes == "unseen" else split["train_classes"]
    remap = {c: i for i, c in enumerate(classes)}
    te = load_features(test_path)
    for f, path in ((te, test_path),):
        if f.metadata["backbone"] != a.backbone:
            raise SystemExit(f"{path} holds {f.metadata['backbone']} features, not {a.backbone}")
    mte = np.isin(te.labels, classes)
    x_all, y_all = te.features[mte], np.asarray([remap[int(v)] for v in te.labels[mte]])
    if a.probe_train == "train":
        tr = load_features(train_path)
        if tr.metadata["backbone"] != a.backbone:
            raise SystemExit(f"{train_path} holds {tr.metadata['backbone']} features, not {a.backbone}")
        mtr = np.isin(tr.labels, classes)  # labels -1 (photos without a Tiny-ImageNet class) never match
        if not mtr.any():
            raise SystemExit(f"{train_path} has no items of the {len(classes)} {a.classes} classes; use --probe-train val-half "
                             "(two folds over the val images) or --classes seen")
        y_tr = np.asarray([remap[int(v)] for v in tr.labels[mtr]])
        perm = np.random.default_rng(0).permutation(int(mtr.sum()))  # random order: the last 10 % is held out
        folds = [(tr.features[mtr][perm], y_tr[perm], x_all, y_all)]
        data = (f"{int(mtr.sum())} probe-train features ({train_path.name}) and {len(x_all)} test features ({test_path.name}) "
                f"of the {len(classes)} classes {'unseen by' if a.classes == 'unseen' else 'used to train'} the codecs")
    else:
        g = np.random.default_rng(0)
        half = np.zeros(len(y_all), bool)
        for c in range(len(classes)):
            idx = g.permutation(np.nonzero(y_all == c)[0])
            half[idx[: len(idx) // 2]] = True
        folds = []
        for a_half in (half, ~half):
            perm = np.random.default_rng(0).permutation(int(a_half.sum()))
            folds.append((x_all[a_half][perm], y_all[a_half][perm], x_all[~a_half], y_all[~a_half]))
        data = (f"{len(x_all)} val features ({test_path.name}) of the {len(classes)} classes "
                f"{'unseen by' if a.classes == 'unseen' else 'used to train'} the codecs, split per class into two seeded halves "
                f"({int(half.sum())} / {int((~half).sum())}); each half is probe-train once and test once, results are the two folds' mean")
    text = te.metadata["_extra"]["text_features"][classes]
    scale = load_backbone(a.backbone).logit_scale
    paths = {c["spec"]: c["path"] for c in shipped_codecs(a.backbone)}
    wanted = [s for s in a.codecs.split(",") if s]
    missing = [s for s in wanted if s not in paths]  # a backbone's pruned ladder: say so in the report
    codecs = {"float": None, **{s: load_codec(paths[s]) for s in wanted if s in paths}}
    rows = []
    for name, codec in codecs.items():
        per_fold = []
        for x_tr, y_tr, x_te, y_te in folds:
            ftr, fte = (x_tr, x_te) if codec is None else (codec.reconstruct(x_tr).numpy(), codec.reconstruct(x_te).numpy())
            per_fold.append(evaluate(name, ftr, y_tr, fte, y_te, text, scale, [int(k) for k in a.shots.split(",")]))
        row = per_fold[0] if len(per_fold) == 1 else mean_rows(per_fold)
        if codec is not None:
            row["bits"] = codec.bits
        rows.append(row)
        print({k: v for k, v in row.items() if k != "folds"}, flush=True)
    n_test = sum(len(f[3]) for f in folds)
    record(a.name, {"backbone": a.backbone, "classes": a.classes, "probe_train": a.probe_train, "data": data,
                    "test_images": n_test, "results": rows, "codecs_not_shipped": missing})
    lines = ["| features | zero-shot | linear probe | 1-shot ZS-init / random | 4-shot ZS-init / random | 16-shot ZS-init / random |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        fz, fr = r["few_shot_zero-shot"], r["few_shot_random"]
        label = r["features"] + (f" ({r['bits']} bits)" if "bits" in r else "")
        lines.append(f"| {label} | {100 * r['zero_shot_top1']:.1f} | {100 * r['linear_probe']['top1']:.1f} | "
                     + " | ".join(f"{100 * fz[k]:.1f} / {100 * fr[k]:.1f}" for k in (1, 4, 16)) + " |")
    lines += ["", f"{a.backbone}; {data}. Top-1 %; few-shot: mean of 5 draws."]
    (RESULTS / f"{a.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

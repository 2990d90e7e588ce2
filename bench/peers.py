"""semcomp vs the peers a user would otherwise pick, at equal bits, on the same features and split.

Peers come from the libraries themselves: faiss PQ (m x nbits), OPQ+PQ, residual quantiser (RQ),
ScalarQuantizer int8/int4, sign-binary (1 bit/dim) and PCA-k + uniform scalar quantisation. They are
trained on the codec-training classes and tested, with the shipped semcomp codecs, on the unseen classes.

    python bench/peers.py --train features/tin-train.safetensors --test features/tin-val.safetensors

Writes bench/results/peers.{json,md,png}. With --synthetic it runs a CI-sized version on random
clustered features (the test checks the report's shape, never its numbers).
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
from semcomp.zoo import best_per_budget  # noqa: E402


def faiss_specs(d: int, quick: bool = False) -> list[tuple[str, str]]:
    """(method, faiss index_factory string) at budgets near semcomp's ladder (16 ... 2048 bits)."""
    if quick:  # CI-sized: one budget per method
        return [("faiss PQ", "PQ4x4"), ("faiss OPQ+PQ", "OPQ4,PQ4x4"), ("faiss RQ", "RQ2x4"), ("faiss SQ int4", "SQ4"),
                ("PCA + uniform SQ4", "PCA16,SQ4")]
    out = []
    for m in (2, 4, 8, 16, 32, 64, 128):
        if d % m == 0:
            out.append(("faiss PQ", f"PQ{m}x8"))
            if m <= 16:  # OPQ training takes minutes per config on 2 cores beyond this
                out.append(("faiss OPQ+PQ", f"OPQ{m},PQ{m}x8"))
    for m in (2, 4, 8):
        out.append(("faiss RQ", f"RQ{m}x8"))
    out += [("faiss SQ int4", "SQ4"), ("faiss SQ int8", "SQ8")]
    for k in (16, 32, 64, 128):
        if k < d:
            out.append(("PCA + uniform SQ4", f"PCA{k},SQ4"))
            out.append(("PCA + uniform SQ8", f"PCA{k},SQ8"))
    return out


class FaissCodec:
    def __init__(self, spec: str, d: int):
        import faiss

        self.index = faiss.index_factory(d, spec)
        self.spec = spec

    def train(self, x: np.ndarray) -> None:
        self.index.train(np.ascontiguousarray(x, dtype=np.float32))

    @property
    def bits(self) -> int:
        return 8 * self.index.sa_code_size()

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        codes = self.index.sa_encode(np.ascontiguousarray(x, dtype=np.float32))
        return self.index.sa_decode(codes)


class SignBinary:
    spec = "sign"

    def __init__(self, d: int):
        self.d = d

    def train(self, x):
        self.mean = x.mean(0)  # centre first: CLIP features share a common offset
        self.scale = np.abs(x - self.mean).mean(0)  # per-dimension magnitude, part of the (shared) model

    @property
    def bits(self):
        return self.d

    def reconstruct(self, x):
        return np.sign(x - self.mean) * self.scale + self.mean


def zero_shot(feats: np.ndarray, labels: np.ndarray, text: np.ndarray) -> tuple[float, float]:
    f = F.normalize(torch.as_tensor(feats, dtype=torch.float32), dim=-1)
    t = F.normalize(torch.as_tensor(text, dtype=torch.float32), dim=-1)
    top = (f @ t.T).topk(min(5, len(t)), dim=1).indices
    y = torch.as_tensor(labels)
    return float((top[:, 0] == y).float().mean()), float((top == y[:, None]).any(1).float().mean())


def evaluate(name, spec, bits, rec, x_te, y_te, text, text_rec=None) -> dict:
    cos = F.cosine_similarity(torch.as_tensor(rec, dtype=torch.float32), torch.as_tensor(x_te), dim=-1).mean().item()
    t1, t5 = zero_shot(rec, y_te, text)
    row = {"method": name, "spec": spec, "bits": int(bits), "mean_cosine": cos, "top1": t1, "top5": t5}
    if text_rec is not None:  # both sides compressed: image features and class-name text features
        row["top1_text_compressed_too"] = zero_shot(rec, y_te, text_rec)[0]
    return row


def run(x_tr, x_te, y_te, text, semcomp_codecs, max_train=10000, quick=False):
    rng = np.random.default_rng(0)
    if len(x_tr) > max_train:
        x_tr = x_tr[rng.choice(len(x_tr), max_train, replace=False)]
    d = x_tr.shape[1]
    rows = []
    import time

    for name, spec in faiss_specs(d, quick):
        c = FaissCodec(spec, d)
        t0 = time.time()
        c.train(x_tr)
        train_s = time.time() - t0
        rows.append(evaluate(name, spec, c.bits, c.reconstruct(x_te), x_te, y_te, text, c.reconstruct(text)))
        rows[-1]["train_s"] = round(train_s, 2)
        print(rows[-1], flush=True)
    sb = SignBinary(d)
    sb.train(x_tr)
    rows.append(evaluate("sign-binary", "sign", sb.bits, sb.reconstruct(x_te), x_te, y_te, text, sb.reconstruct(text)))
    for codec in semcomp_codecs:
        rec = codec.reconstruct(x_te).numpy()
        rows.append(evaluate(f"semcomp {codec.family}", codec.spec, codec.bits, rec, x_te, y_te, text,
                             codec.reconstruct(text).numpy()))
        print(rows[-1], flush=True)
    float_t1, float_t5 = zero_shot(x_te, y_te, text)
    return rows, {"top1": float_t1, "top5": float_t5}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train")
    ap.add_argument("--test")
    ap.add_argument("--backbone", default="semcomp-tiny-clip")
    ap.add_argument("--split-name", default="tiny-imagenet")
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--out-name", default="peers")
    a = ap.parse_args()
    if a.synthetic:
        from tests.conftest import clustered_features

        x, y, centres = clustered_features(n_classes=20, per_class=60, dim=64)
        test = (y % 5 == 0).numpy()  # every 5th class is unseen
        keep = np.unique(y.numpy()[test])
        remap = {c: i for i, c in enumerate(keep)}
        rows, fl = run(x.numpy()[~test], x.numpy()[test], np.asarray([remap[int(v)] for v in y.numpy()[test]]),
                       centres.numpy()[keep], [], quick=True)
        meta = {"data": "synthetic clustered features (not real semantics)"}
    else:
        from semcomp.codecs import load_codec
        from semcomp.data import load_features
        from semcomp.splits import class_split
        from semcomp.zoo import shipped_codecs

        split = class_split(a.split_name)
        tr, te = load_features(a.train), load_features(a.test)
        x_tr = tr.features[np.isin(tr.labels, split["train_classes"])]
        mask = np.isin(te.labels, split["test_classes"])
        remap = {c: i for i, c in enumerate(split["test_classes"])}
        y_te = np.asarray([remap[int(v)] for v in te.labels[mask]])
        text = te.metadata["_extra"]["text_features"][split["test_classes"]]
        codecs = [load_codec(c["path"]) for c in shipped_codecs(a.backbone)]
        rows, fl = run(x_tr, te.features[mask], y_te, text, codecs)
        meta = {"data": f"train: {a.train} ({len(x_tr)} features of the {len(split['train_classes'])} codec-training classes); "
                        f"test: {a.test} ({int(mask.sum())} features of the {len(split['test_classes'])} unseen classes)",
                "backbone": a.backbone}
    path = record(a.out_name, {**meta, "float": fl, "results": rows})
    rep = json.loads(path.read_text())
    write_markdown(rep, a.out_name)
    plot(rep, a.out_name)
    print("wrote", path)


def write_markdown(rep, name):
    lines = [f"{rep['data']}. Float feature: top-1 {100 * rep['float']['top1']:.1f} %.", "",
             "| method | spec | bits | mean cosine | top-1 % | top-5 % | top-1 %, text compressed too |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rep["results"], key=lambda r: (r["bits"], r["method"])):
        lines.append(f"| {r['method']} | `{r['spec']}` | {r['bits']} | {r['mean_cosine']:.4f} | {100 * r['top1']:.1f} | {100 * r['top5']:.1f} | "
                     f"{100 * r.get('top1_text_compressed_too', float('nan')):.1f} |")
    lines += ["", f"Command: `{rep['command']}` on {rep['machine']['cpu']} ({rep['date']}, commit {rep['git_commit']})."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def plot(rep, name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.get_cmap("tab20").colors
    for i, m in enumerate(sorted({r["method"] for r in rep["results"]})):
        rr = best_per_budget([r for r in rep["results"] if r["method"] == m], bits_key="bits")  # one point per budget
        style = "o-" if m.startswith("semcomp") else "s--"
        ax.plot([r["bits"] for r in rr], [100 * r["top1"] for r in rr], style, label=m, color=colors[i % 20],
                lw=2 if m.startswith("semcomp") else 1)
    ax.axhline(100 * rep["float"]["top1"], ls="--", c="gray", label="float feature")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bits per feature")
    ax.set_ylabel("zero-shot top-1 % (unseen classes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)


if __name__ == "__main__":
    if sys.argv[1:] == ["--replot"]:  # redraw table and plot from the recorded JSON
        rep = json.loads((RESULTS / "peers.json").read_text())
        write_markdown(rep, "peers")
        plot(rep, "peers")
    else:
        main()

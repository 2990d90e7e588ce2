"""The progressive codec at every budget against the peers, same features, same split, same run.

One prq model is cut at every budget {8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024} bits (plus 384 and 768,
where sign-binary and the rotation quantiser sit); each peer is fitted per budget: FAISS PQ, OPQ+PQ, RQ (beam),
LSQ, PCA + uniform SQ, PCA + sign (sign-binary at 384), and a random-rotation + scalar quantiser
(RaBitQ / TurboQuant style: seeded random orthogonal rotation of the centred feature, one Lloyd-Max scalar
codebook of 2^b levels for every rotated coordinate). Everything is fitted on features of the 160 codec-training
classes (the same file the prq model was trained on) and tested zero-shot on the 40 unseen classes; the shipped
per-budget semcomp ladder is evaluated on the same test features. Seeded peers run 3 seeds (seed = training
subset + k-means seed) for PQ and RQ at ``--seed-budgets``; top-1 standard error of the test set is reported.
Encode/decode speed on one core (torch and faiss at 1 thread) against FAISS PQ at equal bits.

    python bench/progressive.py --codec weights/codecs/semcomp-lite-clip/prq-s128o32k256 \\
        --train ~/.cache/semcomp/features/lite-train-photos.safetensors --test ~/.cache/semcomp/features/lite-val.safetensors

Writes bench/results/progressive.{json,md}. On a loaded machine run it in two parts (``--part peers`` writes
progressive_peers.json, the peers and the ladder, independent of the prq model; ``--part prq`` writes
progressive_prq.json; ``--part merge`` joins them, each row keeping the command that measured it).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, record, timeit  # noqa: E402
from bench.peers import FaissCodec, evaluate  # noqa: E402

BUDGETS = (8, 16, 24, 32, 48, 64, 96, 128, 256, 384, 512, 768, 1024)


class PCASign:
    """PCA to ``k`` dims, one sign bit each, decoded as sign x per-dim mean magnitude back in feature space
    (k = d: plain sign-binary of the centred feature)."""

    def __init__(self, k: int):
        self.k, self.bits, self.spec = k, k, f"PCA{k},sign"

    def train(self, x, seed=0):
        self.mean = x.mean(0)
        xc = x - self.mean
        w, v = np.linalg.eigh(xc.T @ xc)  # principal axes, ascending
        self.p = v[:, ::-1][:, : self.k]  # (d, k)
        self.scale = np.abs(xc @ self.p).mean(0)

    def reconstruct(self, x):
        return (np.sign((x - self.mean) @ self.p) * self.scale) @ self.p.T + self.mean


class RotationSQ:
    """Random rotation + one shared Lloyd-Max scalar quantiser of 2^b levels per coordinate (RaBitQ/TurboQuant)."""

    def __init__(self, d: int, b: int):
        self.d, self.b, self.bits, self.spec = d, b, d * b, f"rot,SQ{b}"

    def train(self, x, seed=0):
        import faiss

        g = np.random.default_rng(seed)
        self.r, _ = np.linalg.qr(g.standard_normal((self.d, self.d)))
        self.mean = x.mean(0)
        z = ((x - self.mean) @ self.r).reshape(-1, 1).astype(np.float32)
        km = faiss.Kmeans(1, 2**self.b, niter=25, seed=seed, max_points_per_centroid=4096)
        km.train(np.ascontiguousarray(z[g.choice(len(z), min(len(z), 400_000), replace=False)]))
        self.levels = np.sort(km.centroids[:, 0])

    def reconstruct(self, x):
        z = (x - self.mean) @ self.r
        edges = (self.levels[1:] + self.levels[:-1]) / 2
        return self.levels[np.searchsorted(edges, z)] @ self.r.T + self.mean


def load_split(train: str, test: str, split_name: str, keep_unlabelled: bool = True):
    """(x_tr, x_te, y_te, text): the training-class features (+ the unlabelled photos, no test class, unless
    ``keep_unlabelled`` is False: then exactly what `semcomp train --split-name` fits), the unseen classes' test
    features, their labels 0..n-1 and their class-name text features."""
    from semcomp.data import load_features
    from semcomp.splits import class_split, fit_mask

    split = class_split(split_name)
    tr, te = load_features(train), load_features(test)
    keep_tr = fit_mask(tr.labels, split_name, keep_unlabelled)
    x_tr = np.ascontiguousarray(tr.features[keep_tr], dtype=np.float32)
    mask = np.isin(te.labels, split["test_classes"])
    remap = {c: i for i, c in enumerate(split["test_classes"])}
    y_te = np.asarray([remap[int(v)] for v in te.labels[mask]])
    x_te = np.ascontiguousarray(te.features[mask], dtype=np.float32)
    return x_tr, x_te, y_te, te.metadata["_extra"]["text_features"][split["test_classes"]]


def peer_configs(d: int, bits: int, a) -> list[tuple[str, object]]:
    """(method, codec) fitted at exactly ``bits``."""
    out = []
    m = bits // 8
    if bits % 8 == 0 and d % m == 0:
        out.append(("faiss PQ", lambda: FaissCodec(f"PQ{m}x8np", d)))  # np: no polysemous code reordering (minutes, same reconstructions)
        if bits in a.opq_budgets:  # OPQ training is the slowest peer: only these budgets
            out.append(("faiss OPQ+PQ", lambda: FaissCodec(f"OPQ{m},PQ{m}x8np", d)))
    if bits % 8 == 0 and bits <= a.rq_max:
        def rq():
            c = FaissCodec(f"RQ{m}x8", d)
            c.index.rq.max_beam_size = a.rq_beam  # beam search in training and encoding
            return c
        out.append((f"faiss RQ (beam {a.rq_beam})", rq))
    if bits % 8 == 0 and bits <= a.lsq_max:
        out.append(("faiss LSQ", lambda: FaissCodec(f"LSQ{m}x8", d)))
    for b in (4, 8):
        if bits % b == 0 and 1 <= bits // b <= d:
            out.append((f"PCA + uniform SQ{b}", lambda b=b: FaissCodec(f"PCA{bits // b},SQ{b}", d)))
    if bits <= d:
        out.append(("sign-binary" if bits == d else "PCA + sign", lambda: PCASign(bits)))
    if bits % d == 0 and bits // d <= 4:
        out.append(("random rotation + SQ", lambda: RotationSQ(d, bits // d)))
    return out


def seeded_fit(make, x_tr, seed: int, max_train: int):
    c = make()
    rng = np.random.default_rng(seed)
    x = x_tr if seed == 0 and len(x_tr) <= max_train else x_tr[rng.choice(len(x_tr), min(max_train, len(x_tr)), replace=False)]
    if isinstance(c, FaissCodec):
        import faiss

        idx = c.index
        inner = faiss.downcast_index(idx.index) if isinstance(idx, faiss.IndexPreTransform) else idx
        for obj in ("pq", "rq", "lsq"):
            q = getattr(inner, obj, None)
            if q is not None and hasattr(q, "cp"):
                q.cp.seed = 1234 + seed
            if q is not None and hasattr(q, "random_seed"):  # LSQ's own initialisation and perturbations
                q.random_seed = 1234 + seed
        c.train(np.ascontiguousarray(x, dtype=np.float32))
    else:
        c.train(np.asarray(x, dtype=np.float32), seed=seed)
    return c


def speed(codec, x_te: np.ndarray, bits: int) -> dict:
    """Items/s on one core (``bench.common.timeit``: a warm-up call, then the mean over >= 1 s of calls): prq greedy
    encode + decode at ``bits`` vs FAISS PQ at the same bits."""
    import faiss

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    x = torch.from_numpy(x_te)
    m = bits // codec.stage_bits
    s = codec.encode(x, stages=m)
    enc = timeit(lambda: codec.encode(x, stages=m))
    dec = timeit(lambda: codec.decode(s))
    row = {"bits": bits, "items": len(x_te), "prq_encode_per_s": len(x_te) / enc, "prq_decode_per_s": len(x_te) / dec}
    # the same greedy residual search in FAISS's C++ (its ResidualQuantizer holding this codec's tables, beam 1):
    # what an RQ encoder of these codes costs there, and a check that both pick the same codewords
    from semcomp.compressed_domain import additive_form, faiss_index

    index = faiss_index(additive_form(codec).prefix(m))  # keep it referenced: rq belongs to it
    rq = index.rq
    rq.max_beam_size = 1
    xr = np.ascontiguousarray(x_te - codec.additive_bias(), dtype=np.float32)
    packed = rq.compute_codes(xr)
    row["faiss_rq_same_codebooks_encode_per_s"] = len(x_te) / timeit(lambda: rq.compute_codes(xr))
    ours = np.zeros_like(packed)
    rq.pack_codes(len(xr), faiss.swig_ptr(np.ascontiguousarray(s.numpy(), dtype=np.int32)), faiss.swig_ptr(ours))
    row["faiss_rq_same_codes_share"] = float((packed == ours).all(1).mean())
    if 384 % (bits // 8) == 0:
        pq = FaissCodec(f"PQ{bits // 8}x8np", x_te.shape[1])
        pq.train(np.ascontiguousarray(x_te[:4000]))  # speed only: what it was fitted on does not matter
        xc = np.ascontiguousarray(x_te)
        codes = pq.index.sa_encode(xc)
        row["faiss_pq_encode_per_s"] = len(x_te) / timeit(lambda: pq.index.sa_encode(xc))
        row["faiss_pq_decode_per_s"] = len(x_te) / timeit(lambda: pq.index.sa_decode(codes))
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--codec", required=True, nargs="+", help="a prq codec folder; several (seeds of one recipe): "
                    "their rows are averaged per budget (mean ± std), the first one's speed is timed")
    ap.add_argument("--train", required=True, help="feature file of the codec-training classes (what prq was fitted on)")
    ap.add_argument("--test", required=True)
    ap.add_argument("--backbone", default="semcomp-lite-clip")
    ap.add_argument("--split-name", default="tiny-imagenet")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-budgets", type=int, nargs="*", default=[8, 16, 32], help="budgets where PQ and RQ run --seeds seeds")
    ap.add_argument("--max-train", type=int, default=20000)
    ap.add_argument("--opq-budgets", type=int, nargs="*", default=[32, 64, 128])
    ap.add_argument("--rq-max", type=int, default=64)
    ap.add_argument("--rq-beam", type=int, default=5, help="faiss RQ max_beam_size (faiss' default)")
    ap.add_argument("--lsq-max", type=int, default=16)
    ap.add_argument("--beam", type=int, default=8, help="prq beam width measured beside greedy")
    ap.add_argument("--beam-max", type=int, default=128)
    ap.add_argument("--budgets", type=int, nargs="*", default=list(BUDGETS))
    ap.add_argument("--no-ladder", action="store_true")
    ap.add_argument("--out-name", default="progressive")
    ap.add_argument("--peers-name", nargs="+", help="--part merge: take the peers from <name>_peers.json for each name "
                    "(default: --out-name); a later file's rows replace an earlier one's for the same method and budget")
    ap.add_argument("--log", help="--part salvage-peers: the stdout of a --part peers run that was stopped early")
    ap.add_argument("--part", default="all", choices=["all", "peers", "prq", "merge", "salvage-peers", "salvage-prq"],
                    help="peers: peers + ladder into <out-name>_peers.json; prq: the prq model, merged with that file")
    a = ap.parse_args()
    if a.part == "merge":
        return merge(a.out_name, a.peers_name)
    if a.part == "salvage-peers":
        return salvage_peers(a)
    if a.part == "salvage-prq":
        return salvage_prq(a)
    import faiss

    from semcomp.codecs import load_codec
    from semcomp.splits import class_split
    from semcomp.zoo import shipped_codecs

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    split = class_split(a.split_name)
    x_tr, x_te, y_te, text = load_split(a.train, a.test, a.split_name)
    d = x_te.shape[1]
    codecs = [load_codec(c) for c in a.codec] if a.part != "peers" else []
    codec = codecs[0] if codecs else None
    rows = []
    xt, tt = torch.from_numpy(x_te), torch.from_numpy(np.ascontiguousarray(text, dtype=np.float32))
    for path, one in zip(a.codec, codecs):  # each progressive model, cut at every budget
        card = json.loads((Path(path) / "card.json").read_text())
        seed = card.get("seed")
        for bits in a.budgets:
            m = one.stages_for_bits(bits)
            for beam in sorted({1, a.beam} if bits <= a.beam_max else {1}):
                t0 = time.time()
                rec = one.decode(one.encode(xt, stages=m, beam=beam)).numpy()
                r = evaluate(f"semcomp prq (beam {beam})" if beam > 1 else "semcomp prq", one.spec, bits, rec, x_te, y_te, text,
                             one.decode(one.encode(tt, stages=m, beam=beam)).numpy())
                r.update(encode_s=round(time.time() - t0, 2), seed=seed, codec_path=str(path), codec_sha256=card.get("sha256"))
                rows.append(r)
                print(r, flush=True)
    for bits in a.budgets if a.part != "prq" else []:
        for name, make in peer_configs(d, bits, a):
            seeds = range(a.seeds) if bits in a.seed_budgets and (name in ("faiss PQ", "faiss LSQ") or name.startswith("faiss RQ")) else range(1)
            for seed in seeds:
                t0 = time.time()
                try:
                    c = seeded_fit(make, x_tr, seed, a.max_train if "LSQ" not in name and "OPQ" not in name else 10000)
                except RuntimeError as e:  # a faiss config that cannot train here: say so, keep going
                    print("skip", name, bits, e, flush=True)
                    break
                r = evaluate(name, c.spec, c.bits, c.reconstruct(x_te), x_te, y_te, text, c.reconstruct(np.asarray(text, dtype=np.float32)))
                r.update(seed=seed, train_s=round(time.time() - t0, 1))
                rows.append(r)
                print(r, flush=True)
    if not a.no_ladder and a.part != "prq":
        for c in shipped_codecs(a.backbone):
            if c["family"] == "prq":
                continue
            lc = load_codec(c["path"])
            rows.append(evaluate(f"semcomp {lc.family} (ladder)", lc.spec, lc.bits, lc.reconstruct(xt).numpy(), x_te, y_te, text,
                                 lc.reconstruct(tt).numpy()))
            print(rows[-1], flush=True)
    fl = evaluate("float", "float", 32 * d, x_te, x_te, y_te, text)
    if a.part == "peers":
        path = record(f"{a.out_name}_peers", {"train": a.train, "test": a.test, "fit_items": int(len(x_tr)),
                                              "float": {"top1": fl["top1"], "top5": fl["top5"]}, "results": rows})
        print("wrote", path)
        return
    speeds = [speed(codec, x_te, b) for b in (8, 32, 64, 128, 256, 512, 1024) if b in a.budgets]
    cards = [json.loads((Path(c) / "card.json").read_text()) for c in a.codec]
    card = cards[0]
    rep = {"data": f"fit: {a.train} ({len(x_tr)} features: the training classes and any unlabelled items, no test class); test: {a.test} "
                   f"({len(x_te)} features of the {len(split['test_classes'])} unseen classes)",
           "codec": codec.spec, "codec_card": {k: card.get(k) for k in ("epochs_run", "best_epoch", "stopped", "wall_time_s", "frozen_stages")},
           "backbone": a.backbone, "float": {"top1": fl["top1"], "top5": fl["top5"]}, "test_items": int(len(x_te)),
           "train": a.train, "test": a.test, "results": rows, "speed_1thread": speeds}
    if len(cards) > 1:
        rep["codec_seeds"] = [{"path": str(c), **{k: cd.get(k) for k in ("seed", "epochs_run", "best_epoch", "stopped", "wall_time_s")}}
                              for c, cd in zip(a.codec, cards)]
    if a.part == "prq":  # merged with the peers' own recorded run (same files) by --part merge
        print("wrote", record(f"{a.out_name}_prq", rep))
        return
    path = record(a.out_name, rep)
    write_markdown(json.loads(path.read_text()), a.out_name)
    print("wrote", path)


def salvage_peers(a) -> None:
    """The peers record from the rows a ``--part peers`` run printed before it was stopped (each row is printed,
    flushed, as soon as it is measured): nothing re-measured, the record says it is partial."""
    import ast

    rows = [ast.literal_eval(l) for l in Path(a.log).read_text().splitlines() if l.startswith("{'method'")]
    last = rows[-1]
    path = record(f"{a.out_name}_peers", {"train": a.train, "test": a.test, "results": rows,
                                          "partial": f"rows printed by a --part peers run on these files, stopped for time "
                                                     f"after {last['method']} {last['spec']} ({len(rows)} rows); the ladder "
                                                     "was not reached (see bench/results/rate_accuracy.json)"})
    print("wrote", path)


def salvage_prq(a) -> None:
    """The prq record from the rows a ``--part prq`` run printed before it was stopped in its speed measurement;
    the float reference and the speed are measured here (nothing else is re-measured)."""
    import ast

    from semcomp.codecs import load_codec
    from semcomp.data import load_features
    from semcomp.splits import class_split

    rows = [ast.literal_eval(l) for l in Path(a.log).read_text().splitlines() if l.startswith("{'method': 'semcomp prq")]
    card = json.loads((Path(a.codec[0]) / "card.json").read_text())
    split = class_split(a.split_name)
    te = load_features(a.test)
    mask = np.isin(te.labels, split["test_classes"])
    remap = {c: i for i, c in enumerate(split["test_classes"])}
    y_te = np.asarray([remap[int(v)] for v in te.labels[mask]])
    x_te = np.ascontiguousarray(te.features[mask], dtype=np.float32)
    fl = evaluate("float", "float", 32 * x_te.shape[1], x_te, x_te, y_te, te.metadata["_extra"]["text_features"][split["test_classes"]])
    codec = load_codec(a.codec[0])
    speeds = [speed(codec, x_te, b) for b in (8, 32, 64, 128, 256, 512, 1024) if b in a.budgets]
    rep = {"data": f"fit: {a.train} (the training classes and any unlabelled items, no test class); test: {a.test} (unseen classes)",
           "codec": card["spec"], "codec_card": {k: card.get(k) for k in ("epochs_run", "best_epoch", "stopped", "wall_time_s")},
           "backbone": a.backbone, "float": {"top1": fl["top1"], "top5": fl["top5"]}, "test_items": int(len(x_te)),
           "train": a.train, "test": a.test, "results": rows, "speed_1thread": speeds,
           "partial": "prq rows printed by a --part prq run on these files, stopped in its speed measurement (faiss PQ's "
                      "default polysemous training took minutes per budget; the speed reference now trains PQ...np); "
                      "float and speed measured by this command"}
    print("wrote", record(f"{a.out_name}_prq", rep))


def merge(name: str, peers_name: str | None = None) -> None:
    """progressive.{json,md} from the two recorded parts; each row keeps the command that measured it."""
    prq = json.loads((RESULTS / f"{name}_prq.json").read_text())
    peer_rows, commands, partial = {}, [], []
    for pn in peers_name or [name]:
        peers = json.loads((RESULTS / f"{pn}_peers.json").read_text())
        if (prq["train"], prq["test"]) != (peers["train"], peers["test"]):
            raise SystemExit(f"the parts were measured on different files: {prq['train']}/{prq['test']} vs {peers['train']}/{peers['test']}")
        mine = {}
        for r in peers["results"]:
            mine.setdefault((r["method"], r["bits"]), []).append(dict(r, measured_by=peers["command"]))
        peer_rows.update(mine)  # later files replace earlier rows of the same method and budget
        commands.append(peers["command"])
        partial += [peers["partial"]] if peers.get("partial") else []
    rows = [dict(r, measured_by=prq["command"]) for r in prq["results"]] + [r for v in peer_rows.values() for r in v]
    rep = {**prq, "results": rows, "parts": {"prq": prq["command"], "peers": commands},
           **({"peers_partial": " ".join(partial)} if partial else {})}
    path = record(name, rep)
    write_markdown(json.loads(path.read_text()), name)
    print("wrote", path)


def summarise(rows, method):
    """{bits: (mean top1, std top1 over seeds, n seeds, spec)} — the best spec per budget by mean top-1."""
    by = {}
    for r in rows:
        if r["method"] == method:
            by.setdefault((r["bits"], r["spec"]), []).append(r["top1"])
    best = {}
    for (bits, spec), v in by.items():
        mean = float(np.mean(v))
        if bits not in best or mean > best[bits][0]:
            best[bits] = (mean, float(np.std(v, ddof=1)) if len(v) > 1 else None, len(v), spec)  # sample std
    return best


def write_markdown(rep, name):
    rows = rep["results"]
    n = rep["test_items"]
    methods = sorted({r["method"] for r in rows})
    peers = [m for m in methods if not m.startswith("semcomp")]
    ladder = [m for m in methods if m.endswith("(ladder)")]
    prq = summarise(rows, "semcomp prq")
    beams = [m for m in methods if m.startswith("semcomp prq (beam")]
    beam = summarise(rows, beams[0]) if beams else {}
    sums = {m: summarise(rows, m) for m in peers}
    lad = {}
    for m in ladder:
        for b, v in summarise(rows, m).items():
            if b not in lad or v[0] > lad[b][0]:
                lad[b] = v
    fmt = lambda v: "–" if v is None else (f"{100 * v[0]:.1f}" + (f" ± {100 * v[1]:.1f}" if v[1] is not None else ""))
    lines = [f"{rep['data']}. Float feature: top-1 {100 * rep['float']['top1']:.1f} %. Codec `{rep['codec']}` "
             f"({rep['codec_card']}" + (f"; {len(rep['codec_seeds'])} seeds of it: prq ± is their std" if rep.get("codec_seeds") else "")
             + "). Top-1 % zero-shot on the unseen classes; ± is the sample standard deviation over seeds (peers, where run); "
             f"the test set's standard error is ±{100 * math.sqrt(0.25 / n):.1f} points at most (binomial, {n} items).", "",
             "| bits | prq (greedy) | prq (beam) | best peer | best semcomp ladder | " + " | ".join(peers) + " |",
             "|---:|---:|---:|---|---|" + "---:|" * len(peers)]
    for b in sorted({r["bits"] for r in rows if r["bits"] <= 1024}):
        bp = max(((m, s[b]) for m, s in sums.items() if b in s), key=lambda t: t[1][0], default=None)
        lines.append(f"| {b} | {fmt(prq.get(b))} | {fmt(beam.get(b))} | "
                     + (f"{fmt(bp[1])} ({bp[0]})" if bp else "–") + " | "
                     + (f"{fmt(lad[b])} (`{lad[b][3]}`)" if b in lad else "–") + " | "
                     + " | ".join(fmt(sums[m].get(b)) for m in peers) + " |")
    if rep.get("peers_partial"):
        lines += ["", f"Peers: {rep['peers_partial']}."]
    if rep.get("partial"):
        lines += ["", f"prq: {rep['partial']}."]
    lines += ["", "Speed on one core (items/s, mean over >= 1 s of calls after a warm-up; torch and faiss at 1 thread; prq greedy encode of the first bits/8 stages):", "",
              "| bits | prq encode | prq decode | FAISS RQ encode, same codebooks (same codes) | FAISS PQ encode | FAISS PQ decode |",
              "|---:|---:|---:|---:|---:|---:|"]
    for s in rep["speed_1thread"]:
        rq = (f"{s['faiss_rq_same_codebooks_encode_per_s']:,.0f} ({100 * s['faiss_rq_same_codes_share']:.1f} %)"
              if "faiss_rq_same_codebooks_encode_per_s" in s else "–")
        lines.append(f"| {s['bits']} | {s['prq_encode_per_s']:,.0f} | {s['prq_decode_per_s']:,.0f} | {rq} | "
                     f"{s.get('faiss_pq_encode_per_s', float('nan')):,.0f} | {s.get('faiss_pq_decode_per_s', float('nan')):,.0f} |")
    lines += ["", f"Command: `{rep['command']}` on {rep['machine']['cpu']} ({rep['date']}, commit {rep['git_commit']})."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

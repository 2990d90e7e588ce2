"""Training of the progressive residual quantiser (``semcomp train --spec prq-...``).

1. Initialisation by residual k-means (faiss.Kmeans): bias = the mean feature; each own stage's codebook is
   k-means on what the stages before it leave; the shared codebook is k-means on the residual after the own
   stages, and each shared stage's scale the least-squares fit of its residual by its greedy codewords.
2. Nested (Matryoshka-style) fine-tuning of every table jointly: the loss is the mean, over the cut points that
   are bit budgets (8, 16, 24, ... bits), of ``1 - cos(decoded prefix, x)``, each divided by its value after
   initialisation so every budget weighs the same. Codes are re-assigned greedily at the start of every epoch (an
   epoch is a fresh random subset of ``epoch_items`` training items: re-encoding all 128 stages dominates) and
   held fixed within it (fixed-assignment codebook updates: the tables get gradients, the codes do not).
   Adam works on unit-RMS copies of the codebooks and on log-scales, so a late stage (codewords ~100x smaller
   than the first) moves by the same relative step as an early one.
3. Early stopping on a held-out slice of the *training* features (never the evaluation classes): the learning
   rate halves after ``patience // 2`` epochs without improvement; training stops after ``patience``.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..codecs import create_codec
from ..codecs.progressive import ProgressiveRQ, greedy_encode, prefix_sums
from .codec import features_sha256, holdout_split

logger = logging.getLogger(__name__)

BUDGETS = (8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024)  # the bit budgets the nested loss weighs
# The shipped recipe (weights/codecs/semcomp-lite-clip/prq-s128o32k256): faiss.ResidualQuantizer init with beam 5,
# the first codebook kept at that init, fine-tuned until early stopping (107-122 epochs on 26.6 k features with photo
# views, 3 seeds; bench/results/progressive_photos.md). `semcomp train` and `semcomp fit` default to it for prq specs.
RECIPE_INIT_BEAM = 5
RECIPE_FROZEN_STAGES = 1
RECIPE_MAX_EPOCHS = 1000  # a ceiling: early stopping ends the run


def budget_cuts(codec: ProgressiveRQ) -> list[int]:
    """Stage counts at the bit budgets this codec reaches, plus its full depth."""
    b = codec.stage_bits
    cuts = sorted({x // b for x in BUDGETS if x % b == 0 and x // b <= codec.num_symbols} | {codec.num_symbols})
    return cuts


@torch.no_grad()
def residual_kmeans_init(codec: ProgressiveRQ, x: torch.Tensor, niter: int = 10, seed: int = 0,
                         max_points_per_centroid: int = 40, progress: bool = False, rq_beam: int = 0,
                         first_redo: int = 1) -> None:
    """Fill bias, own codebooks, shared codebook and scales from ``x`` (N, D) by residual k-means (faiss).

    ``rq_beam`` > 0: the own stages come from ``faiss.ResidualQuantizer`` trained with that beam width (its stage
    codebooks are trained on beam-searched residuals); 0: greedy residual k-means, one faiss.Kmeans per stage.
    ``first_redo`` > 1: the first stage is fitted alone, ``first_redo`` k-means runs keeping the lowest objective
    (faiss ``nredo``), and the other own stages (residual quantiser or k-means) are fitted on its residual. The
    8-bit cut is that one k-means, and which optimum a single run lands in moves its unseen-class zero-shot by
    about ±2 points (bench/results/first_stage_draws.md)."""
    import faiss
    from tqdm import tqdm

    faiss.omp_set_num_threads(torch.get_num_threads())  # as many threads as torch was given (--threads)
    s, o, k = codec.params["s"], codec.params["o"], codec.params["k"]
    d = codec.dim
    codec.bias.copy_(x.mean(0))
    r = x - codec.bias

    def kmeans(data: torch.Tensor, stage: int, nredo: int = 1) -> torch.Tensor:
        km = faiss.Kmeans(d, k, niter=niter, seed=seed * 1000 + stage, max_points_per_centroid=max_points_per_centroid,
                          nredo=nredo, verbose=False)
        km.train(np.ascontiguousarray(data.numpy(), dtype=np.float32))
        return torch.from_numpy(km.centroids.copy())

    def take_nearest(book: torch.Tensor) -> None:  # the residual after this stage's greedy pick
        r.sub_(book[((book * book).sum(1)[None] - 2 * r @ book.T).argmin(1)])

    first = 0  # own stages already fitted
    if first_redo > 1 and o:
        codec.books[0] = kmeans(r, 0, nredo=first_redo)
        take_nearest(codec.books[0])
        first = 1
    if rq_beam and o > first:
        # faiss' residual quantiser: each stage's k-means on the residuals of a beam search over the stages before
        rq = faiss.ResidualQuantizer(d, o - first, int(round(math.log2(k))))
        rq.max_beam_size = rq_beam
        rq.cp.niter, rq.cp.seed = niter, seed
        rq.train(np.ascontiguousarray(r.numpy(), dtype=np.float32))
        codec.books[first:].copy_(torch.from_numpy(faiss.vector_to_array(rq.codebooks).reshape(o - first, k, d)))
        for j in range(first, o):
            take_nearest(codec.books[j])
    for j in tqdm(range(first, o if not rq_beam else first), desc="residual k-means (own stages)", disable=not progress, leave=False):
        codec.books[j] = kmeans(r, j)
        take_nearest(codec.books[j])
    if s > o:
        book = kmeans(r, o)
        codec.shared[0] = book
        norms = (book * book).sum(1)
        for j in tqdm(range(s - o), desc="shared-stage scales", disable=not progress, leave=False):
            a = float(r.pow(2).sum(1).mean().sqrt() / norms.mean().sqrt())  # residual RMS over codeword RMS
            for _ in range(2):  # assign at scale a, then refit a by least squares on those codewords
                idx = (a * a * norms[None] - 2 * a * (r @ book.T)).argmin(1)
                c = book[idx]
                a = float((r * c).sum() / (c * c).sum().clamp_min(1e-12))
            a = max(a, 1e-6)
            codec.scales[j] = a
            idx = (a * a * norms[None] - 2 * a * (r @ book.T)).argmin(1)
            r -= a * book[idx]


@torch.no_grad()
def prefix_cosines(codec: ProgressiveRQ, x: torch.Tensor, cuts: list[int], batch: int = 4096, beam: int = 1) -> np.ndarray:
    """Mean cosine of the decoded prefix at each cut, codes from the codec's own encoder: (len(cuts),)."""
    tot = np.zeros(len(cuts))
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        s = codec.encode(xb, stages=max(cuts), beam=beam)
        dec = codec.prefix_decodes(s, cuts)  # (C, B, D)
        tot += F.cosine_similarity(dec, xb[None], dim=-1).sum(1).numpy()
    return tot / len(x)


class _Tables(torch.nn.Module):
    """The trainable view of a codec's tables: unit-RMS codebooks times fixed per-book gains, log-scales."""

    def __init__(self, codec: ProgressiveRQ):
        super().__init__()
        o = codec.params["o"]
        self.o, self.shared_on = o, codec.params["s"] > o
        self.bias = torch.nn.Parameter(codec.bias.detach().clone())
        g = codec.books.detach().pow(2).mean((1, 2)).sqrt().clamp_min(1e-8)  # (o,)
        self.register_buffer("gain", g)
        self.books = torch.nn.Parameter(codec.books.detach() / g[:, None, None])
        gs = codec.shared.detach().pow(2).mean().sqrt().clamp_min(1e-8) if self.shared_on else torch.tensor(1.0)
        self.register_buffer("shared_gain", gs)
        self.shared = torch.nn.Parameter(codec.shared.detach() / gs)
        self.log_scales = torch.nn.Parameter(codec.scales.detach().clamp_min(1e-8).log())

    def prefix_decodes(self, codes: torch.Tensor, cuts: list[int]) -> torch.Tensor:
        """Un-normalised decodes of the first c stages for each cut c: (B, len(cuts), D), differentiable
        (``prefix_sums`` on this view's tables: the gains and log-scales folded in)."""
        shared = self.shared[0] if self.shared_on else None
        return prefix_sums(codes, cuts, self.bias, self.gain[:, None, None] * self.books, shared,
                           self.log_scales.exp() * self.shared_gain)

    @torch.no_grad()
    def write_to(self, codec: ProgressiveRQ) -> None:
        codec.bias.copy_(self.bias)
        codec.books.copy_(self.gain[:, None, None] * self.books)
        codec.shared.copy_(self.shared_gain * self.shared)
        codec.scales.copy_(self.log_scales.exp())
        codec._weights_hash = None


def train_progressive(spec: str, features, epochs: int = 100, batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
                      val_frac: float = 0.1, patience: int = 6, kmeans_iters: int = 10, finetune: bool = True,
                      epoch_items: int = 8192, rq_beam: int = 0, frozen_stages: int = 0, first_redo: int = 1,
                      cut_weights: dict[int, float] | None = None, max_seconds: float | None = None, codec_kwargs: dict | None = None,
                      progress: bool = True, ckpt_path=None) -> tuple[ProgressiveRQ, dict]:
    """Residual k-means, then nested fine-tuning with early stopping on held-out training features.

    ``frozen_stages`` > 0: the bias and the first ``frozen_stages`` own codebooks keep their initialisation (their
    gradients are zeroed), so the shortest cuts stay the k-means / residual-quantiser codes. The nested loss is
    free to move the first codewords without changing their held-out cosine; for the lite backbone's thumbnails-only seed-0 prq
    that cost 1.4 points of 8-bit zero-shot on unseen classes (41.9 after init, 40.5 after fine-tuning). Which
    k-means optimum the first stage lands in matters more: 41.9-45.8 over seeds (bench/results/progressive_frozen.md).

    ``cut_weights``: {bits: weight} for budget cuts whose normalised term counts more (or less) than 1 in the nested
    loss, e.g. {16: 4.0}; the held-out loss that early stopping watches uses the same weights.

    Returns the best codec (by held-out nested loss, after rounding to fp16 as it is stored) and a card with
    the curve (per epoch: train loss, held-out loss, held-out cosine at every budget cut).

    ``ckpt_path``: after the initialisation and after every epoch the whole state (tables, optimiser, curve, best
    tables, random generator) goes to ``run_checkpoint_path(ckpt_path, run_key)``; a killed run with the same
    spec, features and settings resumes there (a resumed run equals the uninterrupted one). Deleted at the end.

    Under ``torch.distributed`` (``semcomp fit`` under ``torchrun``) every rank calls this with the same features:
    rank 0 initialises and broadcasts the tables; each epoch every rank re-encodes only its ``rank::world`` share of
    the epoch's items (the costly part) and trains on its share of every batch, the gradients summed over ranks
    (so a step equals the one-process step on the whole batch); the held-out loss is rank 0's, broadcast, so every
    rank stops at the same epoch. Rank 0 alone writes checkpoints."""
    from tqdm import tqdm

    import torch.distributed as dist

    from .checkpoint import load_checkpoint, save_checkpoint
    from .codec import run_checkpoint_path, run_key

    ddp = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} must be a multiple of the {world} processes sharing each batch")
    t0 = time.time()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)  # the epochs' item subsets: the same on every rank and after a resume
    x_all = F.normalize(torch.as_tensor(np.asarray(features), dtype=torch.float32), dim=-1)
    tr_idx, va_idx = holdout_split(len(x_all), val_frac, seed)
    x_tr, x_va = x_all[tr_idx], x_all[va_idx]
    codec = create_codec(spec, x_all.shape[1], **(codec_kwargs or {}))
    if not isinstance(codec, ProgressiveRQ):
        raise ValueError(f"train_progressive trains prq codecs, got {spec!r}")
    if not 0 <= frozen_stages <= codec.params["o"]:
        raise ValueError(f"frozen_stages must lie in 0..{codec.params['o']} (the own-codebook stages), got {frozen_stages}")
    run = {"spec": spec, "features_sha256": features_sha256(x_all), "epochs": epochs, "batch_size": batch_size, "lr": lr,
           "seed": seed, "val_frac": val_frac, "patience": patience, "kmeans_iters": kmeans_iters, "finetune": finetune,
           "epoch_items": epoch_items, "rq_beam": rq_beam, "codec_kwargs": dict(sorted((codec_kwargs or {}).items()))}
    if frozen_stages:  # only when set, so the keys (and resumable checkpoints) of earlier runs stay what they were
        run["frozen_stages"] = frozen_stages
    if isinstance(first_redo, bool) or not isinstance(first_redo, int) or first_redo < 1:
        raise ValueError(f"first_redo must be an int >= 1, got {first_redo!r}")
    if first_redo > 1:
        run["first_redo"] = first_redo
    cuts = budget_cuts(codec)
    weights = None  # the plain mean over cuts (the shipped recipe)
    if cut_weights:
        weights = torch.ones(len(cuts))
        at = {c * codec.stage_bits: i for i, c in enumerate(cuts)}
        for bits, w in cut_weights.items():
            if bits not in at or not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ValueError(f"cut_weights: {bits} bits -> {w!r}; the cuts are {sorted(at)} bits, weights finite and >= 0")
            weights[at[bits]] = float(w)
        if weights.sum() <= 0:
            raise ValueError("cut_weights leave no cut with a positive weight")
        run["cut_weights"] = {str(b): float(w) for b, w in sorted(cut_weights.items())}
        weights = weights / weights.sum()

    def nested(terms: torch.Tensor) -> torch.Tensor:  # (C,) normalised per-cut terms -> the loss
        return terms.mean() if weights is None else (terms * weights).sum()
    key = run_key(run)
    ckpt = run_checkpoint_path(ckpt_path, key) if ckpt_path else None
    state = load_checkpoint(ckpt) if ckpt else None
    if state is not None and state.get("run_key") != key:
        logger.warning("%s: checkpoint %s belongs to another run; starting fresh", spec, ckpt)
        state = None
    if state is not None:
        codec.load_state_dict(state["init_codec"])
        ref, history, init_s = state["ref"], state["history"], state["init_s"]
        logger.info("%s: resumed from %s after epoch %d", spec, ckpt, history[-1]["epoch"])
    else:
        if rank == 0:
            residual_kmeans_init(codec, x_tr, niter=kmeans_iters, seed=seed, progress=progress, rq_beam=rq_beam,
                                 first_redo=first_redo)
        if ddp:
            for t in codec.state_dict().values():
                dist.broadcast(t, 0)
        init_s = time.time() - t0
        cos0 = prefix_cosines(codec, x_va, cuts)
        ref = torch.as_tensor(1 - cos0, dtype=torch.float32).clamp_min(1e-6)  # per-cut normaliser
        if ddp:
            dist.broadcast(ref, 0)
        val0 = float(nested((1 - torch.as_tensor(cos0)) / ref))
        history = [{"epoch": 0, "val_loss": val0, "val_cosine": dict(zip(map(str, cuts), np.round(cos0, 5).tolist())),
                    "seconds": round(init_s, 1)}]
        logger.info("%s init (residual k-means, %.0f s): held-out cosine %s", spec, init_s, history[0]["val_cosine"])
    init_state = {k: v.detach().clone() for k, v in codec.state_dict().items()}
    best = (history[0]["val_loss"], init_state, 0)
    stop = "not fine-tuned"
    if finetune:
        tables = _Tables(codec)
        opt = torch.optim.Adam(tables.parameters(), lr=lr)
        bad, start = 0, 1
        if state is not None and "tables" in state:
            tables.load_state_dict(state["tables"])
            opt.load_state_dict(state["opt"])
            gen.set_state(state["gen"])
            best, bad, start = (state["best_loss"], state["best_state"], state["best_epoch"]), state["bad"], state["epoch"] + 1
            tables.write_to(codec)
        n_ep = min(len(x_tr), epoch_items)  # items per epoch: a fresh random subset, re-encoded at its start
        steps = max(1, n_ep // batch_size)
        local = batch_size // world
        stop = f"max epochs ({epochs})"

        def save(epoch: int) -> None:
            if ckpt is not None and rank == 0:
                save_checkpoint({"run_key": key, "init_codec": init_state, "ref": ref, "history": history, "init_s": init_s,
                                 "tables": tables.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                                 "best_loss": best[0], "best_state": best[1], "best_epoch": best[2], "bad": bad,
                                 "epoch": epoch}, ckpt)

        if state is None:
            save(0)
        for epoch in range(start, epochs + 1):
            if bad >= patience:
                stop = f"early stop: held-out loss not better for {patience} epochs"
                break
            sub = x_tr[torch.randperm(len(x_tr), generator=gen)[:n_ep]][: steps * batch_size]
            mine = sub[rank::world]  # this rank's share of every batch (batch_size is a multiple of world)
            with torch.no_grad():
                codes = torch.cat([greedy_encode(codec, c, max(cuts)) for c in mine.split(4096)])  # (n_ep / world, m)
            tot = torch.zeros(())
            for it in tqdm(range(steps), desc=f"{spec} {epoch}/{epochs}", disable=not progress or rank != 0, leave=False):
                xb, sb = mine[it * local : (it + 1) * local], codes[it * local : (it + 1) * local]
                dec = tables.prefix_decodes(sb, cuts)  # (B, C, D)
                per_cut = (1 - F.cosine_similarity(dec, xb[:, None], dim=-1)).mean(0)  # (C,)
                loss = nested(per_cut / ref)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if frozen_stages:
                    tables.bias.grad.zero_()
                    tables.books.grad[:frozen_stages].zero_()
                if ddp:  # the mean over ranks of equal-share means: the whole batch's gradient
                    for prm in tables.parameters():
                        dist.all_reduce(prm.grad)
                        prm.grad /= world
                opt.step()
                tot += loss.detach()
            if ddp:
                dist.all_reduce(tot)
                tot /= world
            tables.write_to(codec)
            cos = prefix_cosines(codec, x_va, cuts)
            over = max_seconds is not None and time.time() - t0 > max_seconds
            val_t = torch.tensor([float(nested((1 - torch.as_tensor(cos)) / ref)), float(over)], dtype=torch.float64)
            if ddp:  # rank 0's loss and clock decide for all: every rank stops at the same epoch
                dist.broadcast(val_t, 0)
            val, over = float(val_t[0]), bool(val_t[1])
            history.append({"epoch": epoch, "train_loss": round(float(tot) / steps, 5), "val_loss": round(val, 5),
                            "val_cosine": dict(zip(map(str, cuts), np.round(cos, 5).tolist())),
                            "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 1)})
            logger.info("%s epoch %d: train %.4f held-out %.4f (best %.4f)", spec, epoch, float(tot) / steps, val, best[0])
            if val < best[0] - 1e-5:
                best, bad = (val, {k: v.detach().clone() for k, v in codec.state_dict().items()}, epoch), 0
            else:
                bad += 1
                if bad == max(1, patience // 2):
                    for g in opt.param_groups:
                        g["lr"] *= 0.5
            save(epoch)
            if bad >= patience:
                stop = f"early stop: held-out loss not better for {patience} epochs"
                break
            if over:
                stop = f"time budget ({max_seconds:.0f} s) reached, before early stopping"
                break
    codec.load_state_dict(best[1])
    codec.eval()
    codec.round_to_storage_precision()
    cos_final = prefix_cosines(codec, x_va, cuts)
    card = {
        "spec": spec, "bits": codec.bits, "stage_bits": codec.stage_bits, "seed": seed, "lr": lr, "batch_size": batch_size,
        "init": (f"first stage: best of {first_redo} faiss.Kmeans runs by objective; " if first_redo > 1 else "")
                + (f"faiss.ResidualQuantizer (beam {rq_beam}, {kmeans_iters} k-means iterations) for the own stages" if rq_beam
                 else f"residual k-means (faiss.Kmeans, {kmeans_iters} iterations) per own stage") + "; shared codebook by k-means on "
                "the residual after the own stages; shared-stage scales by least squares",
        "finetune": ("nested loss: mean over budget cuts of (1 - cos(prefix, x)) / its value after init; codes re-assigned "
                     "greedily at the start of each epoch (a fresh random subset of epoch_items training items), fixed within it; Adam on unit-RMS codebooks and log-scales") if finetune else None,
        "kmeans_iters": kmeans_iters, "epoch_items": epoch_items, "patience": patience, "frozen_stages": frozen_stages,
        "first_redo": first_redo, "cut_weights": run.get("cut_weights"),
        "cuts": cuts, "best_epoch": best[2], "epochs_run": len(history) - 1, "stopped": stop,
        "train_items": int(len(x_tr)), "holdout_items": int(len(x_va)),
        "holdout_cosine": float(cos_final[-1]),  # at full depth; every cut below
        "holdout_cosine_at_cuts": dict(zip(map(str, cuts), np.round(cos_final, 5).tolist())),
        "wall_time_s": round(time.time() - t0, 1), "history": history, "processes": world, "run_key": key,
        "resumed_after_epoch": state["epoch"] if state is not None and "epoch" in state else None,
        "params": int(sum(p.numel() for p in codec.parameters())), "features_sha256": features_sha256(x_all),
    }
    if ckpt is not None and rank == 0 and ckpt.exists():
        ckpt.unlink()  # finished: the folder the caller writes is the result
    return codec, card

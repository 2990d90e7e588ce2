"""A receiver that works on the symbols themselves: zero-shot scores and nearest-neighbour search without
decoding a feature.

It needs a codec whose decoder is *additive*::

    decoded = normalise(bias + sum_m codebooks[m][codes[:, m]])        # codebooks (M, K, D), bias (D,)

Then every linear function of the decoded feature is a sum of per-position lookups, as in additive / residual
quantisation (Babenko & Lempitsky 2014; FAISS ``AdditiveQuantizer``):

* zero-shot: ``LUT[m, k, c] = <codebooks[m, k], T[c]>`` once per label set, then the class scores of an item
  are ``<bias, T[c]> + sum_m LUT[m, codes[m], c]``: M row additions of length C instead of decoding D numbers
  and a D x C product. The codec's ``decode`` L2-normalises, but the norm is one number per item, shared by
  every class, so the arg-max (and the whole ranking) over classes of the un-normalised dot product equals
  that of the cosine. Items whose two best classes are closer than rounding can separate are recomputed
  through the decode path itself, so top-1 is the decode-then-matmul top-1 by construction, not by luck.
* search: the codes go, bit-packed, straight into a FAISS ``IndexResidualQuantizer`` whose codebooks are the
  codec's (``add_sa_codes``: FAISS never encodes anything), searched by inner product with look-up tables
  (``ST_LUT_nonorm``), i.e. by ``<q, bias + sum_m c_m>`` on the *un-normalised* reconstruction: same bytes as
  the stream, no stored norm. The codec's decode L2-normalises, and item norms differ, so this is not the
  decoded feature's cosine; for near neighbours the normalised one estimates the original cosine better (a
  residual quantiser's residual r is about orthogonal to its reconstruction x_hat, so for q close to x,
  ``<q, x> ~ <q, x_hat> + ||r||^2``, a bias that dividing by ``||x_hat|| = sqrt(1 - ||r||^2)`` mostly removes).
  ``search(..., rerank=R)`` therefore re-ranks FAISS's best R by the cosine with the normalised decode,
  reconstructed from the stored codes; ``bench/compressed_domain.py`` measures both against exact float search.

Which codecs are additive: any codec exposing ``additive_codebooks() -> (M, K, D)`` and ``additive_bias() ->
(D,)`` (the progressive ``prq-...`` codec), and ``dsq-b{b}`` (per-dimension scalar points: stage m writes
dimension m alone; exact, but M = D, so lookups save nothing there). ``pqvae``, ``vqvae``, ``aesq`` and
``fsq`` decode through an MLP: their output is not a sum of per-position terms and they are refused
(:class:`NotAdditiveError`), never approximated.

Prefixes: codes with m < M columns (a progressive stream cut after m stages) score and index with the first
m stages, as the codec decodes such a prefix.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .codecs.base import CodecError, short
from .labels import MAX_LABELS

CHUNK = 8192  # items per scoring pass: (CHUNK, C) float32 scores at a time
# top1's scores: ~8 MiB a pass, so the arg-max passes re-read them from cache (C = 1,000: 2,097 rows), and a wide
# pass for few classes, where per-pass costs dominate (C = 40: 16,384 rows; 20,000 codes ran 6.7 ms in passes of
# 2,048 rows, 3.5 ms in passes of 16,384; one-off, one thread)
SCORE_PASS_BYTES = 8 << 20
MAX_BOOK_NUMEL = 1 << 25  # M x K x D codebook numbers an additive form may hold (128 MiB in fp32)
MAX_LUT_NUMEL = 1 << 26  # M x K x C look-up table numbers (256 MiB in fp32)
MAX_SCORE_BYTES = 256 << 20  # what scores() may return at once: N x C float32
MAX_INDEX_ITEMS = 1 << 27  # codes one FAISS index built here may hold (134 M)
MAX_SIDECAR_BYTES = 64 << 20
# Rounding guard for the zero-shot ranking. The LUT path and decode-then-matmul round differently (float32,
# other summation orders); both errors are far below 1e-5 in cosine for D <= 16384 unit-scale terms. Items whose
# two best classes are closer than TIE_MARGIN in cosine are re-scored through the decode path.
TIE_MARGIN = 1e-5
INDEX_FORMAT = "semcomp-compressed-index"
INDEX_VERSION = 1
NON_ADDITIVE = {"pqvae", "vqvae", "aesq", "fsq"}


class NotAdditiveError(CodecError):
    """The codec's decoder is not a sum of per-position codewords: no exact compressed-domain form."""


class CompressedIndexError(ValueError):
    """A compressed-domain index file or its sidecar is missing, malformed, or does not fit its inputs."""


# ----------------------------------------------------------------------------- the additive form
@dataclass(frozen=True)
class AdditiveForm:
    """``decode(codes) = bias + sum_m codebooks[m, codes[:, m]]`` (then L2-normalised if ``normalised``)."""

    codebooks: np.ndarray  # (M, K, D) float32
    bias: np.ndarray  # (D,) float32
    normalised: bool = True  # the codec's decode L2-normalises the sum (every semcomp Codec does)
    spec: str = ""
    backbone: str = ""
    weights_hash: str = ""  # hex, as in the .scf header
    decode_fn: object = field(default=None, repr=False, compare=False)  # the codec's own decode, for tie re-scoring

    def __post_init__(self):
        cb, b = self.codebooks, self.bias
        if not isinstance(cb, np.ndarray) or cb.ndim != 3 or cb.dtype != np.float32:
            raise CodecError(f"additive codebooks must be a float32 array (M, K, D), got {getattr(cb, 'shape', type(cb))}")
        if not isinstance(b, np.ndarray) or b.shape != (cb.shape[2],) or b.dtype != np.float32:
            raise CodecError(f"additive bias must be a float32 array ({cb.shape[2]},), got {getattr(b, 'shape', type(b))}")
        if min(cb.shape) < 1 or cb.size > MAX_BOOK_NUMEL:
            raise CodecError(f"additive codebooks {cb.shape}: {cb.size:,} numbers, need 1..{MAX_BOOK_NUMEL:,} (MAX_BOOK_NUMEL)")
        if not (np.isfinite(cb).all() and np.isfinite(b).all()):
            raise CodecError("additive codebooks or bias hold NaN or Inf")

    @property
    def stages(self) -> int:
        return int(self.codebooks.shape[0])

    @property
    def alphabet(self) -> int:
        return int(self.codebooks.shape[1])

    @property
    def dim(self) -> int:
        return int(self.codebooks.shape[2])

    def prefix(self, stages: int) -> "AdditiveForm":
        """The form of the first ``stages`` stages (what a stream cut there decodes with)."""
        if isinstance(stages, bool) or not isinstance(stages, (int, np.integer)) or not 1 <= stages <= self.stages:
            raise CodecError(f"stages must be an int in 1..{self.stages}, got {short(stages)}")
        if int(stages) == self.stages:
            return self
        # the codec's own decode takes whole codes: a prefix re-scores ties with the additive decode
        return replace(self, codebooks=np.ascontiguousarray(self.codebooks[: int(stages)]), decode_fn=None)

    def check_codes(self, codes) -> np.ndarray:
        """Integer codes (N, m), 1 <= m <= M, every value in [0, K) -> int64 array; CodecError otherwise."""
        if isinstance(codes, torch.Tensor):
            codes = codes.detach().cpu().numpy()
        c = np.asarray(codes)
        if c.ndim == 1:
            c = c[None]
        if c.ndim != 2 or not 1 <= c.shape[1] <= self.stages:
            raise CodecError(f"codes must have shape (N, m) with 1 <= m <= {self.stages} stages, got {c.shape}")
        if not np.issubdtype(c.dtype, np.integer):
            raise CodecError(f"codes must be integers, got {c.dtype}")
        if c.size and (c.min() < 0 or c.max() >= self.alphabet):
            raise CodecError(f"codes must lie in [0, {self.alphabet})")
        return c.astype(np.int64, copy=False)

    def decode(self, codes, normalise: bool | None = None) -> np.ndarray:
        """Codes (N, m) -> (N, D) float32: ``bias + sum`` over the first m stages, L2-normalised when
        ``normalise`` (default: as the codec does)."""
        c = torch.from_numpy(self.check_codes(codes))
        m = c.shape[1]
        books = torch.from_numpy(self.codebooks[:m].reshape(m * self.alphabet, self.dim))
        out = np.empty((len(c), self.dim), dtype=np.float32)
        offs = torch.arange(m) * self.alphabet
        for i in range(0, len(c), CHUNK):
            x = F.embedding_bag(c[i : i + CHUNK] + offs, books, mode="sum") + torch.from_numpy(self.bias)
            if self.normalised if normalise is None else normalise:
                x = F.normalize(x, dim=-1)
            out[i : i + CHUNK] = x.numpy()
        return out


def additive_form(codec) -> AdditiveForm:
    """The exact additive form of a codec, or :class:`NotAdditiveError` when its decoder is not additive."""
    family = getattr(codec, "family", "")
    meta = {"spec": str(getattr(codec, "spec", "")), "backbone": str(getattr(codec, "backbone", "") or "")}
    wh = getattr(codec, "weights_hash", b"")
    meta["weights_hash"] = wh.hex() if isinstance(wh, (bytes, bytearray)) else str(wh or "")
    decode_fn = getattr(codec, "decode", None)
    if hasattr(codec, "additive_codebooks") and hasattr(codec, "additive_bias"):
        cb = np.ascontiguousarray(np.asarray(_numpy(codec.additive_codebooks()), dtype=np.float32))
        bias = np.ascontiguousarray(np.asarray(_numpy(codec.additive_bias()), dtype=np.float32))
        dim = getattr(codec, "dim", cb.shape[-1] if cb.ndim == 3 else None)
        if cb.ndim != 3 or cb.shape[2] != dim:
            raise CodecError(f"{meta['spec'] or type(codec).__name__}: additive_codebooks() has shape {cb.shape}, "
                             f"expected (M, K, {dim})")
        for name in ("num_symbols", "alphabet"):
            want = getattr(codec, name, None)
            got = cb.shape[0] if name == "num_symbols" else cb.shape[1]
            if isinstance(want, int) and want != got:
                raise CodecError(f"{meta['spec']}: additive_codebooks() has {got} for {name}, the codec says {want}")
        return AdditiveForm(cb, bias, bool(getattr(codec, "normalised", True)), decode_fn=decode_fn, **meta)
    if family == "dsq":
        # decode: x[m] = points[m, s_m] / scale[m] + mean[m]; stage m writes dimension m alone
        pts = codec.points.detach().float().cpu()
        vals = (pts / codec.scale.detach().float().cpu()[:, None]).numpy()  # (D, K), the same float32 division
        d, k = vals.shape
        if d * k * d > MAX_BOOK_NUMEL:
            raise CodecError(f"{meta['spec']} on {d}-d features would need {d * k * d:,} codebook numbers as an additive "
                             f"form, over MAX_BOOK_NUMEL={MAX_BOOK_NUMEL:,}")
        cb = np.zeros((d, k, d), dtype=np.float32)
        cb[np.arange(d), :, np.arange(d)] = vals
        bias = codec.mean.detach().float().cpu().numpy().astype(np.float32)
        return AdditiveForm(cb, bias, True, decode_fn=decode_fn, **meta)
    if family in NON_ADDITIVE:
        raise NotAdditiveError(f"{meta['spec']} decodes through an MLP, so its output is not a sum of per-position "
                               "codewords: no exact compressed-domain form (decode it, or use an additive codec: prq-..., dsq-...)")
    raise NotAdditiveError(f"{meta['spec'] or type(codec).__name__} exposes no additive form (additive_codebooks / additive_bias)")


def _numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


# ----------------------------------------------------------------------------- zero-shot by look-up tables
class LUTZeroShot:
    """Zero-shot classification of codes against C class text features, by look-up tables.

    ``top1`` / ``topk`` give exactly the ranking of decode-then-cosine (``ZeroShotClassifier.logits`` on the
    decoded feature); ``logits`` / ``predict`` give its numbers too (they need each item's norm: one extra
    additive decode)."""

    def __init__(self, form: AdditiveForm, text_features, class_names: list[str] | None = None, logit_scale: float = 100.0,
                 tie_margin: float = TIE_MARGIN):
        t = torch.as_tensor(_numpy(text_features), dtype=torch.float32)
        if t.ndim != 2 or t.shape[1] != form.dim:
            raise CodecError(f"class text features must be (C, {form.dim}), got {tuple(t.shape)}")
        if not 1 <= len(t) <= MAX_LABELS:
            raise CodecError(f"{len(t)} classes; zero-shot by look-up tables takes 1..{MAX_LABELS} (labels.MAX_LABELS)")
        if not torch.isfinite(t).all():
            raise CodecError("class text features contain NaN or Inf")
        if class_names is not None and len(class_names) != len(t):
            raise CodecError(f"{len(class_names)} class names for {len(t)} text features")
        numel = form.stages * form.alphabet * len(t)
        if numel > MAX_LUT_NUMEL:
            raise CodecError(f"look-up table of {form.stages} x {form.alphabet} x {len(t)} = {numel:,} numbers, over "
                             f"MAX_LUT_NUMEL={MAX_LUT_NUMEL:,}")
        self.form = form
        self.text = F.normalize(t, dim=-1)  # as ZeroShotClassifier: the per-class norm DOES change the ranking
        self.class_names = list(class_names) if class_names is not None else None
        self.logit_scale = float(logit_scale)
        self.tie_margin = float(tie_margin)
        # exact in float64, stored float32: (M*K, C), row m*K + k = <codebooks[m, k], t_c>
        t64 = self.text.double().numpy()
        lut = np.einsum("mkd,cd->mkc", form.codebooks.astype(np.float64), t64, optimize=True)
        self.bias_scores = torch.from_numpy((form.bias.astype(np.float64) @ t64.T).astype(np.float32))  # (C,)
        lut[0] += form.bias.astype(np.float64) @ t64.T  # the bias term rides in stage 0's rows: one pass less
        self.lut = torch.from_numpy(np.ascontiguousarray(lut.reshape(-1, len(t)), dtype=np.float32))  # einsum may give F order
        # ||x_hat|| <= ||bias|| + sum_m max_k ||c_mk||: turns a cosine margin into a dot-product margin
        norms = np.linalg.norm(form.codebooks.astype(np.float64), axis=2).max(1)  # (M,)
        self._stage_norm_bound = np.linalg.norm(form.bias) + np.cumsum(norms)  # bound for each prefix length
        self.last_rescored = 0  # items re-scored through the decode path in the last top1/topk call

    @classmethod
    def from_codec(cls, codec, text_features, class_names=None, logit_scale: float = 100.0) -> "LUTZeroShot":
        return cls(additive_form(codec), text_features, class_names, logit_scale)

    @property
    def num_classes(self) -> int:
        return int(self.text.shape[0])

    def _dots(self, c: torch.Tensor) -> torch.Tensor:
        """(n, m) int64 codes -> (n, C) un-normalised dot products <bias + sum, t_c>."""
        m = c.shape[1]
        offs = torch.arange(m) * self.form.alphabet
        return F.embedding_bag(c + offs, self.lut[: m * self.form.alphabet], mode="sum")  # bias folded into stage 0

    def scores(self, codes) -> torch.Tensor:
        """Codes (N, m) -> (N, C) dot products of the un-normalised decoded feature with each class's text
        feature (the cosine times the item's norm)."""
        c = torch.from_numpy(self.form.check_codes(codes))
        need = 4 * len(c) * self.num_classes
        if need > MAX_SCORE_BYTES:
            raise CodecError(f"scores for {len(c)} items x {self.num_classes} classes need {need:,} bytes, over "
                             f"MAX_SCORE_BYTES={MAX_SCORE_BYTES:,}; use top1/topk, which work in chunks")
        return torch.cat([self._dots(c[i : i + CHUNK]) for i in range(0, len(c), CHUNK)]) if len(c) else torch.zeros(0, self.num_classes)

    def _reference(self, c: torch.Tensor) -> torch.Tensor:
        """Decode-then-logits for a few items, as the receiver's ZeroShotClassifier computes them: the codec's own
        decode when known, else the additive decode."""
        fn = self.form.decode_fn
        if fn is not None and c.shape[1] == self.form.stages:
            x = torch.as_tensor(_numpy(fn(c)), dtype=torch.float32)
        else:
            x = torch.from_numpy(self.form.decode(c.numpy(), normalise=True))
        # the very expression of ZeroShotClassifier.logits (scale first: it can merge two 1-ulp-apart cosines)
        return self.logit_scale * F.normalize(x, dim=-1) @ self.text.T

    def topk(self, codes, k: int = 5) -> torch.Tensor:
        """Codes (N, m) -> (N, k) class indices, best first, in decode-then-cosine's order: items whose k+1 best
        classes hold two closer than ``tie_margin`` (cosine) are re-scored through the decode path (counted in
        ``last_rescored``)."""
        c = torch.from_numpy(self.form.check_codes(codes))
        k = max(1, min(int(k), self.num_classes))
        kk = min(k + 1, self.num_classes)
        out = torch.empty(len(c), k, dtype=torch.long)
        # cosine gap >= dot gap / ||x_hat|| >= dot gap / bound: only a dot gap under margin x bound may be a tie
        bound = float(self._stage_norm_bound[c.shape[1] - 1]) if len(c) else 1.0
        rescored = 0
        for i in range(0, len(c), CHUNK):
            cc = c[i : i + CHUNK]
            v, ix = self._dots(cc).topk(kk, dim=1)
            ix = ix[:, :k].clone()
            if kk > 1:
                close = (v[:, :-1] - v[:, 1:]).min(1).values < self.tie_margin * bound
                if close.any():
                    rows = close.nonzero()[:, 0]
                    ref = self._reference(cc[rows])
                    # argmax for top-1 as a receiver does (first of equal logits); topk's tie order is unspecified
                    ix[rows] = ref.argmax(1, keepdim=True) if k == 1 else ref.topk(k, dim=1).indices
                    rescored += len(rows)
            out[i : i + CHUNK] = ix
        self.last_rescored = rescored
        return out

    def top1(self, codes) -> torch.Tensor:
        """Codes (N, m) -> (N,) index of the best class: exactly decode-then-matmul's arg-max (items whose two best
        classes are closer than ``tie_margin`` in cosine are re-scored through the decode path)."""
        c = torch.from_numpy(self.form.check_codes(codes))
        if self.num_classes == 1:
            return torch.zeros(len(c), dtype=torch.long)
        out = torch.empty(len(c), dtype=torch.long)
        thr = self.tie_margin * (float(self._stage_norm_bound[c.shape[1] - 1]) if len(c) else 1.0)
        close = torch.empty(len(c), dtype=torch.bool)
        step = max(256, min(1 << 16, SCORE_PASS_BYTES // (4 * self.num_classes)))
        for i in range(0, len(c), step):
            s = self._dots(c[i : i + step])
            # numpy's row arg-max, then amax: torch's CPU max/argmax along rows ran 4-6x slower than both together
            # (C = 200 / 1000, one thread; bench/compressed_domain.py), and topk(2) slower still
            best = torch.from_numpy(s.numpy().argmax(1))
            v1 = s.gather(1, best[:, None])[:, 0]
            s.scatter_(1, best[:, None], float("-inf"))
            close[i : i + step] = (v1 - s.amax(1)) < thr
            out[i : i + step] = best
        rows = close.nonzero()[:, 0]
        for i in range(0, len(rows), CHUNK):  # near-ties, all passes' at once
            r = rows[i : i + CHUNK]
            out[r] = self._reference(c[r]).argmax(1)  # a receiver's argmax: the first of equal logits
        self.last_rescored = len(rows)
        return out

    def logits(self, codes) -> torch.Tensor:
        """``logit_scale * cosine``, as ``ZeroShotClassifier.logits`` on the decoded feature."""
        s = self.scores(codes)
        x = self.form.decode(self.form.check_codes(codes), normalise=False)
        norms = torch.from_numpy(np.linalg.norm(x, axis=1)).clamp_min(1e-12)
        return self.logit_scale * s / norms[:, None]

    def predict(self, codes, k: int = 5):
        """Top-k labels with softmax probabilities, as ``ZeroShotClassifier.predict`` on the decoded feature."""
        from .heads.zeroshot import ZeroShotResult

        if self.class_names is None:
            raise CodecError("predict needs class_names")
        p = self.logits(codes).softmax(-1)
        top = p.topk(min(k, self.num_classes), dim=-1)
        return [ZeroShotResult([self.class_names[i] for i in idx.tolist()], [float(v) for v in vals])
                for vals, idx in zip(top.values, top.indices)]


# ----------------------------------------------------------------------------- nearest-neighbour search in FAISS
def _nbits(form: AdditiveForm) -> int:
    k = form.alphabet
    if k < 2 or k & (k - 1) or k > 1 << 16:
        raise CodecError(f"FAISS packs codes of 2^nbits codewords (2..65536); {form.spec or 'this codec'} has {k}")
    return int(math.log2(k))


def faiss_index(form: AdditiveForm):
    """An empty FAISS ``IndexResidualQuantizer`` holding the form's codebooks, searched by inner product with
    look-up tables. It scores ``<q, sum_m c_m>``; :func:`search` adds the bias term ``<q, bias>``."""
    import faiss

    nbits = _nbits(form)
    index = faiss.IndexResidualQuantizer(form.dim, form.stages, nbits, faiss.METRIC_INNER_PRODUCT,
                                         faiss.AdditiveQuantizer.ST_LUT_nonorm)
    rq = index.rq
    assert rq.total_codebook_size == form.stages * form.alphabet
    faiss.copy_array_to_vector(np.ascontiguousarray(form.codebooks.reshape(-1)), rq.codebooks)
    rq.is_trained = True
    index.is_trained = True
    return index


def pack_codes(index, codes: np.ndarray) -> np.ndarray:
    """Integer codes (N, M) -> FAISS's bit-packed bytes (N, code_size), without touching any float."""
    import faiss

    rq = index.rq
    c = np.ascontiguousarray(codes, dtype=np.int32)
    out = np.zeros((len(c), index.code_size), dtype=np.uint8)
    if len(c):
        rq.pack_codes(len(c), faiss.swig_ptr(c), faiss.swig_ptr(out))
    return out


def add_codes(index, form: AdditiveForm, codes) -> None:
    """Append codes (N, M) to ``index`` (from :func:`faiss_index`) as packed bytes: FAISS encodes nothing."""
    c = form.check_codes(codes)
    if c.shape[1] != index.rq.M:
        raise CodecError(f"codes have {c.shape[1]} stages, the index holds {index.rq.M}; cut every stream to the same "
                         "number of stages first")
    if index.ntotal + len(c) > MAX_INDEX_ITEMS:
        raise CodecError(f"the index would hold {index.ntotal + len(c):,} codes, over MAX_INDEX_ITEMS={MAX_INDEX_ITEMS:,}")
    for i in range(0, len(c), 1 << 16):  # int32 copies stay small
        index.add_sa_codes(pack_codes(index, c[i : i + (1 << 16)]))


def build_index(form: AdditiveForm, codes):
    """A FAISS index of codes (N, m): the first m stages' codebooks, the codes packed in."""
    c = form.check_codes(codes)
    f = form.prefix(c.shape[1])
    index = faiss_index(f)
    add_codes(index, f, c)
    return index


def search(index, bias: np.ndarray, queries, k: int = 10, rerank: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Float queries (Q, D) -> (scores (Q, k), ids (Q, k)), best first (id -1: fewer than k items).

    ``rerank=0``: FAISS's ranking by ``<q, bias + sum_m c_m>`` (the bias adds one constant per query, so it never
    changes the order); the scores are those inner products. ``rerank=R > k``: FAISS's best R, re-ranked by the
    cosine with the codec's L2-normalised decode (reconstructed from the stored codes, R x D numbers a query), the
    scores then being those cosines x ||q||: exactly the order a receiver that decodes every item would give, for
    every item FAISS puts in its top R."""
    q = np.ascontiguousarray(_numpy(queries), dtype=np.float32)
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2 or q.shape[1] != index.d:
        raise CodecError(f"queries must be (Q, {index.d}), got {q.shape}")
    if not np.isfinite(q).all():
        raise CodecError("queries contain NaN or Inf")
    k, rerank = int(k), int(rerank)
    if not 1 <= k <= 10_000 or not 0 <= rerank <= 10_000:
        raise CodecError(f"k must be in 1..10000 and rerank in 0..10000, got k={k}, rerank={rerank}")
    kk = max(k, rerank)
    d, i = index.search(q, kk)
    if rerank <= k:
        d = d + (q @ bias.astype(np.float32))[:, None]
        d[i < 0] = -np.inf
        return d, i
    flat = i.ravel()
    ok = flat >= 0
    rec = np.zeros((len(flat), index.d), dtype=np.float32)
    if ok.any():
        rec[ok] = index.reconstruct_batch(flat[ok]) + bias.astype(np.float32)
    rec /= np.maximum(np.linalg.norm(rec, axis=1, keepdims=True), 1e-12)
    cos = np.einsum("qkd,qd->qk", rec.reshape(len(q), kk, index.d), q)
    cos[i < 0] = -np.inf
    order = np.argsort(-cos, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cos, order, 1), np.take_along_axis(i, order, 1)


# ----------------------------------------------------------------------------- index files: FAISS + a JSON sidecar
def sidecar_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".json")


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_index(index, form: AdditiveForm, path: str | Path, sources: list[dict]) -> Path:
    """Write ``path`` (faiss.write_index) and ``path.json`` (backbone, spec, weights hash, bias, sources, the
    index file's sha256). Nothing is pickled. ``sources``: ``[{"file": name, "count": n}]`` in id order."""
    import faiss

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    meta = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "backbone": form.backbone, "spec": form.spec,
            "weights_hash": form.weights_hash, "dim": form.dim, "stages": int(index.rq.M), "alphabet": form.alphabet,
            "metric": "inner_product", "count": int(index.ntotal), "faiss": faiss.__version__,
            "index_sha256": _sha256_file(tmp), "sources": sources, "bias": [float(v) for v in form.bias]}
    side = sidecar_path(path)
    side_tmp = side.with_name(side.name + ".tmp")
    side_tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(path)
    side_tmp.replace(side)
    return path


_SIDECAR_KEYS = {"format": str, "version": int, "backbone": str, "spec": str, "weights_hash": str, "dim": int, "stages": int,
                 "alphabet": int, "metric": str, "count": int, "faiss": str, "index_sha256": str, "sources": list, "bias": list}


def read_sidecar(path: str | Path) -> dict:
    """The sidecar of index ``path``, checked key by key; CompressedIndexError with one line of reason."""
    side = sidecar_path(path)
    if not side.is_file():
        raise CompressedIndexError(f"index sidecar {side} not found (an index is the FAISS file plus its .json)")
    if side.stat().st_size > MAX_SIDECAR_BYTES:
        raise CompressedIndexError(f"index sidecar {side} is over {MAX_SIDECAR_BYTES:,} bytes")
    try:
        meta = json.loads(side.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise CompressedIndexError(f"index sidecar {side} is not JSON: {short(str(e), 80)}") from e
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        raise CompressedIndexError(f"{side} is not a semcomp index sidecar (format {short(meta.get('format') if isinstance(meta, dict) else meta)})")
    for key, t in _SIDECAR_KEYS.items():
        if not isinstance(meta.get(key), t) or isinstance(meta.get(key), bool):
            raise CompressedIndexError(f"index sidecar {side}: {key} must be {t.__name__}, got {short(meta.get(key))}")
    if meta["version"] != INDEX_VERSION:
        raise CompressedIndexError(f"index sidecar {side} has version {meta['version']}; this semcomp reads {INDEX_VERSION}")
    if meta["metric"] != "inner_product":
        raise CompressedIndexError(f"index sidecar {side}: unknown metric {short(meta['metric'])}")
    if len(meta["bias"]) != meta["dim"] or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in meta["bias"]):
        raise CompressedIndexError(f"index sidecar {side}: bias must be {meta['dim']} finite numbers")
    total = 0
    for s in meta["sources"]:
        if not (isinstance(s, dict) and isinstance(s.get("file"), str) and isinstance(s.get("count"), int) and s["count"] > 0):
            raise CompressedIndexError(f"index sidecar {side}: bad source entry {short(s)}")
        total += s["count"]
    if total != meta["count"]:
        raise CompressedIndexError(f"index sidecar {side}: sources hold {total} items, count says {meta['count']}")
    return meta


def load_index(path: str | Path, max_bytes: int = 8 << 30):
    """(FAISS index, sidecar dict) of an index written by :func:`save_index`. The file's sha256 must be the
    sidecar's (so a sidecar of another index is refused before FAISS reads a byte); the index must be an
    inner-product ``IndexResidualQuantizer`` of the sidecar's sizes."""
    import faiss

    path = Path(path)
    meta = read_sidecar(path)
    if not path.is_file():
        raise CompressedIndexError(f"index file {path} not found")
    size = path.stat().st_size
    if size > max_bytes:
        raise CompressedIndexError(f"index file {path} is {size:,} bytes, over the {max_bytes:,}-byte limit")
    if _sha256_file(path) != meta["index_sha256"]:
        raise CompressedIndexError(f"index file {path} does not match its sidecar {sidecar_path(path).name} (sha256 differs: "
                                   "another index's sidecar, or an altered file)")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        raise CompressedIndexError(f"FAISS cannot read {path}: {short(str(e).splitlines()[0] if str(e) else e, 120)}") from e
    if not isinstance(index, faiss.IndexResidualQuantizer):
        raise CompressedIndexError(f"index file {path} holds a {type(index).__name__}, expected IndexResidualQuantizer")
    rq = index.rq
    if (index.d, rq.M, 1 << int(faiss.vector_to_array(rq.nbits)[0]), index.ntotal) != (meta["dim"], meta["stages"], meta["alphabet"], meta["count"]) \
            or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise CompressedIndexError(f"index file {path} does not have the sizes its sidecar names")
    return index, meta


def form_from_index(index, meta: dict) -> AdditiveForm:
    """The additive form stored in an index (codebooks) and its sidecar (bias, names)."""
    import faiss

    rq = index.rq
    k = meta["alphabet"]
    cb = faiss.vector_to_array(rq.codebooks).astype(np.float32).reshape(rq.M, k, index.d)
    return AdditiveForm(cb, np.asarray(meta["bias"], dtype=np.float32), True, meta["spec"], meta["backbone"], meta["weights_hash"])


def locate(meta: dict, ids: np.ndarray) -> list[tuple[str, int]]:
    """Index ids -> (source file, item number in that file)."""
    starts = np.cumsum([0] + [s["count"] for s in meta["sources"]])
    out = []
    for i in np.asarray(ids).ravel().tolist():
        if i < 0:
            out.append(("", -1))
            continue
        j = int(np.searchsorted(starts, i, side="right") - 1)
        out.append((meta["sources"][j]["file"], int(i - starts[j])))
    return out

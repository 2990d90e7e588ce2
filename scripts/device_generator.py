"""One GPU burst: train the embedded generator on Tiny-ImageNet shards and measure it, all in one command.

Used when a session is lent a GPU for ~15 minutes (see README "Embedded heads"). It needs only torch,
safetensors, Pillow and diffusers (carried as a wheel), so it imports semcomp's modules without running
``semcomp/__init__`` (whose codecs need packages the GPU image lacks). Inputs (prepared on the CPU machine by
``scripts/prepare_generator_burst.py``): ``<data>/train-*.tar.gz`` shards and ``<data>/eval.npz`` (val
features: float and decoded by shipped codecs, labels, class text features). Outputs under ``--out``:
weights (split into <16 MB files), ``metrics.json``, ``grid.npz``.

CPU smoke run: ``python scripts/device_generator.py --data D --out O --tiny --seconds 20``.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
import types
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
for pkg in ("semcomp", "semcomp.heads", "semcomp.training"):  # namespace stubs: skip package __init__ imports
    m = types.ModuleType(pkg)
    m.__path__ = [str(ROOT / pkg.replace(".", "/"))]
    sys.modules.setdefault(pkg, m)

from semcomp.embedded_clip import EmbeddedClip, EmbeddedClipConfig, normalize_uint8_batch  # noqa: E402
from semcomp.heads.generate import GeneratorConfig, ImageGenerator  # noqa: E402
from semcomp.training.generator import train_generator  # noqa: E402


def read_shard(path: str) -> tuple[np.ndarray, list[str]]:
    from PIL import Image

    imgs, keys = [], []
    with tarfile.open(path, "r|*") as tf:
        for m in tf:
            if m.name.endswith(".jpg"):
                im = Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")
                if im.size != (64, 64):
                    im = im.resize((64, 64), Image.BICUBIC)
                imgs.append(np.asarray(im))
                keys.append(m.name[:-4])
    return np.stack(imgs), keys


def load_backbone(device):
    from safetensors.torch import load_file

    d = ROOT / "weights" / "backbones" / "semcomp-tiny-clip"
    model = EmbeddedClip(EmbeddedClipConfig.from_dict(json.loads((d / "config.json").read_text())), load_text_encoder=False)
    model.load_state_dict({k: v.float() for k, v in load_file(str(d / "model.safetensors")).items()})
    return model.eval().to(device)


@torch.inference_mode()
def encode(model, images_u8: torch.Tensor, device, bs: int = 1024) -> torch.Tensor:
    out = []
    for i in range(0, len(images_u8), bs):
        x = normalize_uint8_batch(images_u8[i : i + bs]).to(device)
        out.append(model.encode_image(x).float())
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=330)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--eval-n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tiny", action="store_true", help="tiny model + few images: a CPU smoke test of this script")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t_all = time.time()
    info = {"torch": torch.__version__}
    shards = sorted(str(p) for p in Path(a.data).glob("train-*.tar.gz"))
    if a.tiny:
        shards = shards[:1]
    with ProcessPoolExecutor(16) as ex:
        parts = list(ex.map(read_shard, shards))
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    info["device"] = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"  # after the fork pool
    info["train_images"], info["train_shards"] = int(len(images)), [Path(s).name for s in shards]
    clip = load_backbone(device)
    emb = encode(clip, images, device)
    emb_f = encode(clip, images.flip(2), device)
    print(f"{len(images)} images encoded in {time.time() - t_all:.0f}s", flush=True)

    cfg = GeneratorConfig()
    if a.tiny:
        cfg = GeneratorConfig(block_out_channels=(32, 32, 64, 64), attention_head_dim=8)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    ema, hist = train_generator(images, emb, cfg, embeds_flipped=emb_f, steps=10**9, time_budget_s=a.seconds,
                                batch_size=a.batch, lr=a.lr, device=device, bf16=(device == "cuda"), log_every=200)
    info.update({"train_steps": hist["steps"], "train_seconds": round(hist["seconds"], 1), "batch": a.batch, "lr": a.lr,
                 "images_per_s": round(hist["images_per_s"], 1), "losses": hist["losses"], "config": asdict(cfg)})
    gen = ImageGenerator(ema.float())
    card = {"trained_on": f"Tiny-ImageNet train shards {info['train_shards'][0]}..{info['train_shards'][-1]} "
                          f"({info['train_images']} images, 64x64, + horizontal flips) with semcomp-tiny-clip image embeddings",
            "device": info["device"], "steps": hist["steps"], "batch": a.batch, "seconds": round(hist["seconds"], 1)}
    import tempfile

    wdir = Path(tempfile.mkdtemp())  # the whole file is over the 16 MB a returned file may have
    gen.save_pretrained(wdir, card)
    from safetensors.torch import load_file, save_file  # split: files coming back are limited to 16 MB each

    sd = load_file(str(wdir / "model.safetensors"))
    parts, cur, size = [], {}, 0
    for k, v in sd.items():
        if size + v.numel() * 2 > 14e6 and cur:
            parts.append(cur)
            cur, size = {}, 0
        cur[k] = v
        size += v.numel() * 2
    parts.append(cur)
    for i, p in enumerate(parts):
        save_file(p, str(out / f"gen-part{i}.safetensors"))
    (out / "gen-config.json").write_text((wdir / "config.json").read_text())
    (out / "gen-card.json").write_text((wdir / "card.json").read_text())

    try:
        evaluate(a, out, gen, clip, device, info, t_all)
    except Exception as e:  # keep the weights and what was measured even if an evaluation step fails
        info["eval_error"] = repr(e)
        (out / "metrics.json").write_text(json.dumps(info, indent=2))
        raise


def evaluate(a, out, gen, clip, device, info, t_all) -> None:
    """Zero-shot accuracy of generated images and their cosine to the conditioning embedding."""
    ev = np.load(Path(a.data) / "eval.npz")
    text = F.normalize(torch.from_numpy(ev["text_features"]).float().to(device), dim=-1)
    labels = torch.from_numpy(ev["labels"]).to(device)
    src = F.normalize(torch.from_numpy(ev["float"]).float().to(device), dim=-1)
    n = min(a.eval_n, len(labels))
    variants = [k for k in ev.files if k == "float" or k.startswith("dec_")]
    metrics = {}

    def run(feats, guidance, steps, seed=0):
        imgs = []
        for i in range(0, n, 500):
            imgs.append(gen.generate(feats[i : min(n, i + 500)], steps=steps, guidance=guidance, seed=seed + i, device=device))
        return np.concatenate(imgs)

    def score(imgs, cond):
        z = encode(clip, torch.from_numpy(imgs), device)
        logits = z @ text.T
        top5 = logits.topk(5, dim=1).indices
        return {"top1": float((top5[:, 0] == labels[:n]).float().mean()), "top5": float((top5 == labels[:n, None]).any(1).float().mean()),
                "cos_to_condition": float((z * F.normalize(cond[:n], dim=-1)).sum(1).mean()),
                "cos_to_source": float((z * src[:n]).sum(1).mean())}

    for gsc in (1.0, 2.0, 3.0, 5.0):  # guidance sweep on float features
        metrics[f"float_g{gsc}"] = score(run(src, gsc, a.steps), src)
        print("guidance", gsc, metrics[f"float_g{gsc}"], flush=True)
    best_g = max((1.0, 2.0, 3.0, 5.0), key=lambda g: metrics[f"float_g{g}"]["top1"])
    for st in (10, 50):
        metrics[f"float_g{best_g}_steps{st}"] = score(run(src, best_g, st), src)
    grid = {"source": ev["source_images"][:8]} if "source_images" in ev.files else {}
    for v in variants:
        cond = F.normalize(torch.from_numpy(ev[v]).float().to(device), dim=-1)
        imgs = run(cond, best_g, a.steps)
        metrics[f"{v}_g{best_g}"] = score(imgs, cond)
        grid[v] = imgs[:8]
        print(v, metrics[f"{v}_g{best_g}"], flush=True)
    info.update({"eval_n": n, "sample_steps": a.steps, "best_guidance": best_g, "metrics": metrics,
                 "total_seconds": round(time.time() - t_all, 1)})
    (out / "metrics.json").write_text(json.dumps(info, indent=2))
    np.savez_compressed(out / "grid.npz", **grid)
    print(json.dumps({k: v for k, v in info.items() if k != "losses"}, indent=1)[:3000])


if __name__ == "__main__":
    main()

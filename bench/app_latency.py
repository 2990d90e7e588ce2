"""How long the app's steps take on this machine with the embedded models (issue #9's targets: compress +
labels + caption + segmentation of a 512 px image in <= 3 s; generation in <= 30 s).

    python bench/app_latency.py
Calls ``semcomp.demo.Demo`` — the same methods the Gradio endpoints call (no browser, no network) — after one
warm-up, and records the machine's load average before and after (other work on the machine slows every step).
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from semcomp.demo import Demo

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    demo = Demo()
    load_s = time.perf_counter() - t0
    img = Image.open(ROOT / "assets" / "examples" / "kodim23.jpg").convert("RGB")
    img = img.resize((512, round(512 * img.height / img.width)), Image.BICUBIC)
    res = {"image": f"assets/examples/kodim23.jpg resized to {img.size[0]}x{img.size[1]}", "demo_init_s": load_s,
           "loadavg_1_5_15_before": load_before}
    for name, args in {"transmit (compress + labels + caption + segmentation + same-bytes pixels)":
                       ("fsq", 64, "auto", "Tiny-ImageNet-200", "", "the parrot"),
                       "transmit without a command": ("fsq", 64, "auto", "Tiny-ImageNet-200", "", "")}.items():
        demo.transmit(img, *args)  # warm-up: loads heads, builds the label set's text features
        t, steps = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            r = demo.transmit(img, *args)
            t.append(time.perf_counter() - t0)
            steps.append(r.timings)
        res[name] = {"median_s": statistics.median(t), "runs_s": t,
                     "steps_median_s": {k: statistics.median(s[k] for s in steps) for k in steps[0]}}
    t = []
    for i in range(3):
        t0 = time.perf_counter()
        demo.generate(img, "fsq", 64, "auto", i, 20, 3.0)
        t.append(time.perf_counter() - t0)
    how = "one decoder pass each" if demo.generator_one_pass else "20 steps, guidance 3"
    res[f"generate both images ({how})"] = {"median_s": statistics.median(t), "runs_s": t}
    blob = demo.transmit(img, "fsq", 64, "auto", "Tiny-ImageNet-200", "", "").blob
    t = []
    for i in range(3):
        t0 = time.perf_counter()
        demo.receive(blob, "Tiny-ImageNet-200", "", False, 0, 20, 3.0)
        t.append(time.perf_counter() - t0)
    res["receive .scf (labels + caption)"] = {"median_s": statistics.median(t), "runs_s": t}
    res["loadavg_1_5_15_after"] = os.getloadavg()
    record("app_latency", res)
    for k, v in res.items():
        print(k, v if not isinstance(v, dict) else f"{v['median_s']:.3f} s")


if __name__ == "__main__":
    main()

"""How long the app's steps take on this machine with the embedded models (issue #9's targets: compress +
labels + caption + segmentation of a 512 px image in <= 3 s; generation in <= 30 s).

    python bench/app_latency.py
Calls the same ``Demo`` methods the Gradio endpoints call (no browser, no network), after one warm-up.
"""
from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    spec = importlib.util.spec_from_file_location("app", ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    t0 = time.perf_counter()
    demo = app.Demo("semcomp-tiny-clip")
    load_s = time.perf_counter() - t0
    img = Image.open(ROOT / "assets" / "examples" / "kodim23.jpg").convert("RGB")
    img = img.resize((512, round(512 * img.height / img.width)), Image.BICUBIC)
    res = {"image": f"assets/examples/kodim23.jpg resized to {img.size[0]}x{img.size[1]}", "demo_init_s": load_s}
    for name, args in {"transmit (compress + labels + caption + segmentation)": ("fsq", 64, "auto", "Tiny-ImageNet-200", "", "the parrot"),
                       "transmit without a command": ("fsq", 64, "auto", "Tiny-ImageNet-200", "", "")}.items():
        demo.run(img, *args)  # warm-up: loads heads, builds the label set's text features
        t = []
        for _ in range(5):
            t0 = time.perf_counter()
            demo.run(img, *args)
            t.append(time.perf_counter() - t0)
        res[name] = {"median_s": statistics.median(t), "runs_s": t}
    t = []
    for i in range(3):
        t0 = time.perf_counter()
        demo.generate(img, "fsq", 64, "auto", i, 20, 3.0)
        t.append(time.perf_counter() - t0)
    res["generate both images (20 steps, guidance 3)"] = {"median_s": statistics.median(t), "runs_s": t}
    scf = demo.run(img, "fsq", 64, "auto", "Tiny-ImageNet-200", "", "")[3]
    t = []
    for i in range(3):
        t0 = time.perf_counter()
        demo.receive(scf, "Tiny-ImageNet-200", "", False, 0, 20, 3.0)
        t.append(time.perf_counter() - t0)
    res["receive .scf (labels + caption)"] = {"median_s": statistics.median(t), "runs_s": t}
    record("app_latency", res)
    for k, v in res.items():
        print(k, v if not isinstance(v, dict) else f"{v['median_s']:.3f} s")


if __name__ == "__main__":
    main()

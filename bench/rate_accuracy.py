"""The rate–accuracy table on real images: every shipped codec of a backbone, evaluated with
``semcomp eval`` on the unseen 20 % of Tiny-ImageNet classes (zero-shot, N-way among them).

    python bench/rate_accuracy.py --features features/tin-val.safetensors --backbone semcomp-tiny-clip

Writes bench/results/rate_accuracy.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, record  # noqa: E402
from semcomp.zoo import best_per_budget, shipped_codecs  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True)
    ap.add_argument("--backbone", default="semcomp-tiny-clip")
    ap.add_argument("--split-name", default="tiny-imagenet")
    a = ap.parse_args()
    codecs = shipped_codecs(a.backbone)
    tmp = RESULTS / "rate_accuracy.eval.tmp"
    cmd = [sys.executable, "-m", "semcomp.cli", "eval", "--features", a.features, "--split-name", a.split_name,
           "--out", str(tmp), "--codec", *[str(c["path"]) for c in codecs]]
    subprocess.run(cmd, check=True)
    rep = json.loads(tmp.read_text())
    tmp.unlink()
    for r in rep["results"]:
        card = next(c["card"] for c in codecs if c["spec"] == r["codec"])
        r["train_wall_time_s"] = card.get("wall_time_s")
        r["weights_params"] = card.get("params")
    bb_card = {}
    bb = Path(__file__).resolve().parents[1] / "weights" / "backbones" / a.backbone / "card.json"
    if bb.exists():
        bb_card = json.loads(bb.read_text())
    path = record("rate_accuracy", {"backbone": a.backbone, "backbone_zero_shot_200way": bb_card.get("zero_shot_tiny_imagenet_val"),
                                    "eval_command": " ".join(["semcomp"] + cmd[3:]), **rep})
    write_markdown(json.loads(path.read_text()))
    plot(json.loads(path.read_text()))
    print("wrote", path)


def write_markdown(rep: dict) -> None:
    rows = sorted(rep["results"], key=lambda r: (r["family"], r["fixed_bits"]))
    sp = rep["embedding_spread"]
    lines = [
        f"Backbone `{rep['backbone']}`; {rep['eval_items']} Tiny-ImageNet val images of the {rep['classes']} classes "
        f"unseen by the codecs; zero-shot {rep['classes']}-way, prompt \"a photo of a {{name}}.\". "
        f"Float feature: top-1 {100 * rows[0]['float_top1']:.1f} %, top-5 {100 * rows[0]['float_top5']:.1f} %. "
        f"Embedding spread on these images: mean pairwise cosine {sp['mean_pairwise_cosine']:.3f}, "
        f"{sp['pca_dirs_90pct_var']} principal directions hold 90 % of the variance.",
        "",
        "| codec | fixed bits | empirical entropy bits | ANS bits | Huffman bits | mean cosine | top-1 % | top-5 % | top-1 kept | top-1 %, text compressed too | text-feature cosine | codebook use |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| `{r['codec']}` | {r['fixed_bits']} | {r['empirical_entropy_bits']:.1f} | {r['ans_bits_per_item']:.1f} | {r.get('huffman_bits_per_item', float('nan')):.1f} | "
                     f"{r['mean_cosine']:.4f} | {100 * r['top1']:.1f} | {100 * r['top5']:.1f} | {100 * r['top1_retained']:.0f} % | "
                     f"{100 * r.get('top1_text_compressed_too', float('nan')):.1f} | {r.get('text_mean_cosine', float('nan')):.3f} | "
                     f"{100 * r['codebook_utilisation']:.0f} % |")
    lines += ["", f"Command: `{rep['command']}` on {rep['machine']['cpu']} ({rep['date']}, commit {rep['git_commit']})."]
    (RESULTS / "rate_accuracy.md").write_text("\n".join(lines) + "\n")


def plot(rep: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    rows = rep["results"]
    for fam in sorted({r["family"] for r in rows}):
        rr = best_per_budget([r for r in rows if r["family"] == fam])
        ax.plot([r["fixed_bits"] for r in rr], [100 * r["top1"] for r in rr], "o-", label=f"{fam} (best config per budget)")
    ax.axhline(100 * rows[0]["float_top1"], ls="--", c="gray", label="float feature (upper bound)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bits per feature (fixed length)")
    ax.set_ylabel(f"zero-shot top-1 % ({rep['classes']} unseen classes)")
    ax.set_title(f"{rep['backbone']} on Tiny-ImageNet val (embedded small model, not real CLIP)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "rate_accuracy.png", dpi=110)


if __name__ == "__main__":
    if sys.argv[1:] == ["--replot"]:  # redraw table and plot from the recorded JSON
        rep = json.loads((RESULTS / "rate_accuracy.json").read_text())
        write_markdown(rep)
        plot(rep)
    else:
        main()

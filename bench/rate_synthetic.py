"""Rate vs cosine similarity of every codec family on synthetic clustered features (CI-sized, no real
semantics: for the real curve see bench/rate_accuracy.py on the embedded backbone's features).
    python bench/rate_synthetic.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, record  # noqa: E402
from semcomp.training.codec import mean_cosine, train_codec  # noqa: E402

SPECS = ["dsq-b1", "dsq-b2", "dsq-b3", "fsq-c16l4", "fsq-c64l4", "fsq-c128l8", "vqvae-n1d32k256", "vqvae-n1d32k4096",
         "vqvae-n4d64k256", "pqvae-n8d8k16", "pqvae-n32d8k16", "pqvae-n64d8k16", "pqvae-n128d8k16", "pqvae-n100d16k8",
         "aesq-c64l4", "aesq-c200l8", "aesq-c256l16"]


def synthetic(n_classes=32, per_class=250, dim=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_classes, dim, generator=g), dim=-1)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    # a class centre plus a low-rank within-class component plus isotropic noise
    basis = torch.randn(n_classes, 8, dim, generator=g) / dim**0.5
    coef = torch.randn(len(labels), 8, generator=g)
    x = centres[labels] + 0.6 * torch.einsum("nk,nkd->nd", coef, basis[labels]) + 0.2 * torch.randn(len(labels), dim, generator=g) / dim**0.5
    return F.normalize(x, dim=-1), labels


def main():
    x, y = synthetic()
    test = torch.arange(len(x)) % 5 == 0
    rows = []
    for spec in SPECS:
        codec, card = train_codec(spec, x[~test], epochs=40, batch_size=128, lr=2e-3, codec_kwargs=None if spec.startswith("dsq") else {"hidden": 256}, progress=False)
        s = codec.encode(x[test]).numpy()
        rows.append({"spec": spec, "family": codec.family, "bits": codec.bits, "test_cosine": mean_cosine(codec, x[test]),
                     "ans_bits": 8 * len(codec.entropy_coder.encode(s, "ans")) / len(s), "train_s": card["wall_time_s"]})
        print(rows[-1], flush=True)
    record("rate_synthetic", {"data": "synthetic clustered unit vectors, 32 classes x 250, dim 128 (seed 0); 20% held out",
                              "epochs": 40, "results": rows})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for fam in sorted({r["family"] for r in rows}):
        rr = sorted((r for r in rows if r["family"] == fam), key=lambda r: r["bits"])
        ax.plot([r["bits"] for r in rr], [r["test_cosine"] for r in rr], "o-", label=fam)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bits per feature (fixed length)")
    ax.set_ylabel("mean cosine to the original")
    ax.set_title("Synthetic 128-d clustered features (not real CLIP)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "rate_synthetic.png", dpi=110)


if __name__ == "__main__":
    main()

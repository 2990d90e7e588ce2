"""semcomp demo: upload an image, pick a bit budget, see the bitstream and what the receiver gets.

    pip install -r requirements.txt && python app.py      # http://127.0.0.1:7860, zero downloads

Real CLIP backbones are one setting away for users with internet: ``python app.py --backbone ViT-B-32/openai``
(or SEMCOMP_BACKBONE=...), provided codecs trained for that backbone are in weights/codecs/.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
EXAMPLES = sorted(str(p) for p in (ROOT / "assets" / "examples").glob("*.jpg"))
RATE_RESULTS = ROOT / "bench" / "results" / "rate_accuracy.json"


def label_sets() -> dict[str, list[str]]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    tin = json.loads((ROOT / "assets" / "labels" / "tiny-imagenet-200.json").read_text())
    return {"Tiny-ImageNet-200": [c["name"] for c in tin], "ImageNet-1k": list(IMAGENET_CLASSNAMES)}


class Demo:
    def __init__(self, backbone_name: str):
        from semcomp.backbone import load_backbone
        from semcomp.zoo import shipped_codecs

        self.backbone = load_backbone(backbone_name)
        self.codecs = shipped_codecs(self.backbone.name)
        if not self.codecs:
            raise SystemExit(f"no shipped codecs for backbone {self.backbone.name!r} under weights/codecs/")
        self.label_sets = label_sets()
        self._loaded: dict[str, object] = {}
        rep = json.loads(RATE_RESULTS.read_text()) if RATE_RESULTS.exists() else {"results": []}
        self.measured_top1 = {r["codec"]: r.get("top1", 0.0) for r in rep["results"] if rep.get("backbone") == self.backbone.name}
        self._classifiers: dict[tuple, object] = {}

    def families(self) -> list[str]:
        return sorted({c["family"] for c in self.codecs})

    def budgets(self, family: str) -> list[int]:
        return sorted({c["bits"] for c in self.codecs if c["family"] == family})

    def codec_for(self, family: str, bits: float):
        from semcomp.codecs import load_codec

        options = [c for c in self.codecs if c["family"] == family]
        # Snap to the nearest shipped budget; among configurations with that budget take the best measured.
        best = min(options, key=lambda c: (abs(c["bits"] - bits), c["bits"], -self.measured_top1.get(c["spec"], 0.0)))
        if best["spec"] not in self._loaded:
            self._loaded[best["spec"]] = load_codec(best["path"])
        return self._loaded[best["spec"]], best

    def classifier(self, label_set: str, custom: str):
        from semcomp.heads.zeroshot import ZeroShotClassifier

        if label_set == "Custom":
            names = [s.strip() for s in (custom or "").split(",") if s.strip()]
            if not names:
                raise ValueError("enter at least one comma-separated label")
        else:
            names = self.label_sets[label_set]
        key = (label_set, tuple(names))
        if key not in self._classifiers:
            self._classifiers[key] = ZeroShotClassifier.from_backbone(self.backbone, names)
        return self._classifiers[key]

    def run(self, image, family, bits, coder, label_set, custom):
        import gradio as gr
        from PIL import Image

        from semcomp.link import SemanticLink

        if image is None:
            raise gr.Error("Upload an image (or click an example) first.")
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        image = image.convert("RGB")
        try:
            clf = self.classifier(label_set, custom)
        except ValueError as e:
            raise gr.Error(str(e))
        codec, info = self.codec_for(family, bits)
        tx = SemanticLink(self.backbone, codec, coder).transmit_image(image)
        fl = 32 * codec.dim
        jpeg = io.BytesIO()
        image.save(jpeg, format="JPEG", quality=75)
        jpeg_bits = 8 * len(jpeg.getvalue())
        w, h = image.size
        stats = (
            f"### {codec.spec} — {codec.bits} bits fixed\n"
            f"| | value |\n|---|---|\n"
            f"| fixed-length symbols | **{codec.bits} bits** ({codec.bits / codec.dim:.3f} bits/dim) |\n"
            f"| entropy-coded payload ({SemanticLink.coder_of(tx.blob)}) | **{tx.payload_bits} bits** |\n"
            f"| whole `.scf` file (header + CRC) | {len(tx.blob)} bytes |\n"
            f"| float32 feature | {fl} bits → ratio **{fl / max(1, tx.payload_bits):.0f}×** |\n"
            f"| JPEG q75 of this image ({w}×{h}) | {jpeg_bits} bits ({jpeg_bits / (w * h):.3f} bpp) → {jpeg_bits / max(1, tx.payload_bits):.0f}× more |\n"
            f"| semantic payload in bits per pixel | {tx.payload_bits / (w * h):.5f} bpp |\n"
            f"| cosine(original, decoded) | **{tx.cosine:.4f}** |\n"
            f"| backbone | {self.backbone.name} ({codec.dim}-d) |\n"
        )
        orig = clf.predict(tx.original)[0]
        dec = clf.predict(tx.decoded)[0]
        path = Path(tempfile.mkdtemp()) / f"feature_{codec.spec}.scf"
        path.write_bytes(tx.blob)
        return (stats, dict(zip(orig.labels, orig.probs)), dict(zip(dec.labels, dec.probs)), str(path),
                self.plot(family, codec.bits, info))

    def plot(self, family, bits, info):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from semcomp.zoo import best_per_budget

        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        if RATE_RESULTS.exists():
            rep = json.loads(RATE_RESULTS.read_text())
            rows = best_per_budget([r for r in rep["results"] if r["family"] == family])  # one point per budget
            if rows:
                ax.plot([r["fixed_bits"] for r in rows], [100 * r["top1"] for r in rows], "o-", label=f"{family} (decoded)")
                ax.axhline(100 * rows[0]["float_top1"], ls="--", c="gray", label="float feature")
                here = [r for r in rep["results"] if r["codec"] == info["spec"]]
                if here:
                    ax.plot([here[0]["fixed_bits"]], [100 * here[0]["top1"]], "r*", ms=14, label="chosen")
            ax.set_title(f"zero-shot top-1 on {rep.get('classes')} unseen classes", fontsize=9)
        else:
            ax.set_title("no measured curve yet (bench/results/rate_accuracy.json)", fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bits per feature")
        ax.set_ylabel("top-1 %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig


def build(demo: Demo):
    import gradio as gr

    fam0 = "pqvae" if "pqvae" in demo.families() else demo.families()[0]
    b0 = demo.budgets(fam0)
    with gr.Blocks(title="semcomp — send what an image means") as ui:
        gr.Markdown(
            "# semcomp — send what an image *means*, not its pixels\n"
            f"Backbone **{demo.backbone.name}** (embedded, offline: a small CLIP trained here on Tiny-ImageNet — "
            "far weaker than real CLIP). The receiver sees only the bitstream."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="pil", label="Image", sources=["upload", "clipboard", "webcam"])
                gr.Examples(EXAMPLES, inputs=image)
                family = gr.Dropdown(demo.families(), value=fam0, label="Codec family")
                bits = gr.Slider(min(b0), max(max(b0), min(b0) + 1), value=min(b0, key=lambda b: abs(b - 256)), step=1,
                                 label=f"Bit budget (snaps to the shipped budgets: {', '.join(map(str, b0))})")
                coder = gr.Radio(["auto", "ans", "huffman", "raw"], value="auto", label="Entropy coder (auto: smallest)")
                label_set = gr.Dropdown(list(demo.label_sets) + ["Custom"], value="Tiny-ImageNet-200", label="Labels")
                custom = gr.Textbox(label="Custom labels (comma-separated)", placeholder="cat, dog, fire truck")
                go = gr.Button("Compress and transmit", variant="primary")
            with gr.Column(scale=1):
                stats = gr.Markdown()
                scf = gr.File(label="Bitstream (.scf)")
                plot = gr.Plot(label="Measured accuracy vs bits")
        with gr.Row():
            orig = gr.Label(num_top_classes=5, label="From the original feature")
            dec = gr.Label(num_top_classes=5, label="Decoded from the bitstream")

        def on_family(f):
            b = demo.budgets(f)
            return gr.Slider(minimum=min(b), maximum=max(max(b), min(b) + 1), value=b[len(b) // 2],
                             label=f"Bit budget (snaps to the shipped budgets: {', '.join(map(str, b))})")

        family.change(on_family, family, bits)
        go.click(demo.run, [image, family, bits, coder, label_set, custom], [stats, orig, dec, scf, plot], api_name="transmit")
    return ui


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default=os.environ.get("SEMCOMP_BACKBONE", "semcomp-tiny-clip"))
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    a = ap.parse_args(argv)
    build(Demo(a.backbone)).queue(default_concurrency_limit=4).launch(server_name=a.host, server_port=a.port)


if __name__ == "__main__":
    main()

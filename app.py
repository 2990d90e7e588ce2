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
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
EXAMPLES = sorted(str(p) for p in (ROOT / "assets" / "examples").glob("*.jpg"))
RATE_RESULTS = ROOT / "bench" / "results" / "rate_accuracy.json"
PLOT_LOCK = threading.Lock()


def label_sets() -> dict[str, list[str]]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    tin = json.loads((ROOT / "assets" / "labels" / "tiny-imagenet-200.json").read_text())
    return {"Tiny-ImageNet-200": [c["name"] for c in tin], "ImageNet-1k": list(IMAGENET_CLASSNAMES)}


from semcomp.images import MAX_COMMAND, MAX_SIDE, prepare_image  # noqa: E402  (the package holds the logic)


def _display(arr, min_side: int = 256):
    """Upscale small images (Tiny-ImageNet's 64 px) for the page; big ones pass through."""
    from PIL import Image

    im = Image.fromarray(arr)
    k = min_side / min(im.size)
    return np.asarray(im.resize((round(im.width * k), round(im.height * k)), Image.NEAREST)) if k > 1 else arr


def torch_stack(rows):
    import torch

    return torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in rows])


class Demo:
    def __init__(self, backbone_name: str, sam_checkpoint: str | None = None):
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
        self.sam_checkpoint = sam_checkpoint
        # Load every model now, once: lazy first imports (diffusers, transformers) are not thread-safe, and the
        # queue runs requests in parallel threads (found by bench/app_load.py).
        for kind in ("caption", "generate"):
            self.head(kind)
        from semcomp.pixel.learned import shipped_pixel_codecs

        # the panel uses the factorized-prior models: the attention pyramid costs seconds per image at these sizes
        # (both are measured in bench/pixel_vs_semantic.py)
        self._loaded["pixel"] = [c for c in shipped_pixel_codecs() if "pyramid" not in c.name]
        gen_card = self._head_card("generate")
        self.default_guidance = float(gen_card.get("default_guidance", 3.0))

    def label_set(self, name: str) -> list[str]:
        from semcomp.labels import DOWNLOADABLE, downloadable_label_set

        if name in self.label_sets:
            return self.label_sets[name]
        key = name.split(" (")[0]
        if key in DOWNLOADABLE:
            return downloadable_label_set(key)  # LabelSetError (a ValueError) reaches the page as a message
        raise ValueError(f"unknown label set {name!r}")

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
            names = self.label_set(label_set)
        key = (label_set, tuple(names))
        if key not in self._classifiers:
            self._classifiers[key] = ZeroShotClassifier.from_backbone(self.backbone, names)
        return self._classifiers[key]

    def _head_card(self, kind: str) -> dict:
        from semcomp.receiver import shipped_heads

        p = shipped_heads(self.backbone.name).get(kind)
        return json.loads((p / "card.json").read_text()) if p else {}

    def head(self, kind: str):
        from semcomp.receiver import load_head

        return load_head(kind, self.backbone.name)

    @property
    def segmenter(self):
        from semcomp.heads.segment import TextSegmenter

        if "segmenter" not in self._loaded:
            self._loaded["segmenter"] = TextSegmenter(self.backbone, "sam+superpixels+boxes" if self.sam_checkpoint else "superpixels+boxes",
                                                      self.sam_checkpoint)
        return self._loaded["segmenter"]

    def captions(self, original, decoded) -> tuple[str, str]:
        cap = self.head("caption")
        if cap is None:
            return "(no captioner ships for this backbone)", "(no captioner ships for this backbone)"
        a, b = cap.caption(torch_stack([original, decoded]))
        return a, b

    def same_bytes(self, image, n_bytes: int):
        """What the .scf file's bytes buy as pixels: the largest JPEG, and the largest learned-codec image, that fit."""
        from semcomp.pixel import JPEG_LADDER, best_within

        lines = [f"**The same {n_bytes} bytes as pixels** (the whole `.scf` file, header and CRC included):"]
        smallest = best_within(JPEG_LADDER[-1:], image, 10**9, min_side=1, start_side=8)
        jpeg = best_within(JPEG_LADDER, image, n_bytes) if smallest["bytes"] <= n_bytes else None
        if jpeg is None:
            lines.append(f"- JPEG: no JPEG fits — the smallest this image can have ({smallest['width']}×{smallest['height']} px, "
                         f"q1) is **{smallest['bytes']} bytes** ({smallest['bytes'] / n_bytes:.0f}× the budget); shown instead.")
            jpeg = smallest
        else:
            lines.append(f"- JPEG: {jpeg['width']}×{jpeg['height']} px at {jpeg['codec']}, {jpeg['bytes']} bytes.")
        # start near the size the budget can hold (the cheapest shipped model needs ~0.2 bit/pixel), not at 256 px
        start = int(min(256, max(8, (16 * n_bytes / 0.2) ** 0.5)))
        learned = best_within(self._loaded["pixel"], image, n_bytes, min_side=4, start_side=start) if self._loaded["pixel"] else None
        if learned is None:
            lines.append("- learned pixel codec: nothing fits (or none ships).")
        else:
            lines.append(f"- learned pixel codec (`{learned['codec']}`, trained here): {learned['width']}×{learned['height']} px, "
                         f"{learned['bytes']} bytes.")
        show = lambda r: _display(r["image"]) if r else None  # noqa: E731
        return show(jpeg), show(learned), "\n".join(lines)

    def segment(self, image, command: str, codec):
        """The command's text feature, sent float and compressed; the best mask for each, drawn on the image."""
        from semcomp.heads.segment import overlay

        command = (command or "").strip()
        if not command:
            return None, None, "type a command (e.g. \"the dog\") to segment"
        if len(command) > MAX_COMMAND:
            return None, None, f"the command is {len(command)} characters long; keep it under {MAX_COMMAND}"
        t = self.backbone.encode_text([command])
        blob = codec.compress(t, "auto")
        t_dec = codec.decompress(blob)[0]
        img, masks, z = self.segmenter.embed_proposals(image)
        r0 = self.segmenter.rank(img, masks, z, t[0])
        r1 = self.segmenter.rank(img, masks, z, t_dec)
        from semcomp.bitstream import unpack

        bits_cmd = 8 * len(unpack(blob)[1])
        note = (f"command “{command}”: text feature sent in **{bits_cmd} bits** ({len(blob)}-byte .scf) — "
                f"best-mask score {r0.scores[0]:.3f} (float command) vs {r1.scores[0]:.3f} (decoded command)")
        return _display(overlay(img, r0)), _display(overlay(img, r1)), note

    def run(self, image, family, bits, coder, label_set, custom, command=""):
        import gradio as gr
        from PIL import Image

        from semcomp.link import SemanticLink

        try:
            image = prepare_image(image)
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
        cap_o, cap_d = self.captions(tx.original, tx.decoded)
        seg_o, seg_d, seg_note = self.segment(image, command, codec)
        px_jpeg, px_learned, px_note = self.same_bytes(image, len(tx.blob))
        return (stats, dict(zip(orig.labels, orig.probs)), dict(zip(dec.labels, dec.probs)), str(path),
                self.plot(family, codec.bits, info), cap_o, cap_d, seg_o, seg_d, seg_note, px_jpeg, px_learned, px_note)

    def generate(self, image, family, bits, coder, seed, steps, guidance, progress=None):
        """Images generated from the original and from the decoded feature (same seed: only the feature differs)."""
        import gradio as gr
        from PIL import Image

        from semcomp.link import SemanticLink

        gen = self.head("generate")
        if gen is None:
            raise gr.Error(f"no generator ships for backbone {self.backbone.name}")
        try:
            image = prepare_image(image)
        except ValueError as e:
            raise gr.Error(str(e))
        codec, _ = self.codec_for(family, bits)
        tx = SemanticLink(self.backbone, codec, coder).transmit_image(image)
        steps = int(steps)
        cb = (lambda i, n: progress(i / n, desc=f"denoising step {i}/{n}")) if progress is not None else None
        out = gen.generate(torch_stack([tx.original, tx.decoded]), steps=steps, guidance=float(guidance), seed=int(seed), callback=cb)
        big = [Image.fromarray(o).resize((256, 256), Image.BICUBIC) for o in out]
        return big[0], big[1]

    def receive(self, file, label_set, custom, with_image, seed, steps, guidance):
        """Receiver-only: everything from the .scf bytes alone."""
        import gradio as gr
        from PIL import Image

        from semcomp.bitstream import BitstreamError
        from semcomp.receiver import receive

        if file is None:
            raise gr.Error("Upload a .scf bitstream (download one from the sender tab).")
        path = file if isinstance(file, str) else getattr(file, "name", None) or file["name"]
        blob = Path(path).read_bytes()
        if len(blob) > 1 << 20:
            raise gr.Error("that file is over 1 MB: not a single-image semcomp bitstream")
        try:
            codec, feats = receive(blob)
        except BitstreamError as e:
            raise gr.Error(f"not a valid semcomp bitstream: {e}")
        if codec.backbone != self.backbone.name:
            raise gr.Error(f"this bitstream is for backbone {codec.backbone}; the app runs {self.backbone.name}")
        try:
            clf = self.classifier(label_set, custom)
        except ValueError as e:
            raise gr.Error(str(e))
        f = feats[0]
        r = clf.predict(f[None])[0]
        cap = self.head("caption")
        caption = cap.caption(f[None])[0] if cap is not None else "(no captioner ships for this backbone)"
        info = (f"{len(blob)}-byte bitstream: codec **{codec.spec}** ({codec.bits} bits fixed), backbone {codec.backbone}, "
                f"{len(feats)} feature(s); showing the first")
        img = None
        gen = self.head("generate")
        if with_image and gen is not None:
            img = Image.fromarray(gen.generate(f[None], steps=int(steps), guidance=float(guidance), seed=int(seed))[0]).resize((256, 256), Image.BICUBIC)
        return info, dict(zip(r.labels, r.probs)), caption, img

    def plot(self, family, bits, info):
        # Rendered to pixels here, under a lock: matplotlib's text layout (mathtext) is not thread-safe, and a
        # gr.Plot would be rendered later by Gradio in parallel threads (bench/app_load.py found both).
        from PIL import Image

        with PLOT_LOCK:
            fig = self._plot(family, bits, info)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100)
        return np.asarray(Image.open(buf).convert("RGB"))

    def _plot(self, family, bits, info):
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure  # not pyplot: pyplot keeps every figure alive (a leak under load)

        from semcomp.zoo import best_per_budget

        fig = Figure(figsize=(5.5, 3.2))
        ax = fig.subplots()
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

    from semcomp.backbone import available_backbones

    fam0 = "pqvae" if "pqvae" in demo.families() else demo.families()[0]
    b0 = demo.budgets(fam0)
    with gr.Blocks(title="semcomp — send what an image means") as ui:
        gr.Markdown(
            "# semcomp — send what an image *means*, not its pixels\n"
            f"Backbone **{demo.backbone.name}** (embedded, offline: a small CLIP trained here on Tiny-ImageNet — "
            "far weaker than real CLIP; the caption and image heads were trained here too, see the README). "
            "The receiver sees only the bitstream.  \n"
            "Other backbones: " + ", ".join(f"`{n}` ({v})" for n, v in available_backbones().items() if n != demo.backbone.name)
            + " — start with `python app.py --backbone NAME` once codecs for it are in `weights/codecs/`."
        )
        with gr.Tab("Sender → receiver"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(type="pil", label="Image", sources=["upload", "clipboard", "webcam"])
                    gr.Examples(EXAMPLES, inputs=image)
                    family = gr.Dropdown(demo.families(), value=fam0, label="Codec family")
                    bits = gr.Slider(min(b0), max(max(b0), min(b0) + 1), value=min(b0, key=lambda b: abs(b - 256)), step=1,
                                     label=f"Bit budget (snaps to the shipped budgets: {', '.join(map(str, b0))})")
                    coder = gr.Radio(["auto", "ans", "huffman", "raw"], value="auto", label="Entropy coder (auto: smallest)")
                    label_set = gr.Dropdown(list(demo.label_sets) + ["CIFAR-10 (downloads once)", "CIFAR-100 (downloads once)", "Custom"], value="Tiny-ImageNet-200", label="Labels")
                    custom = gr.Textbox(label="Custom labels (comma-separated)", placeholder="cat, dog, fire truck")
                    command = gr.Textbox(label="Segmentation command (sent compressed too)", placeholder="the parrot on the right")
                    go = gr.Button("Compress and transmit", variant="primary")
                with gr.Column(scale=1):
                    stats = gr.Markdown()
                    scf = gr.File(label="Bitstream (.scf)")
                    plot = gr.Image(label="Measured accuracy vs bits", interactive=False)
            with gr.Row():
                with gr.Column():
                    gr.Markdown("### From the original feature")
                    orig = gr.Label(num_top_classes=5, label="Zero-shot labels")
                    cap_o = gr.Textbox(label="Caption", interactive=False)
                    seg_o = gr.Image(label="Segmentation (float command)", interactive=False)
                    gen_o = gr.Image(label="Generated image", interactive=False)
                with gr.Column():
                    gr.Markdown("### Decoded from the bitstream")
                    dec = gr.Label(num_top_classes=5, label="Zero-shot labels")
                    cap_d = gr.Textbox(label="Caption", interactive=False)
                    seg_d = gr.Image(label="Segmentation (decoded command)", interactive=False)
                    gen_d = gr.Image(label="Generated image", interactive=False)
            seg_note = gr.Markdown()
            with gr.Row():
                with gr.Column():
                    px_note = gr.Markdown()
                with gr.Column():
                    px_jpeg = gr.Image(label="Same bytes as a JPEG", interactive=False)
                with gr.Column():
                    px_learned = gr.Image(label="Same bytes through a learned pixel codec", interactive=False)
            with gr.Row():
                seed = gr.Number(0, precision=0, label="Seed")
                steps = gr.Slider(4, 50, value=20, step=1, label="Denoising steps")
                guidance = gr.Slider(1.0, 8.0, value=demo.default_guidance, step=0.5, label="Guidance")
                gen_btn = gr.Button("Generate images (slower: ~7 s for both on a 2-core CPU)")

        with gr.Tab("Receiver only (.scf file)"):
            gr.Markdown("Upload a `.scf` bitstream: the codec, the backbone and the features come out of the bytes alone.")
            with gr.Row():
                with gr.Column():
                    rfile = gr.File(label=".scf bitstream", file_types=[".scf"])
                    r_labels = gr.Dropdown(list(demo.label_sets) + ["CIFAR-10 (downloads once)", "CIFAR-100 (downloads once)", "Custom"], value="Tiny-ImageNet-200", label="Labels")
                    r_custom = gr.Textbox(label="Custom labels (comma-separated)")
                    r_img = gr.Checkbox(True, label="Also generate an image")
                    rgo = gr.Button("Decode", variant="primary")
                with gr.Column():
                    r_info = gr.Markdown()
                    r_lab = gr.Label(num_top_classes=5, label="Zero-shot labels")
                    r_cap = gr.Textbox(label="Caption", interactive=False)
                    r_gen = gr.Image(label="Generated image", interactive=False)

        def on_family(f):
            b = demo.budgets(f)
            return gr.Slider(minimum=min(b), maximum=max(max(b), min(b) + 1), value=b[len(b) // 2],
                             label=f"Bit budget (snaps to the shipped budgets: {', '.join(map(str, b))})")

        def on_generate(image, family, bits, coder, seed, steps, guidance, progress=gr.Progress()):
            return demo.generate(image, family, bits, coder, seed, steps, guidance, progress)

        family.change(on_family, family, bits)
        go.click(demo.run, [image, family, bits, coder, label_set, custom, command],
                 [stats, orig, dec, scf, plot, cap_o, cap_d, seg_o, seg_d, seg_note, px_jpeg, px_learned, px_note],
                 api_name="transmit")
        gen_btn.click(on_generate, [image, family, bits, coder, seed, steps, guidance], [gen_o, gen_d], api_name="generate",
                      concurrency_limit=1)
        rgo.click(demo.receive, [rfile, r_labels, r_custom, r_img, seed, steps, guidance], [r_info, r_lab, r_cap, r_gen],
                  api_name="receive")
    return ui


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default=os.environ.get("SEMCOMP_BACKBONE", "semcomp-tiny-clip"))
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    ap.add_argument("--sam-checkpoint", default=os.environ.get("SEMCOMP_SAM_CHECKPOINT"),
                    help="segment-anything vit_b checkpoint: SAM mask proposals for segmentation (needs a download)")
    a = ap.parse_args(argv)
    build(Demo(a.backbone, a.sam_checkpoint)).queue(default_concurrency_limit=4, max_size=64).launch(
        server_name=a.host, server_port=a.port, max_file_size="20mb")


if __name__ == "__main__":
    main()

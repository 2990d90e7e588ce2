"""semcomp demo: upload an image, pick a bit budget, see the bitstream and what the receiver gets.

    pip install -r requirements.txt && python app.py      # http://127.0.0.1:7860, zero downloads

This file holds the Gradio layout and wiring only; the logic is ``semcomp.demo.Demo`` (plain dataclasses out,
``DemoError`` with the reason for any bad input), which tests and other servers call directly.

Environment variables (a command-line option wins over them):
  PORT                    port to listen on, as many hosts set it (then the default host is 0.0.0.0)
  SPACE_ID                set on Hugging Face Spaces (then the default host is 0.0.0.0)
  GRADIO_SERVER_PORT      port (wins over PORT)
  GRADIO_SERVER_NAME      host/interface to bind, e.g. 0.0.0.0 on Hugging Face Spaces
  SEMCOMP_BACKBONE        backbone name (default: the embedded offline one)
  SEMCOMP_SAM_CHECKPOINT  segment-anything checkpoint for SAM mask proposals
  GRADIO_TEMP_DIR         where uploads and outputs go; unset: a private folder removed on exit
"""
from __future__ import annotations

import argparse
import atexit
import functools
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent
EXAMPLES = sorted(str(p) for p in (ROOT / "assets" / "examples").glob("*.jpg"))
MAX_SCF_FILES = 32  # .scf downloads kept on disk at once (the oldest go first)
MESSAGE_S = 30  # seconds a message about a bad input stays on the page

logger = logging.getLogger("semcomp.app")


class ScfFiles:
    """The .scf downloads: one folder, at most MAX_SCF_FILES files in it (Gradio copies each into its cache)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._n = 0
        self._lock = threading.Lock()

    def write(self, blob: bytes, spec: str) -> str:
        with self._lock:
            self._n += 1
            path = self.folder / f"{self._n:06d}" / f"feature_{spec}.scf"
            path.parent.mkdir(parents=True)  # parents: survives anyone emptying the folder
            path.write_bytes(blob)
            old = sorted(self.folder.iterdir())[:-MAX_SCF_FILES]
        for d in old:
            shutil.rmtree(d, ignore_errors=True)
        return str(path)


def endpoint(fn):
    """Every failure reaches the page as a message with its reason, never a bare "Error"."""
    import gradio as gr

    from semcomp.demo import DemoError

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except DemoError as e:
            raise gr.Error(str(e), duration=MESSAGE_S, title="Cannot do that", print_exception=False) from None
        except MemoryError:
            raise gr.Error("out of memory for this request; try a smaller image or fewer labels", duration=MESSAGE_S,
                           title="Cannot do that", print_exception=False) from None
        except Exception as e:  # a bug: say what, keep the traceback in the server log
            logger.exception("request failed")
            raise gr.Error(f"internal error ({type(e).__name__}: {e}); the server log has the details",
                           duration=MESSAGE_S, title="Server error") from None

    return wrapped


def image_input(**kwargs):
    """gr.Image that hands over the uploaded file's path without opening it: ``semcomp.images.open_image``
    checks the size before decoding, and a file that is not an image becomes a message, not a bare "Error"."""
    import gradio as gr

    component = gr.Image(type="filepath", image_mode=None, **kwargs)
    base = component.preprocess

    def preprocess(payload):  # an instance attribute: a gr.Image subclass would make gradio write an app.pyi
        if payload is None:
            return None
        if getattr(payload, "path", None) and not (payload.url or "").startswith("data:"):
            return payload.path
        try:
            return base(payload)
        except gr.Error:
            raise
        except Exception as e:
            raise gr.Error(f"could not read the upload as an image: {e}") from None

    component.preprocess = preprocess
    return component


def stats_markdown(r, backbone: str) -> str:
    fl = 32 * r.dim
    w, h = r.image_size
    if r.coder == "raw":
        payload = "payload: raw fixed-length symbols (not entropy-coded)"
    else:
        payload = f"entropy-coded payload ({r.coder})"
    steps = ", ".join(f"{k} {v:.2f} s" for k, v in r.timings.items())
    if r.full_stream_bytes:  # a progressive stream, cut without the model
        cut = (f"| progressive stream | the sender's whole stream ({r.full_stream_bits} bits/feature, {r.full_stream_bytes}-byte "
               f"`.scf`) **cut** to its first {r.fixed_bits} bits ({len(r.blob)}-byte `.scf`) by `semcomp.truncate`; "
               f"the receiver decoded that prefix |\n")
    else:
        cut = ""
    if r.frame_bytes:
        frame = (f"| the same feature as one frame of a stream (codec announced once in {r.announce_bytes} bytes) | "
                 f"**{r.frame_bytes} bytes** (sequence + payload + CRC-16; {'fits' if r.frame_bytes <= 51 else 'exceeds'} "
                 f"a 51-byte LoRa frame) |\n")
    else:
        frame = ""
    return (
        f"### {r.spec} — {r.fixed_bits} bits fixed\n"
        f"| | value |\n|---|---|\n"
        f"| fixed-length symbols | **{r.fixed_bits} bits** ({r.fixed_bits / r.dim:.3f} bits/dim) |\n"
        + cut +
        f"| {payload} | **{r.payload_bits} bits** |\n"
        f"| whole `.scf` file (header + CRC) | {len(r.blob)} bytes |\n"
        + frame +
        f"| float32 feature | {fl} bits → ratio **{fl / max(1, r.payload_bits):.0f}×** |\n"
        f"| JPEG q75 of this image ({w}×{h}) | {r.jpeg_bits} bits ({r.jpeg_bits / (w * h):.3f} bpp) → "
        f"{r.jpeg_bits / max(1, r.payload_bits):.0f}× more |\n"
        f"| semantic payload in bits per pixel | {r.payload_bits / (w * h):.5f} bpp |\n"
        f"| cosine(original, decoded) | **{r.cosine:.4f}** |\n"
        f"| backbone | {backbone} ({r.dim}-d) |\n"
        f"| time on this server | **{r.elapsed_s:.2f} s** ({steps}) |\n"
    )


def build(demo, scf_files: ScfFiles):
    import gradio as gr

    from semcomp.backbone import available_backbones, embedded_names
    from semcomp.demo import CODERS, MAX_GUIDANCE, MAX_SEED, MAX_STEPS
    from semcomp.labels import MAX_LABELS

    families = demo.families()
    progressive = [f for f in families if demo.is_progressive(f)]
    fam0 = progressive[0] if progressive else ("fsq" if "fsq" in families else families[0])
    every_budget = sorted({b for f in families for b in demo.budgets(f)})

    def budget_choices(f):
        return [(f"{b} bits", b) for b in demo.budgets(f)]

    def default_budget(f, keep=None):
        b = demo.budgets(f)
        return keep if keep in b else min(b, key=lambda x: abs(x - 64))

    @endpoint
    def transmit(image, family, bits, coder, label_set, custom, command):
        r = demo.transmit(image, family, bits, coder, label_set, custom, command)
        return (stats_markdown(r, demo.backbone.name), r.labels_original, r.labels_decoded, scf_files.write(r.blob, r.spec),
                r.plot, r.caption_original, r.caption_decoded, r.segment_original, r.segment_decoded, r.segment_note,
                r.pixels_jpeg, r.pixels_learned, r.pixels_note)

    @endpoint
    def generate(image, family, bits, coder, seed, steps, guidance, progress=gr.Progress()):
        r = demo.generate(image, family, bits, coder, seed, steps, guidance,
                          progress=lambda i, n: progress(i / n, desc=f"denoising step {i}/{n}"))
        how = ("one decoder pass each, no seed or steps" if demo.generator_one_pass
               else f"{r.steps} steps, guidance {r.guidance:g}, seed {r.seed}")
        return r.original, r.decoded, f"Generated both images in **{r.elapsed_s:.2f} s** on this server ({how}, codec {r.spec})."

    @endpoint
    def receive(file, label_set, custom, with_image, seed, steps, guidance):
        path = file if isinstance(file, (str, type(None))) else getattr(file, "name", None) or file["name"]
        r = demo.receive(path, label_set, custom, with_image, seed, steps, guidance)
        info = (f"{r.n_bytes}-byte bitstream: codec **{r.spec}** ({r.fixed_bits} bits fixed), backbone {r.backbone}, "
                f"{r.n_items} feature(s); showing the first. Decoded in **{r.elapsed_s:.2f} s** on this server.")
        return info, r.labels, r.caption, r.image

    with gr.Blocks(title="semcomp — send what an image means", delete_cache=(900, 3600)) as ui:
        embedded = demo.backbone.name in embedded_names()
        gr.Markdown(
            "# semcomp — send what an image *means*, not its pixels\n"
            f"Backbone **{demo.backbone.name}**"
            + (" (embedded and offline: small, far weaker than a full-size CLIP; it and the caption and image heads "
               "are described in the README)" if embedded else "")
            + ". The receiver sees only the bitstream.  \nOther backbones: "
            + ", ".join(f"`{n}` ({v})" for n, v in available_backbones().items() if n != demo.backbone.name)
            + " — start with `python app.py --backbone NAME` once codecs for it are in `weights/codecs/`."
        )
        with gr.Tab("Sender → receiver"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = image_input(label="Image", sources=["upload", "clipboard", "webcam"], height=300)
                    gr.Examples(EXAMPLES, inputs=image)
                    family = gr.Dropdown(families, value=fam0, label="Codec family")
                    # every family's budgets are valid choices for API clients; the page narrows them per family
                    bits = gr.Dropdown([(f"{b} bits", b) for b in every_budget], value=default_budget(fam0),
                                       label="Bit budget (the shipped codecs of this family)",
                                       visible=not demo.is_progressive(fam0))
                    # a progressive family: one model, its stream cut at any stage boundary; the slider drives `bits`
                    cut = gr.Slider(8, 1024, value=64, step=8, visible=demo.is_progressive(fam0),
                                    label="Bit budget (one progressive model: the stream is cut here)")
                    coder = gr.Radio(list(CODERS), value="auto",
                                     label="Entropy coder (auto: the smallest; raw: not entropy-coded)")
                    label_set = gr.Dropdown(demo.label_set_names(), value="ImageNet-1k", label="Labels")
                    custom = gr.Textbox(label=f"Custom labels (comma-separated, at most {MAX_LABELS:,})", placeholder="cat, dog, fire truck")
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
                with gr.Column():
                    gr.Markdown("### Decoded from the bitstream")
                    dec = gr.Label(num_top_classes=5, label="Zero-shot labels")
                    cap_d = gr.Textbox(label="Caption", interactive=False)
                    seg_d = gr.Image(label="Segmentation (decoded command)", interactive=False)
            seg_note = gr.Markdown()
            gr.Markdown("### Images generated from each feature (" + ("one decoder pass: 64 px, the average of what the "
                        "feature could show" if demo.generator_one_pass else "same seed: only the feature differs") + ")")
            with gr.Row():
                gen_o = gr.Image(label="Generated from the original feature", interactive=False)
                gen_d = gr.Image(label="Generated from the decoded feature", interactive=False)
            with gr.Row():  # right under the two image boxes it fills
                diffusion = not demo.generator_one_pass  # a one-pass decoder has nothing to set
                seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", visible=diffusion)
                steps = gr.Slider(1, MAX_STEPS, value=20, step=1, label="Denoising steps", visible=diffusion)
                guidance = gr.Slider(0.0, MAX_GUIDANCE, value=demo.default_guidance, step=0.5, label="Guidance",
                                     visible=diffusion)
                gen_btn = gr.Button("Generate images from both features", variant="secondary")
            gen_note = gr.Markdown()
            with gr.Row():
                with gr.Column():
                    px_note = gr.Markdown()
                with gr.Column():
                    px_jpeg = gr.Image(label="Same bytes as a JPEG", interactive=False)
                with gr.Column():
                    px_learned = gr.Image(label="Same bytes through a learned pixel codec", interactive=False)

        with gr.Tab("Receiver only (.scf file)"):
            gr.Markdown("Upload a `.scf` bitstream: the codec, the backbone and the features come out of the bytes alone.")
            with gr.Row():
                with gr.Column():
                    rfile = gr.File(label=".scf bitstream", file_types=[".scf"])
                    r_labels = gr.Dropdown(demo.label_set_names(), value="ImageNet-1k", label="Labels")
                    r_custom = gr.Textbox(label=f"Custom labels (comma-separated, at most {MAX_LABELS:,})")
                    r_img = gr.Checkbox(True, label="Also generate an image")
                    with gr.Row():
                        r_seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", visible=diffusion)
                        r_steps = gr.Slider(1, MAX_STEPS, value=20, step=1, label="Denoising steps", visible=diffusion)
                        r_guidance = gr.Slider(0.0, MAX_GUIDANCE, value=demo.default_guidance, step=0.5, label="Guidance",
                                               visible=diffusion)
                    rgo = gr.Button("Decode", variant="primary")
                with gr.Column():
                    r_info = gr.Markdown()
                    r_lab = gr.Label(num_top_classes=5, label="Zero-shot labels")
                    r_cap = gr.Textbox(label="Caption", interactive=False)
                    r_gen = gr.Image(label="Generated image", interactive=False)

        def on_family(f, current):
            b = demo.budgets(f)
            prog = demo.is_progressive(f)
            value = default_budget(f, current)
            return (gr.Dropdown(choices=budget_choices(f), value=value, visible=not prog),
                    gr.Slider(minimum=b[0], maximum=b[-1], step=b[0], value=value, visible=prog) if prog else gr.Slider(visible=False))

        family.change(on_family, [family, bits], [bits, cut], api_name=False)
        ui.load(on_family, [family, bits], [bits, cut], api_name=False)
        cut.change(lambda v: int(v), cut, bits, api_name=False)
        go.click(transmit, [image, family, bits, coder, label_set, custom, command],
                 [stats, orig, dec, scf, plot, cap_o, cap_d, seg_o, seg_d, seg_note, px_jpeg, px_learned, px_note],
                 api_name="transmit", show_progress_on=[stats])  # progress (or a failure's badge) in one box
        gen_btn.click(generate, [image, family, bits, coder, seed, steps, guidance], [gen_o, gen_d, gen_note],
                      api_name="generate", concurrency_limit=1, show_progress_on=[gen_o, gen_d])
        rgo.click(receive, [rfile, r_labels, r_custom, r_img, r_seed, r_steps, r_guidance], [r_info, r_lab, r_cap, r_gen],
                  api_name="receive", show_progress_on=[r_info])
    return ui


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def parse_args(argv=None, env=None):
    from semcomp.backbone import EMBEDDED_DEFAULT

    env = os.environ if env is None else env
    port = env.get("GRADIO_SERVER_PORT") or env.get("PORT") or "7860"
    hosted = env.get("PORT") or env.get("SPACE_ID")  # a host routes traffic from outside to this process
    host = env.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if hosted else "127.0.0.1")
    ap = argparse.ArgumentParser(prog="python app.py", description=__doc__, formatter_class=_Formatter)
    ap.add_argument("--backbone", default=env.get("SEMCOMP_BACKBONE", EMBEDDED_DEFAULT),
                    help="CLIP backbone: the embedded offline model, or e.g. ViT-B-32/openai (downloads; needs codecs "
                         "for it in weights/codecs/) [env SEMCOMP_BACKBONE]")
    ap.add_argument("--host", default=host, help="interface to listen on [env GRADIO_SERVER_NAME; 0.0.0.0 when PORT "
                                                 "or SPACE_ID (Hugging Face Spaces) is set]")
    ap.add_argument("--port", type=int, default=int(port), help="port [env GRADIO_SERVER_PORT, then PORT]")
    ap.add_argument("--sam-checkpoint", default=env.get("SEMCOMP_SAM_CHECKPOINT"),
                    help="segment-anything vit_b checkpoint: SAM mask proposals for segmentation (needs a download) "
                         "[env SEMCOMP_SAM_CHECKPOINT]")
    ap.add_argument("--concurrency", type=int, default=4, help="requests served at once (generation: one at a time)")
    ap.add_argument("--queue-size", type=int, default=64, help="requests waiting at most; more are refused")
    return ap.parse_args(argv)


def private_temp_dir() -> Path | None:
    """Uploads and outputs in a folder of our own, removed on exit (also on SIGTERM), unless GRADIO_TEMP_DIR is set."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        return None
    d = Path(tempfile.mkdtemp(prefix="semcomp-app-"))
    os.environ["GRADIO_TEMP_DIR"] = str(d)  # read by gradio when it creates components and caches files
    atexit.register(shutil.rmtree, d, True)
    return d


def main(argv=None):
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from semcomp.demo import Demo, DemoError, check_backbone

    try:
        check_backbone(a.backbone)  # before anything is loaded or downloaded
    except DemoError as e:
        print(f"app.py: {e}", file=sys.stderr)
        return 2
    tmp = private_temp_dir()
    scf_dir = Path(tempfile.mkdtemp(prefix="scf-", dir=tmp or os.environ["GRADIO_TEMP_DIR"]))
    atexit.register(shutil.rmtree, scf_dir, True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # SystemExit, so the atexit clean-ups run
    try:
        demo = Demo(a.backbone, a.sam_checkpoint)
    except (DemoError, ValueError, OSError) as e:  # BackboneError, missing weights, no network for a real CLIP
        print(f"app.py: cannot load backbone {a.backbone!r}: {e}", file=sys.stderr)
        return 2
    build(demo, ScfFiles(scf_dir)).queue(default_concurrency_limit=a.concurrency, max_size=a.queue_size).launch(
        server_name=a.host, server_port=a.port, max_file_size="20mb")
    return 0


if __name__ == "__main__":
    sys.exit(main())

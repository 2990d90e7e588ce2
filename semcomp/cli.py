"""``semcomp`` command line: extract, train, eval, encode, decode, train-backbone."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from .backbone import EMBEDDED_DEFAULT
logger = logging.getLogger("semcomp")


class CLIError(Exception):
    pass


MAX_INPUT_BYTES = 4 << 30  # a .scf / .scfs / feature file / image larger than this is refused before reading


def _input_file(path: str | Path, what: str = "input", max_bytes: int = MAX_INPUT_BYTES) -> Path:
    """A path that must be an existing regular file of at most ``max_bytes``: directories, devices such as
    /dev/zero (endless) and FIFOs are refused before anything is read."""
    import stat

    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise CLIError(f"{what} not found: {p}") from None
    except OSError as e:
        raise CLIError(f"cannot open {what} {p}: {e.strerror or e}") from e
    if stat.S_ISDIR(st.st_mode):
        raise CLIError(f"{what} {p} is a directory, expected a file")
    if not stat.S_ISREG(st.st_mode):
        raise CLIError(f"{what} {p} is not a regular file (a device, FIFO or socket)")
    if st.st_size > max_bytes:
        raise CLIError(f"{what} {p} is {st.st_size:,} bytes, over the {max_bytes:,}-byte limit")
    return p


def _read_input(path: str | Path, what: str = "input", max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    p = _input_file(path, what, max_bytes)
    try:
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)  # bounded even if the file grew after stat
    except OSError as e:
        raise CLIError(f"cannot read {what} {p}: {e.strerror or e}") from e
    if len(data) > max_bytes:
        raise CLIError(f"{what} {p} is over the {max_bytes:,}-byte limit")
    return data


def _check_out(path: Path, force: bool) -> None:
    if path.is_dir():
        raise CLIError(f"{path} is a directory; give a file name")
    if path.exists() and not path.is_file():  # /dev/full, a FIFO: never replaced, even with --force
        raise CLIError(f"{path} exists and is not a regular file; give another name")
    if path.exists() and not force:
        raise CLIError(f"{path} exists; pass --force to overwrite")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"cannot create the folder for {path}: {e.strerror or e}") from e


def _atomic_write(out: Path, data: bytes) -> None:
    """Write via a temp file + os.replace; on any failure (a full disk) leave neither file behind."""
    tmp = out.with_name(out.name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CLIError(f"could not write {out}: {e.strerror or e}") from e


def _image_format(path: Path) -> str:
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise CLIError(f"cannot tell an image format from {path.name!r}; use a name ending in .png or .jpg")
    return fmt


def _check_image_out(path: Path, force: bool) -> None:
    """An output image path: checked (and its format known) before any work."""
    _check_out(path, force)
    _image_format(path)


def _image_bytes(image, path: Path) -> bytes:
    """A PIL image encoded in the format its file name asks for (.png, .jpg, ...), in memory."""
    import io

    fmt = _image_format(path)
    buf = io.BytesIO()
    try:
        image.save(buf, format=fmt)
    except (OSError, ValueError, KeyError) as e:
        raise CLIError(f"cannot write {path.name} as {fmt}: {e}") from e
    return buf.getvalue()


def _select(fs, split_name: str | None, part: str, keep_unlabelled: bool = False):
    """The items of the split's ``part`` classes; for "train", with ``keep_unlabelled``, also those labelled -1
    (semcomp.splits.fit_mask)."""
    if not split_name:
        return fs
    from .splits import class_split, fit_mask

    if part == "train":
        return fs.subset(fit_mask(fs.labels, split_name, keep_unlabelled))
    return fs.subset(np.isin(fs.labels, np.asarray(class_split(split_name)[f"{part}_classes"])))


# ----------------------------------------------------------------------------- extract
def cmd_extract(a) -> None:
    import os

    import torch

    from .backbone import load_backbone
    from .datasets import open_source
    from .extract import extract

    out = Path(a.out)
    _check_out(out, a.force)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if world > 1:  # torchrun / accelerate launch: one process per rank, CPU (gloo) or GPU (nccl)
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    torch.set_num_threads(a.threads or max(1, (os.cpu_count() or 1) // world))
    try:
        bb = load_backbone(a.backbone)
        src = open_source(a.dataset, a.split, a.source)
        extract(bb, src, out, batch_size=a.batch_size, chunk_size=a.chunk_size, limit=a.limit, templates=a.template,
                rank=rank, world=world, progress=not a.no_progress)
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


# ----------------------------------------------------------------------------- train
def cmd_train(a) -> None:
    import torch

    from .data import load_features
    from .training.codec import train_codec
    from .training.progressive import RECIPE_MAX_EPOCHS

    torch.set_num_threads(a.threads) if a.threads else None
    fs = _select(load_features(_input_file(a.features, "feature file")), a.split_name, "train", a.keep_unlabelled)
    for spec in a.spec:
        out = Path(a.out_dir) / spec
        if (out / "model.safetensors").exists() and not a.force:
            raise CLIError(f"{out} exists; pass --force to overwrite")
        ckpt = Path(a.ckpt_dir) / f"{spec}.pt" if a.ckpt_dir else None
        epochs = a.epochs if a.epochs is not None else (RECIPE_MAX_EPOCHS if spec.startswith("prq-") else 30)
        codec, card = train_codec(spec, fs.features, epochs=epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, ckpt_path=ckpt,
                                  max_seconds=60 * a.max_minutes if a.max_minutes else None, prq_init_beam=a.prq_init_beam,
                                  prq_frozen_stages=a.prq_frozen_stages, prq_first_redo=a.prq_first_redo,
                                  prq_cut_weights=_cut_weights(a.prq_cut_weight))
        codec.backbone = fs.metadata.get("backbone", "")
        codec.backbone_sha256 = fs.metadata.get("backbone_sha256") or None  # the weights the features came from
        card.update({"backbone": codec.backbone, "data": {"features": str(a.features), "split": a.split_name,
                     "classes": "train + unlabelled" if a.keep_unlabelled and a.split_name else "train",
                     "dataset": fs.metadata.get("dataset")},
                     "command": "semcomp " + " ".join(a.argv)})
        codec.save_pretrained(out, card)
        logger.info("saved %s (%d bits, holdout cosine %.4f)", out, codec.bits, card["holdout_cosine"])


# ----------------------------------------------------------------------------- fit / push / pull (issue 22)
def cmd_fit(a) -> None:
    """images -> features -> codec(s) -> evaluation -> a codec folder the app finds; torchrun-aware."""
    import os
    from datetime import timedelta

    import torch

    from .backbone import load_backbone
    from .datasets import image_folder, open_source
    from .training.fit import check_enough_images, fit, images_needed, progressive_spec

    if bool(a.images) == bool(a.dataset):
        raise CLIError("give exactly one of --images DIR or --dataset NAME")
    if a.specs and a.budgets:
        raise CLIError("--budgets sizes the default progressive codec; with --specs each spec sets its own bits")
    specs = a.specs or [progressive_spec(a.budgets, a.codebook_size)]
    src = image_folder(a.images) if a.images else open_source(a.dataset, a.split, a.source)
    n = src.count if a.limit is None else min(a.limit, src.count or a.limit)
    if n is not None:  # before any model loads or download starts
        check_enough_images(n, specs)
    else:
        logger.info("%s: image count unknown until read; the codebooks need %d (checked after extraction)",
                    src.description, images_needed(specs)[0])
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if world > 1:  # torchrun: extraction split by rank, DDP training; gloo (the codecs train on CPU)
        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=timedelta(hours=2))
    torch.set_num_threads(a.threads or max(1, (os.cpu_count() or 1) // world))
    try:
        bb = load_backbone(a.backbone)
        out = fit(bb, src, specs=specs, budgets=a.budgets, out_dir=a.out_dir, work_dir=a.work_dir, limit=a.limit,
                  epochs=a.epochs, batch_size=a.batch_size, seed=a.seed, max_minutes=a.max_minutes,
                  prq_init_beam=a.prq_init_beam, prq_frozen_stages=a.prq_frozen_stages,
                  chunk_size=a.chunk_size, extract_batch=a.extract_batch_size, templates=a.template, license=a.license,
                  force=a.force, progress=not a.no_progress, command="semcomp " + " ".join(a.argv))
        if rank == 0:
            for p in out:
                print(p)
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def cmd_push(a) -> None:
    from .hub import push_folder

    print(push_folder(a.folder, a.repo_id, private=a.private, commit_message=a.message, revision=a.revision))


def cmd_pull(a) -> None:
    from .hub import pull_codec

    print(pull_codec(a.repo_id, revision=a.revision, into=a.out_dir, force=a.force))


# ----------------------------------------------------------------------------- eval
def cmd_eval(a) -> None:
    from .backbone import BackboneRef
    from .codecs import load_codec
    from .data import load_features
    from .evaluation import embedding_spread, evaluate_codec
    from .heads.zeroshot import ZeroShotClassifier

    fs = load_features(_input_file(a.features, "feature file"))
    text = fs.metadata["_extra"].get("text_features")
    names = fs.metadata.get("class_names", [])
    rows = []
    part = _select(fs, a.split_name, "test")
    if len(part.features) == 0:
        raise CLIError("no features left after selecting the evaluation classes")
    clf = None
    labels = part.labels
    if text is not None and a.split_name:
        from .splits import class_split

        test_classes = class_split(a.split_name)["test_classes"]
        clf = ZeroShotClassifier(text[test_classes], [names[i] for i in test_classes])  # N-way among unseen classes
        remap = {c: i for i, c in enumerate(test_classes)}
        labels = np.asarray([remap[int(l)] for l in part.labels])
    elif text is not None:
        clf = ZeroShotClassifier(text, names)
    for path in a.codec:
        codec = load_codec(path, backbone=BackboneRef.of_features(fs.metadata))  # a codec for other features fails here
        if codec.dim != fs.dim:
            raise CLIError(f"codec {codec.spec} is {codec.dim}-d, features are {fs.dim}-d")
        r = evaluate_codec(codec, part.features, labels, clf, coders=a.coders)
        rows.append(r)
        logger.info("%s", json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
    report = {"features": str(a.features), "backbone": fs.metadata.get("backbone"), "split": a.split_name,
              "eval_items": int(len(part.features)), "classes": len(clf.class_names) if clf else None,
              "embedding_spread": embedding_spread(part.features), "results": rows}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=2))
    else:
        print(json.dumps(report, indent=2))


# ----------------------------------------------------------------------------- encode / decode
def cmd_encode(a) -> None:
    from .backbone import BackboneRef
    from .codecs import load_codec
    from .data import load_features

    out = Path(a.out)
    _check_out(out, a.force)
    fs = load_features(_input_file(a.features, "feature file"))
    codec = load_codec(a.codec, backbone=BackboneRef.of_features(fs.metadata))  # features of another backbone: a clear error
    cut = {k: v for k, v in (("bits", a.bits), ("beam", a.beam)) if v is not None}
    if cut and codec.family != "prq":
        raise CLIError(f"--bits and --beam are for progressive (prq) codecs; {codec.spec} always sends its {codec.bits} bits")
    blob = codec.compress(fs.features, a.coder, a.precision, **cut)
    _atomic_write(out, blob)
    logger.info("%d features -> %d bytes (%.1f bits/feature, header included; fixed %d)", len(fs.features), len(blob),
                8 * len(blob) / len(fs.features), a.bits or codec.bits)


def cmd_decode(a) -> None:
    from .codecs import load_codec
    from .data import FeatureSet, save_features

    out = Path(a.out)
    _check_out(out, a.force)
    blob = _read_input(a.input, ".scf input")
    codec = load_codec(a.codec)
    feats = codec.decompress(blob, max_items=a.max_items)
    try:
        meta = {"backbone": codec.backbone, "decoded_by": codec.spec,
                **({"backbone_sha256": codec.backbone_sha256} if codec.backbone_sha256 else {})}
        save_features(out, FeatureSet(feats.numpy(), np.full(len(feats), -1), meta))
    except OSError as e:  # unwritable or full: leave no partial file behind
        out.with_name(out.name + ".tmp").unlink(missing_ok=True)
        raise CLIError(f"could not write {out}: {e.strerror or e}") from e
    logger.info("decoded %d features -> %s", len(feats), out)


def cmd_truncate(a) -> None:
    """Cut a progressive (.scf version 2) stream to its first --bits per item, without loading the model."""
    from .bitstream import truncate, unpack

    out = Path(a.out)
    _check_out(out, a.force)
    blob = _read_input(a.input, ".scf input")
    cut = truncate(blob, a.bits)  # BitstreamError (exit 2) on a cut inside or below a stage, or past the end
    _atomic_write(out, cut)
    h, _ = unpack(blob)
    logger.info("%s: %d items, %d -> %d bits each; %d -> %d bytes", h.spec, h.count, h.bits_per_item, a.bits, len(blob), len(cut))


def cmd_train_backbone(a) -> None:
    from .training.backbone import train_backbone

    train_backbone(a.out, a.ckpt_dir, train_source=a.train_source, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                   seed=a.seed, threads=a.threads)


def cmd_train_caption(a) -> None:
    from .training.caption import train_embedded_captioner

    out = Path(a.out)
    _check_out(out / "model.safetensors", a.force)
    ckpt = Path(a.ckpt_dir) / out.name
    for f, what in ((a.pairs, "--pairs file"), (a.init_from, "--init-from checkpoint")):
        if f:
            _input_file(f, what)
    if a.pairs:  # the user's own captioned images (COCO layout or CSV)
        from .training.caption_pairs import caption_pairs, train_pairs_captioner

        card = train_pairs_captioner(out, caption_pairs(a.pairs, a.images), backbone_name=a.backbone,
                                     through_codec=a.through_codec, decoded_p=a.decoded_p, epochs=a.epochs, ckpt_dir=ckpt, seed=a.seed)
        card["command"] = "semcomp " + " ".join(a.argv)
        (out / "metrics.json").write_text(json.dumps(card, indent=2))
        logger.info("captioner -> %s: %s", out, json.dumps(card.get("eval", {}))[:400])
        return
    card = train_embedded_captioner(out, backbone_name=a.backbone, train_features=a.train_features, val_features=a.val_features,
                                    ckpt_dir=ckpt, noise_std=a.noise, text_epochs=a.text_epochs, image_epochs=a.image_epochs,
                                    decoded_codecs=a.decoded_codecs, alt_p=a.decoded_p, eval_n=a.eval_n,
                                    eval_codecs=a.eval_codecs, stages=tuple(a.stages), seed=a.seed, init_from=a.init_from)
    card["command"] = "semcomp " + " ".join(a.argv)
    (out / "metrics.json").write_text(json.dumps(card, indent=2))
    logger.info("captioner -> %s: %s", out, json.dumps({k: v["names_true_class"] for k, v in card["eval"]["greedy"].items()}))


# ----------------------------------------------------------------------------- heads on a user's own image
def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    from .images import prepare_image

    _input_file(path, "image", max_bytes=256 << 20)
    try:
        with Image.open(path) as im:
            return prepare_image(im)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise CLIError(f"cannot read image {path}: {e}") from e


def _shipped_codec(backbone: str, spec: str | None, bits: int | None):
    from .codecs import load_codec
    from .zoo import best_measured, shipped_codecs

    options = shipped_codecs(backbone)
    if not options:
        raise CLIError(f"no shipped codecs for backbone {backbone!r}")
    if spec:
        for c in options:
            if c["spec"] == spec:
                return load_codec(c["path"], backbone=backbone)
        raise CLIError(f"no shipped codec {spec!r}; shipped: {', '.join(c['spec'] for c in options)}")
    b = min({c["bits"] for c in options}, key=lambda x: abs(x - (bits or 256)))
    pick = best_measured(backbone).get(b) or next(c for c in options if c["bits"] == b)
    return load_codec(pick["path"], backbone=backbone)


def cmd_send(a) -> None:
    from .backbone import load_backbone

    out = Path(a.out)
    _check_out(out, a.force)
    images = [_open_image(p) for p in a.images]  # every input checked before the models load
    bb = load_backbone(a.backbone)
    codec = _shipped_codec(bb.name, a.codec, a.bits)
    feats = bb.encode_images(images)
    if not a.framed:
        blob = codec.compress(feats, a.coder)
        _atomic_write(out, blob)
        print(f"{len(a.images)} image(s) -> {out}: {len(blob)} bytes with {codec.spec} ({codec.bits} bits fixed per image)")
        return
    from .framing import FrameSender, write_stream

    sender = FrameSender(codec, a.coding, a.max_frame)  # FrameError (exit 2) when the codec cannot fit the link
    frames = [sender.frame(f) for f in feats]
    _atomic_write(out, write_stream(sender.announce(), frames))
    scf = len(codec.compress(feats[:1], "auto"))
    print(f"{len(frames)} image(s) -> {out}: one {len(sender.announce())}-byte announce + frames of "
          f"{min(map(len, frames))}-{max(map(len, frames))} bytes ({sum(map(len, frames)) / len(frames):.1f} on average; "
          f"a one-image .scf is {scf} bytes) with {codec.spec} ({codec.bits} bits fixed per image, {a.coding} coding)")


def _receive_framed(blob: bytes, max_items: int | None):
    """A .scfs byte stream -> (codec, delivered features, per-frame report)."""
    import torch

    from .framing import FrameReceiver, codec_for_announce, read_announce, read_stream

    codec = codec_for_announce(read_announce(blob))
    stream = read_stream(blob, codec)
    if max_items is not None and len(stream.frames) > max_items:
        raise CLIError(f"the stream holds {len(stream.frames)} frames, over --max-items {max_items}")
    rx = FrameReceiver(codec, stream.announce)
    report, feats = [], []
    for i, frame in enumerate(stream.frames):
        d = rx.accept(frame)
        report.append({"frame": i, "seq": d.seq, "status": d.status, **({"missing": list(d.missing)} if d.missing else {}),
                       **({"reason": d.reason} if d.reason else {})})
        if d.ok:
            feats.append(d.feature)
    if stream.trailing:
        report.append({"frame": len(stream.frames), "status": "truncated",
                       "reason": f"{len(stream.trailing)} bytes at the end do not form a whole frame"})
    summary = {"frames": len(stream.frames), "delivered": rx.stats.delivered, "rejected": rx.stats.rejected,
               "missing": rx.stats.gaps, "truncated_bytes": len(stream.trailing), "report": report}
    return codec, (torch.stack(feats) if feats else torch.zeros(0, codec.dim)), summary


def cmd_receive(a) -> None:
    from PIL import Image

    from .backbone import load_backbone
    from .framing import FILE_MAGIC
    from .heads.zeroshot import ZeroShotClassifier
    from .receiver import load_head, receive

    if a.generate:
        _check_image_out(Path(a.generate), a.force)
    blob = _read_input(a.input, "input", max_bytes=256 << 20)  # far above what --max-items lets through
    if blob[:4] == FILE_MAGIC:
        codec, feats, stream = _receive_framed(blob, a.max_items)
    else:
        codec, feats = receive(blob, max_items=a.max_items)
        stream = None
    bb = load_backbone(codec.backbone)
    names = [s.strip() for s in a.labels.split(",")] if a.labels else None
    default_labels = Path(__file__).resolve().parents[1] / "assets" / "labels" / "tiny-imagenet-200.json"
    if names is None and default_labels.exists():
        names = [c["name"] for c in json.loads(default_labels.read_text())]
    out = {"codec": codec.spec, "bits": codec.bits, **({"stream": stream} if stream else {}), "items": []}
    clf = ZeroShotClassifier.from_backbone(bb, names) if names else None
    cap = load_head("caption", codec.backbone)
    captions = cap.caption(feats, beam=a.beam) if cap is not None and len(feats) else [None] * len(feats)
    for i, f in enumerate(feats):
        item = {"caption": captions[i]}
        if clf is not None:
            r = clf.predict(f[None])[0]
            item["labels"] = [f"{l} ({p:.3f})" for l, p in zip(r.labels, r.probs)]
        out["items"].append(item)
    if a.generate and len(feats):
        kind, _, name = a.generator.partition(":")
        if kind == "embedded":
            gen = load_head("generate", codec.backbone)
            if gen is None:
                raise CLIError(f"no shipped generator for backbone {codec.backbone!r}")
            imgs = [Image.fromarray(im).resize((256, 256), Image.BICUBIC)
                    for im in gen.generate(feats, steps=a.steps, guidance=a.guidance, seed=a.seed, backbone=codec.backbone)]
        elif kind in ("stable-unclip", "karlo"):  # real models, downloaded on first use (ViT-L/14 embeddings)
            from .heads.generate import KarloGenerator, StableUnCLIPGenerator

            cls = StableUnCLIPGenerator if kind == "stable-unclip" else KarloGenerator
            gen = cls.from_pretrained(name or cls.DEFAULT)
            imgs = gen.generate(feats, steps=a.steps, seed=a.seed)
        else:
            raise CLIError(f"unknown generator {a.generator!r}; choose embedded, stable-unclip[:NAME] or karlo[:NAME]")
        for i, im in enumerate(imgs):
            p = Path(a.generate if len(imgs) == 1 else f"{Path(a.generate).with_suffix('')}_{i}{Path(a.generate).suffix}")
            _atomic_write(p, _image_bytes(im, p))
            out["items"][i]["generated"] = str(p)
    print(json.dumps(out, indent=2))


def cmd_segment(a) -> None:
    from PIL import Image

    from .backbone import load_backbone
    from .heads.segment import TextSegmenter, overlay

    out = Path(a.out)
    _check_image_out(out, a.force)
    image = _open_image(a.image)
    if a.sam_checkpoint:
        _input_file(a.sam_checkpoint, "SAM checkpoint")
    bb = load_backbone(a.backbone)
    codec = _shipped_codec(bb.name, a.codec, a.bits)
    blob = codec.compress(bb.encode_text([a.command]), "auto")  # the command travels compressed too
    command = codec.decompress(blob, max_items=1)[0]
    seg = TextSegmenter(bb, "sam+superpixels+boxes" if a.sam_checkpoint else "superpixels+boxes", a.sam_checkpoint,
                        sam_kwargs={"model_type": a.sam_type} if a.sam_checkpoint else None)
    r = seg.segment(image, command)
    _atomic_write(out, _image_bytes(Image.fromarray(overlay(image, r)), out))
    print(json.dumps({"command": a.command, "command_bytes": len(blob), "codec": codec.spec, "score": float(r.scores[0]),
                      "box": [int(v) for v in r.boxes[0]], "peak": list(r.peak), "overlay": str(out)}, indent=2))


def cmd_train_generator(a) -> None:
    import time

    import torch

    from .backbone import features_from_uint8, load_backbone
    from .data import tiny_imagenet_split
    from .hardware import cpu_has_bf16
    from .heads.generate import GeneratorConfig, ImageGenerator
    from .training.generator import train_generator

    out = Path(a.out)
    _check_out(out / "model.safetensors", a.force)
    t0 = time.time()
    bb = load_backbone(a.backbone)
    arr = tiny_imagenet_split("train", source=a.train_source)
    emb = features_from_uint8(bb, arr.images)
    emb_f = features_from_uint8(bb, arr.images[:, :, ::-1].copy())  # horizontally flipped images' own embeddings
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device == "cuda" or cpu_has_bf16()
    cfg = GeneratorConfig(embed_dim=emb.shape[1], image_size=arr.images.shape[1], backbone=bb.name)
    ema, hist = train_generator(torch.from_numpy(arr.images), emb, cfg, embeds_flipped=emb_f, steps=a.steps,
                                time_budget_s=a.seconds, batch_size=a.batch_size, lr=a.lr, device=device, bf16=bf16,
                                ckpt_path=Path(a.ckpt_dir) / f"{out.name}.pt", seed=a.seed)
    card = {"kind": "generate", "name": out.name, "trained_on": f"Tiny-ImageNet train ({len(arr.images)} images + flips)",
            "steps": hist["steps"], "batch": a.batch_size, "lr": a.lr, "device": device, "seconds": round(time.time() - t0, 1),
            "final_loss": hist["losses"][-1][1] if hist["losses"] else None, "default_guidance": 3.0, "default_steps": 20,
            "command": "semcomp " + " ".join(a.argv)}
    if bb.weights_sha256:  # the receiver refuses this head for other weights of the backbone
        card["backbone_sha256"] = bb.weights_sha256
    ImageGenerator(ema.float().cpu()).save_pretrained(out, card)
    logger.info("generator -> %s (%d steps, %.0f s)", out, hist["steps"], time.time() - t0)


def cmd_train_pixel(a) -> None:
    import time

    import numpy as np
    import torch

    from .data import tiny_imagenet_split
    from .pixel.learned import build_model, codecs_from_folder, save_pixel_model
    from .splits import class_split
    from .training.pixel import FactorizedLoss, PyramidLoss, evaluate_pixel_codec, train_pixel_codec

    out = Path(a.out)
    _check_out(out / "model.safetensors", a.force)
    t0 = time.time()
    arr = tiny_imagenet_split("train", source=a.train_source)
    keep = np.isin(arr.labels, class_split("tiny-imagenet")["train_classes"])  # the semantic codecs' training classes
    images = torch.from_numpy(arr.images[keep])
    lmbdas = [float(v) for v in a.lmbda.split(",")]
    cfg = {"arch": a.arch, "N": a.N, "M": a.M}
    if a.arch == "factorized-prior":
        if len(lmbdas) != 1:
            raise ValueError("the factorized prior takes one --lmbda")
        model, loss_fn = build_model(cfg), FactorizedLoss(lmbdas[0])
        cfg["lmbda"] = lmbdas[0]
    else:
        from .backbone import load_backbone
        from .pixel.pyramid import frozen_tower_stem, perceptual_features

        if len(lmbdas) != 2:
            raise ValueError("the attention pyramid takes two --lmbda values, coarse level first")
        bb = load_backbone(a.backbone)
        tower = bb.model.visual
        cfg.update({"tower": dict(vars(bb.model.cfg)), "tower_from": bb.name, "lmbda": lmbdas,
                    "perceptual": [float(v) for v in a.perceptual.split(",")]})
        model = build_model(cfg)
        model.features.load_state_dict(frozen_tower_stem(tower, 1).state_dict())
        loss_fn = PyramidLoss(tuple(lmbdas), tuple(cfg["perceptual"]), perceptual_net=perceptual_features(tower))
    model, hist = train_pixel_codec(model, images, loss_fn, steps=a.steps, time_budget_s=a.seconds, batch_size=a.batch_size,
                                    lr=a.lr, ckpt_path=Path(a.ckpt_dir) / f"{out.name}.pt", seed=a.seed)
    card = {"kind": "pixel-codec", "name": out.name, "arch": a.arch,
            "trained_on": f"Tiny-ImageNet train, the 160 codec-training classes ({len(images)} images, 64x64, flips)",
            "steps": hist["steps"], "target_steps": a.steps, "batch": a.batch_size, "lr": a.lr, "seconds": round(hist["seconds"], 1),
            "last_log": hist["log"][-1] if hist["log"] else None, "command": "semcomp " + " ".join(a.argv)}
    save_pixel_model(model, cfg, out, card)
    val = tiny_imagenet_split("val").images[:256]
    card["val_256"] = {c.name: evaluate_pixel_codec(c, val) for c in codecs_from_folder(out)}
    (out / "card.json").write_text(json.dumps({**json.loads((out / "card.json").read_text()), **card}, indent=2))
    logger.info("pixel codec -> %s (%d steps, %.0f s): %s", out, hist["steps"], time.time() - t0, card["val_256"])


def cmd_bench(a) -> None:
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if not (root / "bench" / "all.py").exists():
        raise CLIError("the benchmarks live in the repository's bench/ folder; run this from a git checkout of semcomp")
    rc = subprocess.run([sys.executable, "-m", "bench.all", *a.bench_args], cwd=root).returncode
    if rc:
        raise CLIError(f"bench.all exited with {rc} (a usage error, or failed steps: see the report folder's REPORT.md)")


def cmd_convert_clipcap(a) -> None:
    from .heads.caption import convert_clipcap

    out = Path(a.out)
    _check_out(out / "model.safetensors", a.force)
    _input_file(a.checkpoint, "checkpoint")
    convert_clipcap(a.checkpoint, out, a.tokenizer, n_head=a.n_head, input_scale=a.input_scale, backbone=a.backbone)
    print(f"converted {a.checkpoint} -> {out}")


# ----------------------------------------------------------------------------- compressed-domain index / search
def _codec_for_index(codec_path: str | None, spec: str, backbone: str, weights_hash: str):
    """The codec named by an index or a stream (``--codec``'s folder, else the shipped one), checked against the
    spec and weights hash it must have."""
    from .codecs import load_codec
    from .zoo import shipped_codecs

    if codec_path:
        codec = load_codec(codec_path)
    else:
        match = [c for c in shipped_codecs(backbone) if c["spec"] == spec]
        if not match:
            raise CLIError(f"no shipped codec {spec!r} for backbone {backbone!r}; pass --codec FOLDER")
        loaded = [load_codec(c["path"]) for c in match]  # shipped and user folders may share a spec: pick by weights
        codec = next((c for c in loaded if c.weights_hash.hex() == weights_hash), loaded[0])
    if codec.spec != spec or codec.weights_hash.hex() != weights_hash:
        raise CLIError(f"codec {codec.spec} (weights {codec.weights_hash.hex()}) is not the one the codes were made with: "
                       f"{spec} (weights {weights_hash})")
    return codec


def cmd_index(a) -> None:
    from .bitstream import unpack
    from .compressed_domain import add_codes, additive_form, faiss_index, save_index, sidecar_path

    out = Path(a.out)
    _check_out(out, a.force)
    _check_out(sidecar_path(out), a.force)
    if a.max_items < 1:
        raise CLIError(f"--max-items must be >= 1, got {a.max_items}")
    # pass 1: every header (CRC-checked) agrees on codec, weights and backbone; the total count is bounded
    first, total = None, 0
    for p in a.files:
        h, _ = unpack(_read_input(p, ".scf input"))
        if first is None:
            first = (p, h)
        elif (h.spec, h.weights_hash, h.backbone, h.dim) != (first[1].spec, first[1].weights_hash, first[1].backbone, first[1].dim):
            f = first[1]
            raise CLIError(f"{p} was made by {h.spec} (weights {h.weights_hash.hex()}, {h.backbone!r}) but {first[0]} by "
                           f"{f.spec} (weights {f.weights_hash.hex()}, {f.backbone!r}); one index holds one codec's codes")
        total += h.count
        if total > a.max_items:
            raise CLIError(f"the inputs hold over {a.max_items:,} items (--max-items)")
    h = first[1]
    codec = _codec_for_index(a.codec, h.spec, h.backbone, h.weights_hash.hex())
    form = additive_form(codec)  # NotAdditiveError for MLP decoders
    stages = None
    if a.bits is not None:
        if not hasattr(codec, "stages_for_bits"):
            raise CLIError(f"--bits cuts progressive codes; {codec.spec} is not progressive")
        stages = codec.stages_for_bits(a.bits)
    index, sources = None, []
    for p in a.files:  # pass 2: symbols only, through the codec's reader and its limits; nothing decoded to floats
        codes = codec.decompress_symbols(_read_input(p, ".scf input"), max_items=a.max_items)
        m = codes.shape[1] if stages is None else stages
        if codes.shape[1] < m:
            raise CLIError(f"{p} holds {codes.shape[1]} stages, fewer than the {m} that --bits {a.bits} needs")
        if index is None:
            form = form.prefix(m)
            index = faiss_index(form)
        elif m != index.rq.M:
            raise CLIError(f"{p} holds {m} stages, {a.files[0]} {index.rq.M}; pass --bits to index every file at one budget")
        add_codes(index, form, codes[:, :m])
        sources.append({"file": str(p), "count": int(len(codes))})
    try:
        save_index(index, form, out, sources)
    except OSError as e:
        for t in (out, sidecar_path(out)):
            t.with_name(t.name + ".tmp").unlink(missing_ok=True)
        raise CLIError(f"could not write {out}: {e.strerror or e}") from e
    print(f"{index.ntotal} codes from {len(a.files)} file(s) -> {out} (+ {sidecar_path(out).name}): {form.spec}, "
          f"{form.stages} stages x {form.alphabet} codewords, {index.code_size} bytes a code")


def cmd_search(a) -> None:
    from .bitstream import MAGIC, unpack
    from .compressed_domain import form_from_index, load_index, locate, search

    if not 1 <= a.k <= 1000:
        raise CLIError(f"-k must be in 1..1000, got {a.k}")
    if a.max_queries < 1:
        raise CLIError(f"--max-queries must be >= 1, got {a.max_queries}")
    index, meta = load_index(_input_file(a.index, "index"))
    form = form_from_index(index, meta)
    data = _read_input(a.query, "query", max_bytes=256 << 20)
    if data[:4] == MAGIC:
        h, _ = unpack(data)
        if (h.spec, h.weights_hash.hex(), h.backbone) != (meta["spec"], meta["weights_hash"], meta["backbone"]):
            raise CLIError(f"query {a.query} was made by {h.spec} (weights {h.weights_hash.hex()}, {h.backbone!r}); the index "
                           f"holds {meta['spec']} codes (weights {meta['weights_hash']}, {meta['backbone']!r})")
        codec = _codec_for_index(a.codec, meta["spec"], meta["backbone"], meta["weights_hash"])
        codes = codec.decompress_symbols(data, max_items=a.max_queries)
        if codes.shape[1] < form.stages:
            raise CLIError(f"query holds {codes.shape[1]} stages, the index {form.stages}")
        queries = form.decode(codes[:, : form.stages])
    else:
        from .backbone import load_backbone

        image = _open_image(a.query)
        bb = load_backbone(meta["backbone"])
        feat = bb.encode_images([image])
        if a.float_query:
            queries = np.asarray(feat, dtype=np.float32)
        else:  # as a sender would: embed, encode, then the receiver's additive decode
            codec = _codec_for_index(a.codec, meta["spec"], meta["backbone"], meta["weights_hash"])
            queries = form.decode(codec.encode(feat).numpy()[:, : form.stages])
    if not 0 <= a.rerank <= 10_000:
        raise CLIError(f"--rerank must be in 0..10000, got {a.rerank}")
    k, rerank = min(a.k, meta["count"]), min(a.rerank, meta["count"])
    scores, ids = search(index, form.bias, queries, k, rerank=rerank)
    out = {"index": str(a.index), "spec": meta["spec"], "backbone": meta["backbone"], "stages": form.stages,
           "count": meta["count"], "score": "cosine with the decoded feature x |query|" if rerank > k else
           "inner product with the un-normalised additive decode", "queries": []}
    for qi, (row_s, row_i) in enumerate(zip(scores, ids)):
        hits = [{"rank": r + 1, "id": int(i), "file": f, "item": it, "score": round(float(s), 6)}
                for r, (s, i, (f, it)) in enumerate(zip(row_s, row_i, locate(meta, row_i))) if i >= 0]
        out["queries"].append({"query": qi, "results": hits})
    print(json.dumps(out, indent=2))


def _cut_weights(items: list[str] | None) -> dict[int, float] | None:
    """``["16=4", "24=2"]`` -> ``{16: 4.0, 24: 2.0}``."""
    if not items:
        return None
    out = {}
    for it in items:
        bits, _, w = it.partition("=")
        try:
            out[int(bits)] = float(w)
        except ValueError:
            raise CLIError(f"--prq-cut-weight takes BITS=WEIGHT pairs such as 16=4, got {it!r}") from None
    return out


def _prq_recipe_args(p) -> None:
    from .training.progressive import RECIPE_FROZEN_STAGES, RECIPE_INIT_BEAM

    p.add_argument("--prq-init-beam", type=int, default=RECIPE_INIT_BEAM, help="prq only: initialise the own stages with "
                   f"faiss.ResidualQuantizer trained with this beam width (0: greedy residual k-means; default {RECIPE_INIT_BEAM}, "
                   "the shipped recipe)")
    p.add_argument("--prq-frozen-stages", type=int, default=RECIPE_FROZEN_STAGES, help="prq only: keep the bias and the "
                   "first N own codebooks at their initialisation during fine-tuning (the shortest cuts stay k-means codes; "
                   f"default {RECIPE_FROZEN_STAGES}, the shipped recipe)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="semcomp", description="Semantic compression of CLIP features.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("extract", help="images -> CLIP feature file (safetensors)")
    e.add_argument("--backbone", default=EMBEDDED_DEFAULT)
    e.add_argument("--dataset", default="tiny-imagenet", choices=["tiny-imagenet", "imagenet", "cifar10", "cifar100", "stl10", "folder"])
    e.add_argument("--split", default="val", choices=["train", "val"], help="val = the test split for CIFAR/STL")
    e.add_argument("--source", help="dataset folder: Tiny-ImageNet or ImageNet folder layout, or a folder with labels.csv")
    e.add_argument("--template", default="a photo of a {}.", help="class prompt, or 'openai' for the 80-prompt ensemble")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--chunk-size", type=int, default=5000, help="images per resumable part file")
    e.add_argument("--limit", type=int, help="only the first N images")
    e.add_argument("--stream", action="store_true", help="(always streaming now; kept for old scripts)")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--threads", type=int)
    e.add_argument("--out", required=True)
    e.add_argument("--force", action="store_true")
    e.set_defaults(func=cmd_extract)

    t = sub.add_parser("train", help="train codecs on a feature file")
    t.add_argument("--spec", nargs="+", required=True, help="codec specs, e.g. pqvae-n32d8k16 aesq-c200l8")
    t.add_argument("--features", required=True)
    t.add_argument("--split-name", help="train only on this committed split's training classes, e.g. tiny-imagenet")
    t.add_argument("--keep-unlabelled", action="store_true", help="with --split-name, also train on the items labelled "
                   "-1 (the photo views of a --codec-train-file, which has no test class); without it they are dropped")
    t.add_argument("--out-dir", default="weights/codecs")
    t.add_argument("--ckpt-dir", default=str(Path.home() / ".cache" / "semcomp" / "codec-ckpt"))
    t.add_argument("--epochs", type=int, help="default 30; prq: 1000, a ceiling (early stopping ends it)")
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int)
    t.add_argument("--max-minutes", type=float, help="prq only: stop fine-tuning after this long (early stopping may end it sooner)")
    _prq_recipe_args(t)
    t.add_argument("--prq-first-redo", type=int, default=1, help="prq only: fit the first stage's k-means this many times "
                   "and keep the lowest objective (faiss nredo); the later own stages are then fitted on its residual")
    t.add_argument("--prq-cut-weight", nargs="+", metavar="BITS=W", help="prq only: weigh these budget cuts' terms of the "
                   "nested loss by W instead of 1 (e.g. 16=4)")
    t.add_argument("--force", action="store_true")
    t.set_defaults(func=cmd_train)

    fi = sub.add_parser("fit", help="codecs for any backbone in one command: images -> features -> codec -> evaluation "
                                    "-> a folder the app finds (resumable; runs under torchrun)")
    fi.add_argument("--backbone", required=True, help="e.g. ViT-L-14-336/openai, MODEL:/local/ckpt, or an embedded name")
    fi.add_argument("--images", help="a folder of images: class subfolders, a labels.csv, or unlabelled")
    fi.add_argument("--dataset", choices=["tiny-imagenet", "imagenet", "cifar10", "cifar100", "stl10", "folder"])
    fi.add_argument("--split", default="train", choices=["train", "val"], help="with --dataset")
    fi.add_argument("--source", help="with --dataset: its folder (imagenet, folder; tiny-imagenet's folder layout)")
    fi.add_argument("--budgets", type=int, nargs="+",
                    help="bit budgets the progressive codec serves (default 8 16 24 32 48 64 96 128 256 512 1024)")
    fi.add_argument("--codebook-size", type=int, default=256,
                    help="progressive codec: entries per codebook (256: 8-bit stages; fewer images need smaller ones)")
    fi.add_argument("--specs", nargs="+", help="train these codec specs instead (e.g. the ladder: fsq-c32l4 pqvae-n16d8k16)")
    fi.add_argument("--out-dir", help="codec root (default $SEMCOMP_CODECS or ~/.cache/semcomp/codecs); "
                                      "codecs land in OUT/<backbone>/<spec>/")
    fi.add_argument("--work-dir", help="features and checkpoints (default ~/.cache/semcomp/fit/<backbone>/<key>)")
    fi.add_argument("--limit", type=int, help="only the first N images")
    fi.add_argument("--epochs", type=int, help="training epochs (default: each trainer's; prq stops early)")
    fi.add_argument("--batch-size", type=int, default=256)
    fi.add_argument("--extract-batch-size", type=int, default=64)
    fi.add_argument("--chunk-size", type=int, default=5000, help="images per resumable extraction part")
    fi.add_argument("--max-minutes", type=float, help="prq: stop fine-tuning after this long")
    _prq_recipe_args(fi)
    fi.add_argument("--template", default="a photo of a {}.", help="class prompt for the zero-shot check")
    fi.add_argument("--license", default="apache-2.0", help="licence written in the model card")
    fi.add_argument("--seed", type=int, default=0)
    fi.add_argument("--threads", type=int)
    fi.add_argument("--no-progress", action="store_true")
    fi.add_argument("--force", action="store_true", help="replace a codec folder made from other images or settings")
    fi.set_defaults(func=cmd_fit)

    pu = sub.add_parser("push", help="upload a codec folder to the Hugging Face Hub (needs a write token)")
    pu.add_argument("folder")
    pu.add_argument("repo_id", help="org/name")
    pu.add_argument("--private", action="store_true")
    pu.add_argument("--revision", help="branch to commit to")
    pu.add_argument("--message", help="commit message")
    pu.set_defaults(func=cmd_push)

    pl = sub.add_parser("pull", help="download a Hub codec (org/name[@revision]) and install it where the app finds it")
    pl.add_argument("repo_id")
    pl.add_argument("--revision")
    pl.add_argument("--out-dir", help="codec root (default $SEMCOMP_CODECS or ~/.cache/semcomp/codecs)")
    pl.add_argument("--force", action="store_true")
    pl.set_defaults(func=cmd_pull)

    v = sub.add_parser("eval", help="bits, cosine and zero-shot accuracy of codecs on a feature file")
    v.add_argument("--codec", nargs="+", required=True)
    v.add_argument("--features", required=True)
    v.add_argument("--split-name", help="evaluate on this split's unseen classes (N-way among them)")
    v.add_argument("--coders", nargs="*", default=["ans", "huffman"])
    v.add_argument("--out")
    v.set_defaults(func=cmd_eval)

    en = sub.add_parser("encode", help="features -> .scf bitstream")
    en.add_argument("--codec", required=True)
    en.add_argument("--features", required=True)
    en.add_argument("--coder", default="ans", choices=["raw", "huffman", "ans"])
    en.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="bf16: encoder under bf16 autocast, ~2x faster on AVX512-BF16/AMX CPUs (same bitstream format)")
    en.add_argument("--bits", type=int, help="progressive (prq) codecs: send only the first BITS per item (a stage "
                    "boundary; default: every stage, to cut later with `semcomp truncate`)")
    en.add_argument("--beam", type=int, help="progressive codecs: beam-search width for those bits (default 1, greedy: any "
                    "prefix of a greedy code is the greedy code; 8 is the README's 'prq (beam)' column)")
    en.add_argument("--out", required=True)
    en.add_argument("--force", action="store_true")
    en.set_defaults(func=cmd_encode)

    de = sub.add_parser("decode", help=".scf bitstream -> features")
    de.add_argument("--codec", required=True)
    de.add_argument("--in", dest="input", required=True)
    de.add_argument("--out", required=True)
    de.add_argument("--max-items", type=int, help="refuse bitstreams announcing more items than this, before decoding "
                    "(default: no count bound; decoding is still capped at 256 MiB of output)")
    de.add_argument("--force", action="store_true")
    de.set_defaults(func=cmd_decode)

    tr = sub.add_parser("truncate", help="cut a progressive .scf stream to fewer bits per item (no model needed)")
    tr.add_argument("input", help="a version-2 .scf stream written by a progressive (prq) codec")
    tr.add_argument("--bits", type=int, required=True, help="bits per item to keep: a multiple of the stage size (8)")
    tr.add_argument("-o", "--out", required=True)
    tr.add_argument("--force", action="store_true")
    tr.set_defaults(func=cmd_truncate)

    b = sub.add_parser("train-backbone", help="train the embedded CLIP on Tiny-ImageNet")
    b.add_argument("--out", default="weights/backbones/semcomp-tiny-clip")
    b.add_argument("--ckpt-dir", default=str(Path.home() / ".cache" / "semcomp" / "backbone" / "ckpt"))
    b.add_argument("--train-source", help="Tiny-ImageNet folder layout with all 500 train images per class")
    b.add_argument("--epochs", type=int, default=10)
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--lr", type=float, default=3e-3)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int)
    b.set_defaults(func=cmd_train_backbone)

    feats = Path.home() / ".cache" / "semcomp" / "features"
    c = sub.add_parser("train-caption", help="train the embedded ClipCap captioner (text-only CapDec, then image fine-tune)")
    c.add_argument("--out", default="weights/heads/semcomp-tiny-clipcap")
    c.add_argument("--backbone", default="semcomp-tiny-clip")
    c.add_argument("--train-features", default=str(feats / "tin-train.safetensors"))
    c.add_argument("--val-features", default=str(feats / "tin-val.safetensors"))
    c.add_argument("--ckpt-dir", default=str(Path.home() / ".cache" / "semcomp" / "caption-ckpt"))
    c.add_argument("--stages", nargs="*", default=["text", "image"], choices=["text", "image"],
                   help="training stages to run (none: only evaluate --init-from)")
    c.add_argument("--init-from", help="start from this training checkpoint (e.g. another run's caption-text.pt)")
    c.add_argument("--pairs", help="your captioned images instead of the embedded recipe: a COCO captions JSON or a CSV image,caption")
    c.add_argument("--images", help="with --pairs: the image folder (COCO: required; CSV: default its folder)")
    c.add_argument("--through-codec", help="with --pairs: also train on features decoded by this shipped codec")
    c.add_argument("--epochs", type=float, default=5.0, help="with --pairs: passes over the pairs")
    c.add_argument("--noise", type=float, default=0.04, help="CapDec noise std per dimension on text embeddings")
    c.add_argument("--text-epochs", type=float, default=3.0)
    c.add_argument("--image-epochs", type=float, default=1.0)
    c.add_argument("--decoded-codecs", nargs="*", default=[], help="train also on features decoded by these shipped codecs")
    c.add_argument("--decoded-p", type=float, default=0.5)
    c.add_argument("--eval-n", type=int, default=1000)
    c.add_argument("--eval-codecs", nargs="*", default=[])
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--force", action="store_true")
    c.set_defaults(func=cmd_train_caption)

    tg = sub.add_parser("train-generator", help="train the embedded unCLIP-style generator on Tiny-ImageNet (GPU: minutes, CPU: hours)")
    tg.add_argument("--out", default="weights/heads/semcomp-tiny-unclip")
    tg.add_argument("--backbone", default="semcomp-tiny-clip")
    tg.add_argument("--train-source", help="Tiny-ImageNet folder layout with all 500 train images per class (default: shared shards)")
    tg.add_argument("--steps", type=int, default=20000)
    tg.add_argument("--seconds", type=float, help="stop after this wall time (resumable: run again to continue)")
    tg.add_argument("--batch-size", type=int, default=128)
    tg.add_argument("--lr", type=float, default=3e-4)
    tg.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    tg.add_argument("--ckpt-dir", default=str(Path.home() / ".cache" / "semcomp" / "generator-ckpt"))
    tg.add_argument("--seed", type=int, default=0)
    tg.add_argument("--force", action="store_true")
    tg.set_defaults(func=cmd_train_generator)

    tp = sub.add_parser("train-pixel", help="train a learned pixel codec (CompressAI factorized prior or seed 002's attention pyramid)")
    tp.add_argument("--arch", choices=["factorized-prior", "attention-pyramid"], default="factorized-prior")
    tp.add_argument("--out", required=True)
    tp.add_argument("--lmbda", default="0.004", help="rate-distortion weight; the pyramid takes two, coarse level first (e.g. 0.002,0.01)")
    tp.add_argument("--perceptual", default="0.5,1.0", help="pyramid only: perceptual weight per level")
    tp.add_argument("--N", type=int, default=64)
    tp.add_argument("--M", type=int, default=64)
    tp.add_argument("--backbone", default="semcomp-tiny-clip", help="pyramid only: the frozen image tower it builds on")
    tp.add_argument("--train-source", help="Tiny-ImageNet folder layout with all 500 train images per class (default: shared shards)")
    tp.add_argument("--steps", type=int, default=5000)
    tp.add_argument("--seconds", type=float, help="stop after this wall time (resumable: run again to continue)")
    tp.add_argument("--batch-size", type=int, default=16)
    tp.add_argument("--lr", type=float, default=5e-4)
    tp.add_argument("--ckpt-dir", default=str(Path.home() / ".cache" / "semcomp" / "pixel-ckpt"))
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--force", action="store_true")
    tp.set_defaults(func=cmd_train_pixel)

    be = sub.add_parser("bench", help="every benchmark into bench/results/<date>-<machine>/ (python -m bench.all)")
    be.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed to bench.all, e.g. --quick or --only scale")
    be.set_defaults(func=cmd_bench)

    cc = sub.add_parser("convert-clipcap", help="public ClipCap checkpoint (.pt, MLP) -> safetensors captioner folder")
    cc.add_argument("checkpoint")
    cc.add_argument("--out", required=True)
    cc.add_argument("--tokenizer", default=str(Path(__file__).resolve().parents[1] / "weights/heads/semcomp-tiny-clipcap/tokenizer"),
                    help="folder with GPT-2's vocab.json + merges.txt")
    cc.add_argument("--n-head", type=int, default=12)
    cc.add_argument("--input-scale", type=float, default=1.0,
                    help="ClipCap was trained on unnormalised CLIP features: scale the unit-norm decoded feature by this")
    cc.add_argument("--backbone", default="ViT-B-32/openai")
    cc.add_argument("--force", action="store_true")
    cc.set_defaults(func=cmd_convert_clipcap)

    s = sub.add_parser("send", help="image(s) -> CLIP features -> one .scf bitstream")
    s.add_argument("images", nargs="+")
    s.add_argument("--backbone", default=EMBEDDED_DEFAULT)
    s.add_argument("--codec", help="shipped codec spec (default: the best measured at --bits)")
    s.add_argument("--bits", type=int, default=256)
    s.add_argument("--coder", default="auto", choices=["auto", "raw", "huffman", "ans"])
    s.add_argument("--framed", action="store_true",
                   help="write a frame stream (.scfs) for small radio links: the codec announced once, then one frame "
                        "(payload + 3 bytes) per image; `semcomp receive` reads it")
    s.add_argument("--coding", default="huffman", choices=["huffman", "raw"],
                   help="with --framed: per-message Huffman (raw when not shorter) or raw fixed-length frames")
    s.add_argument("--max-frame", type=int, default=51, help="with --framed: the link's largest frame in bytes (LoRa: 51)")
    s.add_argument("--out", required=True)
    s.add_argument("--force", action="store_true")
    s.set_defaults(func=cmd_send)

    r = sub.add_parser("receive", help=".scf bitstream or .scfs frame stream alone -> labels, caption, optional generated image")
    r.add_argument("input")
    r.add_argument("--labels", help="comma-separated labels (default: Tiny-ImageNet-200)")
    r.add_argument("--beam", type=int, default=1)
    r.add_argument("--generate", help="write the generated image here (.png)")
    r.add_argument("--generator", default="embedded",
                   help="embedded (shipped, offline), stable-unclip[:HF_NAME] or karlo[:HF_NAME] (real models: need a download "
                        "and ViT-L/14 features)")
    r.add_argument("--steps", type=int, default=20)
    r.add_argument("--guidance", type=float, default=3.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--max-items", type=int, default=1000,
                   help="refuse inputs announcing more items than this, before decoding (a forged count is a decompression bomb)")
    r.add_argument("--force", action="store_true", help="overwrite --generate's file")
    r.set_defaults(func=cmd_receive)

    g = sub.add_parser("segment", help="image + text command (sent compressed) -> best mask overlay")
    g.add_argument("image")
    g.add_argument("--command", required=True)
    g.add_argument("--backbone", default=EMBEDDED_DEFAULT)
    g.add_argument("--codec")
    g.add_argument("--bits", type=int, default=256)
    g.add_argument("--sam-checkpoint", help="segment-anything checkpoint for SAM mask proposals (needs a download)")
    g.add_argument("--sam-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "vit_t"],
                   help="the checkpoint's model; vit_t = MobileSAM (pip install git+https://github.com/ChaoningZhang/MobileSAM)")
    g.add_argument("--out", required=True)
    g.add_argument("--force", action="store_true")
    g.set_defaults(func=cmd_segment)

    ix = sub.add_parser("index", help=".scf files -> a FAISS index of their codes (additive codecs; nothing decoded)")
    ix.add_argument("files", nargs="+", help=".scf streams made by one codec (same spec, weights and backbone)")
    ix.add_argument("-o", "--out", required=True, help="index file (FAISS); its sidecar is written beside it as OUT.json")
    ix.add_argument("--codec", help="codec folder (default: the shipped codec the streams name)")
    ix.add_argument("--bits", type=int, help="progressive codecs: index only the first BITS of every code (a stage boundary)")
    ix.add_argument("--max-items", type=int, default=10_000_000, help="refuse inputs holding more codes than this, before decoding")
    ix.add_argument("--force", action="store_true")
    ix.set_defaults(func=cmd_index)

    se = sub.add_parser("search", help="nearest codes in a `semcomp index` to a query .scf or image")
    se.add_argument("index")
    se.add_argument("query", help=".scf stream (one search per item) or an image (embedded and encoded first)")
    se.add_argument("-k", type=int, default=10)
    se.add_argument("--codec", help="codec folder (default: the shipped codec the index names)")
    se.add_argument("--float-query", action="store_true", help="image query: search with its float feature, not encoded")
    se.add_argument("--rerank", type=int, default=100,
                    help="re-rank FAISS's best RERANK by the cosine with the codec's normalised decode (0: FAISS's inner product)")
    se.add_argument("--max-queries", type=int, default=100, help="refuse a query stream holding more items than this")
    se.set_defaults(func=cmd_search)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and not {"-h", "--help"} & set(argv[1:2]):  # its options belong to bench.all, not argparse here
        a = argparse.Namespace(bench_args=argv[1:], func=cmd_bench, argv=argv, verbose=False)
        try:
            cmd_bench(a)
        except CLIError as e:
            logger.error("%s", e)
            return 2
        return 0
    a = build_parser().parse_args(argv)
    a.argv = argv
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .bitstream import BitstreamError
    from .codecs import CodecError
    from .data import DataError

    # Every failure ends in one line and exit 2 (as argparse's usage errors): a wrong input, a refused limit, an
    # unwritable or full output. Anything else is a bug in semcomp: one line too, exit 1, traceback with -v.
    try:
        a.func(a)
    except (CLIError, BitstreamError, CodecError, DataError, ValueError) as e:
        logger.error("%s", e)
        return 2
    except OSError as e:  # permission denied, disk full, read-only file system, ...
        logger.error("%s%s", e.strerror or e, f": {e.filename}" if getattr(e, "filename", None) else "")
        return 2
    except MemoryError:
        logger.error("out of memory (a smaller input, or a smaller --max-items, may fit)")
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence against a traceback on a user's terminal
        logger.error("internal error, please report it: %s: %s%s", type(e).__name__, e, "" if a.verbose else " (-v shows the traceback)")
        if a.verbose:
            logger.exception("traceback")
        return 2  # every failure exits 2; the message says the fault is ours, not the input's
    return 0


if __name__ == "__main__":
    sys.exit(main())

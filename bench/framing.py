"""Bytes per message: one-item ``.scf`` files against framed streams (semcomp.framing), on real features.

Features: the embedded backbone on the Tiny-ImageNet val images of the 40 codec-unseen classes (2,000), each
sent as its own message with every shipped codec that fits a 51-byte LoRa frame. Per message:

- ``.scf``: a self-describing one-item bitstream with the smallest of raw / Huffman / ANS (``coder="auto"``);
- framed, raw: seq + fixed-length symbols + CRC-16 (every frame the same size);
- framed, Huffman: seq + the item's Huffman codewords packed to whole bytes (raw when not shorter) + CRC-16;
  +1 length byte in a byte stream (the ``.scfs`` file), none on a datagram link such as LoRa;
- framed, ANS (for comparison, not offered): constriction's ANS of one item is whole 32-bit words;
- ideal: the shipped entropy model's code length of the item (sum of -log2 p), + 3 bytes, not rounded.

    python bench/framing.py [--limit N]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, record  # noqa: E402
from semcomp.backbone import features_from_uint8, load_backbone  # noqa: E402
from semcomp.bitstream import unpack  # noqa: E402
from semcomp.codecs import load_codec  # noqa: E402
from semcomp.data import tiny_imagenet_split  # noqa: E402
from semcomp.entropy import ans_encode  # noqa: E402
from semcomp.framing import FRAME_OVERHEAD, LORA_MAX_FRAME, FrameReceiver, FrameSender  # noqa: E402
from semcomp.splits import class_split  # noqa: E402
from semcomp.zoo import shipped_codecs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=2000, help="messages per codec")
    ap.add_argument("--scf-limit", type=int, default=300, help="one-item .scf files per codec (slower: three coders each)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    bb = load_backbone("semcomp-tiny-clip")
    val = tiny_imagenet_split("val")
    keep = np.isin(val.labels, class_split("tiny-imagenet")["test_classes"])
    feats = features_from_uint8(bb, val.images[keep][: a.limit])
    rows = []
    for c in shipped_codecs(bb.name):
        if (c["bits"] + 7) // 8 + FRAME_OVERHEAD > LORA_MAX_FRAME:
            continue
        codec = load_codec(c["path"])
        sym = codec.encode(feats).numpy()
        model = codec.symbol_model
        tx = {k: FrameSender(codec, k, stream_id=b"bnch") for k in ("raw", "huffman")}
        frames = {k: [s.frame_symbols(x) for x in sym] for k, s in tx.items()}
        for k, fr in frames.items():  # every frame decodes back to its symbols' feature
            rx = FrameReceiver(codec, tx[k].announce())
            assert all(rx.accept(f).ok for f in fr[:50])
        ans = [len(ans_encode(x[None], model)) + FRAME_OVERHEAD for x in sym]
        scf = [len(codec.compress(f[None], "auto")) for f in feats[: a.scf_limit]]
        scf_payload = len(unpack(codec.compress(feats[:1], "raw"))[1])
        huf = np.array([len(f) for f in frames["huffman"]])
        ideal = np.array([model.ideal_bits(x[None]) for x in sym]) / 8 + FRAME_OVERHEAD
        rows.append({"codec": c["spec"], "bits": c["bits"], "announce_bytes": len(tx["raw"].announce()),
                     "scf_auto_mean": float(np.mean(scf)), "scf_header_bytes": len(codec.compress(feats[:1], "raw")) - scf_payload,
                     "frame_raw": len(frames["raw"][0]), "frame_huffman_mean": float(huf.mean()),
                     "frame_huffman_max": int(huf.max()), "huffman_escaped_to_raw": float((huf == len(frames["raw"][0])).mean()),
                     "frame_ans_mean": float(np.mean(ans)), "frame_ideal_mean": float(ideal.mean())})
        print(rows[-1], flush=True)
    lines = ["| codec | bits | `.scf` (auto) | frame, raw | frame, Huffman (mean / max) | frame, ANS | ideal |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['codec']}` | {r['bits']} | {r['scf_auto_mean']:.1f} | {r['frame_raw']} | "
                     f"{r['frame_huffman_mean']:.2f} / {r['frame_huffman_max']} | {r['frame_ans_mean']:.1f} | {r['frame_ideal_mean']:.2f} |")
    md = "\n".join(["# Bytes per message: .scf vs framed streams", "",
                    f"{len(feats)} Tiny-ImageNet val images of the 40 codec-unseen classes, embedded backbone, one message each. "
                    "Frames: seq + payload + CRC-16 on a datagram link; a byte stream adds one length byte to Huffman frames. "
                    "The announce is sent once per stream.", "", *lines, ""])
    (RESULTS / "framing.md").write_text(md)
    print(md)
    record("framing", {"messages": len(feats), "rows": rows})


if __name__ == "__main__":
    main()

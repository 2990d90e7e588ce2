"""Fuzz the receiver: mutated `.scf` bytes into `semcomp.receiver.receive` — only BitstreamError may come out.

Seeds: real bitstreams of every shipped codec (raw, Huffman and ANS payloads; 1 and 3 items). Mutations:
bit flips, byte overwrites, truncation, extension, header-field edits, forged item counts (up to 2^24, the
decompression bomb of issue 19) and payload scrambles — most of them
followed by re-computing the CRC, or the CRC alone would reject nearly everything and the decoders behind it
would never be reached. ``receive`` runs with its one-upload default bound (``RECEIVE_MAX_ITEMS``). Records
inputs, inputs/s, the slowest input, the peak RSS and any crasher (saved under ``tests/fuzz_corpus/`` for a
regression test).

    python bench/fuzz_bitstream.py --seconds 600
"""
from __future__ import annotations

import argparse
import random
import resource
import struct
import sys
import time
import traceback
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

from semcomp.bitstream import _FIXED, BitstreamError  # noqa: E402
from semcomp.codecs import load_codec  # noqa: E402
from semcomp.data import load_features  # noqa: E402
from semcomp.receiver import receive  # noqa: E402
from semcomp.zoo import shipped_codecs  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "fuzz_corpus"


def fix_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def mutate(blob: bytes, rng: random.Random) -> bytes:
    body = bytearray(blob[:-4])
    kind = rng.randrange(9)
    if kind == 8:  # a forged item count, CRC fixed: small, just over the bound, or a bomb
        fields = list(_FIXED.unpack_from(body, 0))
        fields[6] = rng.choice([1, 2, 4, 16, 17, 1 << 10, 1 << 19, 1 << 24, (1 << 24) + 1, rng.randrange(1, 1 << 32)])
        body[: _FIXED.size] = _FIXED.pack(*fields)
        return fix_crc(bytes(body))
    if kind == 0:  # bit flips, CRC left stale
        b = bytearray(blob)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == 1:  # truncate or extend
        return blob[: rng.randrange(len(blob))] if rng.random() < 0.5 else blob + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    if kind == 2:  # a header field edited, CRC fixed
        fields = list(_FIXED.unpack_from(body, 0))
        j = rng.choice([1, 2, 3, 4, 5, 6])
        fields[j] = rng.choice([0, 1, 2, 255, 65535, (1 << 24), (1 << 24) + 1, rng.randrange(1 << 16)]) & (0xFF if j < 5 else 0xFFFF if j == 5 else 0xFFFFFFFF)
        body[: _FIXED.size] = _FIXED.pack(*fields)
        return fix_crc(bytes(body))
    if kind == 3:  # payload bytes scrambled, CRC fixed
        n = len(body)
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(max(1, n - 8), n) if rng.random() < 0.5 else rng.randrange(_FIXED.size, n)
            body[i] = rng.randrange(256)
        return fix_crc(bytes(body))
    if kind == 4:  # payload cut or grown with its length field kept consistent (CRC fixed)
        return fix_crc(bytes(body[: rng.randrange(_FIXED.size, len(body))]))
    if kind == 5:  # spec / backbone strings edited, CRC fixed
        i = _FIXED.size + rng.randrange(1, 24)
        if i < len(body):
            body[i] = rng.randrange(256)
        return fix_crc(bytes(body))
    if kind == 6:  # random bytes behind a valid magic
        return fix_crc(b"SCF\x89" + bytes(rng.randrange(256) for _ in range(rng.randint(0, 200))))
    # random splice of two positions
    i, j = sorted(rng.randrange(len(body)) for _ in range(2))
    return fix_crc(bytes(body[:i] + body[j:]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    x = torch.from_numpy(load_features(Path.home() / ".cache/semcomp/features/tin-val.safetensors").features[:3])
    seeds = []
    for c in shipped_codecs("semcomp-tiny-clip"):
        codec = load_codec(c["path"])
        for coder in ("raw", "huffman", "ans"):
            for n in (1, 3):
                seeds.append(codec.compress(x[:n], coder))
    for s in seeds:  # the seeds themselves decode
        receive(s)
    rng = random.Random(a.seed)
    n, accepted, rejected, crashers, slowest = 0, 0, 0, [], (0.0, b"")
    t_end = time.time() + a.seconds
    t0 = time.time()
    while time.time() < t_end:
        blob = mutate(rng.choice(seeds), rng)
        t = time.perf_counter()
        try:
            receive(blob)
            accepted += 1  # a mutation can land on another valid stream (e.g. a flipped payload bit in raw mode)
        except BitstreamError:
            rejected += 1
        except Exception as e:  # anything else is a bug: keep the input
            CORPUS.mkdir(parents=True, exist_ok=True)
            p = CORPUS / f"crash-{len(crashers):03d}.scf"
            p.write_bytes(blob)
            crashers.append({"file": str(p.name), "error": repr(e), "trace": traceback.format_exc()[-800:]})
        dt = time.perf_counter() - t
        if dt > slowest[0]:
            slowest = (dt, blob)
        n += 1
    wall = time.time() - t0
    res = {"seeds": len(seeds), "inputs": n, "seconds": round(wall, 1), "inputs_per_s": n / wall, "decoded_ok": accepted,
           "rejected_with_BitstreamError": rejected, "other_exceptions": len(crashers), "crashers": crashers[:20],
           "slowest_input_s": slowest[0], "slowest_input_len": len(slowest[1]),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    record("fuzz_bitstream", res)
    print({k: v for k, v in res.items() if k != "crashers"})
    if crashers:
        print(crashers[0]["trace"])


if __name__ == "__main__":
    main()

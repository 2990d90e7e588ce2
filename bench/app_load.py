"""The app under load: `python app.py` on localhost, 8 concurrent gradio_client clients x 25 mixed requests.

Mixed: transmit with a segmentation command, transmit without, receive a .scf, generate (4 steps), and bad
requests (a truncated .scf, empty custom labels, a text file as the image, 2,001 labels) that must come back
as messages. Records failed valid
requests, answered bad ones, p50/p95 latency per kind, the server's peak RSS (VmHWM) and whether it still
answers afterwards.

    python bench/app_load.py --clients 8 --requests 25
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "assets" / "examples").glob("*.jpg"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm(pid: int, key: str) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024  # MiB
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=25)
    a = ap.parse_args()
    from gradio_client import Client, handle_file

    port = free_port()
    load_before = os.getloadavg()
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"))
    url = f"http://127.0.0.1:{port}/"
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.time() - t0 > 120:
                raise SystemExit("app did not start")
            time.sleep(0.3)
    first_page_s = time.time() - t0
    rss_idle = vm(proc.pid, "VmRSS")
    c0 = Client(url, verbose=False)
    scf = c0.predict(handle_file(str(EXAMPLES[0])), "fsq", 64, "auto", "Tiny-ImageNet-200", "", "", api_name="/transmit")[3]
    bad = Path(tempfile.mkdtemp()) / "bad.scf"
    bad.write_bytes(Path(scf).read_bytes()[:-3])
    not_image = bad.with_name("not_an_image.png")
    not_image.write_text("a text file renamed .png")

    def client(seed: int) -> list[dict]:
        rng = random.Random(seed)
        c = Client(url, verbose=False)
        out = []
        for _ in range(a.requests):
            kind = rng.choices(["transmit+segment", "transmit", "receive", "generate", "bad .scf", "empty labels",
                                "not an image", "2,001 labels"], weights=[4, 3, 3, 1, 1, 1, 1, 1])[0]
            img = handle_file(str(rng.choice(EXAMPLES)))
            t = time.perf_counter()
            ok, msg = True, ""
            try:
                if kind == "transmit+segment":
                    fam, bits = rng.choice([("fsq", 64), ("fsq", 256), ("pqvae", 32), ("pqvae", 128), ("aesq", 600)])
                    c.predict(img, fam, bits, "auto", "Tiny-ImageNet-200", "", "the main object", api_name="/transmit")
                elif kind == "transmit":
                    c.predict(img, "pqvae", 128, "ans", "ImageNet-1k", "", "", api_name="/transmit")
                elif kind == "receive":
                    c.predict(handle_file(scf), "Tiny-ImageNet-200", "", False, 0, 4, 3.0, api_name="/receive")
                elif kind == "generate":
                    c.predict(img, "fsq", 64, "auto", rng.randrange(100), 4, 3.0, api_name="/generate")
                elif kind == "bad .scf":
                    c.predict(handle_file(str(bad)), "Tiny-ImageNet-200", "", False, 0, 4, 3.0, api_name="/receive")
                elif kind == "not an image":
                    c.predict(handle_file(str(not_image)), "fsq", 64, "auto", "Tiny-ImageNet-200", "", "", api_name="/transmit")
                elif kind == "2,001 labels":
                    c.predict(img, "fsq", 64, "auto", "Custom", ",".join(f"w{i}" for i in range(2001)), "", api_name="/transmit")
                else:
                    c.predict(img, "fsq", 64, "auto", "Custom", " , ", "", api_name="/transmit")
            except Exception as e:  # gradio_client raises AppError carrying the page's message
                ok, msg = False, str(e)[:200]
            out.append({"kind": kind, "ok": ok, "msg": msg, "s": time.perf_counter() - t})
        return out

    t_load = time.time()
    with ThreadPoolExecutor(a.clients) as ex:
        results = [r for rs in ex.map(client, range(a.clients)) for r in rs]
    wall = time.time() - t_load
    still = bool(Client(url, verbose=False).predict(handle_file(str(EXAMPLES[1])), "fsq", 64, "auto", "Tiny-ImageNet-200", "", "",
                                                    api_name="/transmit")[0])
    peak = vm(proc.pid, "VmHWM")
    load_after = os.getloadavg()
    proc.terminate()
    proc.wait(timeout=30)
    bad_kinds = {"bad .scf", "empty labels", "not an image", "2,001 labels"}
    per_kind = {}
    for k in sorted({r["kind"] for r in results}):
        ts = sorted(r["s"] for r in results if r["kind"] == k)
        per_kind[k] = {"n": len(ts), "p50_s": statistics.median(ts), "p95_s": ts[min(len(ts) - 1, int(0.95 * len(ts)))]}
    res = {"loadavg_1_5_15_before": load_before, "loadavg_1_5_15_after": load_after, "clients": a.clients, "requests_per_client": a.requests, "wall_s": wall, "time_to_first_page_s": first_page_s,
           "rss_after_start_mib": rss_idle, "peak_rss_mib": peak,
           "valid_requests": sum(r["kind"] not in bad_kinds for r in results),
           "failed_valid_requests": [r for r in results if r["kind"] not in bad_kinds and not r["ok"]],
           "bad_requests": sum(r["kind"] in bad_kinds for r in results),
           "bad_requests_answered_with_message": sum(r["kind"] in bad_kinds and not r["ok"] and len(r["msg"]) > 0 for r in results),
           "bad_request_messages": sorted({r["msg"] for r in results if r["kind"] in bad_kinds})[:4],
           "latency": per_kind, "still_answers_afterwards": still}
    record("app_load", res)
    print({k: v for k, v in res.items() if k not in ("latency",)})
    for k, v in per_kind.items():
        print(f"{k:18s} n={v['n']:3d} p50={v['p50_s']:.2f}s p95={v['p95_s']:.2f}s")


if __name__ == "__main__":
    main()

"""Drive the app in headless Chromium like a user: upload or click an example, transmit, screenshot.

    python bench/screenshot_app.py --start --out bench/results/app.png          # starts python app.py itself
    python app.py &  python bench/screenshot_app.py --url http://127.0.0.1:7860/ --generate
Needs Debian's chromium and `pip install playwright` (no browser download: it uses the system Chromium).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-dev-shm-usage", "--disable-sync"]


def start_app() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--host", "127.0.0.1"],
                            env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    t0 = time.time()
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return proc, url
        except OSError:
            if proc.poll() is not None or time.time() - t0 > 180:
                raise SystemExit("app did not start")
            time.sleep(0.5)


def main() -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:7860/")
    ap.add_argument("--start", action="store_true", help="start python app.py on a free port (and stop it after)")
    ap.add_argument("--out", default="bench/results/app.png")
    ap.add_argument("--example", default="goldfish", help="click the bundled example whose file name has this")
    ap.add_argument("--upload", help="upload this image file instead of clicking an example")
    ap.add_argument("--command", default="the goldfish")
    ap.add_argument("--generate", action="store_true", help="also press the (slow) generate button")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    a = ap.parse_args()
    proc, url = start_app() if a.start else (None, a.url)
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=a.chromium, headless=True, args=ARGS)
            page = b.new_page(viewport={"width": 1400, "height": 1300})
            page.goto(url, wait_until="networkidle")
            if a.upload:
                page.locator("input[type=file]").first.set_input_files(a.upload)
            else:
                page.locator(f"img[src*='{a.example}']").first.click()
            page.wait_for_timeout(1500)
            page.get_by_label("Segmentation command (sent compressed too)").fill(a.command)
            page.get_by_role("button", name="Compress and transmit").click()
            page.get_by_text("cosine(original, decoded)").wait_for(timeout=180000)
            if a.command:
                page.get_by_text("best-mask score").wait_for(timeout=180000)
            if a.generate:
                page.get_by_role("button", name="Generate images from both features").click()
                page.get_by_text("Generated both images in").wait_for(timeout=300000)
            page.wait_for_timeout(2000)
            page.screenshot(path=a.out, full_page=True)
            b.close()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    print("wrote", a.out)


if __name__ == "__main__":
    main()

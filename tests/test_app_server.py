"""The app as users reach it: `python app.py` on localhost, driven through its named API with gradio_client."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "assets" / "examples" / "tin_val_2253_goldfish.jpg"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    import urllib.request

    for _ in range(120):
        if proc.poll() is not None:
            pytest.fail("app exited: " + proc.stdout.read()[-2000:])
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("app did not start in 60 s")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_every_endpoint_answers(server, tmp_path):
    from gradio_client import Client, handle_file

    c = Client(server, verbose=False)
    out = c.predict(handle_file(str(EXAMPLE)), "fsq", 64, "auto", "Tiny-ImageNet-200", "", "the goldfish", api_name="/transmit")
    stats, orig, dec, scf, _plot, cap_o, cap_d, seg_o, seg_d, note, px_jpeg, px_learned, px_note = out
    assert "64 bits" in stats and orig["label"] and dec["label"]
    assert Path(px_jpeg).exists() and "JPEG" in px_note  # what the same bytes buy as pixels
    probs = [c["confidence"] for c in dec["confidences"]]
    assert probs == sorted(probs, reverse=True)
    assert cap_o and cap_d and Path(seg_o).exists() and Path(seg_d).exists() and "bits" in note
    blob = Path(scf).read_bytes()
    assert blob[:4] == b"SCF\x89"
    info, labels, caption, img = c.predict(handle_file(scf), "Tiny-ImageNet-200", "", True, 0, 4, 3.0, api_name="/receive")
    assert "fsq-c32l4" in info and labels["label"] == dec["label"] and caption == cap_d and Path(img).exists()
    g_o, g_d = c.predict(handle_file(str(EXAMPLE)), "fsq", 64, "auto", 0, 4, 3.0, api_name="/generate")
    assert Path(g_o).exists() and Path(g_d).exists()
    bad = tmp_path / "bad.scf"
    bad.write_bytes(blob[:-2])
    with pytest.raises(Exception, match="not a valid semcomp bitstream"):
        c.predict(handle_file(str(bad)), "Tiny-ImageNet-200", "", False, 0, 4, 3.0, api_name="/receive")
    with pytest.raises(Exception, match="at least one"):
        c.predict(handle_file(str(EXAMPLE)), "fsq", 64, "auto", "Custom", " , ", "", api_name="/transmit")
    # the server still answers after the errors
    assert c.predict(handle_file(str(EXAMPLE)), "pqvae", 32, "raw", "Tiny-ImageNet-200", "", "", api_name="/transmit")[0]


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium (apt install chromium)")
def test_a_browser_sees_the_bits(server, tmp_path):
    """Headless Chromium clicks an example, transmits, and the page shows the bit count and a caption."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = b.new_page(viewport={"width": 1400, "height": 1300})
        page.goto(server, wait_until="networkidle")
        page.locator("img[src*='goldfish']").first.click()
        page.wait_for_timeout(1000)
        page.get_by_role("button", name="Compress and transmit").click()
        page.get_by_text("fixed-length symbols").wait_for(timeout=60000)
        assert page.get_by_text("bits fixed").count() >= 1
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        b.close()
    assert (tmp_path / "page.png").stat().st_size > 10000

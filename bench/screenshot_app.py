"""Drive the running app in headless Chromium like a user: click an example, transmit, screenshot.

    python app.py &  python bench/screenshot_app.py --out bench/results/app.png
Needs Debian's chromium and `pip install playwright` (no browser download: it uses /usr/bin/chromium).
"""
import argparse

from playwright.sync_api import sync_playwright

ap = argparse.ArgumentParser()
ap.add_argument("--url", default="http://127.0.0.1:7860/")
ap.add_argument("--out", default="bench/results/app.png")
ap.add_argument("--example", default="goldfish")
ap.add_argument("--command", default="the goldfish")
ap.add_argument("--generate", action="store_true", help="also press the (slow) generate button")
a = ap.parse_args()
with sync_playwright() as p:
    b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync"])
    page = b.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(a.url, wait_until="networkidle")
    page.locator(f"img[src*='{a.example}']").first.click()
    page.wait_for_timeout(1500)
    page.get_by_label("Segmentation command (sent compressed too)").fill(a.command)
    page.get_by_role("button", name="Compress and transmit").click()
    page.get_by_text("cosine(original, decoded)").wait_for(timeout=120000)
    page.get_by_text("best-mask score").wait_for(timeout=120000)
    if a.generate:
        page.get_by_role("button", name="Generate images").click()
        page.wait_for_timeout(3000)
        page.locator(".progress-text, .eta-bar").first.wait_for(state="detached", timeout=180000)
    page.wait_for_timeout(3000)
    page.screenshot(path=a.out, full_page=True)
    b.close()
print("wrote", a.out)

"""The docs' picture of the page: a real `stylerun serve`, a real 256 px job, headless chromium.

Usage:
  python tools/serve_screenshot.py [OUT] [--size 256] [--iterations 120] [--threads N]

Starts ``stylerun serve`` on a free 127.0.0.1 port with a fresh data folder, runs a quick
128 px job first (so the gallery holds more than one picture), then fills the form the way a
user does with examples/chelsea.jpg and examples/starry_night.jpg, waits for the run to end
and writes a 1280x1100 screenshot to OUT (default docs/images/serve_page.png). Needs the
test extra (playwright) and Debian's chromium (/usr/bin/chromium); no browser is downloaded.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def start_server(data: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "stylerun", "serve", "--data", str(data), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/api/health", timeout=5)
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("stylerun serve did not start")


def paint(page, content: str, style: str, size: int, iterations: int, threads: int | None) -> None:
    """One job through the form, waiting until its download link appears."""
    page.set_input_files("#content-input", content)
    page.set_input_files("#style-input", style)
    page.fill("#opt-size", str(size))
    page.fill("#opt-iterations", str(iterations))
    page.locator("#opt-style_strength").fill("0.6")
    if threads:
        page.click("#advanced summary")
        page.fill("#opt-threads", str(threads))
        page.click("#advanced summary")
    page.click("#start")
    page.wait_for_selector("#download:not([hidden])", timeout=3_600_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=ROOT / "docs" / "images" / "serve_page.png")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=120)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(tmp) / "data")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 1100})
                page.goto(url)
                page.wait_for_selector("body[data-ready]")
                paint(page, str(EXAMPLES / "astronaut.jpg"), str(EXAMPLES / "shipwreck.jpg"), 128, 40, args.threads)
                paint(page, str(EXAMPLES / "chelsea.jpg"), str(EXAMPLES / "starry_night.jpg"), args.size,
                      args.iterations, args.threads)
                page.wait_for_timeout(1500)  # the gallery's thumbnails
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out))
                browser.close()
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Benchmark the browser page (onnxruntime-web, WASM) against stylerun in Python on the same machine.

    python tools/web_bench.py                      # 128 and 256 px, 1 and 2 WASM threads
    python tools/web_bench.py --sizes 128 --threads 1 --iterations 2 --screenshot docs/images/browser.png

Exports the default site (VGG19 to relu5_1, the CLI's default layers) into a temporary folder,
serves it cross-origin isolated on 127.0.0.1 and opens ``index.html?demo&size=S&threads=N``
in Debian's headless chromium (Playwright). The page's seconds per evaluation are the mean
wall time of its session runs (the worker times each); the Python figure is the median wall
time of `StyleLoss.loss_and_grad` on the same pictures with the same threads, alternating
with the page size by size. Also printed: the download (models, runtime, page; raw and
gzip -6), the time to build the two sessions, and the tab's peak memory (the renderer's
proportional set size, /proc smaps_rollup, sampled every 0.2 s: the worker, its WASM heap
and onnxruntime's threads live in it).

Only same-run ratios mean anything on a shared machine: the absolute figures move with
whatever else runs.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stylerun.web.isolated import StaticServer  # noqa: E402 - after the path
from stylerun.web.site import DEMO, example_path, export_site  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _children(root: int) -> list[int]:
    """Every process descending from `root`, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, parent in parents.items() if parent == pid]
        found += kids
        frontier += kids
    return found


def _renderer_pss() -> int:
    """The largest proportional set size (bytes) among this process's chromium renderers."""
    best = 0
    for pid in _children(os.getpid()):
        try:
            if b"--type=renderer" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    best = max(best, int(line.split()[1]) * 1024)
        except OSError:
            pass
    return best


class PeakMemory:
    """Samples `_renderer_pss` in a thread until stopped; `peak` is the largest seen."""

    def __init__(self) -> None:
        self.peak, self.done = 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.done.wait(0.2):
            self.peak = max(self.peak, _renderer_pss())

    def __enter__(self) -> PeakMemory:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def page_run(browser, url: str, screenshot: str | None = None) -> dict:
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    with PeakMemory() as memory:
        page.goto(url)
        page.wait_for_selector("body[data-state=done], body[data-state=error]", state="attached", timeout=900_000)
    data = page.evaluate("({...document.body.dataset})")
    if data["state"] != "done":
        raise SystemExit(f"the page ended {data['state']}: {page.inner_text('#status')}")
    if screenshot:
        page.screenshot(path=screenshot)
    page.close()
    return {**data, "peak": memory.peak}


def python_seconds(size: int, threads: int, repeats: int) -> float:
    import stylerun

    loss = stylerun.StyleLoss(example_path(DEMO["content"]), example_path(DEMO["style"]), size=size, device="cpu",
                              threads=threads)
    x = loss.content_image.copy()
    loss.loss_and_grad(x)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss.loss_and_grad(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def download_sizes(site: Path) -> tuple[int, int]:
    files = [p for p in site.rglob("*") if p.is_file() and "examples" not in p.parts]
    raw = sum(p.stat().st_size for p in files)
    packed = sum(len(gzip.compress(p.read_bytes(), 6)) for p in files)
    return raw, packed


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--iterations", type=int, default=2, help="page iterations per run (each takes 1+ evaluations)")
    ap.add_argument("--repeats", type=int, default=3, help="Python evaluations per size and thread count")
    ap.add_argument("--screenshot", help="save the page after the first run (docs/images/browser.png)")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        export_site(site)
        raw, packed = download_sizes(site)
        print(f"download: {raw / 1e6:.1f} MB ({packed / 1e6:.1f} MB gzip -6), models and onnxruntime-web included")
        print("| size | threads | page s/eval | Python s/eval | page / Python | sessions ready | tab peak PSS |")
        print("|---|---|---|---|---|---|---|")
        shot = args.screenshot
        with StaticServer(site) as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            for size in map(int, args.sizes.split(",")):
                for threads in map(int, args.threads.split(",")):
                    url = f"{server.url}index.html?demo&size={size}&iterations={args.iterations}&threads={threads}"
                    got = page_run(browser, url, shot)
                    shot = None
                    web = float(got["secondsPerEvaluation"])
                    py = python_seconds(size, threads, args.repeats)
                    print(f"| {size} | {threads} | {web:.2f} | {py:.2f} | {web / py:.1f}x | "
                          f"{float(got['startSeconds']):.1f} s | {got['peak'] / 2**20:.0f} MiB |", flush=True)
            browser.close()


if __name__ == "__main__":
    main()

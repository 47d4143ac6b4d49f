"""`stylerun batch`: bad jobs are recorded and the rest run; reruns skip finished work; Ctrl-C
keeps a checkpoint that the next run resumes; CSV, --grid, outputs kept inside OUTDIR; the same
manifest from local workers and from Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SHALLOW, SHALLOW_FLAGS, assert_replaced_not_written_through, run_cli, spawn, wait_for

from stylerun.cli.common import expand_arguments
from stylerun.jobs import batch, executors, worker
from stylerun.network.sessions import ModelCache
from stylerun.options import TransferOptions

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CHELSEA, ASTRONAUT, STARRY = (str(EXAMPLES / n) for n in ("chelsea.jpg", "astronaut.jpg", "starry_night.jpg"))
SMALL = {"size": 48, **SHALLOW, "device": "cpu", "threads": 1, "iterations": 2}
FLAGS = ["--size", "48", *SHALLOW_FLAGS, "--device", "cpu", "--threads", "1", "-n", "2"]


def write_jobs(path: Path, *jobs: dict) -> Path:
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    return path


def manifest(outdir: Path) -> list[dict]:
    return [json.loads(line) for line in (outdir / "manifest.jsonl").read_text().splitlines()]


def mtimes(outdir: Path) -> dict[str, int]:
    return {str(p.relative_to(outdir)): p.stat().st_mtime_ns for p in outdir.rglob("*") if p.is_file()}


def test_bad_jobs_are_recorded_the_others_run_and_a_rerun_skips_finished_work(tmp_path, capsys, monkeypatch):
    (tmp_path / "not-an-image.jpg").write_text("hello")
    outdir = tmp_path / "out"
    outside = tmp_path / "outside"
    outside.mkdir()
    outdir.mkdir()
    (outdir / "link").symlink_to(outside)
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"content": CHELSEA, "style": STARRY},
        {"content": "missing.jpg", "style": STARRY},
        {"content": CHELSEA, "style": [STARRY], "alpah": 1e-3},
        {"content": CHELSEA, "style": STARRY, "lbfgs_memory": 0},
        {"content": "not-an-image.jpg", "style": STARRY},
        {"content": CHELSEA, "style": STARRY, "alpha": 1e38, "beta": 1e38},
        {"content": CHELSEA, "style": STARRY, "output": "../escaped.png"},
        {"content": CHELSEA, "style": STARRY, "output": str(tmp_path / "absolute.png")},
        {"content": CHELSEA, "style": STARRY, "output": "link/through-a-link.png"},
        {"content": ASTRONAUT, "style": [STARRY, CHELSEA], "output": "sub/two.jpg", "iterations": 3},
    )
    status, err = run_cli(capsys, monkeypatch, "batch", str(jobs), "-o", str(outdir), *FLAGS, "--workers", "1")
    assert status == 1, err
    records = manifest(outdir)
    assert [r["status"] for r in records] == ["done"] + ["failed"] * 8 + ["done"]
    errors = [r["error"] or "" for r in records]
    assert "no such content image" in errors[1]
    assert "unknown option 'alpah' (did you mean alpha?)" in errors[2]
    assert errors[3].startswith("lbfgs_memory must be")  # API names, as the job file writes them
    assert "not-an-image.jpg" in errors[4] and "not an image" in errors[4]
    assert "the loss became inf" in errors[5]
    assert "no '..'" in errors[6] and "not an absolute path" in errors[7] and "through a link" in errors[8]
    assert records[0]["output"] == "chelsea__starry_night.png" and records[0]["iterations"] == 2
    assert records[0]["loss"] > 0 and records[0]["content_loss"] > 0 and records[0]["style_loss"] > 0
    assert records[0]["alpha"] > 0 and records[0]["beta"] == 1.0  # the weights the job's style strength chose
    assert records[9]["iterations"] == 3 and (outdir / "sub" / "two.jpg").is_file()
    assert not list(outside.iterdir()) and not (tmp_path / "escaped.png").exists()
    assert not (tmp_path / "absolute.png").exists()
    assert "job 2 (jobs.jsonl:2) refused" in err and "job 5 (jobs.jsonl:5) failed" in err

    before = mtimes(outdir)
    status, err = run_cli(capsys, monkeypatch, "batch", str(jobs), "-o", str(outdir), *FLAGS, "--no-retry-failed")
    assert status == 1 and "2 done already" in err and "nothing to run" in err
    assert mtimes(outdir) == before  # not even the manifest was rewritten

    status, err = run_cli(capsys, monkeypatch, "batch", str(jobs), "-o", str(outdir), *FLAGS, "--workers", "1")
    assert status == 1 and "2 to run" in err  # the two that failed while running are tried again
    after = mtimes(outdir)
    assert after["chelsea__starry_night.png"] == before["chelsea__starry_night.png"]
    assert after["sub/two.jpg"] == before["sub/two.jpg"]


def test_a_rerun_runs_exactly_the_jobs_whose_output_went_or_whose_input_changed(tmp_path, capsys, monkeypatch):
    """Done and its output still there: skipped. Output deleted: runs again. An input file rewritten under the
    same name: a new id, so it runs again. A job taken out of JOBS: its record goes (docs/batches.md, Reruns)."""
    photos = {name: tmp_path / f"{name}.jpg" for name in ("kept", "deleted", "rewritten", "dropped")}
    for path in photos.values():
        path.write_bytes(Path(CHELSEA).read_bytes())
    jobs = [{"content": str(path), "style": STARRY, "output": f"{name}.png"} for name, path in photos.items()]
    outdir = tmp_path / "out"
    status, err = run_cli(capsys, monkeypatch, "batch", str(write_jobs(tmp_path / "jobs.jsonl", *jobs)), "-o",
                          str(outdir), *FLAGS, "--workers", "1")
    assert status == 0, err
    first = {r["output"]: r for r in manifest(outdir)}
    before = mtimes(outdir)

    (outdir / "deleted.png").unlink()
    photos["rewritten"].write_bytes(Path(ASTRONAUT).read_bytes())  # new content, same path
    status, err = run_cli(capsys, monkeypatch, "batch", str(write_jobs(tmp_path / "jobs.jsonl", *jobs[:3])), "-o",
                          str(outdir), *FLAGS, "--workers", "1")
    assert status == 0, err
    assert "1 done already" in err and "2 to run" in err, err
    records = manifest(outdir)
    assert [r["output"] for r in records] == ["kept.png", "deleted.png", "rewritten.png"]  # "dropped" is gone
    assert first["dropped.png"]["id"] not in {r["id"] for r in records}
    assert all(r["status"] == "done" for r in records)
    after = mtimes(outdir)
    assert after["kept.png"] == before["kept.png"] and records[0] == first["kept.png"]  # not run again
    assert (outdir / "deleted.png").is_file() and records[1]["id"] == first["deleted.png"]["id"]
    assert after["rewritten.png"] != before["rewritten.png"] and records[2]["id"] != first["rewritten.png"]["id"]


def test_the_manifest_is_written_atomically(tmp_path):
    """Rewritten at every change of state while workers run: by a rename, never in place."""
    path = tmp_path / "manifest.jsonl"
    assert_replaced_not_written_through(path, batch.Manifest(path, [{"id": "a", "status": "done"}], None).write)
    assert manifest(tmp_path) == [{"id": "a", "status": "done"}]


def test_unusable_jobs_files_are_one_line_errors(tmp_path, capsys, monkeypatch):
    cases = {
        "missing.jsonl": None,
        "empty.jsonl": "\n# only a comment\n",
        "broken.jsonl": '{"content": "a.jpg", "style": "b.jpg"}\n{"content": \n',
        "list.jsonl": '["a.jpg", "b.jpg"]\n',
        "binary.dat": b"\x89PNG\r\n\x1a\n\x00\xff\xfe",
        "no-header.csv": "a.jpg,b.jpg\n",
    }
    expected = {"missing.jsonl": "no such jobs file", "empty.jsonl": "has no jobs", "broken.jsonl": "broken.jsonl:2: "
                "not JSON", "list.jsonl": "a job must be a JSON object, got list", "binary.dat": "not UTF-8",
                "no-header.csv": "header row naming the content and style"}
    for name, text in cases.items():
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        elif text is not None:
            path.write_text(text)
        status, err = run_cli(capsys, monkeypatch, "batch", str(path), "-o", str(tmp_path / "out"))
        assert status == 2, (name, err)
        assert err.count("\n") == 1 and err.startswith("stylerun: error: ") and expected[name] in err, (name, err)
    status, err = run_cli(capsys, monkeypatch, "batch", "-o", str(tmp_path / "out"))
    assert status == 2 and "give a JOBS file" in err


def test_csv_jobs_and_a_grid(tmp_path, capsys, monkeypatch):
    (tmp_path / "jobs.csv").write_text(
        "content,style,output,iterations,alpha,init\n"
        f"{CHELSEA},{STARRY};{ASTRONAUT},blend.png,3,1e-3,white\n"
        f"{ASTRONAUT},{STARRY},,,,\n")
    specs = batch.read_specs(tmp_path / "jobs.csv")
    assert specs[0].data == {"content": CHELSEA, "style": [STARRY, ASTRONAUT], "output": "blend.png", "iterations": 3,
                             "alpha": 1e-3, "init": "white"}
    assert specs[1].data == {"content": ASTRONAUT, "style": [STARRY]} and specs[1].source == "jobs.csv:3"
    status, err = run_cli(capsys, monkeypatch, "batch", str(tmp_path / "jobs.csv"), "-o", str(tmp_path / "csv"),
                          *FLAGS, "--workers", "2")
    assert status == 0, err
    records = manifest(tmp_path / "csv")
    assert [r["output"] for r in records] == ["blend.png", "astronaut__starry_night.png"]
    assert [r["iterations"] for r in records] == [3, 2]  # the job's own value wins over the flag

    status, err = run_cli(capsys, monkeypatch, "batch", "--grid", "--content", CHELSEA, ASTRONAUT, "--style", STARRY,
                          f"{STARRY};{CHELSEA}", "-o", str(tmp_path / "grid"), *FLAGS, "--workers", "1")
    assert status == 0, err
    names = [r["output"] for r in manifest(tmp_path / "grid")]
    assert names == ["chelsea__starry_night.png", "chelsea__starry_night+chelsea.png",
                     "astronaut__starry_night.png", "astronaut__starry_night+chelsea.png"]
    assert all((tmp_path / "grid" / n).is_file() for n in names)


def test_ids_and_outputs_are_stable_and_unique(tmp_path):
    specs = [batch.JobSpec(f"t:{i}", data, tmp_path) for i, data in enumerate([
        {"content": CHELSEA, "style": STARRY, **SMALL},
        {"content": CHELSEA, "style": STARRY, **SMALL, "threads": 2},  # how it runs: same picture, own output
        {"content": CHELSEA, "style": STARRY, **SMALL, "output": "chelsea__starry_night-2.png"},
        {"content": CHELSEA, "style": STARRY, **SMALL, "output": "chelsea__starry_night-2.png"},
        {"content": CHELSEA, "style": STARRY, **SMALL, "checkpoint": "x.npz"},
    ], start=1)]
    first = batch.plan(specs, tmp_path / "out")
    again = batch.plan(specs, tmp_path / "out")
    assert [e.id for e in first] == [e.id for e in again]
    assert [e.output for e in first[:3]] == ["chelsea__starry_night.png", "chelsea__starry_night-3.png",
                                            "chelsea__starry_night-2.png"]
    assert "also the output of job 3" in first[3].error and "chosen by the batch" in first[4].error
    changed = batch.plan([batch.JobSpec("t:1", {**specs[0].data, "alpha": 1.0}, tmp_path)], tmp_path / "out")
    assert changed[0].id != first[0].id
    assert first[0].job.options.checkpoint_every == 1  # about ten checkpoints over a run, when none is asked for
    assert executors.sizing(12, 2) == (2, 1) and executors.sizing(1, 2) == (1, 2)
    assert executors.sizing(12, 2, workers=1) == (1, 2) and executors.sizing(12, 8, threads=3) == (2, 3)


def test_command_words_for_many_values_and_a_bare_ray():
    assert expand_arguments(["--grid", "--content", "a.jpg", "b.jpg", "--style", "s.jpg", "-o", "out"]) == \
        ["--grid", "--content", "a.jpg", "--content", "b.jpg", "--style", "s.jpg", "-o", "out"]
    assert expand_arguments(["jobs.jsonl", "--ray", "-o", "out"]) == ["jobs.jsonl", "--ray=local", "-o", "out"]
    assert expand_arguments(["--ray", "auto", "jobs.jsonl"]) == ["--ray=auto", "jobs.jsonl"]
    assert expand_arguments(["--ray", "ray://head:10001"]) == ["--ray=ray://head:10001"]
    assert expand_arguments(["--ray"]) == ["--ray=local"]


def test_a_job_that_raises_is_a_failed_result_and_sessions_are_reused(tmp_path, monkeypatch):
    options = TransferOptions(**SMALL)
    task = worker.Task("t1", CHELSEA, (STARRY,), options, "a.png", str(tmp_path))
    cache = ModelCache()
    assert worker.perform(task, models=cache).status == "done"
    assert worker.perform(worker.Task("t2", ASTRONAUT, (STARRY,), options, "b.png", str(tmp_path)), models=cache
                          ).status == "done"
    assert (cache.created, cache.reused) == (1, 1) and (tmp_path / "a.png").is_file()

    actor = executors.RayWorker()  # the Ray actor's class, here without Ray: inputs as shipped bytes
    shipped = worker.Task("t3", worker.Shipped("photos/cat.jpg", Path(CHELSEA).read_bytes()),
                          (worker.Shipped("art/night.jpg", Path(STARRY).read_bytes()),), options, "sub/c.png")
    results = [actor.perform(shipped), actor.perform(shipped)]
    assert actor.stats() == (1, 1) and [r.status for r in results] == ["done", "done"]
    assert list(results[0].files) == ["sub/c.png"] and results[0].files["sub/c.png"].startswith(b"\x89PNG")
    broken = worker.Task("t4", worker.Shipped("photos/cat.jpg", b"junk"), shipped.style, options, "d.png")
    assert actor.perform(broken).error.startswith("photos/cat.jpg: not an image")

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(worker, "run", no_memory)
    assert worker.perform(task).error.startswith("not enough memory for this job")
    monkeypatch.setattr(worker, "run", lambda *a, **k: {}["bug"])
    result = worker.perform(task)
    assert result.status == "failed" and result.error.startswith("unexpected KeyError")
    assert "please report" in result.error


def test_ray_is_imported_only_for_ray_and_missing_ray_is_one_line(tmp_path, capsys, monkeypatch):
    code = ("import sys; from stylerun.cli import app, batch; from stylerun.jobs import batch, executors, worker; "
            "print('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"content": CHELSEA, "style": STARRY})
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    status, err = run_cli(capsys, monkeypatch, "batch", str(jobs), "-o", str(tmp_path / "out"), "--ray")
    assert status == 2 and err.strip() == \
        "stylerun: error: --ray needs Ray, which is not installed: pip install 'stylerun[ray]'"


def _first_done_and_a_checkpoint(outdir: Path) -> bool:
    try:
        text = (outdir / "manifest.jsonl").read_text()
    except OSError:
        return False
    return '"done"' in text and any((outdir / ".checkpoints").glob("*.ckpt.npz"))


def test_a_batch_stopped_by_sigint_resumes_on_rerun(tmp_path):
    outdir = tmp_path / "out"
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"content": CHELSEA, "style": STARRY, "checkpoint_every": -1},
        {"content": ASTRONAUT, "style": STARRY, "iterations": 150, "checkpoint_every": 5, "output": "long.png"},
        {"content": CHELSEA, "style": STARRY, "output": "last.png"},
    )
    command = [sys.executable, "-m", "stylerun", "batch", str(jobs), "-o", str(outdir), *FLAGS, "--workers", "1"]
    process = spawn(command, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: _first_done_and_a_checkpoint(outdir), 60, alive=process, what="a finished job and a checkpoint")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    records = manifest(outdir)
    assert [r["status"] for r in records] == ["done", "interrupted", "pending"], err
    ckpt = outdir / records[1]["checkpoint"]
    assert ckpt.is_file() and not (outdir / "long.png").exists()  # no half-finished picture under its name
    assert "1 stopped with a checkpoint" in err and "run the same command" in err

    finished = os.stat(outdir / records[0]["output"]).st_mtime_ns
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    records = manifest(outdir)
    assert [r["status"] for r in records] == ["done"] * 3
    assert records[1]["resumed_from"] >= 5 and records[1]["iterations"] == 150
    assert os.stat(outdir / records[0]["output"]).st_mtime_ns == finished
    assert not ckpt.exists() and not (outdir / ".checkpoints").exists()


def test_ray_runs_the_same_jobs_into_the_same_manifest(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"content": CHELSEA, "style": STARRY},
        {"content": "broken.jpg", "style": STARRY},
        {"content": ASTRONAUT, "style": [STARRY, CHELSEA], "output": "sub/two.png"},
    )
    runs = {}
    for name, how in (("local", ["--workers", "1"]), ("ray", ["--ray", "--workers", "2"])):
        status, err = run_cli(capsys, monkeypatch, "batch", str(jobs), "-o", str(tmp_path / name), *FLAGS, *how)
        assert status == 1, err
        runs[name] = [{k: v for k, v in r.items() if k != "seconds"} for r in manifest(tmp_path / name)]
        assert (tmp_path / name / "sub" / "two.png").is_file()
    assert "Ray actors" in err
    assert runs["ray"] == runs["local"]
    # the file named as the driver knows it, not as the worker's copy of its bytes
    assert runs["ray"][1]["error"].startswith(f"{tmp_path / 'broken.jpg'}: not an image")

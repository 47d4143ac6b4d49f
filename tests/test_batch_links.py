"""`stylerun batch` never deletes or writes through a link in OUTDIR's own folders, and one job's `save_every`
pictures never overwrite another job's output (the real CLI, in its own process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CHELSEA, STARRY, ASTRONAUT = (str(EXAMPLES / n) for n in ("chelsea.jpg", "starry_night.jpg", "astronaut.jpg"))
FLAGS = ["--size", "48", "--content-layers", "relu2_2", "--style-layers", "relu1_1,relu2_1", "--device", "cpu",
         "--threads", "1", "-n", "2", "--workers", "1"]


def batch(jobs: Path, outdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stylerun", "batch", str(jobs), "-o", str(outdir), *FLAGS],
                          capture_output=True, text=True, timeout=300)


def write_jobs(path: Path, *jobs: dict) -> Path:
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    return path


@pytest.mark.parametrize("name", [".work", ".checkpoints"])
def test_a_linked_batch_folder_is_refused_and_nothing_outside_is_touched(tmp_path, name):
    """OUTDIR/.work linked to a folder elsewhere: the batch used to empty that folder (it clears stale work
    folders at start); now it refuses in one line before anything is written or removed."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "precious").mkdir(parents=True)
    (elsewhere / "precious" / "thesis.txt").write_text("years of work")
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / name).symlink_to(elsewhere, target_is_directory=True)
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"content": CHELSEA, "style": STARRY})
    proc = batch(jobs, outdir)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{name} is a link" in proc.stderr, proc.stderr
    assert (elsewhere / "precious" / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["precious"]  # no work folder or checkpoint written there
    assert not (outdir / "manifest.jsonl").exists()


def test_stale_work_entries_are_removed_only_when_real_folders(tmp_path):
    """A stale work folder left by a killed batch is removed; a link planted inside .work is not followed."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "keep").mkdir(parents=True)
    outdir = tmp_path / "out"
    (outdir / ".work" / "stale-job").mkdir(parents=True)
    (outdir / ".work" / "planted").symlink_to(elsewhere, target_is_directory=True)
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"content": CHELSEA, "style": STARRY})
    proc = batch(jobs, outdir)
    assert proc.returncode == 0, proc.stderr
    assert not (outdir / ".work" / "stale-job").exists() and (elsewhere / "keep").is_dir()


def test_save_every_pictures_are_in_the_collision_check(tmp_path):
    """Job 2 (a.png, save_every 1) would write a_0001.png, job 1's output: job 2 is refused, job 1 keeps its
    picture, and the manifest does not call both done."""
    outdir = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.jsonl",
                      {"content": CHELSEA, "style": STARRY, "output": "a_0001.png"},
                      {"content": CHELSEA, "style": ASTRONAUT, "output": "a.png", "save_every": 1},
                      {"content": CHELSEA, "style": ASTRONAUT, "output": "b.png", "save_every": 1})
    proc = batch(jobs, outdir)
    records = [json.loads(line) for line in (outdir / "manifest.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["done", "failed", "done"], (records, proc.stderr)
    assert "a_0001.png" in records[1]["error"] and "save_every" in records[1]["error"]
    assert proc.returncode == 1 and "job 2 (jobs.jsonl:2) refused" in proc.stderr
    assert (outdir / "b_0001.png").is_file() and (outdir / "b_0002.png").is_file()  # the others still save
    assert not (outdir / "a.png").exists()

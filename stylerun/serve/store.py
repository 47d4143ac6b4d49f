"""The SQLite job store: one row per job; images and checkpoints live beside it under server-made names.

The data folder holds people's photos: it is made (and kept) readable by this user only. Every
answer is one short query: a job's queue position is a count, a page of the job list takes its
positions from one window query, so neither grows with the queue times the page.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from stylerun.engine.checkpoint import SUFFIX

SCHEMA = """create table if not exists jobs (
  id text primary key, status text, options text, styles integer, created real, finished real,
  iteration integer default 0, iterations integer default 0, loss real, content_loss real, style_loss real,
  eta_s real, error text, resumed_from integer)"""
INDEXES = ("create index if not exists jobs_status on jobs (status, created)",
           "create index if not exists jobs_created on jobs (created)")
FIELDS = ("id", "status", "iteration", "iterations", "loss", "content_loss", "style_loss", "eta_s", "error",
          "resumed_from")
#: Statuses of a job that waits for a worker: what the queue cap counts.
WAITING = ("queued", "interrupted")
#: Statuses of a job that is over: its files may be removed (DELETE, retention).
FINISHED = ("done", "failed", "cancelled")
_SELECT = f"select {', '.join(FIELDS)}, options, styles"
_ORDER = "created, rowid"  # the queue's order; rowid breaks a tie of two equal clocks


class Store:
    """Jobs by id; every method is one short transaction, safe from any thread."""

    def __init__(self, data: Path):
        self.data = Path(data)
        self.images = self.data / "images"
        self.images.mkdir(mode=0o700, parents=True, exist_ok=True)
        for folder in (self.data, self.images):  # a folder made before this rule, or by someone else's umask
            folder.chmod(0o700)
        self.db = sqlite3.connect(self.data / "jobs.sqlite", check_same_thread=False)
        (self.data / "jobs.sqlite").chmod(0o600)
        self.lock = threading.Lock()
        with self.lock, self.db:
            self.db.execute(SCHEMA)
            columns = {row[1] for row in self.db.execute("pragma table_info(jobs)")}
            if "resumed_from" not in columns:  # a database from before resuming
                self.db.execute("alter table jobs add column resumed_from integer")
            for index in INDEXES:
                self.db.execute(index)
            # a server stopped mid-job: the job is interrupted, and goes on from its checkpoint (the runner's)
            self.db.execute("update jobs set status='interrupted' where status='running'")

    def image(self, job_id: str, name: str) -> Path:
        """The file for one of a job's images; `job_id` is server-made (a uuid hex), `name` a constant."""
        return self.images / f"{job_id}-{name}.png"

    def checkpoint(self, job_id: str) -> Path:
        """The job's checkpoint, where `worker.TaskFolder` writes it for a job run in the images folder."""
        return self.images / f"{job_id}{SUFFIX}"

    @staticmethod
    def new_id() -> str:
        """A job id, made before the job is added so that its images are in place when it is queued."""
        return uuid.uuid4().hex

    def add(self, options: dict[str, Any], styles: int, job_id: str | None = None,
            max_waiting: int | None = None) -> str | None:
        """Queue a job and return its id; None, and nothing queued, when `max_waiting` jobs already wait
        (counted in the same transaction, so two requests at once cannot both take the last place)."""
        job_id = job_id or self.new_id()
        with self.lock, self.db:
            if max_waiting is not None and self._count(WAITING) >= max_waiting:
                return None
            self.db.execute("insert into jobs (id, status, options, styles, created, iterations) values (?,?,?,?,?,?)",
                            (job_id, "queued", json.dumps(options), styles, time.time(), options.get("iterations", 0)))
        return job_id

    def waiting(self) -> int:
        """Jobs queued or interrupted: what the queue cap counts."""
        with self.lock:
            return self._count(WAITING)

    def _count(self, statuses: tuple[str, ...]) -> int:
        marks = ",".join("?" * len(statuses))
        return self.db.execute(f"select count(*) from jobs where status in ({marks})", statuses).fetchone()[0]

    def update(self, job_id: str, **values: Any) -> None:
        """Set `values`; a job that reaches a finished status is stamped with the time (for retention), and
        an error names the job's files by their names only."""
        if values.get("status") in FINISHED:
            values.setdefault("finished", time.time())
        if isinstance(values.get("error"), str):  # clients see errors; where the server keeps files is not theirs
            values["error"] = values["error"].replace(str(self.images.resolve()) + os.sep, "").replace(
                str(self.images) + os.sep, "").replace(str(self.data), "the data folder")
        names = ", ".join(f"{k}=?" for k in values)
        with self.lock, self.db:
            self.db.execute(f"update jobs set {names} where id=?", (*values.values(), job_id))

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.db.execute(f"{_SELECT}, case when status='queued' then (select count(*) from jobs q "
                                  f"where q.status='queued' and (q.created, q.rowid) <= (j.created, j.rowid)) end "
                                  "from jobs j where id=?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def page(self, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Jobs newest first, `limit` from `offset`, each queued one with its position, in one query."""
        with self.lock:
            rows = self.db.execute(
                f"with q as (select id, row_number() over (order by {_ORDER}) as position from jobs "
                f"where status='queued') {_SELECT}, q.position from jobs left join q using (id) "
                "order by created desc, rowid desc limit ? offset ?", (limit, offset)).fetchall()
        return [_job(row) for row in rows]

    def total(self) -> int:
        with self.lock:
            return self.db.execute("select count(*) from jobs").fetchone()[0]

    def first(self, status: str) -> str | None:
        """The oldest job with `status`, or None."""
        with self.lock:
            row = self.db.execute(f"select id from jobs where status=? order by {_ORDER} limit 1", (status,)).fetchone()
        return None if row is None else row[0]

    def ids(self, status: str | None = None) -> list[str]:
        with self.lock:
            if status is None:
                return [r[0] for r in self.db.execute(f"select id from jobs order by {_ORDER}")]
            return [r[0] for r in self.db.execute(f"select id from jobs where status=? order by {_ORDER}", (status,))]

    def remove(self, job_id: str) -> None:
        """The job's row, then its files (images, preview, result, checkpoint, a temporary left by a crash)."""
        with self.lock, self.db:
            self.db.execute("delete from jobs where id=?", (job_id,))
        self.remove_files(job_id)

    def remove_files(self, job_id: str) -> None:
        for pattern in (f"{job_id}-*", f"{job_id}{SUFFIX}", f".{job_id}*"):
            for path in self.images.glob(pattern):
                path.unlink(missing_ok=True)

    def expire(self, seconds: float) -> list[str]:
        """Remove the jobs finished more than `seconds` ago, with their files; their ids."""
        cutoff = time.time() - seconds
        marks = ",".join("?" * len(FINISHED))
        with self.lock:
            old = [r[0] for r in self.db.execute(f"select id from jobs where status in ({marks}) and "
                                                 "coalesce(finished, created) < ?", (*FINISHED, cutoff))]
        for job_id in old:
            self.remove(job_id)
        return old


def _job(row: tuple) -> dict[str, Any]:
    job = dict(zip(FIELDS, row[:len(FIELDS)], strict=True))
    job["options"], job["styles"], job["queue_position"] = json.loads(row[-3]), row[-2], row[-1]
    return job

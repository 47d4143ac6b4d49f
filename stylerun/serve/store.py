"""The SQLite job store: one row per job; images and checkpoints live beside it under server-made names."""

from __future__ import annotations

import json
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
FIELDS = ("id", "status", "iteration", "iterations", "loss", "content_loss", "style_loss", "eta_s", "error",
          "resumed_from")


class Store:
    """Jobs by id; every method is one short transaction, safe from the worker thread."""

    def __init__(self, data: Path):
        self.data = Path(data)
        self.images = self.data / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.data / "jobs.sqlite", check_same_thread=False)
        self.lock = threading.Lock()
        with self.lock, self.db:
            self.db.execute(SCHEMA)
            columns = {row[1] for row in self.db.execute("pragma table_info(jobs)")}
            if "resumed_from" not in columns:  # a database from before resuming
                self.db.execute("alter table jobs add column resumed_from integer")
            # a server stopped mid-job: the job is interrupted, and goes on from its checkpoint (the runner's)
            self.db.execute("update jobs set status='interrupted' where status='running'")

    def image(self, job_id: str, name: str) -> Path:
        """The file for one of a job's images; `job_id` is server-made (a uuid hex), `name` a constant."""
        return self.images / f"{job_id}-{name}.png"

    def checkpoint(self, job_id: str) -> Path:
        """The job's checkpoint, where `worker.TaskFolder` writes it for a job run in the images folder."""
        return self.images / f"{job_id}{SUFFIX}"

    def add(self, options: dict[str, Any], styles: int) -> str:
        job_id = uuid.uuid4().hex
        with self.lock, self.db:
            self.db.execute("insert into jobs (id, status, options, styles, created, iterations) values (?,?,?,?,?,?)",
                            (job_id, "queued", json.dumps(options), styles, time.time(), options.get("iterations", 0)))
        return job_id

    def update(self, job_id: str, **values: Any) -> None:
        names = ", ".join(f"{k}=?" for k in values)
        with self.lock, self.db:
            self.db.execute(f"update jobs set {names} where id=?", (*values.values(), job_id))

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.db.execute(f"select {', '.join(FIELDS)}, options, styles from jobs where id=?",
                                  (job_id,)).fetchone()
        if row is None:
            return None
        job = dict(zip(FIELDS, row[:len(FIELDS)], strict=True))
        job["options"], job["styles"] = json.loads(row[-2]), row[-1]
        job["queue_position"] = self.position(job_id) if job["status"] == "queued" else None
        return job

    def ids(self, status: str | None = None) -> list[str]:
        with self.lock:
            if status is None:
                return [r[0] for r in self.db.execute("select id from jobs order by created")]
            return [r[0] for r in self.db.execute("select id from jobs where status=? order by created", (status,))]

    def position(self, job_id: str) -> int | None:
        queued = self.ids("queued")
        return queued.index(job_id) + 1 if job_id in queued else None

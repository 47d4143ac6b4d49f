"""The server's worker: one job at a time through `engine.run`, checkpointed so a restart goes on.

A job is run the way a batch job is (`worker.Work`): its checkpoint is written every few
iterations under the data folder, and a job the last server left running (status
``interrupted``) goes on from that checkpoint; a checkpoint that cannot be used means the job
starts over, and says so in its record. Interrupted jobs run before queued ones.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from stylerun.batch import checkpoint_every
from stylerun.engine import Listener, Outcome, run
from stylerun.errors import OptionError, StylerunError
from stylerun.images import save_image
from stylerun.options import TransferOptions
from stylerun.serve.store import Store
from stylerun.worker import Task, Work, error_text

#: Statuses of a job that is not over: the event stream follows these.
ACTIVE = ("queued", "running", "interrupted")


def finite(value: float | None) -> float | None:
    """A number for JSON: NaN and infinity are not JSON, so they are stored as null."""
    return float(value) if value is not None and math.isfinite(value) else None


class JobListener(Listener):
    """Writes each iteration's numbers to the store and the preview image every few iterations."""

    def __init__(self, store: Store, job_id: str):
        self.store, self.job_id = store, job_id

    def progress(self, progress: Any) -> None:
        self.store.update(self.job_id, iteration=progress.iteration, iterations=progress.iterations,
                          loss=finite(progress.loss), content_loss=finite(progress.content_loss),
                          style_loss=finite(progress.style_loss), eta_s=finite(progress.eta_s))
        if progress.iteration % 2 == 0 or progress.iteration == progress.iterations:
            save_image(progress.rgb(), self.store.image(self.job_id, "preview"))


def checkpointed(options: TransferOptions) -> TransferOptions:
    """The job's options with the batch's checkpoint rhythm where the client chose none (or none can be made)."""
    if options.checkpoint_every > 0:
        return options
    every = checkpoint_every(options)
    try:
        return options.replace(checkpoint_every=every) if every > 0 else options
    except OptionError:  # max_memory: its choices are not kept in checkpoints, so none are written
        return options


class Runner:
    """One job at a time, interrupted ones first, then the oldest queued; a failing job is recorded, never raised."""

    def __init__(self, store: Store):
        self.store, self.wake, self.cancelled = store, threading.Event(), set()
        self.closing = False
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def next_job(self) -> str | None:
        for status in ("interrupted", "queued"):
            waiting = self.store.ids(status)
            if waiting:
                return waiting[0]
        return None

    def loop(self) -> None:
        while not self.closing:
            job_id = self.next_job()
            if job_id is None:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            self.run_one(job_id)

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; the running one stops at its next evaluation and keeps a checkpoint to go on from."""
        self.closing = True
        self.wake.set()
        self.thread.join(timeout)

    def work(self, job_id: str) -> Work:
        """The job as the batch's worker runs it: inputs and output under the data folder, its checkpoint there."""
        store, record = self.store, self.store.get(job_id)
        styles = tuple(str(store.image(job_id, f"style{i}")) for i in range(record["styles"]))
        ckpt = store.checkpoint(job_id)
        options = checkpointed(TransferOptions.from_dict(record["options"]))
        task = Task(job_id, str(store.image(job_id, "content")), styles, options,
                    store.image(job_id, "result").name, None, str(ckpt) if ckpt.is_file() else None)
        return Work(task, store.images)

    def run_one(self, job_id: str) -> None:
        store = self.store
        try:
            warnings: list[str] = []
            job, state = self.work(job_id).job(warnings)
            store.update(job_id, status="running", resumed_from=None if state is None else state.iteration,
                         error="; ".join(warnings) or None)
            outcome = run(job, JobListener(store, job_id), resume=state,
                          stop=lambda: self.closing or job_id in self.cancelled)
            self.record(job_id, outcome)
        except Exception as exc:  # a failing job must never take the server down
            store.update(job_id, status="failed", error=error_text(exc) if isinstance(exc, StylerunError) else
                         f"unexpected {type(exc).__name__}: {exc}")
            store.checkpoint(job_id).unlink(missing_ok=True)

    def record(self, job_id: str, outcome: Outcome) -> None:
        """How the run ended; only a job stopped by the server's own shutdown keeps its checkpoint."""
        if outcome.interrupted and job_id not in self.cancelled:
            self.store.update(job_id, status="interrupted")
            return
        status = "cancelled" if job_id in self.cancelled else "failed" if outcome.error else "done"
        self.store.update(job_id, status=status, **({"error": outcome.error} if outcome.error else {}))
        self.store.checkpoint(job_id).unlink(missing_ok=True)

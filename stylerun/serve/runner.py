"""The server's workers: each runs one job at a time through `engine.run`, checkpointed so a restart goes on.

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
from stylerun.errors import StylerunError
from stylerun.executors import sizing
from stylerun.images import save_image
from stylerun.options import TransferOptions
from stylerun.runtime import default_threads
from stylerun.serve.store import Store
from stylerun.worker import ModelCache, Task, Work, error_text

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
    return options.replace(checkpoint_every=every) if every > 0 else options


class Runner:
    """`workers` jobs at once, interrupted ones first, then the oldest queued; a failing job is recorded, never raised.

    Each worker is a thread (onnxruntime releases the GIL while it computes) with its own
    session cache, as a batch worker has; a job whose client chose no thread count gets
    the cores shared out among the workers (`executors.sizing`).
    """

    def __init__(self, store: Store, workers: int = 1, cores: int | None = None):
        self.store, self.wake, self.cancelled = store, threading.Event(), set()
        self.closing = False
        self.threads = sizing(workers, cores or default_threads(), workers)[1]  # per job
        self.claiming = threading.Lock()
        self.pool = [threading.Thread(target=self.loop, args=(ModelCache(),), daemon=True) for _ in range(workers)]
        for thread in self.pool:
            thread.start()

    def claim(self) -> str | None:
        """The next job, marked running so that no other worker takes it."""
        with self.claiming:
            for status in ("interrupted", "queued"):
                waiting = self.store.ids(status)
                if waiting:
                    self.store.update(waiting[0], status="running")
                    return waiting[0]
        return None

    def loop(self, models: ModelCache) -> None:
        while not self.closing:
            job_id = self.claim()
            if job_id is None:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            self.run_one(job_id, models)

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; running ones stop at their next evaluation and keep a checkpoint to go on from."""
        self.closing = True
        self.wake.set()
        for thread in self.pool:
            thread.join(timeout)

    def work(self, job_id: str) -> Work:
        """The job as the batch's worker runs it: inputs and output under the data folder, its checkpoint there."""
        store, record = self.store, self.store.get(job_id)
        styles = tuple(str(store.image(job_id, f"style{i}")) for i in range(record["styles"]))
        ckpt = store.checkpoint(job_id)
        options = checkpointed(TransferOptions.from_dict(record["options"]))
        if options.threads is None:
            options = options.replace(threads=self.threads)
        task = Task(job_id, str(store.image(job_id, "content")), styles, options,
                    store.image(job_id, "result").name, None, str(ckpt) if ckpt.is_file() else None)
        return Work(task, store.images)

    def run_one(self, job_id: str, models: ModelCache | None = None) -> None:
        store = self.store
        try:
            warnings: list[str] = []
            job, state = self.work(job_id).job(warnings)
            store.update(job_id, status="running", resumed_from=None if state is None else state.iteration,
                         error="; ".join(warnings) or None)
            outcome = run(job, JobListener(store, job_id), resume=state, models=models,
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

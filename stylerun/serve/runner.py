"""The server's workers: each runs one job at a time, checkpointed so a restart goes on.

A job is run the way a batch job is (`worker.TaskFolder`): its checkpoint is written every few
iterations under the data folder, and a job the last server left running (status
``interrupted``) goes on from that checkpoint; a checkpoint that cannot be used means the job
starts over, and says so in its record. Interrupted jobs run before queued ones.

Jobs run in this process through `engine.run`, or, with a Ray address, on Ray actors
(`executors.RayExecutor.follow`): the inputs travel to the actor, and its numbers, preview,
checkpoints and result come back to be written here, so the data folder stays the one place
a job's state is kept whichever machine computes it.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from threadpoolctl import threadpool_limits

from stylerun.engine.checkpoint import checkpoint_every
from stylerun.engine.memory import job_memory
from stylerun.engine.run import Listener, run
from stylerun.errors import StylerunError
from stylerun.files.atomic import write_bytes
from stylerun.images.codec import save_image
from stylerun.jobs.executors import RayExecutor, sizing
from stylerun.jobs.worker import Task, TaskFolder, error_text, preview_due, progress_numbers
from stylerun.network.sessions import ModelCache, default_threads
from stylerun.options import TransferOptions
from stylerun.records import json_value
from stylerun.serve.store import Store
from stylerun.units import format_bytes

#: Statuses of a job that is not over: the event stream follows these.
ACTIVE = ("queued", "running", "interrupted")


class JobListener(Listener):
    """Writes a job's numbers to the store, and its preview image every few iterations.

    `progress` serves a job run here; `report` one run on a Ray actor, whose preview and
    checkpoints come as bytes (`worker.Watch.take`).
    """

    def __init__(self, store: Store, job_id: str):
        self.store, self.job_id = store, job_id

    def numbers(self, numbers: dict[str, Any]) -> None:
        if "iteration" in numbers:  # (a remote job's first report may come before its first iteration)
            self.store.update(self.job_id, iteration=numbers["iteration"], iterations=numbers["iterations"],
                              **{k: json_value(numbers[k]) for k in ("loss", "content_loss", "style_loss", "eta_s")})

    def progress(self, progress: Any) -> None:
        self.numbers(progress_numbers(progress))
        if preview_due(progress):
            save_image(progress.rgb(), self.store.image(self.job_id, "preview"))

    def report(self, taken: dict[str, Any]) -> None:
        self.numbers(taken)
        if "resumed_from" in taken:
            self.store.update(self.job_id, resumed_from=taken["resumed_from"],
                              error="; ".join(taken.get("warnings") or []) or None)
        write(self.store.image(self.job_id, "preview"), taken.get("preview"))
        write(self.store.checkpoint(self.job_id), taken.get("checkpoint"))


def write(path: Any, data: bytes | None) -> None:
    """`data` into `path` in one rename (readers never see half a file); nothing when there is none."""
    if data is not None:
        write_bytes(path, data)


def checkpointed(options: TransferOptions, every: int | None = None) -> TransferOptions:
    """The job's options with the server's checkpoint rhythm: `every` iterations, by default the batch's
    (at every scale: a checkpoint resumes within any of them); never `save_every` pictures, which nothing
    would serve or delete.
    Both are the server's to choose: a stored job from before that rule chose them itself."""
    options = options.replace(save_every=-1, checkpoint_every=-1)
    every = checkpoint_every(options) if every is None else every
    return options.replace(checkpoint_every=every) if every > 0 else options


class Runner:
    """`workers` jobs at once, interrupted ones first, then the oldest queued; a failing job is recorded, never raised.

    Each worker is a thread. Without `ray` it runs its job here (onnxruntime releases the
    GIL while it computes) with its own session cache, as a batch worker has, and a job
    whose client chose no thread count gets the cores shared out among the workers
    (`executors.sizing`). With `ray` (an address, or "local" for an instance started here)
    each worker thread follows its job on one of `workers` Ray actors, sized the same way
    from the cluster's cores. Ray is reached before the server starts, so a wrong address
    is one line, not a server that fails every job.
    """

    def __init__(self, store: Store, workers: int = 1, cores: int | None = None, ray: str | None = None,
                 max_memory: int | None = None, checkpoint_every: int | None = None):
        self.store, self.wake, self.cancelled = store, threading.Event(), set()
        self.checkpoint_every = checkpoint_every
        self.closing = False
        #: Each job's `max_memory`, unless it asks for less: a job too large for it runs in tiles (or fails
        #: with a reason) rather than growing until the system kills the server.
        self.max_memory = max_memory or job_memory(workers)
        self.remote: RayExecutor | None = None
        self.blas: Any = None
        if ray is not None:
            self.remote = RayExecutor(ray, workers, workers, None)
            before = signal.getsignal(signal.SIGTERM)
            self.remote.start()
            if threading.current_thread() is threading.main_thread():
                # Ray's driver handler ends a stopped server with exit status 15; a server ends by the signal
                signal.signal(signal.SIGTERM, before)
            self.threads = self.remote.threads
        else:
            self.threads = sizing(workers, cores or default_threads(), workers)[1]  # per job
            # Jobs side by side in one process share one BLAS thread pool (L-BFGS-B's vector steps); callers
            # on several threads make its threads spin against each other (measured: docs/performance.md).
            self.blas = threadpool_limits(1, user_api="blas") if workers > 1 else None
        self.claiming = threading.Lock()
        self.pool = [threading.Thread(target=self.loop, args=(ModelCache(),), daemon=True) for _ in range(workers)]
        for thread in self.pool:
            thread.start()

    def describe(self) -> str:
        """Where jobs run and in how much memory, for the health answer and the server's first line."""
        budget = "" if self.max_memory is None else f", up to {format_bytes(self.max_memory)} per job"
        if self.remote is not None:
            return self.remote.describe() + budget
        n = len(self.pool)
        return f"{n} worker thread{'s' if n > 1 else ''} in this process x {self.threads} onnxruntime thread" + \
            ("s" if self.threads > 1 else "") + budget

    def claim(self) -> str | None:
        """The next job, marked running so that no other worker takes it."""
        with self.claiming:
            for status in ("interrupted", "queued"):
                waiting = self.store.first(status)
                if waiting is not None:
                    self.store.update(waiting, status="running")
                    return waiting
        return None

    def loop(self, models: ModelCache) -> None:
        while not self.closing:
            job_id = self.claim()
            if job_id is None:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            try:
                if self.remote is None:
                    self.run_here(job_id, models)
                else:
                    self.run_remote(job_id)
            except Exception as exc:  # a failing job must never take the server down
                self.store.update(job_id, status="failed", error=error_text(exc) if isinstance(exc, StylerunError)
                                  else f"unexpected {type(exc).__name__}: {exc}")
                self.store.checkpoint(job_id).unlink(missing_ok=True)

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; running ones stop within a moment and keep a checkpoint to go on from."""
        self.closing = True
        self.wake.set()
        for thread in self.pool:
            thread.join(timeout)
        if self.remote is not None:
            self.remote.close()
        if self.blas is not None:
            self.blas.restore_original_limits()

    def share(self, threads: int | None) -> int:
        """A job's thread count: what it asked for, at most this server's share per job (a client's 4096
        would otherwise start 4096 onnxruntime threads in the server)."""
        return min(threads or self.threads, self.threads)

    def stopping(self, job_id: str) -> bool:
        return self.closing or job_id in self.cancelled

    def task(self, job_id: str) -> Task:
        """The job as the batch's worker runs it: inputs and output under the data folder, its checkpoint there."""
        store, record = self.store, self.store.get(job_id)
        styles = tuple(str(store.image(job_id, f"style{i}")) for i in range(record["styles"]))
        ckpt = store.checkpoint(job_id)
        options = checkpointed(TransferOptions.from_dict(record["options"]), self.checkpoint_every)
        options = options.replace(threads=self.share(options.threads))
        if self.max_memory is not None:  # a client's smaller budget stands
            options = options.replace(max_memory=min(options.max_memory or self.max_memory, self.max_memory))
        return Task(job_id, str(store.image(job_id, "content")), styles, options,
                    store.image(job_id, "result").name, None, str(ckpt) if ckpt.is_file() else None)

    def run_here(self, job_id: str, models: ModelCache | None = None) -> None:
        warnings: list[str] = []
        job, state = TaskFolder(self.task(job_id), self.store.images).job(warnings)
        self.store.update(job_id, status="running", resumed_from=None if state is None else state.iteration,
                          error="; ".join(warnings) or None)
        outcome = run(job, JobListener(self.store, job_id), resume=state, models=models,
                      stop=lambda: self.stopping(job_id))
        self.record(job_id, outcome.interrupted, outcome.error)

    def run_remote(self, job_id: str) -> None:
        """The job on a Ray actor; what it makes is written here as it comes back."""
        listener = JobListener(self.store, job_id)
        result = self.remote.follow(self.task(job_id), listener.report, lambda: self.stopping(job_id))
        if result.status == "done":
            write(self.store.image(job_id, "result"), result.files.get(self.store.image(job_id, "result").name))
            self.store.update(job_id, iteration=result.iterations, loss=json_value(result.loss),
                              content_loss=json_value(result.content_loss), style_loss=json_value(result.style_loss))
        elif result.status == "interrupted" and job_id in self.cancelled:
            write(self.store.image(job_id, "result"), result.stopped)  # a cancelled job keeps its best picture
        elif result.status == "interrupted":
            write(self.store.checkpoint(job_id), result.checkpoint)  # the server is stopping: where it stood
        self.record(job_id, result.status == "interrupted", result.error)

    def record(self, job_id: str, interrupted: bool, error: str | None) -> None:
        """How the run ended; only a job stopped by the server's own shutdown keeps its checkpoint."""
        if interrupted and job_id not in self.cancelled:
            self.store.update(job_id, status="interrupted")
            return
        status = "cancelled" if job_id in self.cancelled else "failed" if error else "done"
        self.store.update(job_id, status=status, **({"error": error} if error else {}))
        self.store.checkpoint(job_id).unlink(missing_ok=True)

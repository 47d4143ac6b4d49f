"""One batch job inside a worker: a local process or a Ray actor, the same code in both.

A `Task` is what travels to a worker: the inputs (paths, or `Shipped` bytes where the
worker shares no filesystem with the driver), the checked options, the output's name
inside the batch folder, and a checkpoint to go on from. `perform` runs it through the
run engine in a private work folder, so that a stopped job never leaves a half-finished
picture where a finished one belongs, and returns a `TaskResult`: how it ended, its
losses, and, for shipped tasks, the files it made, as bytes for the driver to write.

Every error a job can cause ends in a failed result, never in an exception: one bad job
must not end a batch of a thousand.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from stylerun.engine.checkpoint import SUFFIX
from stylerun.engine.run import PATH_OPTIONS, Job, Listener, Outcome, resume_job, run
from stylerun.errors import StylerunError, mention_options, one_line
from stylerun.images.codec import png_bytes
from stylerun.network.sessions import ModelCache
from stylerun.options import RESUMABLE, TransferOptions

#: Inside the batch folder: checkpoints of unfinished jobs, and the work folders of running ones.
CHECKPOINTS = ".checkpoints"
WORK = ".work"


@dataclass(frozen=True)
class Shipped:
    """An input file's bytes (or a Ray object holding them), and its name as the user gave it."""

    name: str
    data: Any


@dataclass(frozen=True)
class Task:
    """One job as a worker gets it.

    `outdir` is the batch folder when the worker shares the driver's filesystem: files are
    then moved there and checkpoints written there as the job runs. With `outdir` None the
    inputs are `Shipped` and everything the job makes comes back in the `TaskResult`.
    `resume` is a checkpoint to go on from: its path, or its bytes.
    """

    id: str
    content: Any
    style: tuple[Any, ...]
    options: TransferOptions
    output: str  # relative to the batch folder, with forward slashes
    outdir: str | None = None
    resume: str | bytes | None = None


@dataclass
class TaskResult:
    """How a task ended: status ``done``, ``failed`` or ``interrupted`` (stopped, checkpoint kept)."""

    id: str
    status: str
    seconds: float
    iterations: int = 0
    loss: float | None = None
    content_loss: float | None = None
    style_loss: float | None = None
    #: The weights the run used (from its style strength, or as given).
    alpha: float | None = None
    beta: float | None = None
    error: str | None = None
    resumed_from: int | None = None
    warnings: list[str] = field(default_factory=list)
    #: Shipped tasks only: files made, by path relative to the batch folder, and the checkpoint of a stopped job.
    files: dict[str, bytes] = field(default_factory=dict, repr=False)
    checkpoint: bytes | None = field(default=None, repr=False)
    #: Shipped tasks only: a stopped job's best picture, which a batch leaves out and a cancelled served job keeps.
    stopped: bytes | None = field(default=None, repr=False)


def failed(task_id: str, error: str, seconds: float = 0.0) -> TaskResult:
    return TaskResult(task_id, "failed", round(seconds, 3), error=error)


class _Warnings(Listener):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def warning(self, message: str) -> None:
        self.messages.append(message)


def progress_numbers(progress: Any) -> dict[str, Any]:
    """An iteration's numbers as a job record holds them."""
    return {"iteration": progress.iteration, "iterations": progress.iterations, "loss": progress.loss,
            "content_loss": progress.content_loss, "style_loss": progress.style_loss, "eta_s": progress.eta_s}


#: A followed job's preview is a new picture every this many iterations (and at the last).
PREVIEW_EVERY = 2


def preview_due(progress: Any, every: int = PREVIEW_EVERY) -> bool:
    return progress.iteration % every == 0 or progress.iteration == progress.iterations


class Watch(_Warnings):
    """A running job as another thread sees it: its latest numbers, preview and checkpoint.

    A Ray actor runs the job on one thread and answers its driver's `take` calls on the
    other; each call returns what is new since the last, so a preview or a checkpoint
    crosses the network once. The preview is a PNG every `every` iterations and at the end.
    """

    def __init__(self, every: int = PREVIEW_EVERY):
        super().__init__()
        self.every, self.lock = every, threading.Lock()
        self.numbers: dict[str, Any] = {}
        self.preview: bytes | None = None
        self.checkpoint: Path | None = None
        self.checkpoint_seen: int | None = None

    def begin(self, checkpoint: Path, resumed_from: int | None) -> None:
        """The job is built: where its checkpoints will be written, and the iteration it goes on from."""
        with self.lock:
            self.checkpoint = checkpoint
            self.numbers = {"resumed_from": resumed_from}

    def progress(self, progress: Any) -> None:
        png = png_bytes(progress.rgb()) if preview_due(progress, self.every) else None
        with self.lock:
            self.numbers.update(progress_numbers(progress))
            self.preview = png or self.preview

    def take(self) -> dict[str, Any]:
        """The latest numbers, and the preview and checkpoint bytes when new (else None)."""
        with self.lock:
            taken = {**self.numbers, "warnings": list(self.messages), "preview": self.preview, "checkpoint": None}
            self.preview, checkpoint = None, self.checkpoint
        try:  # written atomically by the engine; gone once the job's folder is removed
            stat = checkpoint.stat() if checkpoint is not None else None
            if stat is not None and stat.st_mtime_ns != self.checkpoint_seen:
                taken["checkpoint"], self.checkpoint_seen = checkpoint.read_bytes(), stat.st_mtime_ns
        except FileNotFoundError:
            pass
        return taken


def perform(task: Task, stop: Callable[[], bool] | None = None, models: ModelCache | None = None,
            watch: Watch | None = None) -> TaskResult:
    """Run `task` to its end (or until `stop`), never raising for anything the job itself causes.

    `watch`, if given, follows the run for another thread (see `Watch`).
    """
    begin = time.perf_counter()
    parent = None
    if task.outdir is not None:
        parent = Path(task.outdir) / WORK
        parent.mkdir(exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=f"{task.id}-", dir=parent) as folder:
            work = TaskFolder(task, Path(folder))
            try:
                return work.perform(stop, models, begin, watch)
            except (StylerunError, MemoryError, RecursionError) as exc:
                return failed(task.id, work.unlocal(error_text(exc)), time.perf_counter() - begin)
    except Exception as exc:  # a bug: recorded with its place, and the batch goes on
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return failed(task.id, f"unexpected {type(exc).__name__}: {exc} (at {Path(where.filename).name}:"
                               f"{where.lineno}; please report it)", time.perf_counter() - begin)


def error_text(exc: BaseException) -> str:
    """An error as one line with options by their API names, as a job file writes them."""
    return one_line(exc, str, memory="this job")


class TaskFolder:
    """A task in its private folder: inputs written there when shipped, the run, the delivery."""

    def __init__(self, task: Task, folder: Path):
        self.task, self.folder = task, folder
        self.names: dict[str, str] = {}  # local copy of a shipped input -> the name the user gave
        self.output = folder / PurePosixPath(task.output).name
        if task.outdir is not None:
            self.checkpoint = Path(task.outdir) / CHECKPOINTS / f"{task.id}{SUFFIX}"
        else:
            self.checkpoint = folder / f"{task.id}{SUFFIX}"

    def unlocal(self, message: str) -> str:
        """`message` naming shipped inputs as the user did, not by their copies in the work folder."""
        for local, name in self.names.items():
            message = message.replace(local, name)
        return message

    def source(self, item: Any, slot: int) -> str:
        if not isinstance(item, Shipped):
            return str(item)
        path = self.folder / "inputs" / str(slot) / (PurePosixPath(item.name).name or "image")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.data)
        self.names[str(path)] = item.name
        return str(path)

    def job(self, warnings: list[str]) -> tuple[Job, Any]:
        """The engine's job, or the job a usable checkpoint describes and that checkpoint."""
        task = self.task
        if task.resume is not None:
            try:
                return self.resumed()
            except StylerunError as exc:
                warnings.append(f"checkpoint not usable ({error_text(exc)}); started over")
        content = self.source(task.content, 0)
        style = tuple(self.source(s, k) for k, s in enumerate(task.style, start=1))
        return Job(content, style, task.options.replace(checkpoint=str(self.checkpoint)), self.output), None

    def resumed(self) -> tuple[Job, Any]:
        resume = self.task.resume
        if isinstance(resume, bytes):
            path = self.folder / "inputs" / f"resume{SUFFIX}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(resume)
            resume = str(path)
        options = self.task.options
        # the job's own machine settings and files: the checkpoint is not trusted to choose them
        overrides = {n: getattr(options, n) for n in (*RESUMABLE, *PATH_OPTIONS) if getattr(options, n) is not None}
        overrides["checkpoint"] = str(self.checkpoint)
        return resume_job(resume, self.output, **overrides)

    def perform(self, stop: Callable[[], bool] | None, models: ModelCache | None, begin: float,
                watch: Watch | None = None) -> TaskResult:
        listener = watch or _Warnings()
        job, state = self.job(listener.messages)
        if watch is not None:
            watch.begin(self.checkpoint, None if state is None else state.iteration)
        outcome = run(job, listener, stop, resume=state, models=models)
        status = "interrupted" if outcome.interrupted else "failed" if outcome.error else "done"
        error = None if outcome.error is None else mention_options(outcome.error, str)
        result = TaskResult(self.task.id, status, 0.0, outcome.iterations, error=error,
                            resumed_from=None if state is None else state.iteration, warnings=listener.messages)
        if outcome.loss_object is not None:
            result.alpha, result.beta = outcome.loss_object.alpha, outcome.loss_object.beta
        if status == "done":
            result.loss, result.content_loss, result.style_loss = final_terms(outcome)
        elif math.isfinite(outcome.loss):
            result.loss = outcome.loss
        self.deliver(result, outcome)
        result.seconds = round(time.perf_counter() - begin, 3)
        return result

    def deliver(self, result: TaskResult, outcome: Outcome) -> None:
        """Move what the job made into the batch folder, or put it in `result` as bytes.

        A stopped job's picture is not delivered: its output name stays free for the
        finished one, and its checkpoint says where to go on.
        """
        task = self.task
        here = PurePosixPath(task.output).parent
        for path in sorted(self.folder.iterdir()):
            if not path.is_file() or path == self.checkpoint or (outcome.interrupted and path == self.output):
                continue
            if task.outdir is None:
                result.files[str(here / path.name)] = path.read_bytes()
            else:
                os.replace(path, Path(task.outdir, here, path.name))
        if task.outdir is None and outcome.interrupted:
            if self.checkpoint.is_file():
                result.checkpoint = self.checkpoint.read_bytes()
            if self.output.is_file():
                result.stopped = self.output.read_bytes()


def final_terms(outcome: Outcome) -> tuple[float | None, float | None, float | None]:
    """(loss, content loss, style loss) of the finished image: one more evaluation, exact terms."""
    loss = outcome.loss_object
    if loss is None or not math.isfinite(outcome.loss):
        return None, None, None
    objective = loss.objective
    value, _ = objective.loss_and_grad(loss.to_variable(outcome.image))
    content, style = objective.last_terms
    return float(value), float(content), float(style)

"""`stylerun batch` as a person uses it: its arguments, the progress display, the exit status.

`cli/app.py` registers the command and derives the transfer flags from the option model;
this module turns the parsed request into a plan (`jobs/batch.py`), an executor
(`jobs/executors.py`) and a display, and maps the outcome to an exit status: 0 every job
done, 1 some failed, 2 JOBS unusable (an `InputError`, one line), 130/143 stopped by
SIGINT/SIGTERM (finished outputs, the manifest and the stopped jobs' checkpoints stay).
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from typer.core import TyperCommand

from stylerun.console import duration, say
from stylerun.errors import InputError
from stylerun.jobs import batch
from stylerun.jobs.executors import LOCAL, is_ray_address, make_executor
from stylerun.signals import StopSignals

#: Batch flags that take every value up to the next flag: ``--content a.jpg b.jpg``.
MANY_VALUES = ("--content", "--style")


def expand_arguments(args: list[str]) -> list[str]:
    """Command-line words as Click can parse them: ``--content a b`` becomes ``--content a --content b``,
    and a bare ``--ray`` (no address after it) becomes ``--ray=local``."""
    out: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--":
            return out + args[i:]
        if word in MANY_VALUES:
            values = []
            while i + 1 < len(args) and not args[i + 1].startswith("-"):
                values.append(args[i + 1])
                i += 1
            out += [part for value in values for part in (word, value)] if values else [word]
        elif word == "--ray":
            address = args[i + 1] if i + 1 < len(args) and is_ray_address(args[i + 1]) else None
            out.append(f"--ray={address or LOCAL}")
            i += address is not None
        else:
            out.append(word)
        i += 1
    return out


class ExpandedCommand(TyperCommand):
    """A command whose words go through `expand_arguments` before Click parses (`batch`, and `serve`'s bare --ray)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_arguments(list(args)))


@dataclass
class Request:
    """What the command line asked for, by name."""

    outdir: Path
    jobs: Path | None = None
    grid: bool = False
    contents: list[Path] = field(default_factory=list)
    styles: list[Path] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # transfer flags given: defaults of every job
    workers: int | None = None
    ray: str | None = None
    gpus_per_job: float = 0.0
    retry_failed: bool = True
    quiet: bool = False


class BatchDisplay(batch.BatchListener):
    """Jobs done, failed and running with an ETA: a bar on a terminal, one line per finished job."""

    def __init__(self, console: Console, quiet: bool, total: int):
        self.console, self.quiet, self.total = console, quiet, total
        self.counts = {"done": 0, "failed": 0, "interrupted": 0}
        self.running, self.finished_here, self.begin = 0, 0, time.monotonic()
        self.left = 0
        self.bar = RichProgress(TextColumn("[bold]batch"), BarColumn(bar_width=16), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                                disable=quiet or not console.is_terminal, transient=False)
        self.task = None

    def start(self, plan: batch.Batch, where: str) -> None:
        done = plan.summary().count("done")
        refused = sum(1 for e in plan.entries if e.error)
        self.left = len(plan.todo)
        self.counts.update(done=done, failed=refused)
        if not self.quiet:
            parts = [f"{n} {what}" for n, what in ((done, "done already"), (refused, "refused by the checks"),
                                                   (plan.skipped - done, "failed before, not retried")) if n]
            todo = f"{self.left} to run on {where}" if self.left else "nothing to run"
            say(f"{len(plan.entries)} jobs: {', '.join([*parts, todo])}", self.console)
        self.bar.start()
        self.task = self.bar.add_task("batch", total=self.total, completed=done + refused, info=self.info())

    def info(self) -> str:
        eta = "?"
        if self.finished_here:
            eta = duration((time.monotonic() - self.begin) / self.finished_here * (self.left + self.running))
        return (f"{self.counts['done']} done, {self.counts['failed']} failed, {self.running} running, "
                f"ETA {eta}")

    def started(self, entry: batch.PlannedJob) -> None:
        self.running += 1
        self.left -= 1
        self.bar.update(self.task, info=self.info())

    def finished(self, entry: batch.PlannedJob, record: dict[str, Any]) -> None:
        status = record["status"]
        self.running -= 1
        self.finished_here += 1
        self.counts[status] = self.counts.get(status, 0) + 1
        if status == "failed":
            say(f"job {entry.index} ({entry.source}) failed: {record['error']}", self.console)
        elif not self.quiet and status == "done":
            say(f"job {entry.index} done: {entry.output} (loss {record['loss']:.4g}, {record['seconds']:.1f} s)",
                self.console)
        self.bar.update(self.task, advance=status != "interrupted", info=self.info())

    def stopping(self) -> None:
        say("stopping: the running jobs write their checkpoints; a second Ctrl-C stops at once", self.console)

    def close(self) -> None:
        self.bar.stop()


def run(request: Request, console: Console) -> int:
    """Plan, run and report a batch; the exit status."""
    specs = batch.grid_specs(request.contents, request.styles) if request.grid else _specs(request)
    entries = batch.plan(specs, request.outdir, request.options)
    plan = batch.Batch(entries, request.outdir, request.retry_failed)
    plan.manifest.write()
    for entry in entries:
        if entry.error:
            say(f"job {entry.index} ({entry.source}) refused: {entry.error}", console)
    executor = make_executor(request.ray, len(plan.todo), request.workers, request.options.get("threads"),
                             request.gpus_per_job) if plan.todo else None
    display = BatchDisplay(console, request.quiet, len(entries))
    stopper = StopSignals()
    try:
        if executor is not None:
            executor.start()  # before the handlers: Ray installs its own, which ours must wrap
        display.start(plan, executor.describe() if executor else "")
        with stopper:
            summary = plan.run(executor, display, stopper.requested) if executor else plan.summary()
    except KeyboardInterrupt:
        say(f"stylerun: stopped at once; finished jobs are in {request.outdir / batch.MANIFEST}", console)
        return 130
    finally:
        display.close()
        if executor is not None:
            executor.close()
        plan.tidy()
    return _report(summary, stopper, request, console)


def _specs(request: Request) -> list[batch.JobSpec]:
    if request.contents or request.styles:
        raise InputError("--content and --style make a --grid; give JOBS or --grid, not both")
    if request.jobs is None:
        raise InputError("give a JOBS file (JSON Lines or CSV), or --grid --content FILE... --style FILE...")
    return batch.read_specs(request.jobs)


def _report(summary: batch.Summary, stopper: StopSignals, request: Request, console: Console) -> int:
    manifest = request.outdir / batch.MANIFEST
    done, failed = summary.count("done"), summary.count("failed")
    if summary.interrupted:
        signum = stopper.signum or signal.SIGINT
        say(f"stylerun: {signal.Signals(signum).name}: {done} done, {failed} failed, "
            f"{summary.count('interrupted')} stopped with a checkpoint, {summary.count('pending')} not started; "
            f"run the same command to go on ({manifest})", console)
        return 128 + int(signum)
    if failed:
        say(f"stylerun: {failed} of {done + failed} jobs failed (reasons in {manifest}); fix them and run the same "
            "command again: done jobs are skipped", console)
        return 1
    if not request.quiet:
        say(f"all {done} jobs done: {manifest}", console)
    return 0

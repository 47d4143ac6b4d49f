"""`stylerun batch` as a person uses it: its arguments, the progress display, the exit status.

The parsed request becomes a plan (`jobs/batch.py`), an executor (`jobs/executors.py`) and a
display; the outcome becomes an exit status (`common.ExitStatus`): 0 every job done, 1 some
failed, 2 JOBS unusable (an `InputError`, one line), 130/143 stopped by SIGINT/SIGTERM
(finished outputs, the manifest and the stopped jobs' checkpoints stay).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from stylerun.cli.common import (
    RAY_HELP,
    Ending,
    ExpandedCommand,
    at_once,
    context,
    err,
    finish,
    log_warnings_to,
    option_parameters,
    option_values,
    own,
)
from stylerun.console import say, task_bars
from stylerun.errors import InputError
from stylerun.jobs import batch
from stylerun.jobs.executors import make_executor
from stylerun.lines import duration
from stylerun.signals import StopSignals


def batch_command(ctx: typer.Context, **params: Any) -> None:
    """Run many transfers into OUTDIR, from JOBS or as a --grid; a rerun goes on where the last one stopped.

    JOBS: JSON Lines, one job a line, e.g. {"content": "a.jpg", "style": ["s.jpg"], "size": 256, "alpha": 1e-3}.

    Or CSV with a header row naming the same fields (style a.jpg;b.jpg for two). Paths are relative to JOBS.

    Each job: content, style, optional output (inside OUTDIR), any transfer option by its Python name.

    Transfer flags given here apply to every job that does not set its own.

    OUTDIR/manifest.jsonl records every job: the same command again skips done jobs, retries failed ones and \
resumes stopped ones from their checkpoints.

    Exit status: 0 all done, 1 some failed, 2 JOBS unusable, 130/143 stopped by SIGINT/SIGTERM.
    """
    log_warnings_to(err)
    request = Request(
        outdir=params["output"], jobs=params["jobs"], grid=params["grid"], contents=list(params["content"] or []),
        styles=list(params["style"] or []), options=option_values(ctx, params, given_only=True),
        workers=params["workers"], ray=params["ray"], gpus_per_job=params["gpus_per_job"],
        retry_failed=params["retry_failed"], quiet=params["quiet"])
    summary, stopper = run(request, err)
    finish(ending(summary, request.outdir / batch.MANIFEST), stopper, request.quiet)


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
        self.bar = task_bars(console, disable=quiet or not console.is_terminal)
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


def run(request: Request, console: Console) -> tuple[batch.Summary, StopSignals]:
    """Plan and run a batch: its summary, and the signals that may have stopped it."""
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
    with at_once(f"stylerun: stopped at once; finished jobs are in {request.outdir / batch.MANIFEST}"):
        try:
            if executor is not None:
                executor.start()  # before the handlers: Ray installs its own, which ours must wrap
            display.start(plan, executor.describe() if executor else "")
            with stopper:
                summary = plan.run(executor, display, stopper.requested) if executor else plan.summary()
        finally:
            display.close()
            if executor is not None:
                executor.close()
            plan.tidy()
    return summary, stopper


def _specs(request: Request) -> list[batch.JobSpec]:
    if request.contents or request.styles:
        raise InputError("--content and --style make a --grid; give JOBS or --grid, not both")
    if request.jobs is None:
        raise InputError("give a JOBS file (JSON Lines or CSV), or --grid --content FILE... --style FILE...")
    return batch.read_specs(request.jobs)


def ending(summary: batch.Summary, manifest: Path) -> Ending:
    """How a batch ended, in words: what is done, what failed, and how to go on."""
    done, failed = summary.count("done"), summary.count("failed")
    if summary.interrupted:
        return Ending(stopped=f": {done} done, {failed} failed, {summary.count('interrupted')} stopped with a "
                              f"checkpoint, {summary.count('pending')} not started; run the same command to go on "
                              f"({manifest})")
    if failed:
        return Ending(failed=f"{failed} of {done + failed} jobs failed (reasons in {manifest}); fix them and run the "
                             "same command again: done jobs are skipped")
    return Ending(done=f"all {done} jobs done: {manifest}")


def _signature() -> inspect.Signature:
    panel = "Batch"
    first = [
        context(),
        own("jobs", Path | None, typer.Argument(None, help="Jobs file: JSON Lines or CSV (not with --grid).",
                                                show_default=False, metavar="JOBS")),
        own("output", Path, typer.Option(..., "-o", "--output", help="Folder for the outputs and manifest.jsonl.",
                                         metavar="OUTDIR", rich_help_panel=panel)),
        own("grid", bool, typer.Option(False, "--grid", help="Every --content with every --style, no JOBS file.",
                                       rich_help_panel=panel)),
        own("content", list[Path] | None, typer.Option(None, "--content", metavar="FILE...", show_default=False,
                                                       help="With --grid: content photos.", rich_help_panel=panel)),
        own("style", list[Path] | None, typer.Option(None, "--style", metavar="FILE...", show_default=False,
                                                     help="With --grid: styles (a.jpg;b.jpg blends two).",
                                                     rich_help_panel=panel)),
        own("workers", int | None, typer.Option(None, "--workers", min=1, metavar="N", show_default=False,
                                                help="Jobs at once (default: so that workers x threads <= cores).",
                                                rich_help_panel=panel)),
        own("ray", str | None, typer.Option(None, "--ray", metavar="[ADDRESS]", show_default=False, help=RAY_HELP,
                                            rich_help_panel=panel)),
        own("gpus_per_job", float, typer.Option(0.0, "--gpus-per-job", min=0.0, metavar="G",
                                                help="With --ray: GPUs each job reserves.", rich_help_panel=panel)),
        own("retry_failed", bool, typer.Option(True, "--retry-failed/--no-retry-failed", rich_help_panel=panel,
                                               help="On a rerun, run failed jobs again.")),
        own("quiet", bool, typer.Option(False, "--quiet", "-q", help="No progress display; failures only.",
                                        rich_help_panel=panel)),
    ]
    return inspect.Signature([*first, *option_parameters(batch.BATCH_DECIDES)])


batch_command.__signature__ = _signature()


def register(app: typer.Typer) -> None:
    """Add `stylerun batch` to the app."""
    app.command("batch", cls=ExpandedCommand)(batch_command)

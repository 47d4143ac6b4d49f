"""Progress as a person sees it: a bar on a terminal, plain periodic lines anywhere else.

The bar keeps what matters readable at 80 columns (the iteration count, the loss and the
ETA, which comes from the engine's estimate over the whole run, scales included); when
stderr is a file or a pipe, a line is printed every tenth of the run or every 30 s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

from stylerun.engine.estimate import Estimate
from stylerun.engine.optimizers import Progress
from stylerun.engine.run import CallbackListener, Outcome
from stylerun.errors import mention_options
from stylerun.figures import Figure, Listener, Panel, PanelRecord


def say(message: str, console: Console) -> None:
    """One line on the console, never wrapped, never read as markup."""
    console.print(message, soft_wrap=True, markup=False, highlight=False)


def duration(seconds: float) -> str:
    """12:03, 1:02:03, or ? when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def about(seconds: float) -> str:
    """A rough duration, for estimates: 40 s, 1.5 min, 19 min, 1.5 h."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    if seconds < 600:
        return f"{round(seconds / 30) / 2:g} min"
    if round(seconds / 60) < 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def estimate_text(estimate: Estimate, setting: Callable[[str, Any], str]) -> str:
    """``~19 min on CPU (2 threads); --size 256 takes ~5 min``; `setting` spells an option with a value."""
    line = f"~{about(estimate.seconds)} on {estimate.device}"
    if estimate.faster is not None:
        side, seconds = estimate.faster
        line += f"; {setting('size', side)} takes ~{about(seconds)}"
    return line


def short(x: float, digits: int = 3) -> str:
    """A number in `digits` significant digits, exponent without padding: 1.13e9, 0.5, 3.1e-5."""
    text = f"{x:.{digits}g}"
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if e else text


def status_text(p: Progress, rate: bool = True) -> str:
    """The numbers of one iteration; without `rate` short enough for a line beside a bar at 80 columns."""
    line = f"loss {short(p.loss)} (c {short(p.content_loss, 2)} s {short(p.style_loss, 2)})"
    if rate:
        line += f" {p.evaluations / p.elapsed if p.elapsed > 0 else 0.0:.2f} ev/s"
    return line + (f" scale {p.stage}/{p.stages}" if p.stages > 1 else "")


class ProgressBar:
    """A transfer's progress: a rich bar on a terminal, periodic plain lines otherwise."""

    PLAIN_EVERY_S = 30.0

    def __init__(self, console: Console, total: int, completed: int = 0, disable: bool = False):
        self.console, self.total, self.completed, self.disable = console, total, completed, disable
        self.terminal = console.is_terminal
        self.rich: RichProgress | None = None
        self.last_line = -math.inf
        self.last_iteration = completed

    def start(self) -> None:
        if self.disable or not self.terminal or self.rich is not None:
            return
        # The line stays under 80 columns (73 at 5000 iterations and an ETA in hours): a line that
        # fills the terminal wraps when the terminal echoes ^C after it, and the bar is drawn twice.
        self.rich = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=10), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TextColumn("ETA {task.fields[eta]}"),
            console=self.console, transient=False,
        )
        self.rich.start()
        self.task = self.rich.add_task("stylizing", total=self.total, completed=self.completed, info="", eta="?")

    def update(self, p: Progress) -> None:
        if self.disable:
            return
        self.last_iteration = p.iteration
        if self.rich is not None:
            what = f"scale {p.stage}/{p.stages}" if p.stages > 1 else "stylizing"
            self.rich.update(self.task, description=what, completed=p.iteration,
                             info=status_text(replace(p, stages=1), rate=False), eta=duration(p.eta_s))
            return
        now = time.monotonic()
        step = max(1, self.total // 10)
        if p.iteration == self.total or p.iteration % step == 0 or now - self.last_line >= self.PLAIN_EVERY_S:
            self.last_line = now
            say(f"iteration {p.iteration}/{p.iterations} {status_text(p)} ETA {duration(p.eta_s)}", self.console)

    def stop(self) -> None:
        if self.rich is not None:
            self.rich.stop()
            self.rich = None


def outcome_text(outcome: Outcome) -> str:
    """One line on how a run ended: where the result went, its loss, evaluations and time."""
    numbers = f"loss {outcome.loss:.4g}, {outcome.evaluations} evaluations, {outcome.elapsed:.1f} s"
    if outcome.error:
        return f"stopped at iteration {outcome.iterations}: {outcome.error}"
    where = f"wrote {outcome.output}" if outcome.written else "done"
    if outcome.interrupted:
        where = f"stopped at iteration {outcome.iterations}" + (f"; the best image so far is in {outcome.output}"
                                                                if outcome.written else "")
    return f"{where} ({numbers})"


class ConsoleListener(CallbackListener):
    """The run engine's events on a console: a spinner while loading (on a terminal), the
    start, the estimate and notices as one line each, progress as a `ProgressBar`.

    `spell` names options in messages (``size`` -> ``--size``), `setting` writes an option
    with a value (``--size 256``, ``size=256``); `callback` also gets every `Progress`.
    """

    def __init__(self, console: Console, total: int, completed: int = 0, *, quiet: bool = False,
                 spell: Callable[[str], str] = str, setting: Callable[[str, Any], str] = "{}={}".format,
                 callback: Callable[[Progress], None] | None = None):
        super().__init__(callback)
        self.console, self.quiet, self.spell, self.setting = console, quiet, spell, setting
        self.bar = ProgressBar(console, total, completed, disable=quiet)
        self.status = None

    def loading(self) -> None:
        if not self.quiet and self.console.is_terminal:
            # one line at 80 columns, spinner included
            self.status = self.console.status("loading images and model (a first run with new layers exports it)")
            self.status.start()

    def started(self, message: str) -> None:
        self._stop_status()
        self.notice(message)
        self.bar.start()

    def notice(self, message: str) -> None:
        if not self.quiet:
            say(mention_options(message, self.spell), self.console)

    def estimate(self, estimate: Estimate) -> None:
        self.notice(estimate_text(estimate, self.setting))

    def warning(self, message: str) -> None:
        say(f"stylerun: warning: {mention_options(message, self.spell)}", self.console)

    def progress(self, progress: Progress) -> None:
        self.bar.update(progress)
        super().progress(progress)

    def _stop_status(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def close(self) -> None:
        self._stop_status()
        self.bar.stop()


class FigureBars(Listener):
    """`stylerun figures` progress: panels done over all, and the running panel's iterations."""

    def __init__(self, console: Console, quiet: bool):
        self.console, self.quiet = console, quiet
        self.bar = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console, disable=quiet,
        )
        self.all = self.one = None

    def __enter__(self) -> FigureBars:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def start(self, figures: Sequence[Figure], todo: int) -> None:
        total = sum(len(f.panels) for f in figures)
        self.all = self.bar.add_task("panels", total=total, completed=total - todo, info=f"{todo} to run")

    def panel_start(self, panel: Panel, index: int, total: int) -> None:
        if self.one is not None:
            self.bar.remove_task(self.one)
        self.one = self.bar.add_task(panel.name, total=panel.iterations, info="")

    def step(self, panel: Panel, p: Progress) -> None:
        self.bar.update(self.one, completed=p.iteration, info=f"{status_text(p)} ETA {duration(p.eta_s)}")

    def panel_done(self, panel: Panel, record: PanelRecord) -> None:
        self.bar.advance(self.all)
        self.bar.update(self.all, info=f"last: {panel.name} in {record.elapsed:.0f} s")
        if record.error:
            say(f"{panel.name}: {record.error}; kept the best finite image", self.console)

    def sheet_done(self, figure: Figure, path: Path) -> None:
        if not self.quiet:
            say(f"wrote {path}", self.console)


class VideoConsole(ConsoleListener):
    """`stylerun video` progress: each frame's iterations as a `ProgressBar`, and a line per finished
    frame with its terms, its time and the ETA of the frames still to come."""

    def __init__(self, console: Console, iterations: int, **kwargs: Any):
        super().__init__(console, iterations, **kwargs)
        self.iterations, self.frames_started = iterations, 0
        self.total: int | None = None

    def frame_start(self, index: int, number: int, total: int | None) -> None:
        self.bar.stop()
        self.bar = ProgressBar(self.console, self.iterations, 0, disable=self.quiet)
        self.frames_started, self.total = self.frames_started + 1, total

    def estimate(self, estimate: Estimate) -> None:
        if self.frames_started == 1:  # once: later frames take about as long
            super().estimate(estimate)

    def started(self, message: str) -> None:
        self._stop_status()
        if self.frames_started == 1:
            self.notice(message + " per frame")
        self.bar.start()

    def frame_done(self, record: Any, eta_s: float) -> None:
        self.bar.stop()
        of = f"/{self.total}" if self.total is not None else ""
        self.notice(f"frame {record.index} ({self.frames_started}{of}) {record.seconds:.1f} s: style "
                    f"{short(record.style_loss)} temporal {short(record.temporal_loss)} ETA {duration(eta_s)}")

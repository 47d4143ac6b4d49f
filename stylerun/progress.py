"""Progress as a person sees it: a bar on a terminal, plain periodic lines anywhere else.

The bar keeps what matters readable at 80 columns (the iteration count, the loss and the
ETA, which comes from the engine's estimate over the whole run, scales included); when
stderr is a file or a pipe, a line is printed every tenth of the run or every 30 s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

from .figures import Figure, Listener, Panel, PanelRecord
from .optimizers import Progress


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


def status_text(p: Progress) -> str:
    """The numbers of one iteration, short enough for an 80-column line beside a bar."""
    rate = p.evaluations / p.elapsed if p.elapsed > 0 else 0.0
    stage = f" scale {p.stage}/{p.stages}" if p.stages > 1 else ""
    return f"loss {p.loss:.3g} (c {p.content_loss:.2g} s {p.style_loss:.2g}) {rate:.2f} ev/s{stage}"


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
        self.rich = RichProgress(
            TextColumn("[bold]stylizing"), BarColumn(bar_width=16), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn(),
            console=self.console, transient=False,
        )
        self.rich.start()
        self.task = self.rich.add_task("stylizing", total=self.total, completed=self.completed, info="", eta="?")

    def update(self, p: Progress) -> None:
        if self.disable:
            return
        self.last_iteration = p.iteration
        if self.rich is not None:
            self.rich.update(self.task, completed=p.iteration, info=status_text(p), eta=duration(p.eta_s))
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

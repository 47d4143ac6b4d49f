"""Progress as a person sees it on a terminal: a Rich bar and a spinner, plain lines anywhere else.

What is said, and when, is `lines.py`'s; this module only draws it. The bar keeps what
matters readable at 80 columns (the iteration count, the loss and the ETA, which comes
from the engine's estimate over the whole run, scales included); when stderr is a file
or a pipe, the lines of `lines.PlainBar` are printed instead.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

from stylerun.engine.optimizers import Progress
from stylerun.lines import PlainBar, duration, status_text


def say(message: str, console: Console) -> None:
    """One line on the console, never wrapped, never read as markup or emoji codes: a file named
    ``out[red].png`` or ``:smile:.jpg`` prints as it is named."""
    console.print(message, soft_wrap=True, markup=False, highlight=False, emoji=False)


def task_bars(console: Console, disable: bool) -> RichProgress:
    """Bars of many tasks (jobs of a batch, panels of the figures): name, bar, done/all, a line of info
    (the task's ``info`` field) and the time so far."""
    return RichProgress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console, disable=disable,
                        transient=False)


class ProgressBar(PlainBar):
    """A transfer's progress: a Rich bar on a terminal, periodic plain lines otherwise."""

    def __init__(self, console: Console, total: int, completed: int = 0, disable: bool = False):
        super().__init__(lambda message: say(message, console), total, completed, disable)
        self.console, self.terminal = console, console.is_terminal
        self.rich: RichProgress | None = None

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
        if self.rich is None:
            super().update(p)
            return
        self.last_iteration = p.iteration
        what = f"scale {p.stage}/{p.stages}" if p.stages > 1 else "stylizing"
        self.rich.update(self.task, description=what, completed=p.iteration,
                         info=status_text(replace(p, stages=1), rate=False), eta=duration(p.eta_s))

    def stop(self) -> None:
        if self.rich is not None:
            self.rich.stop()
            self.rich = None


class Terminal:
    """A `lines.Surface` on a Rich console: a bar and a loading spinner when it is a terminal."""

    def __init__(self, console: Console):
        self.console = console

    def say(self, message: str) -> None:
        say(message, self.console)

    def bar(self, total: int, completed: int = 0, disable: bool = False) -> ProgressBar:
        return ProgressBar(self.console, total, completed, disable)

    def spinner(self, text: str) -> Any:
        if not self.console.is_terminal:
            return None
        status = self.console.status(text)
        status.start()
        return status

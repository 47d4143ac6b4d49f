"""A run's events as plain lines of text, with no terminal library: what the Python API prints
with ``progress=True``, and the words the console (`console.py`) draws its bars around.

A listener writes on a *surface*: `Plain` prints lines on a stream; the console's surface
draws a Rich bar and a spinner on a terminal instead. The listeners here decide what is
said and when; a surface decides only how it looks.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from stylerun.engine.estimate import Estimate
from stylerun.engine.optimizers import Progress
from stylerun.engine.run import CallbackListener, Outcome
from stylerun.errors import mention_options


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


class PlainBar:
    """A transfer's progress as a line every tenth of the run, or every 30 s, whichever comes first."""

    PLAIN_EVERY_S = 30.0

    def __init__(self, say: Callable[[str], None], total: int, completed: int = 0, disable: bool = False):
        self.say, self.total, self.completed, self.disable = say, total, completed, disable
        self.last_line = -math.inf
        self.last_iteration = completed

    def start(self) -> None:
        """Lines need no start; a bar that draws does."""

    def update(self, p: Progress) -> None:
        if self.disable:
            return
        self.last_iteration = p.iteration
        now = time.monotonic()
        step = max(1, self.total // 10)
        if p.iteration == self.total or p.iteration % step == 0 or now - self.last_line >= self.PLAIN_EVERY_S:
            self.last_line = now
            self.say(f"iteration {p.iteration}/{p.iterations} {status_text(p)} ETA {duration(p.eta_s)}")

    def stop(self) -> None:
        """Nothing to take down."""


class Surface(Protocol):
    """Where a listener's lines go and how progress looks there."""

    def say(self, message: str) -> None: ...

    def bar(self, total: int, completed: int = 0, disable: bool = False) -> PlainBar: ...

    def spinner(self, text: str) -> Any: ...


class Plain:
    """Lines on a text stream (stderr unless given), nothing drawn: safe in any log, notebook or pipe."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream

    def say(self, message: str) -> None:
        print(message, file=self.stream or sys.stderr, flush=True)  # stderr as it is now: tests replace it

    def bar(self, total: int, completed: int = 0, disable: bool = False) -> PlainBar:
        return PlainBar(self.say, total, completed, disable)

    def spinner(self, text: str) -> None:
        return None


class RunLines(CallbackListener):
    """The run engine's events on a surface: the start, the estimate and notices as one line each,
    progress as the surface's bar, a spinner while loading where the surface has one.

    `spell` names options in messages (``size`` -> ``--size``), `setting` writes an option
    with a value (``--size 256``, ``size=256``); `callback` also gets every `Progress`.
    """

    def __init__(self, surface: Surface, total: int, completed: int = 0, *, quiet: bool = False,
                 spell: Callable[[str], str] = str, setting: Callable[[str, Any], str] = "{}={}".format,
                 callback: Callable[[Progress], None] | None = None):
        super().__init__(callback)
        self.surface, self.quiet, self.spell, self.setting = surface, quiet, spell, setting
        self.bar = surface.bar(total, completed, disable=quiet)
        self.status = None

    def loading(self) -> None:
        if not self.quiet:  # one line at 80 columns, spinner included
            self.status = self.surface.spinner("loading images and model (a first run with new layers exports it)")

    def started(self, message: str) -> None:
        self.loaded()
        self.notice(message)
        self.bar.start()

    def notice(self, message: str) -> None:
        if not self.quiet:
            self.surface.say(mention_options(message, self.spell))

    def estimate(self, estimate: Estimate) -> None:
        self.notice(estimate_text(estimate, self.setting))

    def warning(self, message: str) -> None:
        self.surface.say(f"stylerun: warning: {mention_options(message, self.spell)}")

    def progress(self, progress: Progress) -> None:
        self.bar.update(progress)
        super().progress(progress)

    def loaded(self) -> None:
        """Loading is over: the spinner goes."""
        if self.status is not None:
            self.status.stop()
            self.status = None

    def close(self) -> None:
        self.loaded()
        self.bar.stop()


class VideoLines(RunLines):
    """A video's progress: each frame's iterations as a bar, and a line per finished frame with its
    terms, its time and the ETA of the frames still to come."""

    def __init__(self, surface: Surface, iterations: int, **kwargs: Any):
        super().__init__(surface, iterations, **kwargs)
        self.iterations, self.frames_started = iterations, 0
        self.total: int | None = None

    def frame_start(self, index: int, number: int, total: int | None) -> None:
        self.bar.stop()
        self.bar = self.surface.bar(self.iterations, 0, disable=self.quiet)
        self.frames_started, self.total = self.frames_started + 1, total

    def estimate(self, estimate: Estimate) -> None:
        if self.frames_started == 1:  # once: later frames take about as long
            super().estimate(estimate)

    def started(self, message: str) -> None:
        self.loaded()
        if self.frames_started == 1:
            self.notice(message + " per frame")
        self.bar.start()

    def frame_done(self, record: Any, eta_s: float) -> None:
        self.bar.stop()
        of = f"/{self.total}" if self.total is not None else ""
        self.notice(f"frame {record.index} ({self.frames_started}{of}) {record.seconds:.1f} s: style "
                    f"{short(record.style_loss)} temporal {short(record.temporal_loss)} ETA {duration(eta_s)}")

"""`stylerun figures`: the paper's figures as contact sheets; a bar for the panels, one for the running panel."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer
from rich.console import Console

from stylerun import figures
from stylerun.cli.common import at_once, err
from stylerun.cli.help import usage
from stylerun.console import say, task_bars
from stylerun.engine.optimizers import Progress
from stylerun.errors import StylerunError
from stylerun.figures import Figure, FigureListener, Panel, PanelRecord
from stylerun.lines import duration, short, status_text
from stylerun.options import INITS, TransferOptions, spec
from stylerun.signals import StopSignals


def figures_command(
    content: Path = typer.Argument(..., help="Content photo (Figures 1, 3 and 4).", metavar="CONTENT"),
    styles: list[Path] = typer.Argument(..., help="Style paintings: Figure 3 uses each, Figures 1 and 4 the first.",
                                        metavar="STYLE..."),
    out: Path = typer.Option(Path("figures"), "--out", "-o", help="Folder for the sheets, panels/ and report.md.",
                             metavar="DIR"),
    size: int = typer.Option(256, "--size", help="Longest side of every panel in pixels.", metavar="PIXELS"),
    iterations: int = typer.Option(200, "--iterations", "-n", help="L-BFGS-B iterations per panel.", metavar="N"),
    which: str = typer.Option(",".join(figures.FIGURES), "--which", show_default=False,
                              help=f"Comma-separated figures to make, of {', '.join(figures.FIGURES)}; default all.",
                              metavar="FIGURES"),
    ratios: str = typer.Option(",".join(f"{r:g}" for r in figures.SWEEP_RATIOS), "--ratios", show_default=False,
                               help="alpha/beta values of the Figure 4 sweep (beta = 1); default "
                                    f"{', '.join(short(r) for r in figures.SWEEP_RATIOS)}.", metavar="R,R,..."),
    sweep_init: str = typer.Option("random", "--sweep-init", help=f"Start of the Figure 4 panels: {', '.join(INITS)}.",
                                   metavar=spec("init").metavar),
    seed: int = typer.Option(0, "--seed", help="Seed of the white-noise inits.", metavar="N"),
    device: str = typer.Option("auto", "--device", help=spec("device").help, metavar=spec("device").metavar),
    threads: int | None = typer.Option(None, "--threads", help=spec("threads").help, metavar="N"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Replicate the paper's figures as labelled contact sheets in DIR, with DIR/report.md.

    Finished panels (DIR/panels/NAME.png + NAME.json with the same settings) are kept, so
    running the same command again resumes an interrupted run.
    """
    try:
        sweep = [float(r) for r in ratios.split(",") if r.strip()]
    except ValueError:
        raise StylerunError(f"--ratios must be numbers separated by commas, got '{ratios}'") from None
    if not sweep or not all(r >= 0 and r != float("inf") for r in sweep):
        raise StylerunError(f"--ratios must be finite numbers >= 0, got '{ratios}'")
    machine = TransferOptions(device=device, threads=threads)
    plan = figures.plan(content, styles, figures.parse_which(which), size=size, iterations=iterations, seed=seed,
                        ratios=sweep, sweep_init=sweep_init)
    out.mkdir(parents=True, exist_ok=True)
    # the first signal ends the running panel within its evaluation, storing nothing of it
    with at_once(f"interrupted; finished panels are kept in {out / 'panels'}, run the same command to resume"), \
            StopSignals() as stopper, FigureBars(err, quiet) as bars:
        figures.make_figures(plan, out, device=machine.device, threads=machine.threads, listener=bars,
                             stop=stopper.requested)
    if not quiet:
        say(f"wrote {out / 'report.md'}", err)


class FigureBars(FigureListener):
    """`stylerun figures` progress: panels done over all, and the running panel's iterations."""

    def __init__(self, console: Console, quiet: bool):
        self.console, self.quiet = console, quiet
        self.bar = task_bars(console, disable=quiet)
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


def register(app: typer.Typer) -> None:
    """Add `stylerun figures` to the app."""
    app.command("figures", cls=usage("[OPTIONS] CONTENT STYLE... [-o DIR]"))(figures_command)

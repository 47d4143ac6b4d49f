"""The `stylerun` command: a thin Typer layer over the Python API.

Every `StylerunError` becomes one line on stderr and exit status 2; Ctrl-C or SIGTERM
during a transfer saves the best image so far and exits with 130.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import __version__, figures
from .errors import StylerunError
from .export import cached_export, export_vgg
from .forward import LayerSet
from .images import check_output_path, save_image
from .stylize import INITS, Progress as StepProgress, StyleLoss, initial_image, intermediate_path, optimize
from .vgg import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, POOLINGS, format_layer_weights, parse_layer_weights
from .weights import load_weights

app = typer.Typer(
    name="stylerun",
    help=(
        "Turn a photo into a painting (Gatys, Ecker & Bethge) on ONNX Runtime alone.\n\n"
        "Example: stylerun transfer photo.jpg painting.jpg -o out.png --size 512"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = Console(stderr=True)

LAYER_HELP = "NAME[:WEIGHT],... with names conv1_1..conv5_4, relu1_1..relu5_4, pool1..pool5; a bare name gets 1/N."
CONTENT_LAYERS_OPT = typer.Option(
    format_layer_weights(DEFAULT_CONTENT_LAYERS), "--content-layers", help=f"Content layers and weights. {LAYER_HELP}"
)
STYLE_LAYERS_OPT = typer.Option(
    format_layer_weights(DEFAULT_STYLE_LAYERS), "--style-layers", help=f"Style layers and weights. {LAYER_HELP}"
)
POOLING_OPT = typer.Option("max", "--pooling", help=f"Pooling in VGG19: {' or '.join(POOLINGS)}.")
WEIGHTS_OPT = typer.Option(None, "--weights", help="VGG19 weight file to use instead of the bundled Caffe weights.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stylerun {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Turn a photo into a painting (Gatys, Ecker & Bethge) on ONNX Runtime alone."""


def _layer_set(content_layers: str, style_layers: str, pooling: str) -> tuple[dict, dict, LayerSet]:
    content = parse_layer_weights(content_layers, "--content-layers")
    style = parse_layer_weights(style_layers, "--style-layers")
    return content, style, LayerSet.of(content, style, pooling)


@app.command("export-vgg")
def export_vgg_command(
    output: Path = typer.Option(..., "-o", "--output", help="Model file to write (NAME.onnx; NAME.targets.onnx goes beside it)."),
    content_layers: str = CONTENT_LAYERS_OPT,
    style_layers: str = STYLE_LAYERS_OPT,
    pooling: str = POOLING_OPT,
    weights: Path | None = WEIGHTS_OPT,
) -> None:
    """Export VGG19, cut at the deepest layer asked for, as an ONNX loss-and-gradient model.

    The model takes the image, the targets, per-layer weights, alpha and beta as inputs
    (see the README's model contract), so one export serves every image and weighting.
    """
    _, _, layers = _layer_set(content_layers, style_layers, pooling)
    vgg = load_weights(weights)
    err.print(vgg.describe())
    files = export_vgg(vgg, layers, output)
    err.print(f"wrote {files.loss} and {files.targets} (VGG19 up to {layers.deepest}, {layers.pooling} pooling)")


@app.command("transfer")
def transfer_command(
    content: Path = typer.Argument(..., help="Content photo."),
    style: Path = typer.Argument(..., help="Style painting."),
    output: Path = typer.Option(..., "-o", "--output", help="Output image (.png, .jpg, ...)."),
    size: int = typer.Option(512, "--size", help="Longest side of the output in pixels; the style image is resized to match."),
    content_layers: str = CONTENT_LAYERS_OPT,
    style_layers: str = STYLE_LAYERS_OPT,
    alpha: float = typer.Option(1e-6, "--alpha", help="Content weight (the seed's alpha)."),
    beta: float = typer.Option(1.0, "--beta", help="Style weight (the seed's beta)."),
    init: str = typer.Option("content", "--init", help=f"Starting image: {', '.join(INITS)}."),
    iterations: int = typer.Option(500, "--iterations", "-n", help="L-BFGS-B iterations."),
    save_every: int = typer.Option(-1, "--save-every", help="Also save OUTPUT_NNNN.ext every N iterations; -1 for never."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random init."),
    pooling: str = POOLING_OPT,
    model: Path | None = typer.Option(None, "--model", help="Model from export-vgg; default: export once into the cache."),
    weights: Path | None = WEIGHTS_OPT,
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available, else CPU), cpu or cuda."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for onnxruntime (default: all cores)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Paint CONTENT in the style of STYLE and write the result to OUTPUT."""
    check_output_path(output)
    if save_every == 0 or save_every < -1:
        raise StylerunError(f"--save-every must be a positive number of iterations or -1, got {save_every}")
    if init not in INITS:
        raise StylerunError(f"unknown --init '{init}'; use one of: {', '.join(INITS)}")
    content_w, style_w, layers = _layer_set(content_layers, style_layers, pooling)
    if model is None:
        with err.status("exporting VGG19 (first run with these layers)..."):
            cached_export(layers, weights)
    loss = StyleLoss(content, style, size=size, alpha=alpha, beta=beta, content_layers=content_w,
                     style_layers=style_w, pooling=pooling, weights=weights, device=device, model=model,
                     threads=threads)
    h, w, _ = loss.shape
    if not quiet:
        err.print(f"{w}x{h}, {iterations} iterations on {loss.provider}")

    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4g} (content {task.fields[content]:.3g}, style {task.fields[style]:.3g})"),
        TextColumn("{task.fields[rate]:.2f} eval/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=err, disable=quiet,
    )

    def on_step(p: StepProgress) -> None:
        rate = p.evaluations / p.elapsed if p.elapsed > 0 else 0.0
        bar.update(task, completed=p.iteration, loss=p.loss, content=p.content_loss, style=p.style_loss, rate=rate)
        if save_every > 0 and p.iteration % save_every == 0:
            save_image(p.image, intermediate_path(output, p.iteration))

    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with bar:
            task = bar.add_task("stylizing", total=iterations, loss=float("nan"), content=float("nan"),
                                style=float("nan"), rate=0.0)
            result = optimize(loss, initial_image(init, loss, seed), iterations, on_step)
    finally:
        signal.signal(signal.SIGTERM, previous)
    save_image(result.image, output)
    if result.error:
        err.print(f"stylerun: error: {result.error}; the best finite image (iteration {result.iterations}) is in {output}")
        raise typer.Exit(3)
    if result.interrupted:
        err.print(f"interrupted at iteration {result.iterations}; the best image so far is in {output}")
        raise typer.Exit(130)
    if not quiet:
        err.print(f"wrote {output} (loss {result.loss:.4g}, {result.evaluations} evaluations, {result.elapsed:.1f} s)")


@app.command("figures")
def figures_command(
    content: Path = typer.Argument(..., help="Content photo (Figures 1, 3 and 4)."),
    styles: list[Path] = typer.Argument(..., help="Style paintings: Figure 3 uses each, Figures 1 and 4 the first."),
    out: Path = typer.Option(Path("figures"), "--out", "-o", help="Folder for the sheets, panels/ and report.md."),
    size: int = typer.Option(256, "--size", help="Longest side of every panel in pixels."),
    iterations: int = typer.Option(200, "--iterations", "-n", help="L-BFGS-B iterations per panel."),
    which: str = typer.Option(",".join(figures.FIGURES), "--which", help="Comma-separated figures to make."),
    ratios: str = typer.Option(",".join(f"{r:g}" for r in figures.SWEEP_RATIOS), "--ratios",
                               help="alpha/beta values of the Figure 4 sweep (beta = 1)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the white-noise inits."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available, else CPU), cpu or cuda."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for onnxruntime (default: all cores)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Replicate the paper's figures as labelled contact sheets in OUT, with OUT/report.md.

    Finished panels (OUT/panels/NAME.png + NAME.json with the same settings) are kept, so
    running the same command again resumes an interrupted run.
    """
    try:
        sweep = [float(r) for r in ratios.split(",") if r.strip()]
    except ValueError:
        raise StylerunError(f"--ratios must be numbers separated by commas, got '{ratios}'") from None
    if not sweep or not all(r >= 0 and r != float("inf") for r in sweep):
        raise StylerunError(f"--ratios must be finite numbers >= 0, got '{ratios}'")
    plan = figures.plan(content, styles, figures.parse_which(which), size=size, iterations=iterations, seed=seed,
                        ratios=sweep)
    out.mkdir(parents=True, exist_ok=True)

    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=err, disable=quiet,
    )

    class Bars(figures.Listener):
        def start(self, figs, todo):
            total = sum(len(f.panels) for f in figs)
            self.all = bar.add_task("panels", total=total, completed=total - todo, info=f"{todo} to run")
            self.one = None

        def panel_start(self, panel, index, total):
            if self.one is not None:
                bar.remove_task(self.one)
            self.one = bar.add_task(panel.name, total=panel.iterations, info="")

        def step(self, panel, p):
            rate = p.evaluations / p.elapsed if p.elapsed > 0 else 0.0
            bar.update(self.one, completed=p.iteration,
                       info=f"content {p.content_loss:.3g} style {p.style_loss:.3g}, {rate:.2f} eval/s")

        def panel_done(self, panel, record):
            bar.advance(self.all)
            bar.update(self.all, info=f"last: {panel.name} in {record.elapsed:.0f} s")
            if record.error:
                err.print(f"{panel.name}: {record.error}; kept the best finite image")

        def sheet_done(self, figure, path):
            if not quiet:
                err.print(f"wrote {path}")

    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with bar:
            figures.make_figures(plan, out, device=device, threads=threads, listener=Bars())
    except KeyboardInterrupt:
        err.print(f"interrupted; finished panels are kept in {out / 'panels'}, run the same command to resume")
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not quiet:
        err.print(f"wrote {out / 'report.md'}")


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    try:
        app()
    except StylerunError as exc:
        print(f"stylerun: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

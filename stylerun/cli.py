"""The `stylerun` command: a thin Typer layer over the Python API.

Every `StylerunError` becomes one line on stderr and exit status 2; Ctrl-C or SIGTERM
during a transfer saves the best image so far (and a checkpoint, if asked) and exits with
130 or 143.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import __version__, figures
from .checkpoint import Checkpoint, RunSettings, load_checkpoint, save_checkpoint
from .color import PRESERVE_COLOR
from .errors import StylerunError
from .export import export_vgg
from .forward import LayerSet
from .images import MAX_PIXELS, MAX_PIXELS_ENV, save_image
from .stylize import (
    ADAM_LEARNING_RATE,
    INITS,
    OPTIMIZERS,
    Result,
    StopSignals,
    StyleLoss,
    check_style_blend,
    initial_image,
    intermediate_path,
    optimize,
    resize_image,
    scale_plan,
)
from .stylize import Progress as StepProgress
from .vgg import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, POOLINGS, format_layer_weights, parse_layer_weights
from .weight_formats import detect_format
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
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Turn a photo into a painting (Gatys, Ecker & Bethge) on ONNX Runtime alone."""


def _layer_set(content_layers: str, style_layers: str, pooling: str) -> tuple[dict, dict, LayerSet]:
    content = parse_layer_weights(content_layers, "--content-layers")
    style = parse_layer_weights(style_layers, "--style-layers")
    return content, style, LayerSet.of(content, style, pooling)


@app.command("export-vgg")
def export_vgg_command(
    output: Path = typer.Option(
        ..., "-o", "--output", help="Model file to write (NAME.onnx; NAME.targets.onnx goes beside it)."
    ),
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


#: Options a resumed run may change; everything else comes from the checkpoint.
RESUME_OVERRIDES = ("output", "device", "threads", "quiet", "checkpoint", "force", "resume")


@app.command("transfer")
def transfer_command(
    ctx: typer.Context,
    content: Path | None = typer.Argument(None, help="Content photo (not with --resume).", show_default=False),
    style: list[Path] | None = typer.Argument(
        None, help="Style painting(s); several are blended (see --style-blend). Not with --resume.",
        show_default=False),
    output: Path | None = typer.Option(None, "-o", "--output", help="Output image (.png, .jpg, ...).",
                                       show_default=False),
    size: int = typer.Option(512, "--size",
                             help="Longest side of the output in pixels; the style image is resized to match."),
    content_layers: str = CONTENT_LAYERS_OPT,
    style_layers: str = STYLE_LAYERS_OPT,
    alpha: float = typer.Option(1e-6, "--alpha", help="Content weight (the seed's alpha)."),
    beta: float = typer.Option(1.0, "--beta", help="Style weight (the seed's beta)."),
    init: str = typer.Option("content", "--init", help=f"Starting image: {', '.join(INITS)}."),
    iterations: int = typer.Option(500, "--iterations", "-n", help="Iterations (L-BFGS-B iterations, or Adam steps)."),
    save_every: int = typer.Option(-1, "--save-every",
                                   help="Also save OUTPUT_NNNN.ext every N iterations; -1 for never."),
    checkpoint_every: int = typer.Option(
        -1, "--checkpoint-every",
        help="Write a checkpoint every N iterations (and on Ctrl-C/SIGTERM) to go on with --resume; -1 for never.",
    ),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Checkpoint file (default: OUTPUT.ckpt.npz).",
                                           show_default=False),
    resume: Path | None = typer.Option(
        None, "--resume", show_default=False,
        help="Go on from a checkpoint to its total iteration count; inputs and settings come from the checkpoint "
             "(-o, --device, --threads, --checkpoint may be changed).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random init."),
    pooling: str = POOLING_OPT,
    background: str = typer.Option("white", "--background",
                                   help="Colour transparent pixels are composited on: a name, #rrggbb or rgb(r,g,b)."),
    max_pixels: int | None = typer.Option(
        None, "--max-pixels", show_default=False,
        help=f"Refuse images with more pixels than this (default {MAX_PIXELS:,}, or ${MAX_PIXELS_ENV}).",
    ),
    force: bool = typer.Option(False, "--force", help="Allow the output to overwrite the content or style image."),
    model: Path | None = typer.Option(None, "--model",
                                      help="Model from export-vgg; default: export once into the cache."),
    weights: Path | None = WEIGHTS_OPT,
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available, else CPU), cpu or cuda."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for onnxruntime (default: all cores)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    style_blend: str | None = typer.Option(
        None, "--style-blend", show_default=False,
        help="Weights of several STYLE images, e.g. 0.7,0.3 (normalized to sum 1; default equal)."),
    style_scale: float | None = typer.Option(
        None, "--style-scale", show_default=False,
        help="Style size relative to the output: its longest side becomes S x the output's, keeping its aspect "
             "(default: stretched to the output's size). Larger S, larger brush strokes."),
    preserve_color: str = typer.Option(
        "none", "--preserve-color",
        help=f"Keep the photo's colours: {', '.join(PRESERVE_COLOR)} (luminance: style only the luminance; "
             "histogram: recolour the style to the photo's palette first)."),
    tv_weight: float = typer.Option(0.0, "--tv-weight", help="Total-variation weight: smooths the result."),
    optimizer: str = typer.Option("lbfgs", "--optimizer", help=f"Optimizer: {' or '.join(OPTIMIZERS)}."),
    learning_rate: float = typer.Option(ADAM_LEARNING_RATE, "--learning-rate",
                                        help="Adam's step, in 0..255 pixel units."),
    lbfgs_memory: int = typer.Option(10, "--lbfgs-memory", help="L-BFGS-B's history length (curvature pairs)."),
    scales: int = typer.Option(1, "--scales",
                               help="Optimize coarse to fine at SIZE/2^(N-1) ... SIZE, iterations split evenly."),
    content_mask: list[Path] | None = typer.Option(
        None, "--content-mask", show_default=False,
        help="Region guidance: a mask image (white = in) per STYLE, in order, saying where in the output that "
             "style goes."),
    style_mask: list[Path] | None = typer.Option(
        None, "--style-mask", show_default=False,
        help="Region guidance: a mask per STYLE saying which part of that style image to take the style from."),
) -> None:
    """Paint CONTENT in the style of STYLE (one or more) and write the result to OUTPUT.

    Ctrl-C or SIGTERM stops at the next evaluation and writes the best image so far (and a
    checkpoint, with --checkpoint-every). Exit status: 0 done, 2 bad input or option,
    3 the loss stopped being finite, 130/143 interrupted by SIGINT/SIGTERM.
    """
    _log_warnings_to(err)
    start_image, lbfgs, start_loss = None, None, math.inf
    first_iteration, history = 0, []
    if resume is not None:
        given = [name for name in ctx.params if name not in RESUME_OVERRIDES
                 and getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")]
        if given:
            flags = ", ".join(dict.fromkeys("CONTENT/STYLE" if n in ("content", "style") else "--" + n.replace("_", "-")
                                            for n in given))
            raise StylerunError(f"--resume takes the inputs and settings from the checkpoint; leave out {flags} "
                                "(only -o, --device, --threads, --checkpoint and --quiet may be given)")
        state = load_checkpoint(resume)
        settings = state.settings
        settings.output = str(output.resolve()) if output is not None else settings.output
        settings.device, settings.threads = device, threads
        settings.checkpoint = str((checkpoint or resume).resolve())
        start_image, first_iteration, history = state.image, state.iteration, list(state.history)
        lbfgs, start_loss = state.lbfgs, state.loss
        if state.lbfgs_dropped:
            logging.getLogger("stylerun").warning("%s; L-BFGS-B restarts its history", state.lbfgs_dropped)
        inputs = (state.content, state.style)
    else:
        if content is None or not style:
            raise StylerunError("give a CONTENT and a STYLE image (or --resume CHECKPOINT)")
        if output is None:
            raise StylerunError("give an output image with -o OUTPUT (e.g. -o out.png)")
        style_paths = [str(p.resolve()) for p in style]
        settings = RunSettings(
            content=str(content.resolve()), style=style_paths[0] if len(style_paths) == 1 else style_paths,
            output=str(output.resolve()), size=size,
            alpha=alpha, beta=beta, content_layers=content_layers, style_layers=style_layers, pooling=pooling,
            init=init, iterations=iterations, seed=seed, weights=str(weights.resolve()) if weights else None,
            model=str(model.resolve()) if model else None, device=device, threads=threads,
            background=background, max_pixels=max_pixels, save_every=save_every, checkpoint_every=checkpoint_every,
            checkpoint=str(checkpoint.resolve()) if checkpoint is not None else None,
            lbfgs_memory=lbfgs_memory, style_blend=None if style_blend is None
            else check_style_blend(style_blend, len(style)), style_scale=style_scale,
            preserve_color=preserve_color, tv_weight=tv_weight, optimizer=optimizer, learning_rate=learning_rate,
            scales=scales,
            content_masks=[str(p.resolve()) for p in content_mask] if content_mask else None,
            style_masks=[str(p.resolve()) for p in style_mask] if style_mask else None,
        )
        inputs = (content, style)
    settings.validate(force=force)  # every option, before any image is decoded or model exported
    if settings.weights:  # an unsupported file is refused here, before any work
        weights_format = detect_format(settings.weights)
        if not quiet:
            _say(f"weights: {settings.weights} ({weights_format})")
    out = output if output is not None else Path(settings.output)
    ckpt_path = settings.checkpoint_path() if settings.checkpoint_every > 0 else None
    total = settings.iterations

    try:
        with err.status("loading images and model (the first run with these layers exports VGG19)...") \
                if not quiet else nullcontext():
            common = dict(alpha=settings.alpha, beta=settings.beta, content_layers=settings.content_layers,
                          style_layers=settings.style_layers, pooling=settings.pooling, weights=settings.weights,
                          device=settings.device, model=settings.model, threads=settings.threads,
                          background=settings.background, max_pixels=settings.max_pixels,
                          style_blend=settings.style_blend, style_scale=settings.style_scale,
                          preserve_color=settings.preserve_color, tv_weight=settings.tv_weight,
                          content_masks=settings.content_masks, style_masks=settings.style_masks)
            loss = StyleLoss(*inputs, size=None if resume else settings.size, **common)
            if settings.scales > 1:
                scale_plan(settings.size, settings.scales, total, loss.shape)  # the coarsest image is big enough
            if start_image is None and settings.scales == 1:
                start_image = loss.to_variable(initial_image(settings.init, loss, settings.seed))
    except KeyboardInterrupt:
        _say("stylerun: interrupted before the first iteration; nothing written")
        raise typer.Exit(130) from None

    def write_checkpoint(image, iteration: int, value: float, state) -> None:
        save_checkpoint(ckpt_path, Checkpoint(settings, iteration, image, loss.content_image, loss.style_images,
                                              value, np.asarray(history, dtype=np.float64), state))

    h, w, _ = loss.shape
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4g} (content {task.fields[content]:.3g}, style {task.fields[style]:.3g})"),
        TextColumn("{task.fields[rate]:.2f} eval/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=err, disable=quiet,
    )

    current = {"loss": loss}  # the loss of the stage running now (--scales)

    def on_step(p: StepProgress) -> None:
        history.append(p.loss)
        rate = p.evaluations / p.elapsed if p.elapsed > 0 else 0.0
        bar.update(task, completed=p.iteration, loss=p.loss, content=p.content_loss, style=p.style_loss, rate=rate)
        # a full disk must not end the run: say so and go on, the final image is what matters
        if settings.save_every > 0 and p.iteration % settings.save_every == 0:
            _keep_going(save_image, current["loss"].to_rgb(p.image), intermediate_path(out, p.iteration))
        if ckpt_path is not None and p.iteration % settings.checkpoint_every == 0:
            _keep_going(write_checkpoint, p.image, p.iteration, p.loss, p.lbfgs_state())

    with StopSignals() as stopper:
        if resume is not None and not quiet:
            how = ("with fresh Adam moments" if settings.optimizer == "adam"
                   else "where it stopped" if lbfgs is not None else "with a fresh L-BFGS-B history")
            _say(f"resuming {resume} at iteration {first_iteration} of {total}, {how}")
        if not quiet:
            _say(f"{w}x{h}, {total} iterations on {loss.provider}")
        with bar:
            task = bar.add_task("stylizing", total=total, completed=first_iteration, loss=float("nan"),
                                content=float("nan"), style=float("nan"), rate=0.0)
            stopped: Result | None = None
            if start_image is None:  # --scales N: the coarse stages, each from the last one upsampled
                previous = None
                for stage_size, end in scale_plan(settings.size, settings.scales, total)[:-1]:
                    current["loss"] = coarse = StyleLoss(*inputs, size=stage_size, **common)
                    begin = first_iteration
                    start = (initial_image(settings.init, coarse, settings.seed) if previous is None
                             else resize_image(previous, coarse.shape))
                    stage = optimize(coarse.objective, coarse.to_variable(start), end, on_step,
                                     settings.lbfgs_memory, first_iteration=begin, stop=stopper.requested,
                                     optimizer=settings.optimizer, learning_rate=settings.learning_rate)
                    previous, first_iteration = coarse.to_rgb(stage.image), end
                    if stage.interrupted or stage.error:
                        stopped, first_iteration = stage, stage.iterations
                        break
                current["loss"] = loss
                start_image = loss.to_variable(resize_image(previous, loss.shape))
            result = optimize(loss.objective, start_image, total if stopped is None else first_iteration, on_step,
                              settings.lbfgs_memory, first_iteration=first_iteration, stop=stopper.requested,
                              resume=lbfgs, init_loss=start_loss, optimizer=settings.optimizer,
                              learning_rate=settings.learning_rate)
            if stopped is not None:
                result.interrupted, result.error = stopped.interrupted, stopped.error
        stopper.hurry = False  # from here on a signal must not cut the writing short
        wrote = math.isfinite(result.loss)  # False only when not one evaluation was finite
        if wrote:
            _save_result(loss.to_rgb(result.image), out)
        if ckpt_path is not None and result.interrupted and math.isfinite(result.loss):
            write_checkpoint(result.image, result.iterations, result.loss, result.lbfgs)
    resume_hint = f"; go on with: stylerun transfer --resume {ckpt_path}" if ckpt_path is not None else ""
    if result.error:
        where = (f"the best finite image (iteration {result.iterations}) is in {out}" if wrote
                 else "nothing written")
        _say(f"stylerun: error: {result.error}; {where}")
        raise typer.Exit(3)
    if result.interrupted:
        signum = stopper.signum or signal.SIGINT
        _say(f"stylerun: {signal.Signals(signum).name} at iteration {result.iterations} of {total}; "
             f"the best image so far (loss {result.loss:.4g}) is in {out}{resume_hint}")
        raise typer.Exit(128 + int(signum))
    if not quiet:
        _say(f"wrote {out} (loss {result.loss:.4g}, {result.evaluations} evaluations, {result.elapsed:.1f} s)")


def _say(message: str, console: Console | None = None) -> None:
    """One line on stderr, never wrapped, never read as markup."""
    (console or err).print(message, soft_wrap=True, markup=False, highlight=False)


def _keep_going(write, *args) -> None:
    try:
        write(*args)
    except OSError as exc:
        logging.getLogger("stylerun").warning("could not write an intermediate file (%s); going on", exc)


def _save_result(image, output: Path) -> None:
    """Write the result; if that fails (disk full, folder removed), rescue it into the temp folder."""
    try:
        save_image(image, output)
    except OSError as exc:
        rescue = Path(tempfile.gettempdir()) / f"stylerun-rescued-{os.getpid()}.png"
        save_image(image, rescue)
        raise StylerunError(f"cannot write {output} ({exc}); the result was saved to {rescue} instead") from None


class _ConsoleLogHandler(logging.Handler):
    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        _say(f"stylerun: warning: {record.getMessage()}", self.console)


def _log_warnings_to(console: Console) -> None:
    """Show the library's warnings (e.g. 'animated image: using the first frame') as one line each.

    Only where nobody configured logging: an application or test harness keeps its own.
    """
    logger = logging.getLogger("stylerun")
    if not logger.handlers and not logging.getLogger().handlers:
        logger.addHandler(_ConsoleLogHandler(console))
        logger.propagate = False


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
    sweep_init: str = typer.Option("random", "--sweep-init", help=f"Start of the Figure 4 panels: {', '.join(INITS)}."),
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
                        ratios=sweep, sweep_init=sweep_init)
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

"""The `stylerun` command: a thin Typer layer over the run engine.

The `transfer` flags are generated from the option model (`options.TransferOptions`):
one flag per option, in help panels by group, with the option's own help, metavar and
default. This module parses, calls the engine, renders progress and maps errors to exit
statuses: every `StylerunError` is one line on stderr and status 2; a non-finite loss is
3; Ctrl-C or SIGTERM during a transfer saves the best image so far (and a checkpoint, if
asked) and exits with 130 or 143.
"""

from __future__ import annotations

import inspect
import logging
import math
import signal
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from stylerun import figures
from stylerun.cli import batch as batch_cli
from stylerun.console import ConsoleListener, FigureBars, VideoConsole, outcome_text, say, short
from stylerun.engine.run import PATH_OPTIONS, Job, Outcome, resume_job, run
from stylerun.errors import OptionError, StylerunError, mention_options, one_line
from stylerun.jobs import batch
from stylerun.network.cache import LIMIT_ENV, Entry, cache_dir, cache_limit, clear, entries
from stylerun.network.export import export_vgg, layers_of, model_metadata
from stylerun.network.loss_graph import LayerSet
from stylerun.options import GROUPS, INITS, RESUMABLE, TransferOptions, memory_size, spec
from stylerun.signals import StopSignals
from stylerun.version import __version__
from stylerun.video import run as video
from stylerun.weights.bundled import bundled_path
from stylerun.weights.formats import load_weights


class _Help:
    """Help as a person reads it at any width: each docstring paragraph reflowed (Typer keeps
    the docstring's line breaks after the first paragraph), and no type beside a flag or an
    argument (``--force <bool>`` reads as if it took a value)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.help:
            self.help = paragraphs(self.help)

    def get_params(self, ctx: Any) -> list:
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) or param.param_type_name == "argument":
                param.display_type_rich = _no_type
        return params


def _no_type(ctx: Any) -> None:
    return None


class Group(_Help, typer.core.TyperGroup):
    """The `stylerun` group."""


class Command(_Help, typer.core.TyperCommand):
    """A command whose usage lines are written out: `usages`, the forms after its name (set with `usage`)."""

    usages: tuple[str, ...] = ()

    def format_usage(self, ctx: Any, formatter: Any) -> None:
        if not self.usages:
            super().format_usage(ctx, formatter)
            return
        for k, form in enumerate(self.usages):
            formatter.write_usage(ctx.command_path, form, prefix="Usage: " if k == 0 else "   or: ")


def usage(*forms: str) -> type[Command]:
    """A `Command` class with these usage lines (``[OPTIONS] CONTENT STYLE... -o FILE``)."""
    return type("Command", (Command,), {"usages": forms})


def paragraphs(text: str) -> str:
    """A docstring as help: each paragraph on one line, for the help to wrap at the terminal's width."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n"))


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
    cls=Group,
)
err = Console(stderr=True)


def flag(name: str) -> str:
    """An option's CLI spelling: ``lbfgs_memory`` -> ``--lbfgs-memory`` (or the flag its definition names)."""
    own = spec(name).flag if name in _OPTION_NAMES else None
    return own or "--" + name.replace("_", "-")


def spell(name: str) -> str:
    """How the CLI names an option in messages; names that are not options stay as they are."""
    if name == "output":
        return "-o"
    if name in _OPTION_NAMES or name in _OTHER_FLAGS:
        return flag(name)
    return name


_OPTION_NAMES = {f.name for f in fields(TransferOptions)}
#: Names of other commands' flags that library messages mention.
_OTHER_FLAGS = {"trust_checkpoint_paths", "resume", *(f.name for f in fields(video.VideoSettings))}


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


def option_parameter(name: str, panel: str | None = None) -> inspect.Parameter:
    """The Typer parameter of one transfer option, derived from its definition."""
    field_ = next(f for f in fields(TransferOptions) if f.name == name)
    opt = field_.metadata["option"]
    names = [flag(name), *([opt.short] if opt.short else [])]
    panel = panel or opt.group
    if opt.cli is bool:
        default = typer.Option(False, *names, help=opt.help, rich_help_panel=panel)
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=bool)
    if opt.cli is list:
        default = typer.Option(None, *names, help=opt.help + " Repeat it, once per style.", metavar=opt.metavar,
                               show_default=False, rich_help_panel=panel)
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=list[Path] | None)
    shown = opt.cli_default is not None
    default = typer.Option(opt.cli_default, *names, help=opt.help, metavar=opt.metavar,
                           show_default=opt.shown_default or shown, rich_help_panel=panel)
    annotation = opt.cli if shown else opt.cli | None
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _option_values(ctx: typer.Context, params: dict[str, Any], given_only: bool) -> dict[str, Any]:
    """The transfer options among the parsed parameters, by API name (only those given, if asked)."""
    values = {}
    for name in _OPTION_NAMES:
        if given_only and not _given(ctx, name):
            continue
        value = params[name]
        if isinstance(value, Path) or (isinstance(value, list) and value and isinstance(value[0], Path)):
            value = [str(p.resolve()) for p in value] if isinstance(value, list) else str(value.resolve())
        if isinstance(value, list) and not value:
            value = None
        values[name] = value
    return values


def _given(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return getattr(source, "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")


# --- transfer --------------------------------------------------------------------------------------


def transfer_command(ctx: typer.Context, **params: Any) -> None:
    """Paint CONTENT in the style of STYLE (one or more) and write the result to FILE.

    The first run with a set of layers exports VGG19 into the cache, which takes a few
    seconds. After the first iteration stylerun estimates the time of the whole run, and
    names a faster --size when it is long.

    Ctrl-C or SIGTERM stops within a moment (mid-evaluation) and writes the best image so far (and a
    checkpoint, with --checkpoint-every, to go on from with --resume).

    Exit status: 0 done, 2 bad input or option, 3 the loss stopped being finite, 130/143
    interrupted by SIGINT/SIGTERM.
    """
    _log_warnings_to(err)
    quiet = params["quiet"]
    if params["resume"] is not None:
        job, state = _resume(ctx, params)
    else:
        job, state = _new_job(ctx, params), None
    listener = CliListener(quiet, job.options.iterations, state.iteration if state else 0)
    with StopSignals() as stopper:
        listener.stopper = stopper
        if state is not None and not quiet:
            how = ("with fresh Adam moments" if job.options.optimizer == "adam"
                   else "where it stopped" if state.lbfgs is not None else "with a fresh L-BFGS-B history")
            say(f"resuming {params['resume']} at iteration {state.iteration} of {job.options.iterations}, {how}", err)
        try:
            outcome = run(job, listener, stopper.requested, resume=state)
        except KeyboardInterrupt:
            say("stylerun: interrupted before the first iteration; nothing written", err)
            raise typer.Exit(130) from None
        finally:
            listener.close()
    _report(outcome, job, stopper, quiet)


def _new_job(ctx: typer.Context, params: dict[str, Any]) -> Job:
    content, style, output = params["content"], params["style"], params["output"]
    if content is None or not style:
        raise StylerunError("give a CONTENT and a STYLE image (or --resume CHECKPOINT)")
    if output is None:
        raise StylerunError("give an output image with -o OUTPUT (e.g. -o out.png)")
    options = TransferOptions().replace(**_option_values(ctx, params, given_only=True))  # a preset under them
    return Job(str(content), tuple(str(s) for s in style), options, output)  # as given: messages name them so


def _resume(ctx: typer.Context, params: dict[str, Any]):
    allowed = set(RESUMABLE) | set(PATH_OPTIONS)
    given = [f.name for f in fields(TransferOptions) if _given(ctx, f.name) and f.name not in allowed]
    if params["content"] is not None or params["style"]:
        given.insert(0, "CONTENT/STYLE")
    if given:
        shown = ", ".join(n if n.isupper() else flag(n) for n in given)
        may = ", ".join(flag(n) for n in sorted(allowed))
        raise StylerunError(f"--resume takes the inputs and settings from the checkpoint; leave out {shown} "
                            f"(only -o, --quiet, {may} may be given)")
    overrides = _option_values(ctx, params, given_only=True)
    return resume_job(params["resume"], params["output"], trust_paths=params["trust_checkpoint_paths"],
                      **overrides)


def _report(outcome: Outcome, job: Job, stopper: StopSignals, quiet: bool) -> None:
    out = job.output
    if outcome.error:
        where = (f"the best finite image (iteration {outcome.iterations}) is in {out}" if outcome.written
                 else "nothing written")
        say(f"stylerun: error: {mention_options(outcome.error, spell)}; {where}", err)
        raise typer.Exit(3)
    if outcome.interrupted:
        signum = stopper.signum or signal.SIGINT
        # a stop inside the first evaluation leaves no loss: neither picture nor checkpoint is written
        hint = f"; go on with: stylerun transfer --resume {outcome.checkpoint}" if outcome.checkpoint and \
            outcome.written else ""
        where = (f"the best image so far (loss {outcome.loss:.4g}) is in {out}" if outcome.written
                 else "no evaluation had finished: nothing written")
        say(f"stylerun: {signal.Signals(signum).name} at iteration {outcome.iterations} of "
            f"{job.options.iterations}; {where}{hint}", err)
        raise typer.Exit(128 + int(signum))
    if not quiet:
        say(outcome_text(outcome), err)


class CliListener(ConsoleListener):
    """The engine's events on stderr, options named by their flags; no signal cuts the writing short."""

    def __init__(self, quiet: bool, total: int, completed: int):
        super().__init__(err, total, completed, quiet=quiet, spell=spell, setting=lambda name, value:
                         f"{spell(name)} {value}")
        self.stopper = None

    def finishing(self) -> None:
        if self.stopper is not None:
            self.stopper.hurry = False  # from here on a signal must not cut the writing short


def _transfer_signature() -> inspect.Signature:
    kw = inspect.Parameter.KEYWORD_ONLY
    first = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        inspect.Parameter("content", kw, annotation=Path | None, default=typer.Argument(
            None, help="Content photo (not with --resume).", show_default=False, metavar="CONTENT")),
        inspect.Parameter("style", kw, annotation=list[Path] | None, default=typer.Argument(
            None, help="Style painting(s); several are blended (see --style-blend). Not with --resume.",
            show_default=False, metavar="STYLE...")),
        inspect.Parameter("output", kw, annotation=Path | None, default=typer.Option(
            None, "-o", "--output", help="Output image (.png, .jpg, .tif, ...). Required.", show_default=False,
            metavar="FILE", rich_help_panel=GROUPS[0])),
    ]
    options = [option_parameter(f.name) for f in fields(TransferOptions)]
    last = [
        inspect.Parameter("resume", kw, annotation=Path | None, default=typer.Option(
            None, "--resume", metavar="CKPT", show_default=False, rich_help_panel="Run control",
            help="Go on from a checkpoint to its total iteration count; inputs and settings come from it. Without "
                 "-o the result is written beside the checkpoint.")),
        inspect.Parameter("trust_checkpoint_paths", kw, annotation=bool, default=typer.Option(
            False, "--trust-checkpoint-paths", rich_help_panel="Run control",
            help="With --resume: use the weights, model and mask files the checkpoint names (it is not trusted to "
                 "choose files otherwise).")),
        inspect.Parameter("quiet", kw, annotation=bool, default=typer.Option(
            False, "--quiet", "-q", help="No progress bar.", rich_help_panel="Run control")),
    ]
    return inspect.Signature([*first, *options, *last])


transfer_command.__signature__ = _transfer_signature()
app.command("transfer", cls=usage("[OPTIONS] CONTENT STYLE... -o FILE", "--resume CKPT [-o FILE] [OPTIONS]"))(
    transfer_command)


# --- export-vgg ------------------------------------------------------------------------------------


@app.command("export-vgg", cls=usage("[OPTIONS] -o FILE"))
def export_vgg_command(
    output: Path = typer.Option(
        ..., "-o", "--output", help="Model file to write (NAME.onnx; NAME.targets.onnx goes beside it).",
        metavar="FILE",
    ),
    content_layers: str = typer.Option(spec("content_layers").cli_default, "--content-layers",
                                       help=spec("content_layers").help, metavar="LAYERS"),
    style_layers: str = typer.Option(spec("style_layers").cli_default, "--style-layers",
                                     help=spec("style_layers").help, metavar="LAYERS",
                                     show_default=spec("style_layers").shown_default),
    pooling: str = typer.Option(spec("pooling").cli_default, "--pooling", help=spec("pooling").help,
                                metavar=spec("pooling").metavar),
    weights: Path | None = typer.Option(None, "--weights", help=spec("weights").help, metavar="FILE"),
    swap_red_blue: bool = typer.Option(False, "--swap-red-blue", help=spec("swap_red_blue").help),
) -> None:
    """Export VGG19, cut at the deepest layer asked for, as an ONNX loss-and-gradient model.

    The model takes the image, the targets, per-layer weights, alpha and beta as inputs
    (see the README's model contract), so one export serves every image and weighting.
    """
    options = TransferOptions(content_layers=content_layers, style_layers=style_layers, pooling=pooling,
                              weights=None if weights is None else str(weights), swap_red_blue=swap_red_blue)
    layers = LayerSet.of(options.content_layers, options.style_layers, options.pooling,
                         swap_red_blue=options.swap_red_blue)
    vgg = load_weights(options.weights)
    err.print(vgg.describe())
    files = export_vgg(vgg, layers, output)
    err.print(f"wrote {files.loss} and {files.targets} (VGG19 up to {layers.deepest}, {layers.pooling} pooling)")


# --- cache ---------------------------------------------------------------------------------------

cache_app = typer.Typer(
    name="cache", cls=Group, no_args_is_help=True, add_completion=False,
    help="""List or clear the models stylerun keeps for the next run.

    The first run with a set of layers exports VGG19 into the cache (~/.cache/stylerun, or
    $STYLERUN_CACHE); later runs reuse it. The cache keeps itself under 1 GB ($STYLERUN_CACHE_MAX,
    e.g. 500M or 5G) by removing the models used least recently.""",
)
app.add_typer(cache_app)


@cache_app.command("list", cls=usage("[OPTIONS]"))
def cache_list_command() -> None:
    """List the cached models: their layers, pooling, size and when each was last used."""
    directory, found, limit = cache_dir(), entries(), cache_limit()
    total = sum(e.size for e in found)
    out = Console()
    say(f"{directory}: {len(found)} model{'s' if len(found) != 1 else ''}, {size_text(total)} "
        f"(limit {size_text(limit)}, ${LIMIT_ENV})", out)
    if not found:
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name, justify in (("last used", "right"), ("size", "right"), ("pooling", "left"), ("layers", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "layers")
    now = time.time()
    for entry in found:
        table.add_row(ago(now - entry.used), size_text(entry.size), entry.pooling, _cached_layers(entry))
    out.print(table)


def _cached_layers(entry: Entry) -> str:
    """What a cached model computes, from its metadata."""
    try:
        meta = model_metadata(entry.loss)
        layers = layers_of(meta)
    except (StylerunError, KeyError, ValueError):
        return f"VGG19 up to {entry.deepest} (metadata unreadable)"
    text = f"content {','.join(layers.content) or '-'}; style {','.join(layers.style) or '-'}"
    if layers.regions:
        text += f"; {layers.regions} guided regions"
    if layers.swap_red_blue:
        text += "; red and blue swapped"
    weights = meta.get("stylerun.weights", "")
    return text + (f"; weights {weights}" if weights and weights != bundled_path().name else "")


@cache_app.command("clear", cls=usage("[OPTIONS]"))
def cache_clear_command(
    older_than: float | None = typer.Option(None, "--older-than", metavar="DAYS", show_default=False,
                                            help="Only the models last used more than DAYS days ago."),
) -> None:
    """Remove the cached models (they are exported again when needed)."""
    if older_than is not None and not (older_than >= 0 and math.isfinite(older_than)):
        raise StylerunError(f"--older-than must be a number of days >= 0, got {older_than}")
    gone = clear(None if older_than is None else older_than * 86400)
    what = f"{len(gone)} model{'s' if len(gone) != 1 else ''} ({size_text(sum(e.size for e in gone))})"
    say(f"removed {what} from {cache_dir()}" if gone else f"nothing to remove in {cache_dir()}", err)


def size_text(size: float) -> str:
    """2.1 MB, 104 MB, 1.2 GB (powers of 1000, as the cache limit is written)."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.1f}".removesuffix(".0") + f" {unit}" if size < 10 else f"{size:.0f} {unit}"
        size /= 1000
    return f"{size:.0f} TB"  # unreachable


def ago(seconds: float) -> str:
    """How long ago, roughly: just now, 5 min ago, 3 h ago, 12 days ago."""
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600:.0f} h ago"
    return f"{seconds // 86400:.0f} days ago"


# --- figures ---------------------------------------------------------------------------------------


@app.command("figures", cls=usage("[OPTIONS] CONTENT STYLE... [-o DIR]"))
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
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with FigureBars(err, quiet) as bars:
            figures.make_figures(plan, out, device=machine.device, threads=machine.threads, listener=bars)
    except KeyboardInterrupt:
        err.print(f"interrupted; finished panels are kept in {out / 'panels'}, run the same command to resume")
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not quiet:
        err.print(f"wrote {out / 'report.md'}")


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


# --- batch -----------------------------------------------------------------------------------------


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
    _log_warnings_to(err)
    request = batch_cli.Request(
        outdir=params["output"], jobs=params["jobs"], grid=params["grid"], contents=list(params["content"] or []),
        styles=list(params["style"] or []), options=_option_values(ctx, params, given_only=True),
        workers=params["workers"], ray=params["ray"], gpus_per_job=params["gpus_per_job"],
        retry_failed=params["retry_failed"], quiet=params["quiet"])
    status = batch_cli.run(request, err)
    if status:
        raise typer.Exit(status)


#: `--ray` of batch and serve (a bare --ray becomes "local": `batch_cli.expand_arguments`).
RAY_HELP = ("Run jobs on Ray actors: alone, a local instance; auto, HOST:PORT or ray://HOST:PORT, a cluster. "
            "Needs pip install 'stylerun\\[ray]'.")


def _batch_signature() -> inspect.Signature:
    kw, panel = inspect.Parameter.KEYWORD_ONLY, "Batch"

    def own(name: str, annotation: Any, default: Any) -> inspect.Parameter:
        return inspect.Parameter(name, kw, annotation=annotation, default=default)

    first = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
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
    options = [option_parameter(f.name) for f in fields(TransferOptions) if f.name not in batch.BATCH_DECIDES]
    return inspect.Signature([*first, *options])


batch_command.__signature__ = _batch_signature()
app.command("batch", cls=batch_cli.ExpandedCommand)(batch_command)


# --- video ---------------------------------------------------------------------------------------


def video_command(ctx: typer.Context, **params: Any) -> None:
    """Stylize a video (a file, or a folder of frames sorted by name) frame by frame, with temporal consistency.

    Each frame starts from the previous stylized frame warped by the optical flow, and a temporal term
    (--temporal-weight, 0 turns it off) keeps it close to that where the flow is consistent (Ruder et al. 2016).

    OUTPUT: a folder (PNG frames) or a video file (.mp4, .webm, .mkv, .mov, .gif; the input's audio is copied);
    a video's frames are kept in OUTPUT.frames beside it.

    Ctrl-C or SIGTERM stops within a moment; finished frames are kept and the same command with
    --resume goes on from the next one.

    Exit status: 0 done, 2 bad input or option, 3 the loss stopped being finite, 130/143 interrupted.
    """
    _log_warnings_to(err)
    settings = video.VideoSettings(params["temporal_weight"], params["flow"], params["frames"], params["fps"],
                                   video.parse_temporal_frames(params["temporal_frames"]))
    options = TransferOptions().replace(**_option_values(ctx, params, given_only=True))
    listener = VideoConsole(err, options.iterations, quiet=params["quiet"], spell=spell,
                            setting=lambda name, value: f"{spell(name)} {value}")
    with StopSignals() as stopper:
        try:
            result = video.run_video(params["input"], [str(s) for s in params["style"]], params["output"],
                                         options, settings, listener, stopper.requested, params["resume"])
        except KeyboardInterrupt:
            say("stylerun: interrupted; finished frames are kept (go on with --resume)", err)
            raise typer.Exit(130) from None
        finally:
            listener.close()
    if result.error:
        say(f"stylerun: error: {mention_options(result.error, spell)}; finished frames are kept", err)
        raise typer.Exit(3)
    if result.interrupted:
        signum = stopper.signum or signal.SIGINT
        say(f"stylerun: {signal.Signals(signum).name}: {len(result.frames) + result.skipped} frames done and kept; "
            "go on with the same command and --resume", err)
        raise typer.Exit(128 + int(signum))
    if not params["quiet"]:
        say(f"wrote {result.output} ({len(result.frames)} frames stylized, {result.skipped} kept from before)", err)


def _video_signature() -> inspect.Signature:
    kw, panel, defaults = inspect.Parameter.KEYWORD_ONLY, "Video", video.VideoSettings()

    def own(name: str, annotation: Any, default: Any) -> inspect.Parameter:
        return inspect.Parameter(name, kw, annotation=annotation, default=default)

    first = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        own("input", Path, typer.Argument(..., help="A video file or a folder of frames.", metavar="INPUT")),
        own("style", list[Path], typer.Argument(..., help="Style painting(s).", metavar="STYLE...")),
        own("output", Path, typer.Option(..., "-o", "--output", metavar="OUTPUT", rich_help_panel=panel,
                                         help="A folder for PNG frames, or a video file.")),
        own("temporal_weight", float, typer.Option(defaults.temporal_weight, "--temporal-weight", metavar="G",
                                                   rich_help_panel=panel,
                                                   help="Weight gamma of the temporal term; 0 turns it off (each "
                                                        "frame still starts from the warped previous one).")),
        own("flow", str, typer.Option(defaults.flow, "--flow", metavar="dis|farneback", rich_help_panel=panel,
                                      help="Optical flow (OpenCV).")),
        own("frames", str | None, typer.Option(None, "--frames", metavar="A:B", rich_help_panel=panel,
                                               help="Only frames A to B-1 (from 0).")),
        own("fps", float | None, typer.Option(None, "--fps", metavar="FPS", rich_help_panel=panel,
                                              help="Frame rate of a video output (default: the input's; 24 for "
                                                   "frame folders).")),
        own("temporal_frames", str, typer.Option("1", "--temporal-frames", metavar="1,2,4", rich_help_panel=panel,
                                                 help="Earlier frames the temporal term ties each frame to "
                                                      "(long-term consistency).")),
        own("resume", bool, typer.Option(False, "--resume", rich_help_panel=panel,
                                         help="Go on after an interrupted run: finished frames are kept.")),
        own("quiet", bool, typer.Option(False, "--quiet", "-q", help="No progress bar.", rich_help_panel=panel)),
    ]
    options = [option_parameter(f.name) for f in fields(TransferOptions) if f.name not in video.NOT_FOR_VIDEO]
    return inspect.Signature([*first, *options])


video_command.__signature__ = _video_signature()
app.command("video", cls=usage("[OPTIONS] INPUT STYLE... -o OUTPUT"))(video_command)


# --- errors and logging ----------------------------------------------------------------------------


class _ConsoleLogHandler(logging.Handler):
    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        say(f"stylerun: warning: {mention_options(record.getMessage(), spell)}", self.console)


def _log_warnings_to(console: Console) -> None:
    """Show the library's warnings (e.g. 'animated image: using the first frame') as one line each.

    Only where nobody configured logging: an application or test harness keeps its own.
    """
    logger = logging.getLogger("stylerun")
    if not logger.handlers and not logging.getLogger().handlers:
        logger.addHandler(_ConsoleLogHandler(console))
        logger.propagate = False


def error_line(exc: BaseException) -> str:
    """The one line a user sees for an error, options spelled as flags."""
    return one_line(exc, spell)


def _usage_error(exc: Exception) -> bool:
    """Click's usage errors (a typo, a missing value), which Typer does not export by name."""
    return hasattr(exc, "format_message") and hasattr(exc, "exit_code")


# --- serve -----------------------------------------------------------------------------------------

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@app.command("serve", cls=batch_cli.ExpandedCommand)
def serve_command(
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs --token."),
    port: int = typer.Option(8000, help="Port to listen on."),
    data: Path = typer.Option(Path.home() / ".local" / "share" / "stylerun" / "serve", help="Jobs and images."),
    token: str = typer.Option(None, envvar="STYLERUN_TOKEN", help="Bearer token every API call must carry."),
    workers: int = typer.Option(1, min=1, max=64, metavar="N",
                                help="Jobs run at once; the cores are shared among them (a job's own threads win)."),
    ray: str = typer.Option(None, "--ray", metavar="[ADDRESS]", show_default=False,
                            help=RAY_HELP + " One actor per worker."),
    max_memory: str = typer.Option(None, "--max-memory", metavar="SIZE", show_default=False,
                                   help="Each job's memory budget (e.g. 4G); larger pictures run in tiles, a "
                                        "client may ask for less. Default: 70% of this machine's memory shared among "
                                        "--workers."),
) -> None:
    """Serve the web page (http://HOST:PORT/) and the HTTP job API (needs pip install 'stylerun\\[serve]').

    Jobs and images are kept under --data; a running job goes on from its checkpoint when the server restarts.
    """
    if host not in LOOPBACK and not token:
        raise StylerunError(f"binding {host} exposes the server beyond this machine; give --token or STYLERUN_TOKEN")
    try:
        import uvicorn

        from stylerun.serve.app import create_app
    except ImportError as exc:
        raise StylerunError("stylerun serve needs the serve extra: pip install 'stylerun[serve]'") from exc
    try:
        budget = None if max_memory is None else memory_size(max_memory)
    except ValueError as exc:
        raise OptionError("max_memory", str(exc)) from None
    application = create_app(data, token, workers, ray, budget)
    print(f"stylerun serve: jobs run on {application.state.runner.describe()}", file=sys.stderr, flush=True)
    # an open page's event stream lasts as long as its job: without a limit a stop would wait for the job
    uvicorn.run(application, host=host, port=port, timeout_graceful_shutdown=3)


def main() -> None:
    """Run the CLI; every error a user can cause is one line on stderr and a non-zero status."""
    command = typer.main.get_command(app)
    try:
        status = command.main(prog_name="stylerun", standalone_mode=False)
    except (StylerunError, MemoryError, RecursionError) as exc:
        print(f"stylerun: error: {error_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        if not _usage_error(exc):
            raise
        message = " ".join(exc.format_message().split())
        if not message:  # no arguments: the help was shown instead
            sys.exit(exc.exit_code)
        where = f" (see 'stylerun {sys.argv[1]} --help')" if len(sys.argv) > 1 and sys.argv[1] in command.commands \
            else " (see 'stylerun --help')"
        print(f"stylerun: error: {message}{where}", file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()

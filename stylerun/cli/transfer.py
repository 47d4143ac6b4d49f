"""`stylerun transfer`: one picture, its flags generated from the option model (`options.TransferOptions`),
one flag per option in help panels by group, with the option's own help, metavar and default.

Ctrl-C or SIGTERM saves the best image so far (and a checkpoint, if asked) and exits with
130 or 143; a non-finite loss exits with 3 (`common.ExitStatus`).
"""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path
from typing import Any

import typer

from stylerun.cli.common import (
    Ending,
    at_once,
    context,
    err,
    finish,
    flag,
    given,
    log_warnings_to,
    option_parameters,
    option_values,
    own,
    setting,
    spell,
)
from stylerun.cli.help import usage
from stylerun.console import Terminal, say
from stylerun.engine.run import PATH_OPTIONS, Job, Outcome, resume_job, run
from stylerun.errors import StylerunError, mention_options
from stylerun.lines import RunLines, outcome_text
from stylerun.options import GROUPS, RESUMABLE, TransferOptions
from stylerun.signals import StopSignals


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
    log_warnings_to(err)
    quiet = params["quiet"]
    if params["resume"] is not None:
        job, state = _resume(ctx, params)
    else:
        job, state = _new_job(ctx, params), None
    listener = CliListener(quiet, job.options.iterations, state.iteration if state else 0)
    with at_once("stylerun: interrupted before the first iteration; nothing written"), StopSignals() as stopper:
        listener.stopper = stopper
        if state is not None and not quiet:
            how = ("with fresh Adam moments" if job.options.optimizer == "adam"
                   else "where it stopped" if state.lbfgs is not None else "with a fresh L-BFGS-B history")
            say(f"resuming {params['resume']} at iteration {state.iteration} of {job.options.iterations}, {how}", err)
        try:
            outcome = run(job, listener, stopper.requested, resume=state)
        finally:
            listener.close()
    finish(ending(outcome, job), stopper, quiet)


def _new_job(ctx: typer.Context, params: dict[str, Any]) -> Job:
    content, style, output = params["content"], params["style"], params["output"]
    if content is None or not style:
        raise StylerunError("give a CONTENT and a STYLE image (or --resume CHECKPOINT)")
    if output is None:
        raise StylerunError("give an output image with -o OUTPUT (e.g. -o out.png)")
    options = TransferOptions().replace(**option_values(ctx, params, given_only=True))  # a preset under them
    return Job(str(content), tuple(str(s) for s in style), options, output)  # as given: messages name them so


def _resume(ctx: typer.Context, params: dict[str, Any]):
    allowed = set(RESUMABLE) | set(PATH_OPTIONS)
    named = [f.name for f in fields(TransferOptions) if given(ctx, f.name) and f.name not in allowed]
    if params["content"] is not None or params["style"]:
        named.insert(0, "CONTENT/STYLE")
    if named:
        shown = ", ".join(n if n.isupper() else flag(n) for n in named)
        may = ", ".join(flag(n) for n in sorted(allowed))
        raise StylerunError(f"--resume takes the inputs and settings from the checkpoint; leave out {shown} "
                            f"(only -o, --quiet, {may} may be given)")
    overrides = option_values(ctx, params, given_only=True)
    return resume_job(params["resume"], params["output"], trust_paths=params["trust_checkpoint_paths"],
                      **overrides)


def ending(outcome: Outcome, job: Job) -> Ending:
    """How a transfer ended, in words: where the picture and the checkpoint are, and how to go on."""
    out = job.output
    if outcome.error:
        where = (f"the best finite image (iteration {outcome.iterations}) is in {out}" if outcome.written
                 else "nothing written")
        return Ending(error=f"{mention_options(outcome.error, spell)}; {where}")
    if outcome.interrupted:
        # a stop inside the first evaluation leaves no loss: neither picture nor checkpoint is written
        hint = f"; go on with: stylerun transfer --resume {outcome.checkpoint}" if outcome.checkpoint and \
            outcome.written else ""
        where = (f"the best image so far (loss {outcome.loss:.4g}) is in {out}" if outcome.written
                 else "no evaluation had finished: nothing written")
        return Ending(stopped=f" at iteration {outcome.iterations} of {job.options.iterations}; {where}{hint}")
    return Ending(done=outcome_text(outcome))


class CliListener(RunLines):
    """The engine's events on stderr, options named by their flags; no signal cuts the writing short."""

    def __init__(self, quiet: bool, total: int, completed: int):
        super().__init__(Terminal(err), total, completed, quiet=quiet, spell=spell, setting=setting)
        self.stopper: StopSignals | None = None

    def finishing(self) -> None:
        if self.stopper is not None:
            self.stopper.hurry = False  # from here on a signal must not cut the writing short


def _signature() -> inspect.Signature:
    first = [
        context(),
        own("content", Path | None, typer.Argument(
            None, help="Content photo (not with --resume).", show_default=False, metavar="CONTENT")),
        own("style", list[Path] | None, typer.Argument(
            None, help="Style painting(s); several are blended (see --style-blend). Not with --resume.",
            show_default=False, metavar="STYLE...")),
        own("output", Path | None, typer.Option(
            None, "-o", "--output", help="Output image (.png, .jpg, .tif, ...). Required.", show_default=False,
            metavar="FILE", rich_help_panel=GROUPS[0])),
    ]
    last = [
        own("resume", Path | None, typer.Option(
            None, "--resume", metavar="CKPT", show_default=False, rich_help_panel="Run control",
            help="Go on from a checkpoint to its total iteration count; inputs and settings come from it. Without "
                 "-o the result is written beside the checkpoint.")),
        own("trust_checkpoint_paths", bool, typer.Option(
            False, "--trust-checkpoint-paths", rich_help_panel="Run control",
            help="With --resume: use the weights, model and mask files the checkpoint names (it is not trusted to "
                 "choose files otherwise).")),
        own("quiet", bool, typer.Option(False, "--quiet", "-q", help="No progress bar.",
                                        rich_help_panel="Run control")),
    ]
    return inspect.Signature([*first, *option_parameters(), *last])


transfer_command.__signature__ = _signature()


def register(app: typer.Typer) -> None:
    """Add `stylerun transfer` to the app."""
    app.command("transfer", cls=usage("[OPTIONS] CONTENT STYLE... -o FILE", "--resume CKPT [-o FILE] [OPTIONS]"))(
        transfer_command)

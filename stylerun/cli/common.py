"""What the commands share: flags derived from the option model, the exit statuses and the
report of how a run ended, stopping on a signal, library warnings as lines, and the
argument expansion of ``--content a b`` and a bare ``--ray``.
"""

from __future__ import annotations

import inspect
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from enum import IntEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from stylerun.cli.help import Command
from stylerun.console import say
from stylerun.errors import mention_options, one_line
from stylerun.jobs.executors import LOCAL, is_ray_address
from stylerun.options import TransferOptions, spec
from stylerun.signals import StopSignals
from stylerun.video.run import VideoSettings

#: Where every command talks to the person: progress, notices, warnings and errors.
err = Console(stderr=True)

OPTION_NAMES = frozenset(f.name for f in fields(TransferOptions))
#: Names of other commands' flags that library messages mention.
OTHER_FLAGS = frozenset({"trust_checkpoint_paths", "resume", *(f.name for f in fields(VideoSettings))})

#: `--ray` of batch and serve (a bare --ray becomes "local": `expand_arguments`).
RAY_HELP = ("Run jobs on Ray actors: alone, a local instance; auto, HOST:PORT or ray://HOST:PORT, a cluster. "
            "Needs pip install 'stylerun\\[ray]'.")


class ExitStatus(IntEnum):
    """The exit statuses of every command."""

    DONE = 0
    SOME_FAILED = 1  # batch: some jobs failed, the others are done
    BAD_INPUT = 2  # a bad input file or option (one line on stderr), or a usage error
    NOT_FINITE = 3  # the loss stopped being finite
    SIGINT = 130  # 128 + the signal's number, as a shell reports a process a signal ended
    SIGTERM = 143

    @classmethod
    def stopped_by(cls, signum: int | None) -> ExitStatus:
        """The status of a run stopped by `signum` (SIGINT when no signal is known: a Ctrl-C seen as such)."""
        return cls(128 + int(signum or signal.SIGINT))


def flag(name: str) -> str:
    """An option's CLI spelling: ``lbfgs_memory`` -> ``--lbfgs-memory`` (or the flag its definition names)."""
    own_flag = spec(name).flag if name in OPTION_NAMES else None
    return own_flag or "--" + name.replace("_", "-")


def spell(name: str) -> str:
    """How the CLI names an option in messages; names that are not options stay as they are."""
    if name == "output":
        return "-o"
    if name in OPTION_NAMES or name in OTHER_FLAGS:
        return flag(name)
    return name


def setting(name: str, value: Any) -> str:
    """An option with a value, as it is typed: ``--size 256``."""
    return f"{spell(name)} {value}"


def error_line(exc: BaseException) -> str:
    """The one line a user sees for an error, options spelled as flags."""
    return one_line(exc, spell)


# --- parameters ------------------------------------------------------------------------------------


def own(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    """A keyword parameter of a command's own (not a transfer option): `default` is its typer.Option or Argument."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def context() -> inspect.Parameter:
    """The first parameter of a command built from a signature: Click's context, to tell given flags from defaults."""
    return inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)


def option_parameter(name: str, panel: str | None = None) -> inspect.Parameter:
    """The Typer parameter of one transfer option, derived from its definition."""
    opt = spec(name)
    names = [flag(name), *([opt.short] if opt.short else [])]
    panel = panel or opt.group
    if opt.cli is bool:
        return own(name, bool, typer.Option(False, *names, help=opt.help, rich_help_panel=panel))
    if opt.cli is list:
        return own(name, list[Path] | None, typer.Option(
            None, *names, help=opt.help + " Repeat it, once per style.", metavar=opt.metavar, show_default=False,
            rich_help_panel=panel))
    shown = opt.cli_default is not None
    default = typer.Option(opt.cli_default, *names, help=opt.help, metavar=opt.metavar,
                           show_default=opt.shown_default or shown, rich_help_panel=panel)
    return own(name, opt.cli if shown else opt.cli | None, default)


def option_parameters(leave_out: frozenset[str] | set[str] | tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """The Typer parameters of every transfer option but those a command decides itself."""
    return [option_parameter(f.name) for f in fields(TransferOptions) if f.name not in leave_out]


def option_values(ctx: typer.Context, params: dict[str, Any], given_only: bool) -> dict[str, Any]:
    """The transfer options among the parsed parameters, by API name (only those given, if asked)."""
    values = {}
    for name in OPTION_NAMES & set(params):
        if given_only and not given(ctx, name):
            continue
        value = params[name]
        if isinstance(value, Path) or (isinstance(value, list) and value and isinstance(value[0], Path)):
            value = [str(p.resolve()) for p in value] if isinstance(value, list) else str(value.resolve())
        if isinstance(value, list) and not value:
            value = None
        values[name] = value
    return values


def given(ctx: typer.Context, name: str) -> bool:
    """Whether the person gave this parameter (not its default)."""
    source = ctx.get_parameter_source(name)
    return getattr(source, "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")


# --- how a run ended -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ending:
    """How a command's run ended, in its own words; `finish` says it and exits with its status.

    The first that applies wins: `error` (the loss stopped being finite), `stopped` (a signal
    stopped the run; said after the signal's name), `failed` (some jobs failed), else `done`,
    said unless quiet.
    """

    error: str | None = None
    stopped: str | None = None
    failed: str | None = None
    done: str | None = None


def finish(ending: Ending, stopper: StopSignals, quiet: bool = False) -> None:
    """Say how the run ended, on stderr; raise typer.Exit with its status unless every part of it is done."""
    if ending.error is not None:
        say(f"stylerun: error: {ending.error}", err)
        raise typer.Exit(ExitStatus.NOT_FINITE)
    if ending.stopped is not None:
        signum = stopper.signum or signal.SIGINT
        say(f"stylerun: {signal.Signals(signum).name}{ending.stopped}", err)
        raise typer.Exit(ExitStatus.stopped_by(signum))
    if ending.failed is not None:
        say(f"stylerun: {ending.failed}", err)
        raise typer.Exit(ExitStatus.SOME_FAILED)
    if not quiet and ending.done is not None:
        say(ending.done, err)


@contextmanager
def at_once(line: str) -> Iterator[None]:
    """A stop that cannot wait (a second signal while `StopSignals.hurry`, or Ctrl-C outside its
    handlers) says `line` and exits with 130, instead of a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        say(line, err)
        raise typer.Exit(ExitStatus.SIGINT) from None


# --- library warnings ------------------------------------------------------------------------------


class ConsoleLogHandler(logging.Handler):
    """The library's log warnings as one line each, options named by their flags."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        say(f"stylerun: warning: {mention_options(record.getMessage(), spell)}", self.console)


def log_warnings_to(console: Console) -> None:
    """Show the library's warnings (e.g. 'animated image: using the first frame') as one line each.

    Only where nobody configured logging: an application or test harness keeps its own.
    """
    logger = logging.getLogger("stylerun")
    if not logger.handlers and not logging.getLogger().handlers:
        logger.addHandler(ConsoleLogHandler(console))
        logger.propagate = False


# --- argument expansion ----------------------------------------------------------------------------

#: Flags that take every value up to the next flag: ``--content a.jpg b.jpg``.
MANY_VALUES = ("--content", "--style")


def expand_arguments(args: list[str]) -> list[str]:
    """Command-line words as Click can parse them: ``--content a b`` becomes ``--content a --content b``,
    and a bare ``--ray`` (no address after it) becomes ``--ray=local``."""
    out: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--":
            return out + args[i:]
        if word in MANY_VALUES:
            values = []
            while i + 1 < len(args) and not args[i + 1].startswith("-"):
                values.append(args[i + 1])
                i += 1
            out += [part for value in values for part in (word, value)] if values else [word]
        elif word == "--ray":
            address = args[i + 1] if i + 1 < len(args) and is_ray_address(args[i + 1]) else None
            out.append(f"--ray={address or LOCAL}")
            i += address is not None
        else:
            out.append(word)
        i += 1
    return out


class ExpandedCommand(Command):
    """A command whose words go through `expand_arguments` before Click parses (`batch`, and `serve`'s bare --ray)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_arguments(list(args)))

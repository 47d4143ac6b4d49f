"""The `stylerun` command: a thin Typer layer over the run engine, one module per command.

A command is a module with a ``register(app)`` function; `COMMANDS` lists them in the order
``stylerun --help`` shows them. Every `StylerunError` is one line on stderr and status 2;
the other statuses are `common.ExitStatus`.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from stylerun.cli import batch, cache, export_vgg, export_web, figures, serve, transfer, video
from stylerun.cli.common import ExitStatus, error_line
from stylerun.cli.help import Group
from stylerun.errors import StylerunError
from stylerun.version import __version__

#: The commands, in the order of ``stylerun --help``.
COMMANDS = (transfer, export_vgg, export_web, cache, figures, batch, video, serve)

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


for command in COMMANDS:
    command.register(app)


def _usage_error(exc: Exception) -> bool:
    """Click's usage errors (a typo, a missing value), which Typer does not export by name."""
    return hasattr(exc, "format_message") and hasattr(exc, "exit_code")


def main() -> None:
    """Run the CLI; every error a user can cause is one line on stderr and a non-zero status."""
    command = typer.main.get_command(app)
    try:
        status: Any = command.main(prog_name="stylerun", standalone_mode=False)
    except (StylerunError, MemoryError, RecursionError) as exc:
        print(f"stylerun: error: {error_line(exc)}", file=sys.stderr)
        sys.exit(ExitStatus.BAD_INPUT.value)
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
    sys.exit(int(status) if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()

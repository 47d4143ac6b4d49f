"""Help as a person reads it at any width: the Click classes every command and group is built with."""

from __future__ import annotations

import inspect
from typing import Any

import typer


class Readable:
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
                param.display_type_rich = no_type
        return params


def no_type(ctx: Any) -> None:
    """The type shown beside a flag or an argument: none."""
    return None


class Group(Readable, typer.core.TyperGroup):
    """A group of commands: `stylerun`, `stylerun cache`."""


class Command(Readable, typer.core.TyperCommand):
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

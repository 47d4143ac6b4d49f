"""Every exception type stylerun raises on purpose.

A `StylerunError` means "the user asked for something we cannot do": front ends turn it
into one line and a non-zero exit (or an HTTP 4xx). Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import re


class StylerunError(Exception):
    """A user-facing error: bad option, bad file, unsupported request."""


class WeightsError(StylerunError):
    """A weights file is unreadable, malformed, unsafe or not VGG19."""


class InputError(StylerunError):
    """An image, file or option given by the user cannot be used."""


class OptionError(InputError):
    """One transfer option has a bad value.

    `option` is its API name (``lbfgs_memory``); the message names it that way, and other
    options it mentions are written in backquotes (```max_pixels```), so that a front end
    can show each in its own spelling (`render` with ``--lbfgs-memory``, a form field, ...).
    """

    def __init__(self, option: str, detail: str):
        self.option = option
        self.detail = detail
        super().__init__(self.render(str))

    def render(self, spell) -> str:
        """The message with every option name passed through `spell` (API name -> front-end name).

        A detail that names the option itself where it belongs holds ``{option}``; any
        other detail follows the option's name.
        """
        detail = mention_options(self.detail, spell)
        if "{option}" in detail:
            return detail.replace("{option}", spell(self.option))
        return f"{spell(self.option)} {detail}"


class ModelError(InputError):
    """A model file that onnxruntime or stylerun refuses to use."""


class DeepImageError(ValueError):
    """A 16-bit image file the full-precision reader cannot use (the caller names the file)."""


class EvaluationStopped(Exception):
    """A stop asked for in the middle of an evaluation (a tiled one takes minutes at print sizes):
    the optimizer ends the run as it does for a stop between evaluations."""


class NumericError(StylerunError):
    """The loss or gradient stopped being finite."""


_MENTION = re.compile(r"`([a-z][a-z0-9_]*)`")


def mention(option: str) -> str:
    """How library messages refer to another option: in backquotes, rewritten by front ends."""
    return f"`{option}`"


def mention_options(text: str, spell) -> str:
    """`text` with each backquoted option name replaced by ``spell(name)``."""
    return _MENTION.sub(lambda m: spell(m.group(1)), text)


def one_line(exc: BaseException, spell, memory: str = "this request") -> str:
    """An error as the one line a user sees, each option name passed through `spell`; memory and
    nesting errors, which say nothing useful themselves, get a sentence."""
    if isinstance(exc, OptionError):
        return exc.render(spell)
    if isinstance(exc, MemoryError):
        return f"not enough memory for {memory} (a file or option asks for more than this machine has)"
    if isinstance(exc, RecursionError):
        return "an input file is nested too deeply to read"
    return mention_options(" ".join(str(exc).split()), spell)

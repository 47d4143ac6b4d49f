"""The one exception type that means "the user asked for something we cannot do".

The CLI turns a `StylerunError` into a one-line message and a non-zero exit; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class StylerunError(Exception):
    """A user-facing error: bad option, bad file, unsupported request."""


class WeightsError(StylerunError):
    """A weights file is unreadable, malformed, unsafe or not VGG19."""


class InputError(StylerunError):
    """An image or option given by the user cannot be used."""

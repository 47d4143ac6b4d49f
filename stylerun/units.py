"""Byte counts as people write them: ``4G``, ``1500M``, ``2.5GiB``, ``123``.

One parser for every size a user gives, and one formatter for every size stylerun writes:
memory budgets count in binary units (a GiB of memory), the model cache's disk limit in
decimal ones (as disks and `cache list` show them).
"""

from __future__ import annotations

import math
import re

_DECIMAL = ("B", "kB", "MB", "GB")
_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([KMGT]?)(?:I?B)?")


def parse_bytes(text: str, binary: bool = True) -> int:
    """The byte count `text` names; ValueError if it names none. K, M, G, T are powers of 1024 when
    `binary`, else of 1000; a trailing B or iB is optional either way."""
    match = _SIZE.fullmatch(text.strip().upper())
    count = float(match[1]) * (1024 if binary else 1000) ** " KMGT".index(match[2] or " ") if match else math.inf
    if not math.isfinite(count):  # no match, or more digits than a float holds
        raise ValueError(f"must be a size such as 4G, 1500M or a byte count, got {text!r}")
    return int(count)


def format_bytes(count: float, binary: bool = True) -> str:
    """A byte count as stylerun writes it: memory in GiB with two decimals (``1.50 GiB``), as budgets
    are given; with `binary` False, powers of 1000 as disks and the cache limit count (``2.1 MB``,
    ``104 MB``, ``1.2 GB``)."""
    if binary:
        return f"{count / (1 << 30):.2f} GiB"
    step = 0
    while count >= 1000 and step < len(_DECIMAL) - 1:
        count, step = count / 1000, step + 1
    text = f"{count:.1f}".removesuffix(".0") if count < 10 else f"{count:.0f}"
    return f"{text} {_DECIMAL[step]}"

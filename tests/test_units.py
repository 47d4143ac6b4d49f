"""Byte counts as users give them and as stylerun writes them: one parser, one formatter."""

from __future__ import annotations

import pytest

from stylerun.units import format_bytes, parse_bytes


@pytest.mark.parametrize("count, text", [(1.5 * 2**30, "1.50 GiB"), (2**30 * 24, "24.00 GiB"), (64 << 20, "0.06 GiB")])
def test_memory_is_written_in_gib(count, text):
    assert format_bytes(count) == text


@pytest.mark.parametrize("count, text", [
    (0, "0 B"), (999, "999 B"), (1000, "1 kB"), (2_100_000, "2.1 MB"), (104e6, "104 MB"), (1.2e9, "1.2 GB"),
    (5e12, "5000 GB"),
])
def test_disk_sizes_are_written_in_powers_of_1000(count, text):
    assert format_bytes(count, binary=False) == text


@pytest.mark.parametrize("text", ["1.50 GiB", "24.00 GiB"])
def test_what_is_written_parses_back(text):
    assert format_bytes(parse_bytes(text)) == text

"""Helpers shared by several test modules (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import sys

import pytest

from stylerun import cli


def run_cli(capsys, monkeypatch, *args: str) -> tuple[int, str]:
    """`stylerun ARGS` in this process: (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["stylerun", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    code = info.value.code
    return (0 if code is None else int(code)), capsys.readouterr().err

"""A first run as a newcomer meets it: the usage line, the time estimate, progress from the
Python API, one writer per output, and the model cache's commands."""

from __future__ import annotations

import os

import pytest
from helpers import run_cli

from stylerun.locks import lock_path

SMALL = ("--size", "48", "--content-layers", "relu2_2", "--style-layers", "relu1_1,relu2_1", "--device", "cpu")


def test_a_second_run_writing_the_same_output_is_refused(capsys, monkeypatch, tmp_path, content_path, style_path):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "out.png"
    args = ("transfer", str(content_path), str(style_path), "-o", str(out), *SMALL, "-n", "2")
    with open(lock_path(out), "w") as held:  # another stylerun writing out.png holds this lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, err = run_cli(capsys, monkeypatch, *args)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"stylerun: error: another stylerun is writing {out}"), err
    assert not out.exists()
    code, err = run_cli(capsys, monkeypatch, *args)  # the lock is free again: the run goes ahead
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["out.png"]  # and its own lock file is gone

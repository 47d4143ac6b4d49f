"""A first run as a newcomer meets it: the usage line, the time estimate, progress from the
Python API, one writer per output, and the model cache's commands."""

from __future__ import annotations

import io
import os
import re
import sys
import time

import numpy as np
import pytest
import typer
from helpers import SHALLOW_FLAGS, run_cli
from rich.console import Console

import stylerun
from stylerun.cli import app as cli
from stylerun.console import ProgressBar
from stylerun.engine.estimate import EVALUATIONS_PER_ITERATION, estimate, iteration_seconds
from stylerun.engine.optimizers import Progress
from stylerun.errors import InputError
from stylerun.files.locks import lock_path
from stylerun.lines import estimate_text
from stylerun.network.cache import cache_limit, entries, prune
from stylerun.network.export import cached_export
from stylerun.network.loss_graph import LayerSet
from stylerun.options import DEFAULT_SMOOTHNESS

SMALL = ("--size", "48", *SHALLOW_FLAGS, "--device", "cpu")


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


def test_the_estimate_is_printed_after_the_first_iteration(capsys, monkeypatch, tmp_path, content_path, style_path):
    out = tmp_path / "out.png"
    code, err = run_cli(capsys, monkeypatch, "transfer", str(content_path), str(style_path), "-o", str(out), *SMALL,
                        "-n", "2", "--threads", "1")
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0] == "48x32, 2 iterations"
    # the defaults, measured on the inputs: a one-scale run's only scale is its finest, where smoothing applies
    balance = rf"style strength 0\.5: alpha/beta \S+; smoothness {DEFAULT_SMOOTHNESS:g}: tv weight \S+ at 48x32"
    assert re.fullmatch(balance, lines[1]), lines
    assert re.fullmatch(r"~\d+ s on CPU \(1 thread\)", lines[2]), lines  # short: no hint
    assert lines[3].startswith("iteration 1/2 loss ")


def test_a_long_run_names_a_faster_size():
    est = estimate(19 * 60, "CPU (2 threads)", (341, 512, 3))
    assert estimate_text(est, lambda name, value: f"--{name} {value}") == \
        "~19 min on CPU (2 threads); --size 256 takes ~5 min"  # a quarter of the pixels, a quarter of the time
    assert estimate(100, "CUDA", (341, 512, 3)).faster is None  # under two minutes: no hint
    assert estimate(1000, "CUDA", (48, 64, 3)).faster is None  # half the size would be too small for VGG19


def test_the_estimate_comes_from_the_first_iteration_alone():
    # three evaluations in 3 s: 1 s each; the other 99 iterations take about one evaluation each
    first = Progress(1, 100, 1.0, 1.0, 1.0, evaluations=3, elapsed=3.0, image=np.zeros((1, 1, 3)))
    assert iteration_seconds(first, "lbfgs") == pytest.approx(EVALUATIONS_PER_ITERATION["lbfgs"])
    assert 1.0 <= EVALUATIONS_PER_ITERATION["lbfgs"] <= 1.1


def test_the_progress_bar_leaves_room_for_an_echoed_ctrl_c():
    console = Console(file=io.StringIO(), width=80, force_terminal=True, record=True)
    bar = ProgressBar(console, 5000)
    bar.start()
    bar.update(Progress(1234, 5000, 1.2345e9, 3.14e10, 1.12e9, 1300, 60.0, np.zeros((1, 1, 3)), eta_s=3700.0))
    bar.stop()
    line = "stylizing" + console.export_text().rstrip("\n").rsplit("stylizing", 1)[1]  # the last drawing
    assert line.endswith(" 1234/5000 loss 1.23e9 (c 3.1e10 s 1.1e9) ETA 1:01:40"), line
    assert len(line) <= 78  # a full-width line wraps when the terminal echoes ^C, and the bar is drawn twice


def test_the_api_prints_progress_lines_when_asked(capsys, tmp_path, content_path, style_path):
    seen = []
    stylerun.transfer(content_path, style_path, tmp_path / "out.png", size=48, iterations=20, device="cpu",
                      content_layers="relu2_2", style_layers="relu1_1,relu2_1", progress=True, callback=seen.append)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert captured.out == "" and lines[0] == "48x32, 20 iterations" and lines[2].startswith("~")
    assert lines[1].startswith("style strength 0.5: alpha/beta ")
    shown = [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("iteration ")]
    assert shown == [1, *range(2, 21, 2)]  # plain lines, every tenth of the run
    assert lines[-1].startswith(f"wrote {tmp_path / 'out.png'} (loss ")
    assert len(seen) == 20  # the callback still sees every iteration
    stylerun.transfer(content_path, style_path, size=48, iterations=2, device="cpu", content_layers="relu2_2",
                      style_layers="relu1_1,relu2_1")
    assert capsys.readouterr().err == ""  # quiet unless asked


def _help(capsys, monkeypatch, *command: str) -> str:
    """`stylerun COMMAND --help` at 80 columns."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(sys, "argv", ["stylerun", *command, "--help"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code in (0, None)
    return capsys.readouterr().out


def test_usage_lines_show_what_is_required(capsys, monkeypatch):
    text = _help(capsys, monkeypatch, "transfer")
    assert "Usage: stylerun transfer [OPTIONS] CONTENT STYLE... -o FILE" in text
    assert "or: stylerun transfer --resume CKPT [-o FILE] [OPTIONS]" in text
    assert "relu1_1,...,relu5_1 at 0.2" in text  # the default, not cut off at 80 columns
    assert "<bool>" not in text and "<path>" not in text
    assert "Usage: stylerun export-vgg [OPTIONS] -o FILE" in _help(capsys, monkeypatch, "export-vgg")
    figures = _help(capsys, monkeypatch, "figures")
    assert "Usage: stylerun figures [OPTIONS] CONTENT STYLE..." in figures
    assert "{" not in figures and "…" not in figures  # no {CONTENT}, no default cut off


def test_help_paragraphs_are_reflowed_not_broken_where_the_docstring_was():
    command = typer.main.get_command(cli.app)
    for name, sub in [("stylerun", command), *command.commands.items()]:
        assert all("\n" not in paragraph for paragraph in sub.help.split("\n\n")), name


def _fake_model(directory, deepest: str, days_ago: float, size: int = 1_000_000, key: str = "0" * 20):
    """Two files named like a cached export (not real models), last used `days_ago`."""
    loss = directory / f"vgg19-{deepest}-max-{key}.onnx"
    for path in (loss, loss.with_name(loss.name.replace(".onnx", ".targets.onnx"))):
        path.write_bytes(b"\0" * (size // 2))
        when = time.time() - days_ago * 86400
        os.utime(path, (when, when))
    return loss


def test_cache_list_and_clear(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("STYLERUN_CACHE", str(tmp_path))
    monkeypatch.setenv("STYLERUN_CACHE_MAX", "500M")
    _fake_model(tmp_path, "relu2_1", days_ago=0, key="a" * 20)
    _fake_model(tmp_path, "relu5_1", days_ago=3, size=4_000_000, key="b" * 20)
    (tmp_path / "notes.txt").write_text("not ours")
    (tmp_path / "vgg19-mine.onnx").write_text("not named like an export")
    monkeypatch.setattr(sys, "argv", ["stylerun", "cache", "list"])
    with pytest.raises(SystemExit):
        cli.main()
    listing = capsys.readouterr().out.splitlines()
    assert listing[0] == f"{tmp_path}: 2 models, 5 MB (limit 500 MB, $STYLERUN_CACHE_MAX)"
    assert re.match(r"\s*just now\s+1 MB\s+max\s+VGG19 up to relu2_1", listing[2]), listing
    assert re.match(r"\s*3 days ago\s+4 MB\s+max\s+VGG19 up to relu5_1", listing[3]), listing
    code, err = run_cli(capsys, monkeypatch, "cache", "clear", "--older-than", "2")
    assert code == 0 and err == f"removed 1 model (4 MB) from {tmp_path}\n"
    code, err = run_cli(capsys, monkeypatch, "cache", "clear")
    assert code == 0 and err == f"removed 1 model (1 MB) from {tmp_path}\n"
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "vgg19-mine.onnx"]  # only stylerun's files go


def test_the_cache_keeps_under_its_limit_dropping_the_least_recently_used(tmp_path):
    old = _fake_model(tmp_path, "relu1_1", days_ago=30, key="1" * 20)
    older = _fake_model(tmp_path, "relu2_1", days_ago=60, key="2" * 20)
    kept = _fake_model(tmp_path, "relu3_1", days_ago=90, key="3" * 20)  # the oldest, but the one in use
    recent = _fake_model(tmp_path, "relu4_1", days_ago=1 / 86400, key="4" * 20)  # another run may be loading it
    gone = prune(1_500_000, keep=kept, directory=tmp_path)
    assert [e.loss for e in gone] == [older, old]
    assert [e.loss for e in entries(tmp_path)] == [recent, kept]  # still over the limit: both must stay


def test_the_cache_limit_is_read_from_the_environment(monkeypatch):
    for text, limit in (("", 10**9), ("500M", 5 * 10**8), ("2G", 2 * 10**9), ("1.5GB", 15 * 10**8), ("123", 123)):
        monkeypatch.setenv("STYLERUN_CACHE_MAX", text)
        assert cache_limit() == limit
    monkeypatch.setenv("STYLERUN_CACHE_MAX", "lots")
    with pytest.raises(InputError, match="STYLERUN_CACHE_MAX must be a size such as 500M"):
        cache_limit()


def test_using_a_cached_model_marks_it_used(model_cache):
    layers = LayerSet.of(["relu1_2"], ["relu1_1"])
    files = cached_export(layers)
    os.utime(files.loss, (0, 0))
    before = time.time()
    assert cached_export(layers).loss == files.loss
    assert files.loss.stat().st_mtime >= before - 2  # touched now (allowing a coarse file system clock)


def test_a_killed_exports_temporaries_are_found_as_leftovers(tmp_path):
    """What `atomic_write` leaves when an export is killed is what the cache cleans up, an hour later."""
    from stylerun.files.atomic import atomic_write
    from stylerun.network.cache import LEFTOVER_S, leftovers

    model = tmp_path / "vgg19-relu2_2-max-0123456789abcdef0123.onnx"
    with pytest.raises(KeyboardInterrupt), atomic_write(model):
        (left,) = list(tmp_path.iterdir())
        kept = tmp_path / f"kept-{left.name}"
        os.link(left, kept)  # atomic_write removes its temporary on the way out; keep a copy under its name
        raise KeyboardInterrupt
    os.replace(kept, tmp_path / left.name)
    assert leftovers(tmp_path, now=time.time()) == []
    assert leftovers(tmp_path, now=time.time() + LEFTOVER_S + 1) == [tmp_path / left.name]

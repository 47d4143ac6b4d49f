"""The command line as a package: file names print as they are named, every command shares one set of
exit statuses, and the Python API runs without the terminal library."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import typer
from helpers import run_cli, spawn, wait_for

from stylerun.cli import app as cli
from stylerun.cli.common import ExitStatus

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("--content-layers", "relu1_1", "--style-layers", "relu1_1")
#: Rich markup and emoji codes, which a file may be named with: printed as markup they would vanish.
ODD = "[bold]out[red]:smile:"


def test_paths_with_markup_and_emoji_codes_print_as_named(capsys, monkeypatch, tmp_path, content_path, style_path):
    model = tmp_path / f"{ODD}.onnx"
    code, err = run_cli(capsys, monkeypatch, "export-vgg", "-o", str(model), *LAYERS)
    assert code == 0 and model.exists(), err
    wrote = [line for line in err.splitlines() if line.startswith("wrote ")]
    assert wrote == [f"wrote {model} and {model.with_name(ODD + '.targets.onnx')} (VGG19 up to relu1_1, max "
                     "pooling)"], err  # one line, not wrapped at 80 columns, brackets and colons kept

    out = tmp_path / f"{ODD}.png"
    code, err = run_cli(capsys, monkeypatch, "transfer", str(content_path), str(style_path), "-o", str(out),
                        "--size", "48", *LAYERS, "-n", "1", "--device", "cpu")
    assert code == 0 and out.exists(), err
    assert err.splitlines()[-1].startswith(f"wrote {out} (loss "), err


def test_figures_says_where_the_report_is_as_named(capsys, monkeypatch, tmp_path, content_path, style_path):
    out = tmp_path / ODD
    code, err = run_cli(capsys, monkeypatch, "figures", str(content_path), str(style_path), "-o", str(out),
                        "--which", "fig3", "--size", "48", "-n", "1", "--device", "cpu")
    assert code == 0, err
    assert f"wrote {out / 'fig3.png'}\n" in err and err.endswith(f"wrote {out / 'report.md'}\n"), err


def test_a_signal_stops_figures_keeping_finished_panels(tmp_path, content_path, style_path):
    """SIGTERM reaches the running panel through `StopSignals`: it ends within its evaluation, stores
    nothing, and the command says where the finished panels are, with status 130 as before."""
    out = tmp_path / "figs"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = spawn([sys.executable, "-m", "stylerun", "figures", str(content_path), str(style_path), "-o",
                  str(out), "--which", "fig3", "--size", "64", "-n", "100000", "--device", "cpu", "-q"],
                 stderr=subprocess.PIPE, text=True, env=env)
    try:
        # written once the run is under way, its handlers installed
        wait_for((out / "fig3.json").exists, 120, alive=proc, what="the run to start")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == ExitStatus.SIGINT
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert err == f"interrupted; finished panels are kept in {out / 'panels'}, run the same command to resume\n"
    assert not list((out / "panels").iterdir())  # the stopped panel stored nothing


def test_exit_statuses_are_those_the_commands_document():
    assert {s.name: int(s) for s in ExitStatus} == {"DONE": 0, "SOME_FAILED": 1, "BAD_INPUT": 2, "NOT_FINITE": 3,
                                                    "SIGINT": 130, "SIGTERM": 143}
    assert ExitStatus.stopped_by(signal.SIGTERM) is ExitStatus.SIGTERM
    assert ExitStatus.stopped_by(None) is ExitStatus.SIGINT  # a Ctrl-C the handlers did not see
    helps = typer.main.get_command(cli.app).commands
    for name in ("transfer", "video"):
        assert "Exit status: 0 done, 2 bad input or option, 3 the loss stopped being finite, 130/143" in \
            helps[name].help, name
    assert "Exit status: 0 all done, 1 some failed, 2 JOBS unusable, 130/143" in helps["batch"].help


def test_the_python_api_does_not_load_the_terminal_library():
    code = ("import sys, stylerun, stylerun.api, stylerun.figures, stylerun.lines; "
            "print(sorted(m for m in sys.modules if m == 'rich' or m.startswith(('rich.', 'typer', "
            "'stylerun.cli', 'stylerun.console'))))")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout

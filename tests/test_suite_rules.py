"""The suite's own rules: CI fails on a skip that tests/allowed_skips.txt does not allow, and hangs and
test order are caught (pytest-timeout, pytest-randomly)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from suite_rules import ALLOW_LIST, read_allow_list, unexpected

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

CONFTEST = "from suite_rules import pytest_addoption, pytest_configure, reap_all_children, reap_children\n"
SKIPPING = """\
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("no widget here")
"""


def run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess:
    """pytest in `project`, whose tests/conftest.py takes the hooks and fixtures of this suite's suite_rules."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "-rs",
                           *args], cwd=project, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def project(tmp_path) -> Path:
    (tmp_path / "tests").mkdir()
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    (tmp_path / "tests" / "conftest.py").write_text(CONFTEST)
    (tmp_path / "tests" / "test_a.py").write_text(SKIPPING)
    (tmp_path / "tests" / "test_gone.py").write_text('import pytest\npytest.importorskip("no_such_module_here")\n')
    return tmp_path


def test_the_allow_list_gives_a_reason_for_each_skip_and_names_real_test_files():
    allowed = read_allow_list(ROOT / ALLOW_LIST)
    for pattern, reason in allowed.items():
        assert len(reason.split()) >= 3, f"{pattern}: say why it may be skipped"
        assert (ROOT / pattern.partition("::")[0]).is_file(), f"{pattern}: no such test file"


def test_allow_list_lines_without_a_reason_are_refused(tmp_path):
    path = tmp_path / "allowed.txt"
    path.write_text("# a comment\n\ntests/test_x.py::test_y  # needs a GPU\n")
    assert read_allow_list(path) == {"tests/test_x.py::test_y": "needs a GPU"}
    for line in ("tests/test_x.py::test_y", "tests/test_x.py::test_y  #  ", "tests/test_x.py test_y  # two words"):
        path.write_text(line + "\n")
        with pytest.raises(ValueError, match="allowed.txt:1: expected"):
            read_allow_list(path)


def test_patterns_name_tests_and_parametrized_cases():
    allowed = {"tests/test_a.py::test_b[*]": "r", "tests/test_c.py": "r", "tests/test_d.py::test_e[1]": "r"}
    skipped = ["tests/test_a.py::test_b[x-y]", "tests/test_a.py::test_bc", "tests/test_c.py", "tests/test_c.py::t",
               "tests/test_d.py::test_e[1]", "tests/test_d.py::test_e1"]
    assert unexpected(skipped, allowed) == ["tests/test_a.py::test_bc", "tests/test_c.py::t",
                                            "tests/test_d.py::test_e1"]


def test_a_skip_not_on_the_list_fails_the_run_and_is_named(project):
    done = run_pytest(project, "--fail-on-skip")
    assert done.returncode == 1, done.stdout
    assert "1 passed, 2 skipped" in done.stdout, done.stdout
    assert "SKIPPED [1] tests/test_a.py:7: no widget here" in done.stdout  # -rs: the reason is shown
    stray = done.stdout.partition("skips not on the allow-list")[2]
    for nodeid in ("tests/test_a.py::test_skips", "tests/test_gone.py"):
        assert f"{nodeid}: skipped, and tests/allowed_skips.txt does not allow it" in stray, done.stdout


def test_allowed_skips_pass_and_without_the_option_skips_pass(project):
    assert run_pytest(project).returncode == 0  # a developer's run without the option
    (project / "tests" / "allowed_skips.txt").write_text(
        "tests/test_a.py::test_skips  # widgets are rare\ntests/test_gone.py  # no such module here\n")
    done = run_pytest(project, "--fail-on-skip")
    assert done.returncode == 0 and "skips not on the allow-list" not in done.stdout, done.stdout
    (project / "tests" / "test_a.py").write_text(SKIPPING + "\ndef test_fails():\n    assert False\n")
    assert run_pytest(project, "--fail-on-skip").returncode == 1  # a failure stays a failure


def test_a_malformed_allow_list_stops_the_run(project):
    (project / "tests" / "allowed_skips.txt").write_text("tests/test_a.py::test_skips\n")
    done = run_pytest(project, "--fail-on-skip")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR and "expected 'TEST-ID-PATTERN  # reason'" in done.stderr


HANGING = """\
import sys
import time

from helpers import spawn

def test_hangs(tmp_path):
    child = spawn([sys.executable, "-c", "import time; time.sleep(600)"])
    open("child.pid", "w").write(str(child.pid))
    time.sleep(600)
"""


def test_a_hung_test_fails_alone_and_its_child_is_killed(project):
    (project / "tests" / "test_a.py").write_text(HANGING)
    (project / "tests" / "test_gone.py").unlink()
    done = run_pytest(project, "--timeout", "5")
    assert done.returncode == 1 and "Timeout" in done.stdout and "1 failed" in done.stdout, done.stdout
    pid = int((project / "child.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_ci_shows_skip_reasons_fails_on_stray_skips_and_times_out_hangs():
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if "-m pytest" in line)
    assert "-rs" in command.split() and "--fail-on-skip" in command.split(), command
    project = (ROOT / "pyproject.toml").read_text()
    test_extra = re.search(r"^test = \[(.*)\]$", project, re.MULTILINE)[1]
    assert '"pytest-randomly' in test_extra and '"pytest-timeout' in test_extra, test_extra
    ini = project.partition("[tool.pytest.ini_options]")[2].partition("\n[")[0]
    assert 0 < int(re.search(r"^timeout = (\d+)$", ini, re.MULTILINE)[1]) <= 600, ini

"""The suite's own rules, as hooks and fixtures conftest.py imports.

Children: whatever a test (or a fixture) started with `helpers.spawn` is killed when it ends, even
when pytest-timeout ended it, so a hung child never runs on beside the tests after it.

`--fail-on-skip`: a run fails on any skipped test that tests/allowed_skips.txt does not name.

A skip hides a test that never ran. CI (`.ci/run`) installs everything the tests need, so there a
skip means a broken set-up, unless the allow-list says why it may happen. Each line of the list is
``PATTERN  # why it may be skipped``: PATTERN is a test id, where ``*`` stands for any text
(``tests/test_x.py::test_y[*]``; a module skipped whole has its file's id), and the reason is
required.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ALLOW_LIST = Path("tests") / "allowed_skips.txt"


def read_allow_list(path: Path) -> dict[str, str]:
    """{pattern: reason}; a line with no pattern or no reason is a ValueError naming the line."""
    allowed = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pattern, _, reason = (part.strip() for part in line.partition("#"))
        if not pattern or not reason or " " in pattern:
            raise ValueError(f"{path}:{number}: expected 'TEST-ID-PATTERN  # reason', got {line!r}")
        allowed[pattern] = reason
    return allowed


def unexpected(skipped: list[str], allowed: dict[str, str]) -> list[str]:
    """The skipped test ids that no allow-list pattern names (only `*` is special: ids hold brackets)."""
    names = [re.compile(".*".join(map(re.escape, pattern.split("*")))) for pattern in allowed]
    return [nodeid for nodeid in skipped if not any(name.fullmatch(nodeid) for name in names)]


class SkipRule:
    """Notes every skip as it is reported; at the end, a skip not allowed turns a passing run into a failed one."""

    def __init__(self, allowed: dict[str, str]):
        self.allowed = allowed
        self.skipped: list[str] = []
        self.stray: list[str] = []

    def _note(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skipped.append(report.nodeid)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._note(report)  # a module skipped at import (`pytest.importorskip`)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._note(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.stray = unexpected(self.skipped, self.allowed)
        if self.stray and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.stray:
            terminalreporter.section("skips not on the allow-list", red=True)
            for nodeid in self.stray:
                terminalreporter.line(f"{nodeid}: skipped, and {ALLOW_LIST} does not allow it")


@pytest.fixture(scope="session", autouse=True)
def reap_all_children():
    """What a module's fixture started and did not stop is killed when the session ends."""
    import helpers

    yield
    helpers.reap()


@pytest.fixture(autouse=True)
def reap_children(reap_all_children):
    """What the test started is killed when it ends (a module's server, started before it, stays)."""
    import helpers

    since = len(helpers.STARTED)
    yield
    helpers.reap(since)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fail-on-skip", action="store_true",
                     help=f"fail the run on a skip that {ALLOW_LIST} does not allow (CI sets it)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("fail_on_skip"):
        path = config.rootpath / ALLOW_LIST
        try:
            allowed = read_allow_list(path) if path.is_file() else {}
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        config.pluginmanager.register(SkipRule(allowed), "stylerun-skip-rule")

"""Mutation testing, one module at a time: does a wrong number in MODULE fail its tests?

    python tools/mutation.py network/tiling.py --budget 600
    python tools/mutation.py --list

mutmut (`pip install mutmut`, 3.x) changes MODULE one small edit at a time (a `+` for a `-`, a
number off by one, a condition dropped) and runs the module's fast tests (MODULES) against each
change; a change no test notices "survived". The run happens in a copy of the repository's tracked
files under --workdir, with pyproject.toml's [tool.mutmut] completed for this module, so mutmut's
mutants/ folder never lands in the repository and a later run with the same --workdir resumes
where the last one stopped (mutmut keeps each mutant's result there). --budget ends the run after
that many seconds (mutmut checks the quickest mutants first); the report says how many were checked.
docs/development.md has the scores and the surviving mutants explained.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Module under stylerun/ -> the pytest arguments that pick its fast tests. Left out: tests that run stylerun
#: in a child process with another working folder (mutmut's code in the child looks for pyproject.toml
#: there and fails), and tests that only reach the module through such a child.
NOT_IN_A_BOX = "not signal_saves and not real_process"
MODULES: dict[str, list[str]] = {
    "network/autodiff.py": ["tests/test_autodiff.py", "tests/test_perf_equivalence.py"],
    "network/tiling.py": ["tests/test_tiling.py"],
    "engine/loss.py": ["tests/test_loss_checks.py", "tests/test_loss_model.py", "tests/test_engine.py",
                       "tests/test_controls.py"],
    "engine/optimizers.py": ["tests/test_optimizers.py", "tests/test_engine.py", "tests/test_robustness.py", "-k",
                             NOT_IN_A_BOX],
    "engine/checkpoint.py": ["tests/test_checkpoint_file.py", "tests/test_robustness.py",
                             "tests/test_untrusted_checkpoints.py", "-k",
                             f"(resume or checkpoint) and {NOT_IN_A_BOX} and not good_checkpoint and not member "
                             "and not pixel_limit and not wrong_type and not fifo and not paths_inside "
                             "and not existing_file and not stored_inside"],
    "jobs/batch.py": ["tests/test_batch_plan.py", "tests/test_batch.py"],
    "serve/store.py": ["tests/test_store.py"],
    "web/model.py": ["tests/test_web.py", "-k", "coded or coding"],
}

#: mutmut's exit codes for a mutant (mutmut/stats.py), as this report counts them. A mutant that crashed its
#: tests (SIGSEGV, SIGABRT: SciPy's Fortran-era routine handed arrays too small) was noticed: killed.
STATUS = {1: "killed", 3: "killed", -11: "killed", -6: "killed", 0: "survived", 33: "no tests", 5: "no tests",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def prepare(module: str, workdir: Path) -> None:
    """The repository's tracked files in `workdir` (its mutants/ kept), with [tool.mutmut] for `module`."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source, copy = ROOT / name, workdir / name
        if source.is_file():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy)
    tests = ", ".join(json.dumps(t) for t in MODULES[module])
    settings = (f'only_mutate = ["stylerun/{module}"]\n'
                f"pytest_add_cli_args_test_selection = [{tests}]\n"
                'also_copy = ["models", "examples", "tools"]\n')
    (workdir / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)  # which tests reach what: tests change
    pyproject = workdir / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    assert "[tool.mutmut]\n" in text, "pyproject.toml lost its [tool.mutmut] section"
    pyproject.write_text(text.replace("[tool.mutmut]\n", "[tool.mutmut]\n" + settings), encoding="utf-8")


def run(workdir: Path, budget: float, children: int, names: list[str]) -> None:
    """`mutmut run` in `workdir`, stopped like Ctrl-C (results so far are kept) once `budget` s have passed."""
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *names]
    # SIGINT as default in mutmut: a shell starts a background job (`... &`) with SIGINT ignored, and then
    # the tests that send themselves SIGINT fail mutmut's first run, and the budget's SIGINT stops nothing
    proc = subprocess.Popen(command, cwd=workdir, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        proc.wait(budget)
    except subprocess.TimeoutExpired:
        print(f"mutation: the budget of {budget:g} s is spent; stopping mutmut", file=sys.stderr)
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def results(workdir: Path, module: str) -> dict[str, str]:
    """{mutant name: status} from mutmut's record of `module` in `workdir`."""
    meta = workdir / "mutants" / "stylerun" / (module + ".meta")
    if not meta.is_file():
        return {}
    codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    return {name: STATUS.get(code, "suspicious") for name, code in codes.items()}


#: Run in the work folder (mutmut reads its config from there on import): each named mutant's diff, as JSON.
_DIFFS = """\
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
def diff(name):
    try:
        return get_diff_for_mutant(name, path=sys.argv[1])
    except Exception as exc:  # a mutants folder from an interrupted generation: mutmut run makes it again
        return f"-(no diff: {exc})"
print(json.dumps({name: diff(name) for name in sys.argv[2:]}))
"""


def diffs(workdir: Path, module: str, names: list[str]) -> dict[str, str]:
    """{mutant name: its changed lines}, from one process for all of them (`mutmut show` is one each)."""
    if not names:
        return {}
    done = subprocess.run([sys.executable, "-c", _DIFFS, f"stylerun/{module}", *names], cwd=workdir,
                          capture_output=True, text=True, check=True)
    return {name: "".join(f"    {line}\n" for line in diff.splitlines()
                          if line.startswith(("+", "-")) and line[:3] not in ("+++", "---"))
            for name, diff in json.loads(done.stdout).items()}


def report(module: str, statuses: dict[str, str], workdir: Path) -> str:
    """One line of counts and the score, then each survivor with its diff."""
    counts = Counter(statuses.values())
    checked = counts["killed"] + counts["survived"] + counts["timeout"]
    score = f"{100 * (counts['killed'] + counts['timeout']) / checked:.0f} %" if checked else "n/a"
    lines = [f"{module}: {len(statuses)} mutants, {checked} checked, score {score} "
             f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})"]
    survivors = sorted(name for name, status in statuses.items() if status == "survived")
    for name, diff in diffs(workdir, module, survivors).items():
        lines.append(f"  survived: {name}\n{diff}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help="under stylerun/, e.g. network/tiling.py")
    parser.add_argument("--list", action="store_true", help="the modules and their tests, then stop")
    parser.add_argument("--budget", type=float, default=1800, help="seconds per module (default 1800)")
    parser.add_argument("--max-children", type=int, default=1, help="mutants run side by side (default 1)")
    parser.add_argument("--mutants", nargs="*", default=[], metavar="GLOB",
                        help="only these mutant names, e.g. 'stylerun.jobs.batch.x__keeps*'")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "stylerun-mutation")
    parser.add_argument("--report-only", action="store_true", help="report the last run's results")
    args = parser.parse_args(argv)
    if args.list or not args.modules:
        for module, tests in MODULES.items():
            print(f"{module}: {' '.join(map(shlex.quote, tests))}")
        return 0
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"no tests are listed for {', '.join(unknown)} (see --list)")
    for module in args.modules:
        workdir = args.workdir / module.replace("/", "-").removesuffix(".py")
        if not args.report_only:
            workdir.mkdir(parents=True, exist_ok=True)
            prepare(module, workdir)
            run(workdir, args.budget, args.max_children, args.mutants)
        print(report(module, results(workdir, module), workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The package's shape: no import circles, no reaching into private names, small functions,
every exception type in errors.py, and one definition of every transfer option that the
CLI, the Python API and saved settings all carry with the same names and defaults."""

from __future__ import annotations

import ast
import inspect
import json
from dataclasses import fields
from pathlib import Path

import typer

import stylerun
from stylerun.cli import app as cli
from stylerun.cli.common import flag
from stylerun.engine.checkpoint import parse_settings
from stylerun.options import TransferOptions

PACKAGE = Path(stylerun.__file__).resolve().parent
#: Every module of the package, by its dotted name inside it (``serve.app``; a package's face is ``engine.__init__``).
MODULES = {".".join(p.relative_to(PACKAGE).with_suffix("").parts): ast.parse(p.read_text())
           for p in sorted(PACKAGE.rglob("*.py"))}

#: The floors of the house, bottom up: a unit (a top-level module or subpackage) imports only from the floors
#: below its own, or from inside itself. Data flows one way: files and weights up to the front ends.
LAYERS = [
    {"errors", "version", "units", "signals", "records"},
    {"files"},
    {"vgg"},
    {"images", "presets"},
    {"options"},
    {"weights"},
    {"network"},
    {"engine"},
    {"jobs", "video", "figures", "lines", "web"},
    {"console"},
    {"api", "serve"},
    {"cli"},
    {"__init__", "__main__"},
]


def _unit(module: str) -> str:
    """The top-level module or subpackage a module belongs to: ``engine.run`` -> ``engine``."""
    return module.split(".")[0]


def _imports(name: str, tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module, names) of every import from the package in a module, at any depth (function-level ones too).
    ``from stylerun.engine import run`` names the module ``engine.run``; relative imports are resolved."""
    here = name.split(".")[:-1]  # the package the module lies in
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = here[: len(here) - node.level + 1]
            dotted = ".".join(base + ([node.module] if node.module else []))
        elif (node.module or "").startswith("stylerun.") or node.module == "stylerun":
            dotted = (node.module or "").removeprefix("stylerun").removeprefix(".")
        else:
            continue
        for alias in node.names:
            sub = f"{dotted}.{alias.name}" if dotted else alias.name
            if sub in MODULES or f"{sub}.__init__" in MODULES:
                found.append((sub if sub in MODULES else f"{sub}.__init__", []))
            else:
                found.append((dotted if dotted in MODULES else f"{dotted or ''}.__init__".lstrip("."), [alias.name]))
    return found


def test_every_unit_has_a_floor_and_imports_only_downward():
    floor = {unit: level for level, units in enumerate(LAYERS) for unit in units}
    for name, tree in MODULES.items():
        unit = _unit(name)
        assert unit in floor, f"{unit} has no floor in LAYERS"
        for module, _ in _imports(name, tree):
            other = _unit(module)
            assert other == unit or floor[other] < floor[unit], \
                f"{name} (floor {floor[unit]}) imports {module} (floor {floor[other]})"


def test_every_subpackage_says_what_lives_there():
    for name, tree in MODULES.items():
        if name.endswith(".__init__"):
            assert ast.get_docstring(tree), f"{name} has no docstring"


def test_no_import_circles():
    graph = {name: {m for m, _ in _imports(name, tree) if m in MODULES} for name, tree in MODULES.items()}
    graph["__init__"] = set()  # the package's front door imports everything and is imported by nothing
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, f"import circle: {' -> '.join(path + [node, nxt])}"
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_no_module_imports_another_modules_private_names():
    for name, tree in MODULES.items():
        for module, names in _imports(name, tree):
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            assert not private, f"{name} imports private {private} from {module}"


def test_functions_are_small():
    long = [f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for name, tree in MODULES.items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert not long


def test_every_exception_type_lives_in_errors():
    for name, tree in MODULES.items():
        if name == "errors":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                public = not node.name.startswith("_")  # private control-flow signals stay where they are used
                assert not (public and bases & {"Exception", "StylerunError", "InputError", "ValueError"}), \
                    f"{name}.{node.name} is an exception type outside errors.py"


def _cli_parameters() -> dict:
    command = typer.main.get_command(cli.app).commands["transfer"]
    return {p.name: p for p in command.params}


def test_cli_flags_api_keywords_and_saved_settings_carry_the_same_names_and_defaults():
    defaults = TransferOptions()
    params = _cli_parameters()
    api = inspect.signature(stylerun.transfer).parameters
    saved, _ = parse_settings(json.dumps(defaults.to_dict()))
    assert saved == defaults
    for f in fields(TransferOptions):
        name, default = f.name, getattr(defaults, f.name)
        assert name in params, f"no CLI flag for {name}"
        assert flag(name) in params[name].opts
        cli_default = params[name].default
        # the CLI's default, parsed as the option model parses it, is the option's default
        parsed = getattr(TransferOptions(**{name: None if cli_default in (None, ()) else cli_default}), name) \
            if cli_default not in (None, ()) or default is None else default
        assert parsed == default, (name, cli_default, default)
        assert name in api and api[name].default == default, name
        assert name in defaults.to_dict()
    assert set(defaults.to_dict()) == {f.name for f in fields(TransferOptions)}


def test_cli_help_groups_options_in_panels():
    params = _cli_parameters()
    for f in fields(TransferOptions):
        assert getattr(params[f.name], "rich_help_panel", None) == f.metadata["option"].group

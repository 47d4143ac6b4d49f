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
from stylerun import cli
from stylerun.checkpoint import parse_settings
from stylerun.options import TransferOptions

PACKAGE = Path(stylerun.__file__).resolve().parent
#: Every module of the package, subpackages included, by its dotted name inside it (``serve.app``).
MODULES = {".".join(p.relative_to(PACKAGE).with_suffix("").parts): ast.parse(p.read_text())
           for p in sorted(PACKAGE.rglob("*.py"))}


def _module(dotted: str) -> str:
    """The MODULES key an import names: the module itself, or the package it lies in."""
    return dotted if dotted in MODULES else dotted.split(".")[0]


def _imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module, names) of every import from the package in a module, at any depth (function-level ones too):
    relative ones of the top level, and absolute ``stylerun.x`` ones (how a subpackage imports)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 1 and node.module:
            found.append((_module(node.module), [a.name for a in node.names]))
        elif node.level == 1:  # from . import x, y
            found.extend((a.name, []) for a in node.names)
        elif node.level == 0 and (node.module or "").startswith("stylerun."):
            found.append((_module(node.module.removeprefix("stylerun.")), [a.name for a in node.names]))
    return found


def test_no_import_circles():
    graph = {name: {m for m, _ in _imports(tree) if m in MODULES} for name, tree in MODULES.items()}
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
        for module, names in _imports(tree):
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
        assert cli.flag(name) in params[name].opts
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

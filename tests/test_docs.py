"""The documentation keeps up with the code: the options page is the option model's, the
README stays short with working links, and the site would load nothing from another host.

The site itself is built by `mkdocs build --strict` in CI (the docs extra), which fails on
a broken link, anchor or API reference; these tests need no mkdocs."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from stylerun.options import TransferOptions

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: The two commands a newcomer pastes on a fresh machine; CI and users rely on them character for character.
FRESH_MACHINE = (
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/stylerun transfer examples/chelsea.jpg "
    "examples/starry_night.jpg -o stylized.png --size 256 --iterations 100",
    "bash .ci/run",
)


def tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_options_page_is_the_option_models():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "options_doc.py"), "--check"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{done.stderr}docs/options.md is stale: run python tools/options_doc.py"


def test_the_options_page_shows_every_option_with_its_flag_default_and_help():
    doc = tool("options_doc")
    page = doc.PAGE.read_text(encoding="utf-8").partition(doc.BEGIN)[2].partition(doc.END)[0]
    cells = [re.split(r"(?<!\\)\|", line) for line in page.splitlines()
             if line.startswith("| ") and not line.startswith(("| flag ", "| ---"))]
    rows = {row[2].strip().strip("`"): "|".join(row) for row in cells}
    assert set(rows) == {f.name for f in fields(TransferOptions)}
    iterations = rows["iterations"]
    assert "`--iterations N`, `-n`" in iterations and "| `150` |" in iterations, iterations
    assert "`--content-mask FILE`" in rows["content_masks"] and "Repeat it" in rows["content_masks"]
    assert "<code>--pooling max&#124;avg</code>" in rows["pooling"]  # a pipe in code would split the row on GitHub
    for f in fields(TransferOptions):
        assert f.metadata["option"].help.split(";")[0].replace("|", "\\|") in rows[f.name], f.name
    groups = re.findall(r"^### (.+)$", page, re.MULTILINE)
    assert groups == ["Input and output", "Loss", "Artistic controls", "Optimizer", "Run control", "Device"]


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub and the site's table of contents make it, for plain headings."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return re.sub(r"-{2,}", "-", text.replace(" ", "-"))


def test_the_readme_is_short_keeps_the_fresh_machine_commands_and_its_links_resolve():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    blocks = re.findall(r"```sh\n(.*?)\n```", text, re.DOTALL)
    assert blocks[:2] == list(FRESH_MACHINE)
    first_screen = "\n".join(text.splitlines()[:16])
    assert "no deep-learning framework" in first_screen and "docs/images/chelsea_starry.jpg" in first_screen
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert len(local) > 15, local
    for link in local:
        target, _, anchor = link.partition("#")
        path = ROOT / target
        assert path.exists(), f"README links to {link}, which is not in the repository"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.MULTILINE)
            assert anchor in {_slug(h) for h in headings}, f"README links to {link}: no such heading"


def test_every_page_in_the_site_nav_exists():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = re.findall(r":\s+([\w./-]+\.md)\s*$", config, re.MULTILINE)
    assert nav and all((ROOT / "docs" / page).is_file() for page in nav), nav
    assert "font: false" in config  # no web fonts from another host


def test_the_site_check_finds_resources_loaded_from_another_host(tmp_path):
    hooks = tool("docs_hooks")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "index.html").write_text(
        '<link rel="canonical" href="https://example.org/a/">'
        '<link rel="stylesheet" href="https://fonts.example.com/css">'
        '<a href="https://docs.ray.io">Ray</a><img src="../images/x.png">'
        '<script src="//cdn.example.com/x.js"></script>')
    (tmp_path / "style.css").write_text('@import "https://x.example.com/y.css"; a { background: url(data:,); }')
    assert hooks.external_loads(tmp_path) == [
        "a/index.html: https://fonts.example.com/css",
        "a/index.html: //cdn.example.com/x.js",
        "style.css: https://x.example.com/y.css",
    ]
    (tmp_path / "a" / "index.html").write_text('<a href="https://docs.ray.io">Ray</a><img src="x.png">')
    (tmp_path / "style.css").write_text("a { color: red }")
    assert hooks.external_loads(tmp_path) == []

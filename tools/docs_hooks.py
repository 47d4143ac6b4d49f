"""mkdocs hook: the built site must load nothing from another host.

The site is read where there may be no network, and a page that fetches fonts, scripts or
pictures from elsewhere also tells that host who reads it. After the build, every HTML page
and stylesheet is searched for a resource taken from another host (a script, stylesheet,
picture, frame or CSS `url()`/`@import` with a scheme or a `//` address); one found fails
the build, naming the file and the address. Plain links to other sites are fine: following
one is the reader's choice.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

#: Tags that load what they name as soon as the page opens (`<a href>` is not among them).
LOADING = re.compile(
    r"<(?:script|img|iframe|source|video|audio|embed|track)\b[^>]*?\bsrc\s*=\s*[\"']?((?:[a-z][a-z0-9+.-]*:)?//[^\"'\s>]+)"
    r"|<link\b[^>]*?\bhref\s*=\s*[\"']?((?:[a-z][a-z0-9+.-]*:)?//[^\"'\s>]+)",
    re.IGNORECASE,
)
#: A stylesheet's own loads: `url(https://…)`, `@import "//…"`.
CSS_LOADING = re.compile(r"(?:url\(\s*[\"']?|@import\s+[\"'])((?:[a-z][a-z0-9+.-]*:)?//[^\"')\s]+)", re.IGNORECASE)
#: `<link>`s that only name a page (the canonical address, an alternate language) load nothing.
NAMING_ONLY = re.compile(r"<link\b[^>]*\brel\s*=\s*[\"']?(?:canonical|alternate)\b", re.IGNORECASE)


def external_loads(site: Path) -> list[str]:
    """``file: address`` for every resource the built site would fetch from another host."""
    found = []
    for path in sorted(site.rglob("*")):
        if path.suffix == ".html":
            text = path.read_text(encoding="utf-8", errors="replace")
            for match in LOADING.finditer(text):
                tag = text[match.start():text.find(">", match.start()) + 1]
                if match.group(2) and NAMING_ONLY.match(tag):
                    continue
                found.append(f"{path.relative_to(site)}: {match.group(1) or match.group(2)}")
        elif path.suffix == ".css":
            text = path.read_text(encoding="utf-8", errors="replace")
            found += [f"{path.relative_to(site)}: {m.group(1)}" for m in CSS_LOADING.finditer(text)]
    return found


def on_post_build(config: Any, **kwargs: Any) -> None:
    from mkdocs.exceptions import PluginError

    found = external_loads(Path(config["site_dir"]))
    if found:
        raise PluginError("the site would load from another host:\n  " + "\n  ".join(found))

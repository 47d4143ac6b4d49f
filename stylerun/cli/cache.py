"""`stylerun cache list` and `stylerun cache clear`: the exported models kept for the next run, as a table."""

from __future__ import annotations

import math
import time

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from stylerun.cli.common import err
from stylerun.cli.help import Group, usage
from stylerun.console import say
from stylerun.errors import StylerunError
from stylerun.network.cache import LIMIT_ENV, Entry, cache_dir, cache_limit, clear, entries
from stylerun.network.export import layers_of, model_metadata
from stylerun.weights.bundled import bundled_path

cache_app = typer.Typer(
    name="cache", cls=Group, no_args_is_help=True, add_completion=False,
    help="""List or clear the models stylerun keeps for the next run.

    The first run with a set of layers exports VGG19 into the cache (~/.cache/stylerun, or
    $STYLERUN_CACHE); later runs reuse it. The cache keeps itself under 1 GB ($STYLERUN_CACHE_MAX,
    e.g. 500M or 5G) by removing the models used least recently.""",
)


@cache_app.command("list", cls=usage("[OPTIONS]"))
def cache_list_command() -> None:
    """List the cached models: their layers, pooling, size and when each was last used."""
    directory, found, limit = cache_dir(), entries(), cache_limit()
    total = sum(e.size for e in found)
    out = Console()
    say(f"{directory}: {len(found)} model{'s' if len(found) != 1 else ''}, {size_text(total)} "
        f"(limit {size_text(limit)}, ${LIMIT_ENV})", out)
    if not found:
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name, justify in (("last used", "right"), ("size", "right"), ("pooling", "left"), ("layers", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "layers")
    now = time.time()
    for entry in found:
        cells = (ago(now - entry.used), size_text(entry.size), entry.pooling, cached_layers(entry))
        table.add_row(*(Text(cell) for cell in cells))  # a weights file named [red].npz prints as named
    out.print(table)


def cached_layers(entry: Entry) -> str:
    """What a cached model computes, from its metadata."""
    try:
        meta = model_metadata(entry.loss)
        layers = layers_of(meta)
    except (StylerunError, KeyError, ValueError):
        return f"VGG19 up to {entry.deepest} (metadata unreadable)"
    text = f"content {','.join(layers.content) or '-'}; style {','.join(layers.style) or '-'}"
    if layers.regions:
        text += f"; {layers.regions} guided regions"
    if layers.swap_red_blue:
        text += "; red and blue swapped"
    weights = meta.get("stylerun.weights", "")
    return text + (f"; weights {weights}" if weights and weights != bundled_path().name else "")


@cache_app.command("clear", cls=usage("[OPTIONS]"))
def cache_clear_command(
    older_than: float | None = typer.Option(None, "--older-than", metavar="DAYS", show_default=False,
                                            help="Only the models last used more than DAYS days ago."),
) -> None:
    """Remove the cached models (they are exported again when needed)."""
    if older_than is not None and not (older_than >= 0 and math.isfinite(older_than)):
        raise StylerunError(f"--older-than must be a number of days >= 0, got {older_than}")
    gone = clear(None if older_than is None else older_than * 86400)
    what = f"{len(gone)} model{'s' if len(gone) != 1 else ''} ({size_text(sum(e.size for e in gone))})"
    say(f"removed {what} from {cache_dir()}" if gone else f"nothing to remove in {cache_dir()}", err)


def size_text(size: float) -> str:
    """2.1 MB, 104 MB, 1.2 GB (powers of 1000, as the cache limit is written)."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.1f}".removesuffix(".0") + f" {unit}" if size < 10 else f"{size:.0f} {unit}"
        size /= 1000
    return f"{size:.0f} TB"  # unreachable


def ago(seconds: float) -> str:
    """How long ago, roughly: just now, 5 min ago, 3 h ago, 12 days ago."""
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600:.0f} h ago"
    return f"{seconds // 86400:.0f} days ago"


def register(app: typer.Typer) -> None:
    """Add `stylerun cache list|clear` to the app."""
    app.add_typer(cache_app)

"""`stylerun export-web`: a static site that runs style transfer in a browser, nothing installed."""

from __future__ import annotations

from pathlib import Path

import typer

from stylerun.cli.common import err
from stylerun.cli.help import usage
from stylerun.console import say
from stylerun.web.site import check_outdir, export_site


def export_web_command(
    outdir: Path = typer.Argument(..., help="Folder to write the site into (made if missing; must be empty).",
                                  metavar="OUTDIR", show_default=False),
    force: bool = typer.Option(False, "--force", help="Write into OUTDIR even if it is not empty."),
) -> None:
    """Write a static site (index.html, its JavaScript, onnxruntime-web and the models) that stylizes
    photos in the browser: serve OUTDIR with any static file server and open index.html.

    Threads need the page to be cross-origin isolated (COOP/COEP headers, as `stylerun serve` sends at
    /local); without them it runs on one thread. Nothing is loaded from another host.
    """
    check_outdir(outdir, force)  # before the models are built: a refusal costs nothing
    config = export_site(outdir, force=force)
    say(f"wrote {outdir} ({config['models']['bytes'] / 1e6:.1f} MB of models, onnxruntime-web "
        f"{config['onnxruntime_web']}); serve it and open index.html, or index.html?demo", err)


def register(app: typer.Typer) -> None:
    """Add `stylerun export-web` to the app."""
    app.command("export-web", cls=usage("[OPTIONS] OUTDIR"))(export_web_command)

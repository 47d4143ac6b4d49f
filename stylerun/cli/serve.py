"""`stylerun serve`: the web page and the HTTP job API, on uvicorn (the serve extra)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from stylerun.cli.common import RAY_HELP, ExpandedCommand
from stylerun.errors import OptionError, StylerunError
from stylerun.options import memory_size

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve_command(
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs --token."),
    port: int = typer.Option(8000, help="Port to listen on."),
    data: Path = typer.Option(Path.home() / ".local" / "share" / "stylerun" / "serve", help="Jobs and images."),
    token: str = typer.Option(None, envvar="STYLERUN_TOKEN", help="Bearer token every API call must carry."),
    workers: int = typer.Option(1, min=1, max=64, metavar="N",
                                help="Jobs run at once; the cores are shared among them (a job's own threads win)."),
    ray: str = typer.Option(None, "--ray", metavar="[ADDRESS]", show_default=False,
                            help=RAY_HELP + " One actor per worker."),
    max_memory: str = typer.Option(None, "--max-memory", metavar="SIZE", show_default=False,
                                   help="Each job's memory budget (e.g. 4G); larger pictures run in tiles, a "
                                        "client may ask for less. Default: 70% of this machine's memory shared among "
                                        "--workers."),
    max_queued: int = typer.Option(100, "--max-queued", min=1, metavar="N",
                                   help="Jobs that may wait at once; a client submitting more gets 429."),
    keep_days: float = typer.Option(30.0, "--keep-days", min=0, metavar="DAYS",
                                    help="Remove finished jobs and their files after this many days; 0 keeps them."),
    checkpoint_every: int = typer.Option(None, "--checkpoint-every", min=1, metavar="N", show_default=False,
                                         help="Each job's checkpoint rhythm (clients may not set it). Default: a "
                                              "tenth of the job's iterations."),
) -> None:
    """Serve the web page (http://HOST:PORT/) and the HTTP job API (needs pip install 'stylerun\\[serve]').

    Jobs and images are kept under --data; a running job goes on from its checkpoint when the server restarts.
    """
    if host not in LOOPBACK and not token:
        raise StylerunError(f"binding {host} exposes the server beyond this machine; give --token or STYLERUN_TOKEN")
    try:
        import uvicorn

        from stylerun.serve.app import create_app
    except ImportError as exc:
        raise StylerunError("stylerun serve needs the serve extra: pip install 'stylerun[serve]'") from exc
    try:
        budget = None if max_memory is None else memory_size(max_memory)
    except ValueError as exc:
        raise OptionError("max_memory", str(exc)) from None
    os.umask(0o077)  # the data folder holds people's photos: readable by this user only (folders 0700, files 0600)
    application = create_app(data, token, workers, ray, budget, max_queued, keep_days, checkpoint_every)
    print(f"stylerun serve: jobs run on {application.state.runner.describe()}", file=sys.stderr, flush=True)
    # an open page's event stream lasts as long as its job: without a limit a stop would wait for the job
    uvicorn.run(application, host=host, port=port, timeout_graceful_shutdown=3)


def register(app: typer.Typer) -> None:
    """Add `stylerun serve` to the app."""
    app.command("serve", cls=ExpandedCommand)(serve_command)

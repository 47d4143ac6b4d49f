"""`stylerun serve`: the web page and the HTTP job API, on uvicorn (the serve extra)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from stylerun.cli.common import RAY_HELP, ExpandedCommand
from stylerun.errors import OptionError, StylerunError
from stylerun.options import memory_size
from stylerun.units import parse_bytes

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve_command(
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs --token."),
    port: int = typer.Option(8000, help="Port to listen on."),
    data: Path = typer.Option(Path.home() / ".local" / "share" / "stylerun" / "serve", help="Jobs and images."),
    token: str = typer.Option(None, envvar="STYLERUN_TOKEN", show_envvar=True,
                              help="Bearer token every API call must carry, 16+ characters; the environment "
                                   "variable keeps it out of `ps`."),
    workers: int = typer.Option(1, min=1, max=64, metavar="N",
                                help="Jobs run at once; the cores are shared among them (a job's own threads win)."),
    ray: str = typer.Option(None, "--ray", metavar="[ADDRESS]", show_default=False,
                            help=RAY_HELP + " One actor per worker."),
    max_memory: str = typer.Option(None, "--max-memory", metavar="SIZE", show_default=False,
                                   help="Each job's memory budget (e.g. 4G); larger pictures run in tiles, a "
                                        "client may ask for less. Default: 70% of this machine's memory shared among "
                                        "--workers."),
    allow_host: list[str] = typer.Option([], "--allow-host", metavar="NAME", show_default=False,
                                         help="Also answer requests for this Host name (repeatable; loopback "
                                              "names and --host always; * for any, behind a proxy that checks it)."),
    max_upload: str = typer.Option("100M", "--max-upload", metavar="SIZE",
                                   help="Largest request body; larger ones get 413 before they are read."),
    max_connections: int = typer.Option(100, "--max-connections", min=1, metavar="N",
                                        help="Open connections at most; requests beyond get 503."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", min=0.1, metavar="SECONDS",
                                         help="Close a connection whose request head has not arrived by then."),
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
        from stylerun.serve.guard import allow_open_files
    except ImportError as exc:
        raise StylerunError("stylerun serve needs the serve extra: pip install 'stylerun[serve]'") from exc
    try:
        budget = None if max_memory is None else memory_size(max_memory)
    except ValueError as exc:
        raise OptionError("max_memory", str(exc)) from None
    os.umask(0o077)  # the data folder holds people's photos: readable by this user only (folders 0700, files 0600)
    guard = _guard(host, token, allow_host, max_upload, max_connections, header_timeout)
    application = create_app(data, token, workers, ray, budget, max_queued, keep_days, checkpoint_every, guard=guard)
    print(f"stylerun serve: jobs run on {application.state.runner.describe()}", file=sys.stderr, flush=True)
    # an open page's event stream lasts as long as its job: without a limit a stop would wait for the job
    allow_open_files()
    uvicorn.run(application, host=host, port=port, timeout_graceful_shutdown=3, **guard.uvicorn_options())


def _guard(host: str, token: str | None, allow_host: list[str], max_upload: str, max_connections: int,
           header_timeout: float):
    """The connection and request limits from the flags (a bad one is a one-line error)."""
    from stylerun.serve.guard import Guard, check_token

    if token is not None:
        try:
            check_token(token)
        except ValueError as exc:
            raise StylerunError(f"--token/STYLERUN_TOKEN: {exc}") from None
    try:
        return Guard(hosts=(host, *allow_host), max_upload=parse_bytes(max_upload), max_connections=max_connections,
                     header_timeout=header_timeout)
    except ValueError as exc:
        raise StylerunError(f"--max-upload: {exc}") from None


def register(app: typer.Typer) -> None:
    """Add `stylerun serve` to the app."""
    app.command("serve", cls=ExpandedCommand)(serve_command)

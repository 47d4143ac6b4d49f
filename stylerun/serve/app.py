"""The FastAPI application: the job API over `Store`, and the page; jobs run by `Runner`."""

from __future__ import annotations

import asyncio
import json
import math
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, File, Form, HTTPException, Query, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from stylerun.engine.run import PATH_OPTIONS, Job, check_job, plan_of
from stylerun.errors import OptionError, StylerunError
from stylerun.images.codec import check_size
from stylerun.options import TransferOptions, bounds_of, choices_of, defaults, option_fields
from stylerun.serve.guard import Guard, GuardMiddleware
from stylerun.serve.runner import ACTIVE, Runner
from stylerun.serve.store import FINISHED, Store
from stylerun.serve.uploads import Upload, content_shape, read_uploads, store_uploads
from stylerun.web.isolated import LocalSite

#: Options the server decides: files on this machine, which no client string may name.
SERVER_DECIDES = (*PATH_OPTIONS, "checkpoint")
#: Options the server sets for every job (`--checkpoint-every`; intermediate pictures never): refused from clients.
SERVER_SETTINGS = ("save_every", "checkpoint_every")
#: Event streams open at once; each polls the store twice a second, so more would slow every answer.
MAX_STREAMS = 64
#: The page (index.html, app.js, style.css), shipped inside the package: no Node build.
STATIC = Path(__file__).resolve().parent / "static"


def create_app(data: Path, token: str | None = None, workers: int = 1, ray: str | None = None,
               max_memory: int | None = None, max_queued: int = 100, keep_days: float = 30.0,
               checkpoint_every: int | None = None, guard: Guard | None = None) -> FastAPI:
    """The application for one data folder (the store and runner are made here, no module globals).

    With `token`, every /api call needs ``Authorization: Bearer TOKEN`` (401 otherwise);
    `workers` jobs run at once, here or, with `ray`, on that Ray cluster's actors, each
    within `max_memory` bytes (default: `runner.job_memory`), with a checkpoint every
    `checkpoint_every` iterations (default: a tenth of the job). At most `max_queued` jobs
    wait (429 beyond); finished jobs are removed with their files after `keep_days` (0: never).
    `guard` says which Host names and how large a body are accepted (`stylerun.serve.guard`).
    """
    store = Store(data)
    limits = Limits(max_queued, keep_days)
    limits.sweep(store)
    runner = Runner(store, workers, ray=ray, max_memory=max_memory, checkpoint_every=checkpoint_every)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await asyncio.to_thread(runner.close)  # the running job keeps a checkpoint; the next start goes on

    # no Swagger UI: it loads its scripts from a CDN; the schema stays at /openapi.json
    app = FastAPI(title="stylerun", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.runner = runner
    app.add_middleware(GuardMiddleware, guard=guard or Guard(), token=token or None)
    app.include_router(service_routes(runner))
    app.include_router(submit_routes(store, runner, limits))
    app.include_router(job_routes(store, runner))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/local", LocalSite(), name="local")  # the browser-only page, cross-origin isolated (stylerun.web)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


class Limits:
    """What the server keeps: `max_queued` waiting jobs, finished ones for `keep_days` (swept at most once
    a minute, at start and as jobs are submitted)."""

    def __init__(self, max_queued: int, keep_days: float):
        self.max_queued, self.keep_days, self.swept = max_queued, keep_days, -math.inf

    def sweep(self, store: Store) -> None:
        if self.keep_days > 0 and time.monotonic() - self.swept > 60:
            self.swept = time.monotonic()
            store.expire(self.keep_days * 86400)

    def full(self) -> HTTPException:
        return HTTPException(429, {"error": f"{self.max_queued} jobs are waiting already; try again later"})


def service_routes(runner: Runner) -> APIRouter:
    """Health and the option model: what a client needs before it submits anything."""
    router = APIRouter()

    @router.get("/api/health")
    def health() -> dict[str, Any]:
        """Up, and where jobs run."""
        return {"ok": True, "workers": runner.describe()}

    @router.get("/api/options")
    def options_model() -> list[dict[str, Any]]:
        """The option model's metadata, so a form can be built from it (new options appear by themselves)."""
        values = defaults()
        return [_option_entry(f.name, f.metadata["option"], values[f.name])
                for f in option_fields() if f.name not in (*SERVER_DECIDES, *SERVER_SETTINGS)]

    return router


def _option_entry(name: str, spec: Any, default: Any) -> dict[str, Any]:
    """One option as a form needs it: its value type (also where the default is None), choices, bounds."""
    kind = {int: "int", float: "float", bool: "bool"}.get(spec.cli, "str")
    bounds = bounds_of(name)
    low, high = (None, None) if bounds is None else (bounds[0], bounds[1] if math.isfinite(bounds[1]) else None)
    return {"name": name, "type": type(default).__name__, "kind": kind, "default": default, "help": spec.help,
            "group": spec.group, "choices": choices_of(name), "min": low, "max": high,
            "shown_default": spec.shown_default or (default if spec.cli_default is None else spec.cli_default)}


def _checked_options(options: str, max_memory: int | None) -> dict[str, Any]:
    """A client's options JSON through the option model (422 naming the field); server paths refused,
    and a memory budget over the server's."""
    try:
        given = json.loads(options)
        for name in SERVER_DECIDES:  # no client string ever becomes a path on this machine
            if isinstance(given, dict) and given.get(name) is not None:
                raise HTTPException(422, {"field": name, "error": f"{name} is a server path; not accepted"})
        checked = TransferOptions.from_dict(given)
        if max_memory is not None and (checked.max_memory or 0) > max_memory:
            raise HTTPException(422, {"field": "max_memory", "error": f"over this server's limit per job "
                                                                      f"({max_memory / (1 << 30):.2f} GiB)"})
        return checked.to_dict()
    except OptionError as exc:
        raise HTTPException(422, {"field": exc.option, "error": str(exc)}) from exc
    except (StylerunError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested 50,000 deep
        raise HTTPException(422, {"field": "options", "error": str(exc)}) from exc


def _job_checks(parsed: dict[str, Any], uploads: list[Upload], runner: Runner) -> dict[str, Any]:
    """The server's own settings refused, threads kept to the server's share, and the job's checks run now
    (scales, size, blend weights against the real pictures' headers), not when a worker takes it: 422."""
    for name in SERVER_SETTINGS:
        if (parsed.get(name) or -1) > 0:
            raise HTTPException(422, {"field": name, "error": f"{name} is this server's setting "
                                                              "(--checkpoint-every); not accepted from clients"})
    if parsed.get("threads") is not None:
        parsed["threads"] = runner.share(parsed["threads"])
    try:
        options = TransferOptions.from_dict(parsed)
        check_job(Job("content", ("style",) * (len(uploads) - 1), options))
        shape = content_shape(uploads[0], options.size)
        check_size(*shape, "the content image", original=(uploads[0].width, uploads[0].height), longest=options.size)
        # a schedule that cannot run is refused now, not by a worker (without a size: at the picture's own)
        plan_of(options, options.size or max(shape), shape)
    except OptionError as exc:
        raise HTTPException(422, {"field": exc.option, "error": str(exc)}) from exc
    except StylerunError as exc:
        raise HTTPException(422, {"field": "content", "error": str(exc)}) from exc
    return options.to_dict()


def submit_routes(store: Store, runner: Runner, limits: Limits) -> APIRouter:
    router = APIRouter()

    @router.post("/api/jobs", status_code=201)
    def create(content: UploadFile = File(...), style: list[UploadFile] = File(...),
               options: str = Form("{}")) -> dict[str, Any]:
        """Checked in full, pictures stored at the job's size (atomically), then queued: a worker never
        takes a job whose pictures are missing or half written."""
        parsed = _checked_options(options, runner.max_memory)
        limits.sweep(store)
        if store.waiting() >= limits.max_queued:
            raise limits.full()
        uploads = read_uploads(content, style)
        parsed = _job_checks(parsed, uploads, runner)
        job_id = store.new_id()
        try:
            store_uploads(uploads, parsed, lambda name: store.image(job_id, name))
            queued = store.add(parsed, len(style), job_id, limits.max_queued)
        except BaseException:
            store.remove_files(job_id)
            raise
        if queued is None:
            store.remove_files(job_id)
            raise limits.full()
        runner.wake.set()
        return {"id": job_id, "status": "queued"}

    return router


def job_routes(store: Store, runner: Runner) -> APIRouter:
    """One job's state, events, pictures and cancellation; an unknown id is 404."""
    router = APIRouter()

    def found(job_id: str) -> dict[str, Any]:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, {"error": "no such job"})
        return job

    @router.get("/api/jobs")
    def jobs(response: Response, offset: int = Query(0, ge=0),
             limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        """A page of jobs, newest first; ``X-Total-Count`` says how many there are."""
        response.headers["X-Total-Count"] = str(store.total())
        return store.page(offset, limit)

    @router.get("/api/jobs/{job_id}")
    def get(job_id: str) -> dict[str, Any]:
        return found(job_id)

    streams = {"open": 0}  # counted on the event loop's one thread

    @router.get("/api/jobs/{job_id}/events")
    async def events(job_id: str):
        """Server-Sent Events: the job's state twice a second until it is no longer queued or running.

        The store is read in the thread pool (SQLite on the event loop would stall every other answer),
        and at most `MAX_STREAMS` streams are open at once (429 beyond: poll the job instead)."""
        await run_in_threadpool(found, job_id)
        if streams["open"] >= MAX_STREAMS:
            return JSONResponse({"detail": {"error": f"{MAX_STREAMS} event streams are open already; "
                                                     f"poll GET /api/jobs/{job_id} instead"}}, 429)
        streams["open"] += 1

        async def stream():
            try:
                while True:
                    job = await run_in_threadpool(store.get, job_id)
                    if job is None:  # deleted meanwhile
                        return
                    yield f"data: {json.dumps(job)}\n\n"
                    if job["status"] not in ACTIVE:
                        return
                    await asyncio.sleep(0.5)
            finally:
                streams["open"] -= 1
        return StreamingResponse(stream(), media_type="text/event-stream")

    @router.get("/api/jobs/{job_id}/preview")
    def preview(job_id: str):
        found(job_id)
        path = store.image(job_id, "preview")
        return FileResponse(path) if path.exists() else JSONResponse({"error": "no preview yet"}, 404)

    @router.get("/api/jobs/{job_id}/result")
    def result(job_id: str):
        if found(job_id)["status"] not in ("done", "cancelled"):
            raise HTTPException(409, {"error": "job not finished"})
        path = store.image(job_id, "result")
        return FileResponse(path) if path.exists() else JSONResponse({"error": "cancelled before any image"}, 404)

    @router.delete("/api/jobs/{job_id}")
    def cancel(job_id: str) -> dict[str, Any]:
        """A queued or running job is cancelled (it keeps its best picture); a finished one is removed,
        its files with it."""
        if found(job_id)["status"] in FINISHED:
            store.remove(job_id)
            runner.cancelled.discard(job_id)
            return {"id": job_id, "status": "deleted"}
        runner.cancelled.add(job_id)  # first: a job the runner takes meanwhile stops at its next evaluation
        if store.get(job_id)["status"] in ("queued", "interrupted"):
            store.update(job_id, status="cancelled")
            store.checkpoint(job_id).unlink(missing_ok=True)
        return store.get(job_id)

    return router

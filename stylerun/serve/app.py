"""The FastAPI application: the job API over `Store`, and the page; jobs run by `Runner`."""

from __future__ import annotations

import asyncio
import json
import math
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from stylerun.engine.run import PATH_OPTIONS
from stylerun.errors import OptionError, StylerunError
from stylerun.images.codec import open_image
from stylerun.options import TransferOptions, bounds_of, choices_of, defaults, option_fields
from stylerun.serve.runner import ACTIVE, Runner
from stylerun.serve.store import Store
from stylerun.web.isolated import LocalSite

MAX_UPLOAD = 50 * 1024 * 1024
#: Options the server decides: files on this machine, which no client string may name.
SERVER_DECIDES = (*PATH_OPTIONS, "checkpoint")
#: The page (index.html, app.js, style.css), shipped inside the package: no Node build.
STATIC = Path(__file__).resolve().parent / "static"


def _read_image(upload: UploadFile, field: str):
    """An upload decoded through the bounded decoder (413 over the limit, 400 naming the field if unusable)."""
    data = upload.file.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise HTTPException(413, {"field": field, "error": "upload over 50 MB"})
    try:
        image = open_image(data)
    except StylerunError as exc:
        raise HTTPException(400, {"field": field, "error": str(exc)}) from exc
    return image


def create_app(data: Path, token: str | None = None, workers: int = 1, ray: str | None = None,
               max_memory: int | None = None) -> FastAPI:
    """The application for one data folder (the store and runner are made here, no module globals).

    With `token`, every /api call needs ``Authorization: Bearer TOKEN`` (401 otherwise);
    `workers` jobs run at once, here or, with `ray`, on that Ray cluster's actors, each
    within `max_memory` bytes (default: `runner.job_memory`).
    """
    store = Store(data)
    runner = Runner(store, workers, ray=ray, max_memory=max_memory)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await asyncio.to_thread(runner.close)  # the running job keeps a checkpoint; the next start goes on

    app = FastAPI(title="stylerun", lifespan=lifespan)
    app.state.runner = runner
    if token:
        app.middleware("http")(bearer_auth(token))
    app.include_router(service_routes(runner))
    app.include_router(submit_routes(store, runner))
    app.include_router(job_routes(store, runner))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/local", LocalSite(), name="local")  # the browser-only page, cross-origin isolated (stylerun.web)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


def bearer_auth(token: str):
    """Middleware refusing /api calls without ``Authorization: Bearer TOKEN``."""
    async def auth(request, call_next):
        if request.url.path.startswith("/api/") and request.headers.get("authorization") != f"Bearer {token}":
            return JSONResponse({"error": "missing or wrong bearer token"}, 401)
        return await call_next(request)
    return auth


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
                for f in option_fields() if f.name not in SERVER_DECIDES]

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
    except (StylerunError, ValueError) as exc:
        raise HTTPException(422, {"field": "options", "error": str(exc)}) from exc


def submit_routes(store: Store, runner: Runner) -> APIRouter:
    router = APIRouter()

    @router.post("/api/jobs", status_code=201)
    def create(content: UploadFile = File(...), style: list[UploadFile] = File(...),
               options: str = Form("{}")) -> dict[str, Any]:
        parsed = _checked_options(options, runner.max_memory)
        images = [_read_image(content, "content")] + [_read_image(s, "style") for s in style]
        job_id = store.add(parsed, len(style))
        for name, image in zip(["content"] + [f"style{i}" for i in range(len(style))], images, strict=True):
            image.save(store.image(job_id, name), "PNG")
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
    def jobs() -> list[dict[str, Any]]:
        return [store.get(i) for i in store.ids()]

    @router.get("/api/jobs/{job_id}")
    def get(job_id: str) -> dict[str, Any]:
        return found(job_id)

    @router.get("/api/jobs/{job_id}/events")
    async def events(job_id: str) -> StreamingResponse:
        """Server-Sent Events: the job's state twice a second until it is no longer queued or running."""
        found(job_id)

        async def stream():
            while True:
                job = store.get(job_id)
                yield f"data: {json.dumps(job)}\n\n"
                if job["status"] not in ACTIVE:
                    return
                await asyncio.sleep(0.5)
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
        found(job_id)
        runner.cancelled.add(job_id)  # first: a job the runner takes meanwhile stops at its next evaluation
        if store.get(job_id)["status"] in ("queued", "interrupted"):
            store.update(job_id, status="cancelled")
            store.checkpoint(job_id).unlink(missing_ok=True)
        return store.get(job_id)

    return router

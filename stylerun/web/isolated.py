"""Serving the site cross-origin isolated, which onnxruntime-web's WASM threads need.

A page gets `SharedArrayBuffer` (and so more than one WASM thread) only when it is
cross-origin isolated: COOP same-origin and COEP require-corp on the document. The CSP
lets the page compile WebAssembly ('wasm-unsafe-eval') and start workers from its own
origin, and nothing else: every file comes from the same folder. `HEADERS` is the one
definition; `IsolatedStaticFiles` sends it from Starlette (`stylerun serve` at /local),
`StaticServer` from the standard library (the tests, the bench, a user without serve).
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from stylerun.web.site import cached_site

HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; "
        "connect-src 'self' blob: data:; img-src 'self' blob: data:; style-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}
#: .mjs is JavaScript: a module script or worker served under another type is refused.
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".onnx":
         "application/octet-stream"}


def _starlette_static() -> type:
    from starlette.staticfiles import StaticFiles  # serve's extra: only `stylerun serve` needs it

    class IsolatedStaticFiles(StaticFiles):
        """Starlette's static files, with `HEADERS` on every response."""

        def file_response(self, full_path: Any, *args: Any, **kwargs: Any):
            response = super().file_response(full_path, *args, **kwargs)
            suffix = Path(str(full_path)).suffix
            if suffix in TYPES:
                response.headers["content-type"] = TYPES[suffix]
            response.headers.update(HEADERS)
            return response

    return IsolatedStaticFiles


def isolated_static_files(directory: str | Path, **kwargs: Any):
    """A Starlette static-files app for `directory` that answers with `HEADERS` (index.html at /)."""
    return _starlette_static()(directory=str(directory), html=True, **kwargs)


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **TYPES}

    def end_headers(self) -> None:
        for name, value in self.server.headers.items():  # type: ignore[attr-defined]
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class StaticServer:
    """A folder served on 127.0.0.1 with `headers` (default `HEADERS`), in a thread (port 0: a free one)."""

    def __init__(self, folder: str | Path, port: int = 0, headers: dict[str, str] = HEADERS):
        handler = functools.partial(_Handler, directory=str(folder))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.headers = headers  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> StaticServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class LocalSite:
    """The ASGI app `stylerun serve` mounts at /local: the default site, exported into the cache on
    the first request (seconds, once per version) rather than at every server start."""

    def __init__(self) -> None:
        self.files: Any = None
        self.lock = threading.Lock()

    def _files(self) -> Any:
        with self.lock:
            if self.files is None:
                self.files = isolated_static_files(cached_site())
            return self.files

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path", "").rstrip("/") == scope.get("root_path", "").rstrip("/"):
            if not scope["path"].endswith("/"):  # /local -> /local/: the page's relative URLs need the slash
                from starlette.responses import RedirectResponse

                await RedirectResponse(scope["path"] + "/", 308)(scope, receive, send)
                return
        import anyio

        files = await anyio.to_thread.run_sync(self._files)
        await files(scope, receive, send)

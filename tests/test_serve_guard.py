"""`stylerun serve` beside a browser (issue 27): who may talk to the server and how much they may send.

A real server on 127.0.0.1 answers forged Host and Origin headers, oversized and streamed bodies and
slow sockets sent over raw sockets and httpx; Debian's chromium, headless, plays the DNS rebinding
page and the page on another origin.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import serve, stop
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_CONNECTIONS = 12
TOKEN = "correct-horse-battery-staple"


def _png(size: int = 32) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server with small limits, so that each is reached with little traffic."""
    proc, url = serve(tmp_path_factory.mktemp("guard") / "data", args=(
        "--allow-host", "photos.lan", "--max-upload", "1M", "--header-timeout", "1",
        "--max-connections", str(MAX_CONNECTIONS)))
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def done_job(server):
    """A finished job (the tiniest the serve tests run): something to list, download and cancel."""
    files = [("content", ("c.png", _png(), "image/png")), ("style", ("s.png", _png(), "image/png"))]
    options = {"size": 32, "iterations": 2, "threads": 1}
    job_id = httpx.post(server + "/api/jobs", files=files, data={"options": json.dumps(options)}, timeout=30
                        ).json()["id"]
    deadline = time.monotonic() + 300
    while (job := httpx.get(f"{server}/api/jobs/{job_id}", timeout=30).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    assert job["status"] == "done", job
    return job_id


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _raw(url: str, head: bytes, timeout: float = 30) -> tuple[socket.socket, bytes]:
    """A socket that sent `head` (no body) and the answer (b"" if the server closed at once)."""
    sock = socket.create_connection(("127.0.0.1", _port(url)), timeout=timeout)
    sock.sendall(head)
    return sock, _answer(sock)


def _answer(sock: socket.socket) -> bytes:
    """One whole HTTP answer: its head, then as many body bytes as its Content-Length says (the head
    and the body may arrive in separate segments), or what came before the server closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            return data
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    while length and len(body) < int(length.group(1)):
        part = sock.recv(65536)
        if not part:
            break
        body += part
    return head + b"\r\n\r\n" + body


def test_foreign_host_names_are_refused(server):
    """DNS rebinding sends the page's own name as Host: only loopback, the bound host and --allow-host pass."""
    port = _port(server)
    for host in (f"rebind.attacker.example:{port}", "127.0.0.1.nip.io", f"localhost.evil:{port}"):
        for path in ("/api/jobs", "/api/health", "/"):
            r = httpx.get(server + path, headers={"Host": host})
            assert r.status_code == 403 and "--allow-host" in r.json()["error"], (host, path, r.text)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST", f"photos.lan:{port}"):
        assert httpx.get(server + "/api/health", headers={"Host": host}).status_code == 200, host
    sock, answer = _raw(server, b"GET /api/jobs HTTP/1.0\r\n\r\n")  # no Host at all
    sock.close()
    assert answer.startswith(b"HTTP/1.1 403"), answer


def test_changes_from_another_origin_are_refused(server, done_job):
    """A page's Origin travels with every POST/DELETE it sends, no-cors included: only this origin's pass."""
    port = _port(server)
    for origin in (f"http://127.0.0.1:{port + 1}", "http://evil.example", "null", "http://127.0.0.1",
                   "http://[::1"):
        r = httpx.post(server + "/api/jobs", headers={"Origin": origin}, data={"options": "{}"})
        assert r.status_code == 403 and "origin" in r.json()["error"], (origin, r.text)
        r = httpx.delete(f"{server}/api/jobs/{done_job}", headers={"Origin": origin})
        assert r.status_code == 403, (origin, r.text)
    # the page's own origin, and clients without one (curl), reach the application (its 422 for no files)
    assert httpx.post(server + "/api/jobs", headers={"Origin": server}).status_code == 422
    assert httpx.post(server + "/api/jobs").status_code == 422


def test_cross_site_fetches_are_refused_and_links_still_open(server, done_job):
    """Sec-Fetch-Site: a foreign page's <img> of a result or a no-cors GET is refused; a link to the page is not."""
    for site in ("cross-site", "same-site"):
        for path in (f"/api/jobs/{done_job}/result", "/api/jobs"):
            r = httpx.get(server + path, headers={"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors"})
            assert r.status_code == 403, (site, path, r.text)
        r = httpx.post(server + "/api/jobs", headers={"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors"})
        assert r.status_code == 403, (site, r.text)
        r = httpx.get(server + "/", headers={"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "navigate"})
        assert r.status_code == 200, r.text
    r = httpx.get(server + f"/api/jobs/{done_job}/result", headers={"Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 200 and r.headers["cross-origin-resource-policy"] == "same-origin"


def test_a_declared_body_over_the_cap_is_refused_before_it_is_sent(server):
    """Content-Length 1 GB: the 413 comes back while the client has sent nothing but the head."""
    head = (b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: 1000000000\r\n\r\n")
    sock, answer = _raw(server, head)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413") and b"--max-upload" in answer, answer


def test_a_streamed_body_over_the_cap_is_cut_off(server):
    """Chunked, no length: the bytes are counted as they arrive and the 413 comes once they pass 1M."""
    sock = socket.create_connection(("127.0.0.1", _port(server)), timeout=30)
    sock.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Type: multipart/form-data; boundary=XX\r\n\r\n")
    part = (b'--XX\r\nContent-Disposition: form-data; name="content"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")
    chunk = b"\0" * (64 << 10)
    sent = 0
    try:
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        while sent < 8 << 20:  # 8 times the cap: the server must have answered long before
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
    except OSError:
        pass  # the server closed the connection after its answer
    answer = _answer(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), (sent, answer[:200])
    assert httpx.get(server + "/api/health").status_code == 200


def _closed_by_server(sock: socket.socket, drip: bytes = b"", within: float = 30.0) -> bool:
    """Whether the server closes `sock` within `within` s, while the client sends `drip` every 0.2 s."""
    deadline = time.monotonic() + within
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            pass
        except ConnectionResetError:
            return True
        if drip:
            try:
                sock.sendall(drip)
            except OSError:
                return True
    return False


def test_slow_request_heads_are_closed(server):
    """A socket that sends nothing, one that stops mid-head, one that drips a header line every 0.2 s, and a
    kept-alive one that begins a second request and stops: each is closed (here --header-timeout 1)."""
    port = _port(server)
    silent = socket.create_connection(("127.0.0.1", port))
    partial = socket.create_connection(("127.0.0.1", port))
    partial.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    dripping = socket.create_connection(("127.0.0.1", port))
    dripping.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    kept, answer = _raw(server, b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer
    kept.sendall(b"GET /api/health HTTP/1.1\r\n")
    try:
        assert _closed_by_server(dripping, drip=b"X-Slow: 1\r\n")
        assert _closed_by_server(silent) and _closed_by_server(partial) and _closed_by_server(kept)
    finally:
        for sock in (silent, partial, dripping, kept):
            sock.close()


def test_connections_over_the_limit_get_503_and_slow_heads_do_not_count(server):
    """Requests whose bodies never come hold their connections: past --max-connections the answer is 503, and
    200 again once they go. Sockets still sending their heads are not counted (the head timeout reaps them)."""
    port = _port(server)
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(3 * MAX_CONNECTIONS)]
    try:
        for sock in slow:
            sock.sendall(b"GET /api/health HTTP/1.1\r\n")
        assert httpx.get(server + "/api/health", timeout=30).status_code == 200
    finally:
        for sock in slow:
            sock.close()
    head = (b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: 1000\r\n\r\n")
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in held:
            sock.sendall(head)
        deadline = time.monotonic() + 30
        while (status := httpx.get(server + "/api/health", timeout=30).status_code) != 503:
            assert time.monotonic() < deadline, status  # until the server has read every held head
            time.sleep(0.05)
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 30
    while httpx.get(server + "/api/health", timeout=30).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_options_nested_deep_are_a_422(server):
    files = [("content", ("c.png", _png(), "image/png")), ("style", ("s.png", _png(), "image/png"))]
    r = httpx.post(server + "/api/jobs", files=files, data={"options": "[" * 50_000 + "]" * 50_000}, timeout=30)
    assert r.status_code == 422 and r.json()["detail"]["field"] == "options", r.text


def test_pages_carry_security_headers_and_docs_load_nothing(server):
    page = httpx.get(server + "/")
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(server + "/docs").status_code == 404  # Swagger UI would load its scripts from a CDN
    assert httpx.get(server + "/openapi.json").json()["info"]["title"] == "stylerun"


def test_a_route_keeps_its_own_headers():
    """The headers are defaults: a page that sets its own CSP (COOP/COEP, wasm) keeps it."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from stylerun.serve.guard import Guard, GuardMiddleware

    own = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'"
    page = PlainTextResponse("x", headers={"Content-Security-Policy": own})
    app = Starlette(routes=[Route("/local", lambda request: page)])
    config = uvicorn.Config(GuardMiddleware(app, Guard()), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        r = httpx.get(f"http://127.0.0.1:{port}/local")
        assert r.headers.get_list("content-security-policy") == [own]
        assert r.headers["x-frame-options"] == "DENY"
    finally:
        server.should_exit = True
        thread.join(10)


def test_token_from_the_environment_and_its_checks(tmp_path):
    """$STYLERUN_TOKEN keeps the token off the command line (ps); a short one is refused in one line; an
    Authorization header that is not ASCII is a 401, not a 500."""
    short = subprocess.run([sys.executable, "-m", "stylerun", "serve", "--data", str(tmp_path), "--token", "abc"],
                           capture_output=True, text=True, timeout=60)
    assert short.returncode != 0 and "16" in short.stderr and "Traceback" not in short.stderr, short.stderr
    proc, url = serve(tmp_path / "data", env={"STYLERUN_TOKEN": TOKEN})
    try:
        assert TOKEN.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert httpx.get(url + "/api/health").status_code == 401
        assert httpx.get(url + "/api/health", headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 401
        assert httpx.get(url + "/api/health", headers={"Authorization": b"Bearer \xff\xfe"}).status_code == 401
        assert httpx.get(url + "/api/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    finally:
        stop(proc)


# --- in a real browser ------------------------------------------------------------------------------------

def _chromium(p, *extra: str):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("no chromium (apt-get install chromium)")
    return p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra])


#: In the page: list the jobs, fetch a result, cancel; each request's status (0 if the browser refused it).
REBOUND = """async (id) => {
  const status = async (path, init) => { try { return (await fetch(path, init)).status; } catch (e) { return 0; } };
  return [await status("/api/jobs"), await status(`/api/jobs/${id}/result`),
          await status(`/api/jobs/${id}`, {method: "DELETE"})];
}"""


def test_a_rebinding_page_in_chromium_gets_nothing(server, done_job):
    """A page at http://rebind.test:PORT whose name now resolves to 127.0.0.1: same-origin to the browser, so
    only the Host check stands between it and the jobs."""
    sync_api = pytest.importorskip("playwright.sync_api")
    port = _port(server)
    with sync_api.sync_playwright() as p:
        browser = _chromium(p, "--host-resolver-rules=MAP rebind.test 127.0.0.1")
        page = browser.new_page()
        page.goto(f"http://rebind.test:{port}/")
        assert page.evaluate(REBOUND, done_job) == [403, 403, 403]
        browser.close()
    # the server's own page, under the same headers, still works: CSP and all
    with sync_api.sync_playwright() as p:
        browser = _chromium(p)
        page = browser.new_page()
        refused: list[str] = []
        page.on("console", lambda m: refused.append(m.text) if "Refused" in m.text else None)
        page.goto(server + "/")
        page.wait_for_selector("body[data-ready]", timeout=30_000)
        assert page.evaluate(REBOUND.replace('{method: "DELETE"}', "{}"), done_job) == [200, 200, 200]
        browser.close()
    assert not refused, refused


ATTACKER = """<!doctype html><script>
async function attack(target, png) {
  const bytes = Uint8Array.from(atob(png), (c) => c.charCodeAt(0));
  const body = new FormData();
  body.append("content", new Blob([bytes], {type: "image/png"}), "c.png");
  body.append("style", new Blob([bytes], {type: "image/png"}), "s.png");
  body.append("options", JSON.stringify({size: 32, iterations: 1, threads: 1}));
  try { await fetch(target + "/api/jobs", {method: "POST", mode: "no-cors", body}); } catch (e) {}
  return "sent";
}
function show(src) {  // whether the browser would show the picture to this page
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve("shown");
    img.onerror = () => resolve("refused");
    img.src = src;
  });
}
</script>"""


def test_a_page_on_another_origin_cannot_create_a_job_or_show_a_result(server, done_job):
    """A no-cors multipart POST from http://127.0.0.1:OTHER (its answer is opaque; whether a job appeared is the
    question, asked of the server afterwards), and an <img> of a finished job's result."""
    sync_api = pytest.importorskip("playwright.sync_api")

    class Attacker(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = ATTACKER.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    before = len(httpx.get(server + "/api/jobs").json())
    try:
        with sync_api.sync_playwright() as p:
            browser = _chromium(p)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{attacker.server_address[1]}/")
            assert page.evaluate("([t, png]) => attack(t, png)", [server, base64.b64encode(_png()).decode()]) == "sent"
            assert page.evaluate("show", f"{server}/api/jobs/{done_job}/result") == "refused"
            browser.close()
    finally:
        attacker.shutdown()
    assert len(httpx.get(server + "/api/jobs").json()) == before

"""The exported site in a real headless browser (Debian's chromium driven by Playwright), served from
127.0.0.1 cross-origin isolated: the page's loss and gradient are Python's, `?demo` runs to the end
with a lower loss, the preview changes on the way, and nothing is asked of another host.

The site is exported for the suite's shallow layers (helpers.SHALLOW), which keeps the browser's share of the
test to seconds; docs/browser.md gives the agreement for the default layers.
"""

from __future__ import annotations

import math
import os
import shutil
from urllib.parse import urlsplit

import numpy as np
import pytest
from helpers import SHALLOW, wait_for
from PIL import Image

import stylerun
from stylerun.engine.schedule import COARSEST, MAX_SCALES, scale_plan
from stylerun.images.codec import MIN_SIDE, fit_longest_side
from stylerun.options import TransferOptions
from stylerun.web.isolated import HEADERS, StaticServer
from stylerun.web.site import export_site

sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (test extra)")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Debian's chromium, headless, and never reaching out to the network on its own.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# the suite's shallow layers (helpers.SHALLOW), the style ones unequal so that an order error shows
CONTENT_LAYERS = dict.fromkeys(SHALLOW["content_layers"].split(","), 1.0)
STYLE_LAYERS = dict(zip(SHALLOW["style_layers"].split(","), (0.3, 0.7), strict=True))
ENDED = "body[data-state=done], body[data-state=stopped], body[data-state=error]"

pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="no chromium (apt-get install chromium)")

#: One evaluation in the page's worker, of arrays given as {w, h, data} with the loss's weights.
CHECK = """async (r) => {
  const img = (o) => ({ width: o.w, height: o.h, data: Float32Array.from(o.data) });
  return await window.stylerun.check({ image: img(r.image), content: img(r.content), style: img(r.style),
                                       weights: r.weights });
}"""
#: The preview canvas's pixels, hashed, with the iteration the page says it shows.
PREVIEW = """async () => {
  const c = document.getElementById('preview');
  const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', px));
  return [document.body.dataset.state, c.dataset.iteration ?? null, Array.from(digest).join(',')];
}"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    layers = {k: ",".join(f"{n}:{w}" for n, w in v.items()) for k, v in
              (("content_layers", CONTENT_LAYERS), ("style_layers", STYLE_LAYERS))}
    export_site(folder, force=True, options=TransferOptions(**layers))
    return folder


@pytest.fixture(scope="module")
def site(folder):
    """The site as served: cross-origin isolated, with its CSP."""
    with StaticServer(folder) as server:
        yield server.url


@pytest.fixture(scope="module")
def site_without_csp(folder):
    """The site without its CSP, which would block a fetch elsewhere before it became a request:
    every attempt then shows among the requests, as from a server that sends no CSP."""
    with StaticServer(folder, headers={k: v for k, v in HEADERS.items() if k != "Content-Security-Policy"}) as server:
        yield server.url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, url: str, requests: list[str] | None = None):
    """A page at `url`; with `requests`, every request URL (the worker's too) is recorded there."""
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    if requests is not None:
        page.on("request", lambda request: requests.append(request.url))
    page.goto(url)
    return page, errors


def as_arg(a: np.ndarray) -> dict:
    return {"w": a.shape[1], "h": a.shape[0], "data": a.ravel().tolist()}


def small(path, width: int, height: int) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((width, height), Image.BILINEAR), dtype=np.float32)


def test_page_loss_gradient_and_strength_equal_pythons(browser, site, content_path, style_path):
    height, width = 40, 48  # not square: a swapped H and W would show
    content, style = small(content_path, width, height), small(style_path, width, height)
    x = np.clip(content + np.random.default_rng(0).normal(0, 20, content.shape), 0, 255).astype(np.float32)
    page, errors = open_page(browser, site + "index.html")
    page.wait_for_selector("body[data-state=ready]", state="attached", timeout=120_000)
    assert page.evaluate("self.crossOriginIsolated") and page.evaluate("document.body.dataset.threads") == "2"

    loss = stylerun.StyleLoss(content, style, device="cpu", alpha=2e-3, beta=3.0, tv_weight=1e-3,
                              content_layers=CONTENT_LAYERS, style_layers=STYLE_LAYERS)
    value, grad = loss.loss_and_grad(x)
    weights = {"alpha": 2e-3, "beta": 3.0, "tv": 1e-3}
    got = page.evaluate(CHECK, {"image": as_arg(x), "content": as_arg(content), "style": as_arg(style),
                                "weights": weights})
    assert got["loss"] == pytest.approx(value, rel=1e-4)
    page_grad = np.asarray(got["grad"], np.float32).reshape(grad.shape)
    assert np.abs(page_grad - grad).max() <= 1e-4 * np.abs(grad).max()

    # style strength: the far terms, measured with the page's model, choose Python's alpha
    balanced = stylerun.StyleLoss(content, style, device="cpu", style_strength=0.3, smoothness=0.0,
                                  content_layers=CONTENT_LAYERS, style_layers=STYLE_LAYERS)
    got = page.evaluate(CHECK, {"image": as_arg(x), "content": as_arg(content), "style": as_arg(style),
                                "weights": {"strength": 0.3, "tv": 0}})
    assert got["strength"]["far"] == pytest.approx(list(balanced.far_terms), rel=1e-4)
    assert got["strength"]["alpha"] == pytest.approx(balanced.alpha, rel=1e-4)
    assert got["loss"] == pytest.approx(balanced.loss_and_grad(x)[0], rel=1e-4)

    # smoothness: the TV weight from the style term's far end and the painting's roughness, as Python's
    smooth = stylerun.StyleLoss(content, style, device="cpu", style_strength=0.3, smoothness=0.2,
                                content_layers=CONTENT_LAYERS, style_layers=STYLE_LAYERS)
    got = page.evaluate(CHECK, {"image": as_arg(x), "content": as_arg(content), "style": as_arg(style),
                                "weights": {"strength": 0.3, "smoothness": 0.2}})
    assert smooth.tv_weight > 0 and got["tv_weight"] == pytest.approx(smooth.tv_weight, rel=1e-4)
    assert got["loss"] == pytest.approx(smooth.loss_and_grad(x)[0], rel=1e-4)
    assert not errors
    page.close()


def test_demo_runs_to_a_lower_loss_with_a_live_preview_and_only_local_requests(browser, site_without_csp):
    requests: list[str] = []
    page, errors = open_page(browser, site_without_csp + "index.html?demo", requests)
    page.wait_for_selector("body[data-state=running]", state="attached", timeout=120_000)
    seen: dict[str, str] = {}  # preview digest -> the iteration it showed, while the run was going

    def ended() -> bool:
        state, iteration, digest = page.evaluate(PREVIEW)
        if state == "running" and iteration is not None:
            seen.setdefault(digest, iteration)
        return state != "running"

    wait_for(ended, 300, what="the end of the demo")
    data = page.evaluate("({...document.body.dataset, status: document.getElementById('status').textContent})")
    assert data["state"] == "done", data
    first, last = float(data["lossFirst"]), float(data["lossLast"])
    assert math.isfinite(first) and last < first
    assert len(seen) >= 2, f"the preview never changed while running: {seen}"
    assert "10 of 10 iterations" in data["status"]
    assert page.evaluate("[document.getElementById('preview').width, document.getElementById('preview').height]") \
        == [128, 85]  # the demo's 128 px, at chelsea.jpg's aspect
    assert requests and not errors
    elsewhere = [u for u in requests if urlsplit(u).scheme not in ("blob", "data") and urlsplit(u).hostname
                 != "127.0.0.1"]
    assert not elsewhere, elsewhere
    assert any(u.endswith("ort-wasm-simd-threaded.wasm") for u in requests)  # the worker's fetches are seen too
    page.close()


def test_a_user_picks_files_stops_the_run_and_downloads_a_png(browser, site, tmp_path, content_path, style_path):
    page, errors = open_page(browser, site + "index.html")
    page.wait_for_selector("body[data-state=ready]", state="attached", timeout=120_000)
    page.set_input_files("#content-input", str(content_path))
    page.set_input_files("#style-input", [str(style_path), str(content_path)])  # two paintings, blended
    page.fill("#opt-size", "96")
    page.fill("#opt-iterations", "1000")
    page.click("#start")
    shown = "Number(document.getElementById('preview').dataset.iteration ?? -1)"
    wait_for(lambda: page.evaluate(shown) >= 2, 120, what="iteration 2")  # an attribute poll could miss the 2
    page.click("#stop")
    page.wait_for_selector(ENDED, state="attached", timeout=60_000)
    assert page.evaluate("document.body.dataset.state") == "stopped", page.inner_text("#status")
    assert "Stopped after" in page.inner_text("#status")
    with page.expect_download() as download:
        page.click("#download")
    path = tmp_path / "out.png"
    download.value.save_as(path)
    with Image.open(path) as im:
        assert (im.format, im.size) == ("PNG", (96, 64))  # chelsea.jpg's 384x255 at 96 px
    assert not errors
    page.close()


def test_the_page_plans_stages_and_sizes_as_the_engine(browser, site):
    """plan.js is engine.schedule.scale_plan (automatic scales, ratio, split, a photo's shape) and
    codec.fit_longest_side, halves rounded to even as Python does."""
    page, errors = open_page(browser, site + "index.html")
    plans = [(512, 1, 500, None, 2.0, 0.5), (512, 3, 500, None, 2.0, 0.5), (130, 3, 10, None, 2.0, 0.5),
             (194, 3, 7, None, 2.0, 0.5), (256, 2, 1, None, 2.0, 0.5), (512, 0, 150, None, 2.0, 0.5),
             (1024, 0, 150, (255, 384), 2.0, 0.5), (512, 0, 150, (60, 512), 2.0, 0.5),
             (300, 0, 40, (300, 200), 1.5, 0.3), (2048, 0, 301, None, 2.0, 0.7)]  # 130/4 = 32.5 -> 32
    sizes = [((384, 255), 128), ((255, 384), 96), ((6, 5), 3), ((1000, 999), 512)]  # 5 * 3/6 = 2.5 -> 2
    got = page.evaluate("""async ([plans, sizes, settings]) => {
      const m = await import('./plan.js');
      return [plans.map(([s, k, n, shape, ratio, split]) =>
                m.plan(s, k, n, shape && [shape[1], shape[0]], {...settings, ratio, split})),
              sizes.map(([[w, h], side]) => m.fitted(w, h, side))];
    }""", [plans, sizes, {"coarsest": COARSEST, "maxScales": MAX_SCALES, "minSide": MIN_SIDE}])
    want = [[list(stage) for stage in scale_plan(s, k, n, shape, ratio=ratio, split=split)]
            for s, k, n, shape, ratio, split in plans]
    assert got[0] == want
    assert got[1] == [list(fit_longest_side(*s)) for s in sizes]
    assert not errors
    page.close()


def test_coarse_to_fine_runs_every_stage_of_the_engines_plan(browser, tmp_path):
    layers = {k: ",".join(f"{n}:{w}" for n, w in v.items()) for k, v in
              (("content_layers", CONTENT_LAYERS), ("style_layers", STYLE_LAYERS))}
    config = export_site(tmp_path / "site", options=TransferOptions(scales=2, **layers))
    assert config["defaults"]["scales"] == 2
    with StaticServer(tmp_path / "site") as server:
        page, errors = open_page(browser, server.url + "index.html?demo&iterations=6")
        page.wait_for_selector(ENDED, state="attached", timeout=120_000)
        data = page.evaluate("({...document.body.dataset, stages: document.getElementById('preview').dataset.stages,"
                             " status: document.getElementById('status').textContent})")
    assert data["state"] == "done", data
    # scale_plan(128, 2, 6): 64 px to iteration 3, then 128 px; 255 * 64/384 = 42.5 rounds to 42, as in Python
    assert data["stages"] == "64x42,128x85"
    assert "6 of 6 iterations" in data["status"] and math.isfinite(float(data["lossLast"]))
    assert not errors
    page.close()

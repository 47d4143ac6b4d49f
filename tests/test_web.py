"""The browser's models and site (no browser here: tests/test_web_page.py drives chromium).

The coded models give what the exported float32 models give, bit for bit, at a quarter of
the bytes; `export-web` writes a complete site whose config derives from the engine's
defaults, and keeps to its OUTDIR rules; `serve` answers /local cross-origin isolated.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import SHALLOW, one_line_error, run_cli, serve, shallow_layers, stop

from stylerun.engine.run import plan_of
from stylerun.engine.schedule import COARSEST, MAX_SCALES
from stylerun.images.codec import MIN_SIDE
from stylerun.network.export import build_models
from stylerun.options import DEFAULT_STRENGTH, TransferOptions
from stylerun.web import model as web_model
from stylerun.web.isolated import HEADERS, StaticServer
from stylerun.web.site import STATIC, export_site

LAYERS = shallow_layers()


def session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def run_all(s: ort.InferenceSession, feeds: dict) -> list[np.ndarray]:
    return s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})


def test_coded_models_are_the_exported_ones_bit_for_bit(tmp_path, bundled_weights):
    files = web_model.export_browser_models(tmp_path, LAYERS)
    loss, targets = build_models(bundled_weights, LAYERS)
    assert files.coded_tensors == 6 and files.layers == LAYERS  # conv1_2, conv2_1, conv2_2 in each (conv1_1: small)
    # a quarter of the float32 model, give or take conv1_1 and the biases
    assert files.loss.stat().st_size < 0.3 * len(loss.SerializeToString())
    assert files.targets.stat().st_size < 0.3 * len(targets.SerializeToString())
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (36, 44, 3)).astype(np.float32)
    got_t, want_t = run_all(session(files.targets), {"image": x}), run_all(session(targets), {"image": x})
    for got, want in zip(got_t, want_t, strict=True):
        assert np.array_equal(got, want)
    names = [o.name for o in session(targets).get_outputs()]
    feeds = dict(zip(names, want_t, strict=True)) | {
        "image": np.clip(x + rng.normal(0, 9, x.shape), 0, 255).astype(np.float32),
        "content_weights": np.ones(1, np.float32), "style_weights": np.array([0.3, 0.7], np.float32),
        "alpha": np.array(1e-3, np.float32), "beta": np.array(1.0, np.float32), "tv_weight": np.array(1e-4, np.float32)}
    for got, want in zip(run_all(session(files.loss), feeds), run_all(session(loss), feeds), strict=True):
        assert np.array_equal(got, want)


def test_coding_keeps_tensors_with_more_than_256_values():
    rng = np.random.default_rng(1)
    table = rng.normal(size=256).astype(np.float32)
    assert web_model.lookup_codes(table[rng.integers(0, 256, 5000)]) is not None
    assert web_model.lookup_codes(rng.normal(size=5000).astype(np.float32)) is None  # not a lookup: stays float32
    assert web_model.lookup_codes(table[rng.integers(0, 256, 100)]) is None  # too small to be worth a table
    assert web_model.lookup_codes(table[rng.integers(0, 256, web_model.MIN_CODED)]) is not None  # just large enough
    many = np.arange(257, dtype=np.float32)
    assert web_model.lookup_codes(many[np.arange(5000) % 257]) is None  # 257 values: not one byte each
    assert web_model.lookup_codes(many[np.arange(5000) % 256]) is not None


ROOT = Path(__file__).resolve().parent.parent


def test_export_web_refuses_a_file_and_a_folder_with_something_in_it(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    code, err = run_cli(capsys, monkeypatch, "export-web", str(tmp_path / "file"))
    one_line_error(code, err, "is a file")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    code, err = run_cli(capsys, monkeypatch, "export-web", str(tmp_path / "full"))
    one_line_error(code, err, "not empty", "--force")
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["keep.txt"]  # nothing written


def test_export_web_creates_the_folder_and_force_writes_into_a_full_one(tmp_path, capsys, monkeypatch):
    out = tmp_path / "a" / "site"
    code, err = run_cli(capsys, monkeypatch, "export-web", str(out))
    assert code == 0, err
    for name in ("index.html", "app.js", "worker.js", "lbfgs.js", "style.css", "config.json", "models/loss.onnx",
                 "models/targets.onnx", "ort/ort.wasm.min.mjs", "ort/ort-wasm-simd-threaded.wasm",
                 "examples/chelsea.jpg", "examples/starry_night.jpg"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    options = TransferOptions()
    assert config["defaults"]["iterations"] == options.iterations
    assert config["defaults"]["style_strength"] == DEFAULT_STRENGTH
    assert config["schedule"] == [list(s) for s in plan_of(options, config["defaults"]["size"])]
    assert config["style_layers"] == sorted(options.style_layers) and config["models"]["bytes"] < 30e6
    (out / "keep.txt").write_text("mine")
    code, err = run_cli(capsys, monkeypatch, "export-web", str(out), "--force")
    assert code == 0, err
    assert (out / "keep.txt").read_text() == "mine" and (out / "config.json").is_file()


def test_config_follows_the_options_and_the_engine_plan(tmp_path):
    options = TransferOptions(size=256, iterations=90, scales=3, style_strength=0.7, **SHALLOW)
    config = export_site(tmp_path / "site", options=options)
    assert config["defaults"] | {"size": 256, "iterations": 90, "scales": 3, "style_strength": 0.7} == \
        config["defaults"]
    assert config["schedule"] == [[64, 34], [128, 68], [256, 90]] == [list(s) for s in plan_of(options, 256)]
    assert (config["content_layers"], config["style_layers"]) == (["relu2_2"], ["relu1_1", "relu2_1"])
    assert config["schedule_settings"] == {"ratio": options.scale_ratio, "split": options.scale_split,
                                           "coarsest": COARSEST, "maxScales": MAX_SCALES, "minSide": MIN_SIDE}


def test_the_vendored_runtime_is_the_pinned_one():
    """stylerun/web/static/ort is what `npm run build` in web/ vendors: the version web/package-lock.json pins."""
    lock = json.loads((ROOT / "web" / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/onnxruntime-web"]["version"]
    assert (STATIC / "ort" / "VERSION").read_text().strip() == pinned


def test_static_server_sends_the_isolation_headers(tmp_path):
    (tmp_path / "a.mjs").write_text("export {};")
    with StaticServer(tmp_path) as server, urllib.request.urlopen(server.url + "a.mjs") as response:
        assert {k: response.headers[k] for k in HEADERS} == HEADERS
        assert response.headers["Content-Type"] == "text/javascript"


@pytest.mark.timeout(300)
def test_serve_shows_the_site_at_local_cross_origin_isolated(tmp_path):
    pytest.importorskip("uvicorn")
    proc, url = serve(tmp_path / "data")
    try:
        with urllib.request.urlopen(url + "/local", timeout=120) as response:  # redirected to /local/
            assert response.url.endswith("/local/")
            assert b"app.js" in response.read()
            assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
            assert "'wasm-unsafe-eval'" in response.headers["Content-Security-Policy"]
        with urllib.request.urlopen(url + "/local/config.json", timeout=30) as response:
            assert json.loads(response.read())["defaults"]["iterations"] == TransferOptions().iterations
        with urllib.request.urlopen(url + "/local/ort/ort-wasm-simd-threaded.wasm", timeout=30) as response:
            assert response.headers["Content-Type"] == "application/wasm"
            assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    finally:
        stop(proc)

"""The browser's models and site (no browser here: tests/test_web_page.py drives chromium).

The coded models give what the exported float32 models give, bit for bit, at a quarter of
the bytes; `export-web` writes a complete site whose config derives from the engine's
defaults, and keeps to its OUTDIR rules; `serve` answers /local cross-origin isolated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from stylerun.network.export import build_models
from stylerun.network.loss_graph import LayerSet
from stylerun.web import model as web_model

LAYERS = LayerSet.of({"relu2_1": 1.0}, {"relu1_1": 0.5, "relu2_1": 0.5})


def session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def run_all(s: ort.InferenceSession, feeds: dict) -> list[np.ndarray]:
    return s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})


def test_coded_models_are_the_exported_ones_bit_for_bit(tmp_path, bundled_weights):
    files = web_model.export_browser_models(tmp_path, LAYERS)
    loss, targets = build_models(bundled_weights, LAYERS)
    assert files.coded_tensors >= 4  # conv1_2, conv2_1 and conv2_2 in both models at least
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

"""Every performance optimization against the unoptimized graph: same loss, same gradient.

The reference is `autodiff.add_gradient(..., flavours=REFERENCE)` (the plain per-op rules) run
with onnxruntime's graph optimizations off; each variant is one rule flavour or session
setting switched on, and the default export with the default session settings is checked
too. Tiny images and a shallow layer set keep this well under 30 s.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from stylerun.network import autodiff
from stylerun.network import sessions as runtime
from stylerun.network.export import GRAD
from stylerun.network.loss_graph import (
    ALPHA,
    BETA,
    CONTENT_WEIGHTS,
    IMAGE,
    LOSS,
    STYLE_WEIGHTS,
    LayerSet,
    build_loss_model,
    build_targets_model,
    content_target_name,
    style_target_name,
)
from stylerun.weights.bundled import load_bundled

LAYERS = LayerSet.of({"relu2_2": 1.0}, {"relu1_1": 0.5, "relu2_1": 0.5, "relu3_1": 1.0})
SHAPE = (36, 44, 3)  # odd-ish sizes: pooling floors, non-square


@pytest.fixture(scope="module")
def weights():
    return load_bundled()


@pytest.fixture(scope="module")
def feeds(weights):
    rng = np.random.default_rng(0)
    content = rng.uniform(0, 255, SHAPE).astype(np.float32)
    style = rng.uniform(0, 255, SHAPE).astype(np.float32)
    targets = _session(build_targets_model(weights, LAYERS), "disable")
    names = [o.name for o in targets.get_outputs()]
    got_c = dict(zip(names, targets.run(names, {IMAGE: content}), strict=True))
    got_s = dict(zip(names, targets.run(names, {IMAGE: style}), strict=True))
    feeds = {content_target_name(n): got_c[content_target_name(n)] for n in LAYERS.content}
    feeds.update({style_target_name(n): got_s[style_target_name(n)] for n in LAYERS.style})
    feeds[CONTENT_WEIGHTS] = np.ones(len(LAYERS.content), np.float32)
    feeds[STYLE_WEIGHTS] = np.linspace(0.5, 1.5, len(LAYERS.style)).astype(np.float32)
    feeds[ALPHA] = np.asarray(1e-3, np.float32)
    feeds[BETA] = np.asarray(1.0, np.float32)
    feeds[IMAGE] = rng.uniform(0, 255, SHAPE).astype(np.float32)
    return feeds


def _session(model: onnx.ModelProto, level: str, **settings) -> ort.InferenceSession:
    options = runtime.session_options(1, dataclasses.replace(runtime.MEASURED, level=level, **settings))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, feeds: dict) -> tuple[float, np.ndarray]:
    """One loss and gradient; an input `feeds` lacks (an optional weight, e.g. the tv weight) is zero."""
    zero = np.asarray(0.0, np.float32)
    loss, grad = session.run([LOSS, GRAD], {i.name: feeds.get(i.name, zero) for i in session.get_inputs()})
    return float(loss), grad


def _loss_model(weights, optimize: bool = True, **flavours) -> onnx.ModelProto:
    """The loss graph with the fastest flavours changed by `flavours`, or the plain reference graph."""
    chosen = dataclasses.replace(autodiff.FASTEST, **flavours) if optimize else autodiff.REFERENCE
    return autodiff.add_gradient(build_loss_model(weights, LAYERS), of=LOSS, wrt=IMAGE, grad_name=GRAD,
                                 flavours=chosen)


@pytest.fixture(scope="module")
def reference(weights, feeds):
    return _run(_session(_loss_model(weights, optimize=False), "disable"), feeds)


def _close(got, want):
    loss, grad = got
    ref_loss, ref_grad = want
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    err = np.linalg.norm(grad - ref_grad) / np.linalg.norm(ref_grad)
    assert err < 1e-5, err
    assert np.abs(grad - ref_grad).max() <= 1e-5 * np.abs(ref_grad).max()


@pytest.mark.parametrize(
    "flavours",
    [
        {"gram": "single"},
        {"relu": "sign"},
        {"relu": "hardsigmoid", "pool": "separate"},
        {"relu": "where", "pool": "fused"},
        {"conv": "conv_transpose"},
        {},  # the defaults, whatever they are
    ],
    ids=["gram-single", "relu-sign", "relu-hardsigmoid", "pool-fused-where", "conv-transpose", "defaults"],
)
def test_rule_flavours_match_reference(weights, feeds, reference, flavours):
    _close(_run(_session(_loss_model(weights, **flavours), "disable"), feeds), reference)


def test_pooled_relu_mask_is_exact_on_ties(weights, feeds):
    """Flat regions make equal maxima in a pooling window and zero Relu outputs; the fused
    pooling adjoint (mask at pooled size) must still give the reference gradient exactly."""
    image = np.full(SHAPE, 200.0, np.float32)
    image[:12, :16] = np.random.default_rng(1).uniform(0, 255, (12, 16, 3))
    image[20:, 30:] = 0.0
    flat = {**feeds, IMAGE: image}
    want = _run(_session(_loss_model(weights, optimize=False), "disable"), flat)
    for relu in ("where", "hardsigmoid"):
        got = _run(_session(_loss_model(weights, relu=relu, pool="fused"), "all"), flat)
        _close(got, want)


@pytest.mark.parametrize("level", ["basic", "extended", "all"])
def test_session_optimization_levels_match_reference(weights, feeds, reference, level):
    _close(_run(_session(_loss_model(weights), level), feeds), reference)


@pytest.mark.parametrize(
    "settings",
    [{"arena": False}, {"mem_pattern": False}, {"spinning": False}],
    ids=["no-arena", "no-mem-pattern", "no-spinning"],
)
def test_session_settings_match_reference(weights, feeds, reference, settings):
    _close(_run(_session(_loss_model(weights), runtime.MEASURED.level, **settings), feeds), reference)


def test_optimized_graph_has_fewer_products(weights):
    """The Gram rule really fires: one MatMul per style layer's adjoint instead of two."""
    count = {opt: sum(n.op_type == "MatMul" for n in _loss_model(weights, optimize=opt).graph.node)
             for opt in (False, True)}
    assert count[False] - count[True] == len(LAYERS.style)

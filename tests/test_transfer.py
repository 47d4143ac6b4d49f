"""End to end with the real weights at tiny sizes: API, CLI, init modes, user errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import SHALLOW_FLAGS, one_line_error, run_cli_process
from PIL import Image

import stylerun
from stylerun.engine.loss import StyleLoss, initial_image
from stylerun.engine.optimizers import optimize
from stylerun.options import INITS

SIZE = 64


@pytest.fixture(scope="module")
def small_loss(content_path, style_path):
    return StyleLoss(content_path, style_path, size=SIZE, alpha=1e-3, beta=1.0)


def test_loss_falls(small_loss):
    seen = []
    result = optimize(small_loss, initial_image("content", small_loss), 8, seen.append)
    assert result.iterations == 8 and [p.iteration for p in seen] == list(range(1, 9))
    first, _ = small_loss.loss_and_grad(small_loss.content_image)
    assert result.loss < 0.5 * first
    # L-BFGS-B accepts only descent steps
    assert all(b <= a for a, b in zip(result.history, result.history[1:], strict=False))
    assert result.image.shape == small_loss.shape and np.isfinite(result.image).all()
    assert 0 <= result.image.min() and result.image.max() <= 255  # boxed pixels


@pytest.mark.parametrize("init", INITS)
def test_every_init_mode(small_loss, init):
    start = initial_image(init, small_loss, seed=3)
    assert start.shape == small_loss.shape
    result = optimize(small_loss, start, 2)
    assert result.loss < small_loss.loss_and_grad(start)[0]


def test_init_modes_differ(small_loss):
    inits = {name: initial_image(name, small_loss, seed=3) for name in INITS}
    assert np.array_equal(inits["content"], small_loss.content_image)
    assert np.array_equal(inits["style"], small_loss.style_image)
    assert (inits["white"] == 255).all()
    assert not np.array_equal(inits["random"], initial_image("random", small_loss, seed=4))


def test_style_is_resized_to_content(content_path, style_path):
    loss = StyleLoss(content_path, style_path, size=SIZE)
    assert loss.style_image.shape == loss.content_image.shape
    assert max(loss.shape[:2]) == SIZE


def test_arrays_are_not_resized_without_size(rng):
    content = rng.uniform(0, 255, (40, 36, 3)).astype(np.float32)
    loss = StyleLoss(content, content[:, ::-1].copy(), size=None, style_layers="relu1_1", content_layers="relu2_1")
    np.testing.assert_array_equal(loss.content_image, content)  # float arrays keep their precision
    value, grad = loss.loss_and_grad(content)
    assert grad.shape == (40, 36, 3) and value > 0


def test_python_api_returns_image(content_path, style_path):
    image = stylerun.transfer(content_path, style_path, size=48, iterations=2, style_layers="relu1_1,relu2_1")
    assert isinstance(image, Image.Image) and max(image.size) == 48


def test_cli_transfer_end_to_end(content_path, style_path, tmp_path):
    out = tmp_path / "out.png"
    result = run_cli_process("transfer", str(content_path), str(style_path), "-o", str(out), "--size", str(SIZE),
                     "--iterations", "5", "--save-every", "2", "--init", "random")
    assert result.returncode == 0, result.stderr
    with Image.open(out) as img:
        produced = np.asarray(img.convert("RGB"), dtype=np.float32)
    content = np.asarray(Image.open(content_path).convert("RGB").resize(produced.shape[1::-1]), dtype=np.float32)
    assert max(produced.shape[:2]) == SIZE and produced.shape == content.shape
    assert np.abs(produced - content).mean() > 5  # it changed the picture
    assert sorted(p.name for p in tmp_path.glob("out_*.png")) == ["out_0002.png", "out_0004.png"]
    assert "wrote" in result.stderr


def test_cli_export_then_transfer_with_model(content_path, style_path, tmp_path):
    model = tmp_path / "vgg.onnx"
    result = run_cli_process("export-vgg", "-o", str(model), *SHALLOW_FLAGS)
    assert result.returncode == 0, result.stderr
    assert model.is_file() and (tmp_path / "vgg.targets.onnx").is_file()
    assert "caffe" in result.stderr  # it says which input convention it detected
    out = tmp_path / "out.jpg"
    result = run_cli_process("transfer", str(content_path), str(style_path), "-o", str(out), "--size", "48", "-n", "2",
                     "--model", str(model), *SHALLOW_FLAGS)
    assert result.returncode == 0, result.stderr
    assert out.is_file()


@pytest.mark.parametrize(
    "option,value,needle",
    [
        ("--style-layers", "relu1_1,relu9_9", "unknown layer 'relu9_9'"),
        ("--content-layers", "relu4_2:abc", "not a number"),
        ("--style-layers", "relu1_1:-1", ">= 0"),
        ("--content-layers", "relu4_2:1,relu4_2:2", "listed twice"),
        ("--style-layers", ",", "empty layer list"),
    ],
)
def test_bad_layer_specs_are_one_line_errors(content_path, style_path, tmp_path, option, value, needle):
    result = run_cli_process("transfer", str(content_path), str(style_path), "-o", str(tmp_path / "o.png"), option,
                             value)
    one_line_error(result.returncode, result.stderr, needle)
    assert not (tmp_path / "o.png").exists()


def test_export_bad_layer_is_one_line_error(tmp_path):
    result = run_cli_process("export-vgg", "-o", str(tmp_path / "m.onnx"), "--style-layers", "fc7")
    one_line_error(result.returncode, result.stderr, "unknown layer")


def test_version_and_help():
    version = run_cli_process("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"stylerun {stylerun.__version__}"
    for args in (["--help"], ["transfer", "--help"], ["export-vgg", "--help"]):
        result = run_cli_process(*args)
        assert result.returncode == 0
        assert "Usage" in result.stdout
    assert "--style-layers" in run_cli_process("transfer", "--help").stdout


def test_package_has_no_framework_imports():
    root = Path(stylerun.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        for framework in ("import torch", "from torch", "import tensorflow", "import jax"):
            assert framework not in text, f"{path} imports a deep-learning framework"


def test_unsupported_weights_file_is_refused_before_work(content_path, style_path, tmp_path):
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"not a weights file at all")
    result = run_cli_process("transfer", str(content_path), str(style_path), "-o", str(tmp_path / "o.png"),
                     "--weights", str(bad))
    one_line_error(result.returncode, result.stderr, "unrecognised weights format")
    assert not (tmp_path / "o.png").exists()

"""examples/node: the Node.js program, written from the model contract (docs/weights.md) alone, gives
the loss, its terms and its gradient that onnxruntime gives in Python on the same inputs,
and stylizes an image end to end. Skipped only where node or npm is missing; node_modules
is installed with `npm ci` when absent."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

import stylerun

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "examples" / "node"
NODE, NPM = shutil.which("node"), shutil.which("npm")
CONTENT_LAYERS, STYLE_LAYERS = ["relu2_1"], ["relu1_1", "relu2_1"]
# unequal style weights: a wrong layer order would show
CONTENT_WEIGHTS, STYLE_WEIGHTS = {"relu2_1": 0.8}, {"relu1_1": 0.3, "relu2_1": 0.7}

pytestmark = pytest.mark.skipif(not (NODE and NPM), reason="node and npm are needed for examples/node")


@pytest.fixture(scope="module")
def stylize_js() -> Path:
    if not (NODE_DIR / "node_modules").is_dir():
        # examples/node/.npmrc skips install scripts (onnxruntime-node's would fetch CUDA from nuget.org)
        subprocess.run([NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True,
                       timeout=600)
    return NODE_DIR / "stylize.js"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("node-model") / "m.onnx"
    subprocess.run([sys.executable, "-m", "stylerun", "export-vgg", "-o", str(path),
                    "--content-layers", ",".join(CONTENT_LAYERS), "--style-layers", ",".join(STYLE_LAYERS)],
                   check=True, capture_output=True, timeout=300)
    return path


def node(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([NODE, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def small(path: Path, width: int, height: int) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((width, height), Image.BILINEAR), dtype=np.float32)


def python_evaluation(model: Path, x, content, style, feeds: dict) -> dict[str, np.ndarray]:
    """One evaluation driven by the contract, in Python: targets from the targets model, then the loss model."""
    cpu = ["CPUExecutionProvider"]
    targets = ort.InferenceSession(str(model.with_name(model.stem + ".targets.onnx")), providers=cpu)
    names = [o.name for o in targets.get_outputs()]
    of_content = dict(zip(names, targets.run(None, {"image": content}), strict=True))
    of_style = dict(zip(names, targets.run(None, {"image": style}), strict=True))
    inputs = {f"content_target.{n}": of_content[f"content_target.{n}"] for n in CONTENT_LAYERS}
    inputs |= {f"style_target.{n}": of_style[f"style_target.{n}"] for n in STYLE_LAYERS}
    inputs |= {"image": x, "content_weights": np.array(feeds["content_weights"], np.float32),
               "style_weights": np.array(feeds["style_weights"], np.float32)}
    inputs |= {k: np.array(feeds[k], np.float32) for k in ("alpha", "beta", "tv_weight")}  # 0-d
    session = ort.InferenceSession(str(model), providers=cpu)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs), strict=True))


def test_check_mode_agrees_with_python(stylize_js, model, tmp_path, content_path, style_path):
    height, width = 40, 48  # not square, so a swapped H and W would show
    content = small(content_path, width, height)
    style = small(style_path, width, height)
    x = np.clip(content + np.random.default_rng(0).normal(0, 20, content.shape), 0, 255).astype(np.float32)
    Image.fromarray(content.astype(np.uint8)).save(tmp_path / "content.png")  # lossless: node decodes the same pixels

    # weights that make each weighted term about 1, so an error in any term shows in loss and gradient
    unit = python_evaluation(model, x, content, style, dict(content_weights=[1], style_weights=[1, 1], alpha=1,
                                                            beta=1, tv_weight=1))
    feeds = dict(content_weights=list(CONTENT_WEIGHTS.values()), style_weights=list(STYLE_WEIGHTS.values()),
                 alpha=1 / float(unit["content_loss"]), beta=1 / float(unit["style_loss"]),
                 tv_weight=1 / float(unit["tv_loss"]))
    ref = python_evaluation(model, x, content, style, feeds)

    request = dict(feeds, image={"shape": list(x.shape), "data": x.ravel().tolist()},
                   content=str(tmp_path / "content.png"),
                   style={"shape": list(style.shape), "data": style.ravel().tolist()})
    (tmp_path / "in.json").write_text(json.dumps(request))
    run = node(stylize_js, model, "--check", tmp_path / "in.json")
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)

    assert (got["content_layers"], got["style_layers"]) == (CONTENT_LAYERS, STYLE_LAYERS)
    for name in ("loss", "content_loss", "style_loss", "tv_loss"):
        assert got[name] == pytest.approx(float(ref[name]), rel=1e-5), name
    grad = np.array(got["grad"]["data"], np.float32).reshape(got["grad"]["shape"])
    assert grad.shape == ref["grad"].shape
    assert np.abs(grad - ref["grad"]).max() <= 1e-4 * np.abs(ref["grad"]).max()

    # and stylerun's own reading of the contract (its public API) gives the same loss and gradient
    loss = stylerun.StyleLoss(content, style, model=model, device="cpu", alpha=feeds["alpha"], beta=feeds["beta"],
                              tv_weight=feeds["tv_weight"], content_layers=CONTENT_WEIGHTS, style_layers=STYLE_WEIGHTS)
    value, py_grad = loss.loss_and_grad(x)
    assert got["loss"] == pytest.approx(value, rel=1e-5)
    assert np.abs(grad - py_grad.reshape(grad.shape)).max() <= 1e-4 * np.abs(py_grad).max()


def test_stylizes_end_to_end(stylize_js, model, tmp_path, content_path, style_path):
    Image.fromarray(small(content_path, 48, 40).astype(np.uint8)).save(tmp_path / "content.png")
    # a JPEG of another size: decoded by jpeg-js and resized to the content's size by the program
    Image.fromarray(small(style_path, 72, 45).astype(np.uint8)).save(tmp_path / "style.jpg", quality=90)
    out = tmp_path / "out.png"
    run = node(stylize_js, model, tmp_path / "content.png", tmp_path / "style.jpg", "-o", out,
               "--size", 0, "--iterations", 3, "--threads", 2)
    assert run.returncode == 0, run.stderr
    steps = re.findall(r"^step +(\d+)/3 +loss (\S+)", run.stderr, re.MULTILINE)
    assert [int(s) for s, _ in steps] == [0, 1, 2, 3], run.stderr
    losses = [float(v) for _, v in steps]
    assert losses[-1] < losses[0], run.stderr
    with Image.open(out) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (48, 40))


def test_refuses_the_targets_model(stylize_js, model, tmp_path, content_path, style_path):
    targets = model.with_name(model.stem + ".targets.onnx")
    run = node(stylize_js, targets, content_path, style_path, "-o", tmp_path / "out.png")
    assert run.returncode == 2
    assert "not a stylerun loss model" in run.stderr and not (tmp_path / "out.png").exists()

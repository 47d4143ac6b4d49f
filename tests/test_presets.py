"""Presets (`--preset seed`): resolution under explicit options, the CLI, and the red/blue swap
the original project fed its network, checked against a NumPy reference of its preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image

from stylerun.engine.checkpoint import load_checkpoint
from stylerun.engine.loss import check_model
from stylerun.errors import ModelError, OptionError
from stylerun.network.export import cached_export, export_vgg, model_metadata, read_layers
from stylerun.network.loss_graph import LayerSet
from stylerun.network.sessions import LossModel
from stylerun.options import TransferOptions
from stylerun.presets import PRESETS, seed

CAFFE_MEAN = np.array([103.939, 116.779, 123.68])


def test_a_preset_supplies_its_values():
    options = TransferOptions().replace(preset="seed")
    assert (options.pooling, options.swap_red_blue, options.size, options.init, options.iterations) == \
        ("avg", True, None, "random", 1000)
    assert (options.alpha, options.beta) == (1e-6, 1.0)
    assert options.style_layers == {f"relu{b}_1": 0.2 for b in range(1, 6)}
    assert options.content_layers == {"relu4_2": 1.0}


def test_options_given_explicitly_override_the_preset():
    options = TransferOptions().replace(preset="seed", pooling="max", size=64, alpha=1e-3)
    assert (options.pooling, options.size, options.alpha, options.init) == ("max", 64, 1e-3, "random")
    job = TransferOptions.from_dict({"preset": "seed", "iterations": 5})
    assert (job.iterations, job.pooling, job.swap_red_blue) == (5, "avg", True)


def test_saved_options_keep_what_was_resolved():
    """A checkpoint or job stores the resolved options: reading them back changes nothing."""
    options = TransferOptions().replace(preset="seed", pooling="max", swap_red_blue=False)
    assert TransferOptions.from_dict(options.to_dict()) == options


def test_an_unknown_preset_is_one_line_naming_the_choices(capsys, monkeypatch):
    with pytest.raises(OptionError, match=r"^unknown preset 'paper'; use one of: seed$"):
        TransferOptions().replace(preset="paper")
    code, err = run_cli(capsys, monkeypatch, "transfer", "a.jpg", "b.jpg", "-o", "out.png", "--preset", "paper")
    assert code == 2
    assert err.strip() == "stylerun: error: unknown --preset 'paper'; use one of: seed"


def test_every_preset_documents_where_its_values_come_from():
    for name, preset in PRESETS.items():
        doc = preset.__doc__ or ""
        assert "differs" in doc, f"preset {name} does not say what differs from its source"
        TransferOptions().replace(**preset())  # every value passes the option's check
    assert "swap_red_blue" in seed.__doc__


def _small_pictures(tmp_path):
    rng = np.random.default_rng(3)
    content, style = tmp_path / "c.png", tmp_path / "s.png"
    Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(content)
    Image.fromarray(rng.integers(0, 256, (50, 30, 3), dtype=np.uint8)).save(style)
    return content, style


def test_cli_preset_seed_runs_with_its_settings(tmp_path, capsys, monkeypatch):
    content, style = _small_pictures(tmp_path)
    out = tmp_path / "out.png"
    layers = ["--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1"]  # shallow: a small export
    code, err = run_cli(capsys, monkeypatch, "transfer", str(content), str(style), "-o", str(out), "--preset", "seed",
                        "--iterations", "2", "--checkpoint-every", "1", "-q", *layers)
    assert code == 0, err
    ckpt = load_checkpoint(tmp_path / "out.ckpt.npz", None)
    options = ckpt.options
    assert (options.preset, options.pooling, options.init, options.swap_red_blue) == ("seed", "avg", "random", True)
    assert (options.iterations, options.size, options.alpha) == (2, None, 1e-6)
    assert ckpt.image.shape[:2] == (36, 44)  # the content photo's own size
    assert Image.open(out).size == (44, 36)


def test_cli_flags_win_over_the_preset(tmp_path, capsys, monkeypatch):
    content, style = _small_pictures(tmp_path)
    code, err = run_cli(capsys, monkeypatch, "transfer", str(content), str(style), "-o", str(tmp_path / "o.png"),
                        "--preset", "seed", "-n", "1", "--pooling", "max", "--size", "40", "--checkpoint-every", "1",
                        "-q", "--content-layers", "relu2_1", "--style-layers", "relu1_1")
    assert code == 0, err
    options = load_checkpoint(tmp_path / "o.ckpt.npz", None).options
    assert (options.pooling, options.size, options.init, options.swap_red_blue) == ("max", 40, "random", True)


def _conv(z: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (64, H, W): a 3x3 cross-correlation with zero padding 1, in float64."""
    h, w, _ = z.shape
    padded = np.pad(z.astype(np.float64), ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((kernel.shape[0], h, w))
    for i in range(3):
        for j in range(3):
            out += np.einsum("hwc,oc->ohw", padded[i:i + h, j:j + w], kernel[:, :, i, j].astype(np.float64))
    return out + bias[:, None, None]


def _conv1_1(image: np.ndarray, swap: bool) -> np.ndarray:
    files = cached_export(LayerSet.of({"conv1_1": 1.0}, {}, "avg", swap_red_blue=swap))
    return LossModel(files, "cpu").targets(image)["content_target.conv1_1"][0].astype(np.float64)


def test_the_swap_is_the_original_projects_preprocessing(bundled_weights):
    """The original: x - mean in R, G, B order, flipped to B, G, R, into MatConvNet's RGB network
    (the Caffe network with conv1_1's input channels reversed)."""
    kernel, bias = bundled_weights.convs["conv1_1"]  # Caffe: input channels B, G, R
    x = np.random.default_rng(0).uniform(0, 255, (20, 28, 3)).astype(np.float32)
    original = _conv((x - CAFFE_MEAN)[..., ::-1], kernel[:, ::-1], bias)
    caffe = _conv(x[..., ::-1] - CAFFE_MEAN, kernel, bias)
    swapped, plain = _conv1_1(x, True), _conv1_1(x, False)
    scale = np.abs(original).max()
    assert np.abs(swapped - original).max() < 1e-5 * scale
    assert np.abs(plain - caffe).max() < 1e-5 * scale
    assert np.abs(swapped - caffe).max() > 0.1 * scale  # the swap matters


def test_the_swap_is_in_the_cache_key_and_the_metadata(tmp_path, bundled_weights):
    on, off = (LayerSet.of({"relu1_1": 1.0}, {}, "avg", swap_red_blue=s) for s in (True, False))
    assert cached_export(on).loss != cached_export(off).loss
    meta = model_metadata(cached_export(on).loss)
    assert meta["stylerun.swap_red_blue"] == "true"
    assert "red and blue swapped" in meta["stylerun.input_convention"]
    assert meta["stylerun.input_convention"].split(": ", 1)[1].startswith("RGB")
    assert model_metadata(cached_export(off).loss)["stylerun.swap_red_blue"] == "false"
    files = export_vgg(bundled_weights, off, tmp_path / "plain.onnx")
    assert read_layers(files.loss) == off
    with pytest.raises(ModelError, match="red and blue"):
        check_model(files.loss, on)

"""The loss object's smaller duties (`engine.loss`), each checked for what it returns or says: a given model
refused by name, the weights file, the starting images, masks, the luminance variable, layer weights a
given model has and the options leave out. Shallow models at 48x32 px; a few seconds in all."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from helpers import SHALLOW, shallow_layers
from PIL import Image

from stylerun.engine.loss import StyleLoss, check_model, check_weights_file, initial_image, load_mask
from stylerun.errors import InputError, ModelError, OptionError
from stylerun.images.codec import resize_array
from stylerun.network.export import export_vgg, read_layers
from stylerun.network.loss_graph import LayerSet, style_target_name
from stylerun.options import TransferOptions

TINY = {"size": 48, "device": "cpu", "threads": 1, "alpha": 1.0, "beta": 1.0}
LEAVE_OUT = "leave out `model`"


@pytest.fixture(scope="module")
def swapped_model(tmp_path_factory, bundled_weights):
    """Content and style at relu1_1 and relu2_1, exported with red and blue swapped."""
    path = tmp_path_factory.mktemp("swapped") / "swapped.onnx"
    export_vgg(bundled_weights, LayerSet.of(["relu1_1", "relu2_1"], ["relu1_1", "relu2_1"], "max", 0, True), path)
    return path


@pytest.fixture(scope="module")
def style_only_model(tmp_path_factory, bundled_weights):
    path = tmp_path_factory.mktemp("style-only") / "style.onnx"
    export_vgg(bundled_weights, LayerSet.of([], ["relu1_1"]), path)
    return path


def refusal(model, layers: LayerSet) -> str:
    with pytest.raises(ModelError) as info:
        check_model(model, layers)
    return str(info.value)


def test_a_given_model_is_refused_by_what_differs(shallow_model, swapped_model, style_only_model):
    m, content, style = shallow_model, ["relu2_2"], ["relu1_1", "relu2_1"]
    assert check_model(m, shallow_layers()) == read_layers(m)
    assert refusal(m, LayerSet.of(content, style, "max", 2)) == (
        f"model {m} was exported for 0 guided regions, but 2 were asked (one per style when masks are given); "
        f"{LEAVE_OUT}")
    assert refusal(m, LayerSet.of(content, style, "avg")) == (
        f"model {m} was exported with max pooling, but avg was asked")
    assert refusal(m, LayerSet.of(content, style, "max", 0, True)) == (
        f"model {m} was exported without red and blue swapped, but `swap_red_blue` is on; {LEAVE_OUT}")
    s = swapped_model
    assert refusal(s, LayerSet.of(["relu2_1"], ["relu1_1"])) == (
        f"model {s} was exported with red and blue swapped, but `swap_red_blue` is off; {LEAVE_OUT}")
    export = "export one for these layers with `stylerun export-vgg`, or leave out `model`"
    assert refusal(m, LayerSet.of(["relu2_2", "relu3_1", "relu4_1"], style)) == (
        f"model {m} has no content layer relu3_1, relu4_1 (it was exported for relu2_2); {export}")
    assert refusal(m, LayerSet.of(content, ["relu1_1", "relu3_1"])) == (
        f"model {m} has no style layer relu3_1 (it was exported for relu1_1, relu2_1); {export}")
    o = style_only_model
    assert refusal(o, LayerSet.of(["relu1_1"], ["relu1_1"])) == (
        f"model {o} has no content layer relu1_1 (it was exported for none); {export}")


def test_layers_a_given_model_has_but_the_options_leave_out_weigh_nothing(content_path, style_path,
                                                                           swapped_model):
    """With `model`, the model may have more layers than asked: those are bound with weight 0, so the loss is
    the one a model of exactly the asked layers gives."""
    asked = {"content_layers": "relu2_1", "style_layers": "relu1_1", "swap_red_blue": True, **TINY}
    wide = StyleLoss(content_path, style_path, model=str(swapped_model), **asked)
    exact = StyleLoss(content_path, style_path, **asked)  # exported for these layers alone
    assert wide.model.layers.content == ("relu1_1", "relu2_1") and exact.model.layers.content == ("relu2_1",)
    x = initial_image("random", exact)
    got, want = wide.loss_and_grad(x), exact.loss_and_grad(x)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(wide.last_terms, exact.last_terms, rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-4 * np.abs(want[1]).max())


def test_a_missing_weights_file_is_refused_by_option(tmp_path):
    missing = tmp_path / "vgg.pth"
    with pytest.raises(OptionError) as info:
        check_weights_file(TransferOptions(weights=str(missing)))
    assert info.value.option == "weights" and str(info.value) == f"weights file {missing} not found"
    missing.write_bytes(b"present")  # whether it is a usable file is checked later, by its reader
    check_weights_file(TransferOptions(weights=str(missing)))
    check_weights_file(TransferOptions())


def test_starting_images(rng):
    content = rng.uniform(0, 255, (8, 12, 3)).astype(np.float32)
    style = rng.uniform(0, 255, (20, 10, 3)).astype(np.float32)
    loss = SimpleNamespace(content_image=content, style_image=style, shape=content.shape)
    white = initial_image("white", loss)
    assert white.dtype == np.float32 and white.shape == (8, 12, 3) and (white == 255).all()
    fitted = initial_image("style", loss)
    assert fitted.shape == (8, 12, 3) and np.array_equal(fitted, resize_array(style, (12, 8)))
    noise = initial_image("random", loss, seed=5)
    assert noise.dtype == np.float32
    assert np.array_equal(noise, np.random.default_rng(5).uniform(0, 255, (8, 12, 3)).astype(np.float32))
    assert np.array_equal(initial_image("random", loss), initial_image("random", loss, 0))  # the seed's default
    with pytest.raises(OptionError) as info:
        initial_image("noise", loss)
    assert info.value.option == "init"
    assert str(info.value) == "init must be one of: content, style, white, random; got 'noise'"


def test_masks_are_luminance_in_0_to_1():
    flat = np.array([[-0.5, 0.25], [0.5, 1.5]], np.float32)  # a 2-D array is the mask itself, clipped to 0..1
    got = load_mask(flat, (2, 2))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [[0.0, 0.25], [0.5, 1.0]], atol=1e-6)
    rgb = np.zeros((2, 2, 3), np.uint8)  # an RGB array is a picture in 0..255
    rgb[0, 0] = 255
    rgb[1, 1] = (0, 255, 0)
    np.testing.assert_allclose(load_mask(rgb, (2, 2)), [[1.0, 0.0], [0.0, 0.587]], atol=2e-3)
    with pytest.raises(InputError, match="over the 3 pixel limit"):  # the picture's limits reach masks too
        load_mask(flat, (2, 2), limit=3)


def test_guided_style_grams_are_taken_under_the_style_masks(tmp_path, content_path, style_path):
    halves = []
    for i, name in enumerate(("left", "right")):
        mask = np.zeros((32, 48), np.uint8)
        mask[:, 24 * i:24 * (i + 1)] = 255
        Image.fromarray(mask).save(tmp_path / f"{name}.png")
        halves.append(str(tmp_path / f"{name}.png"))
    guided = {"content_masks": halves, **SHALLOW, **TINY}
    whole = StyleLoss(content_path, [style_path, content_path], **guided)
    masked = StyleLoss(content_path, [style_path, content_path], style_masks=halves, **guided)
    for n in whole.model.layers.style:
        name = style_target_name(n)
        assert whole.targets[name].shape == masked.targets[name].shape
        assert not np.allclose(whole.targets[name], masked.targets[name])


@pytest.fixture(scope="module")
def losses(content_path, style_path):
    rgb = StyleLoss(content_path, style_path, **SHALLOW, **TINY)
    return rgb, StyleLoss(content_path, style_path, preserve_color="luminance", **SHALLOW, **TINY)


def test_the_luminance_variable_is_clipped_to_0_to_255(losses):
    _, luminance = losses
    rgb = np.zeros((32, 48, 3), np.float64)
    rgb[0, 0], rgb[0, 1] = 300.0, -20.0  # a bicubic enlargement of the last scale overshoots like this
    got = luminance.to_variable(rgb)
    assert got.dtype == np.float32 and got.shape == (32, 48, 1)
    assert (got[0, 0, 0], got[0, 1, 0], got[5, 5, 0]) == (255.0, 0.0, 0.0)


def test_in_rgb_mode_the_variable_is_the_image_as_float32(losses):
    rgb_loss, _ = losses
    image = np.full((32, 48, 3), 17.0)  # float64
    assert rgb_loss.to_variable(image).dtype == np.float32 and rgb_loss.to_rgb(image).dtype == np.float32
    gray = np.full((32, 48, 1), 3.0, np.float32)
    assert rgb_loss.to_rgb(gray).shape == (32, 48, 1)  # no chroma is added outside luminance mode
    with pytest.raises(InputError) as info:
        rgb_loss.loss_and_grad(gray)
    assert str(info.value) == "image has shape (32, 48, 1), this loss was built for (32, 48, 3)"


def test_stop_with_hands_the_stop_to_the_sessions(losses):
    rgb_loss, _ = losses

    def never() -> bool:
        return False

    rgb_loss.stop_with(never)
    try:
        assert rgb_loss.model.stop is never
        value, _ = rgb_loss.loss_and_grad(rgb_loss.content_image)  # an evaluation runs in full under it
        assert np.isfinite(value)
    finally:
        rgb_loss.stop_with(None)
    assert rgb_loss.model.stop is None

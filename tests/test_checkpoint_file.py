"""A checkpoint file's round trip, in this process: every style, the recorded inputs and weights, float32
arrays, and the settings' checks (test_untrusted_checkpoints.py feeds hostile files through the CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stylerun.engine.checkpoint import (
    BALANCE_KEY,
    MAX_SETTINGS_CHARS,
    Checkpoint,
    load_checkpoint,
    parse_settings,
    save_checkpoint,
)
from stylerun.errors import InputError
from stylerun.options import TransferOptions


def test_every_style_the_inputs_and_the_weights_come_back(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 255, (4, 5, 3))  # float64 in: float32 on disk
    styles = [rng.uniform(0, 255, (3 + i, 4, 3)) for i in range(3)]
    inputs = {"content": "c.jpg", "style": ["a.jpg", "b.jpg", "d.jpg"], "output": "o.png", "elsewhere": "x"}
    path = save_checkpoint(tmp_path / "c.ckpt.npz", Checkpoint(
        TransferOptions(alpha=0.5), 7, image, image, styles, 2.5, np.ones(3), inputs=inputs, balance=(0.5, 2.0)))
    with np.load(path, allow_pickle=False) as data:
        assert sorted(k for k in data.files if k.startswith("style")) == ["style", "style.1", "style.2"]
        assert all(data[k].dtype == np.float32 for k in ("image", "content", "style", "style.1", "style.2"))
        assert data["iteration"].dtype == np.int64
        text = str(data["settings"])
    assert text == json.dumps(json.loads(text), sort_keys=True)  # one text for one set of settings
    back = load_checkpoint(path)
    assert back.iteration == 7 and back.options.alpha == 0.5
    for got, want in zip(back.style, styles, strict=True):
        np.testing.assert_array_equal(got, want.astype(np.float32))
    assert {k: back.inputs[k] for k in ("content", "style", "output")} == {k: inputs[k] for k in ("content", "style",
                                                                                                   "output")}
    assert "elsewhere" not in back.inputs and back.balance == (0.5, 2.0)


@pytest.mark.parametrize("image", [np.zeros((2, 2, 2), np.float32), np.full((2, 2, 3), np.nan, np.float32),
                                   np.zeros((2, 2), np.float32)])
def test_an_image_that_is_not_a_finite_picture_is_not_written(tmp_path, image):
    with pytest.raises(InputError, match="^refusing to write checkpoint .*: the image is not a finite"):
        save_checkpoint(tmp_path / "c.npz", Checkpoint(TransferOptions(), 1, image, image, [image]))
    assert not list(tmp_path.iterdir())
    gray = np.zeros((2, 2, 1), np.float32)  # luminance mode: one channel is a picture
    save_checkpoint(tmp_path / "g.npz", Checkpoint(TransferOptions(), 1, gray, np.zeros((2, 2, 3)), [gray]))


@pytest.mark.parametrize("balance", [[1.0], [1.0, 2.0, 3.0, 4.0], [1.0, -1.0], [1.0, float("inf")], [True, 1.0],
                                     "1,2", [1.0, "2"], [1.0, 2.0, -3.0]])
def test_recorded_weights_must_be_two_or_three_finite_numbers(balance):
    with pytest.raises(ValueError, match=f"^{BALANCE_KEY} must be two or three finite numbers >= 0$"):
        parse_settings(json.dumps({BALANCE_KEY: balance}))
    assert parse_settings(json.dumps({BALANCE_KEY: [0, 2.5]}))[1][BALANCE_KEY] == (0.0, 2.5)  # before smoothness
    assert parse_settings(json.dumps({BALANCE_KEY: [0, 2.5, 0.25]}))[1][BALANCE_KEY] == (0.0, 2.5, 0.25)


def test_a_checkpoint_from_before_smoothness_resumes_without_it():
    options, _ = parse_settings(json.dumps({"iterations": 5}))
    assert options.smoothing() == 0.0
    options, _ = parse_settings(json.dumps({"iterations": 5, "tv_weight": 0.5}))
    assert options.smoothing() is None and options.tv_weight == 0.5
    assert parse_settings(json.dumps({"smoothness": 0.03}))[0].smoothing() == 0.03


def test_settings_have_a_length_limit():
    padding = " " * (MAX_SETTINGS_CHARS - 2)
    assert parse_settings("{" + padding + "}")[1] == {}  # exactly at the limit
    with pytest.raises(ValueError, match="^settings are too long$"):
        parse_settings("{" + padding + " }")

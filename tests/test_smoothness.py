"""Smoothness: a TV weight measured on the inputs, at the finest scale only, kept where a run is resumed."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import SHALLOW, SHALLOW_FLAGS, run_cli, total_variation

from stylerun.engine import smoothness
from stylerun.engine.loss import StyleLoss
from stylerun.engine.run import Job, Listener, run
from stylerun.errors import OptionError
from stylerun.options import DEFAULT_SMOOTHNESS, TransferOptions
from stylerun.video.run import same_weights

FAST = dict(**SHALLOW, device="cpu", threads=1)


def test_roughness_is_the_tv_term_of_the_photo():
    stripes = np.zeros((4, 6, 3), np.float32)
    stripes[:, 1::2] = 255.0  # every horizontal neighbour differs by 255 in 3 channels, no vertical one
    assert smoothness.roughness(stripes) == pytest.approx(4 * 5 * 3 * 255.0 ** 2)
    assert smoothness.roughness(stripes.transpose(1, 0, 2)) == pytest.approx(4 * 5 * 3 * 255.0 ** 2)
    assert smoothness.roughness(np.full((8, 8, 3), 9.0, np.float32)) == 0.0


def test_the_weight_is_smoothness_times_the_style_scale_over_the_roughness():
    assert smoothness.tv_weight(0.5, 2.0, 300.0, 60.0) == pytest.approx(5.0)
    for bad in ((0.0, 1.0, 1.0, 1.0), (0.5, 1.0, 0.0, 1.0), (0.5, 1.0, 1.0, 0.0), (0.5, 1.0, np.nan, 1.0),
                (0.5, 1.0, 1.0, np.inf)):
        assert smoothness.tv_weight(*bad) == 0.0  # off, or nothing to compare with: no TV term


def test_the_loss_measures_its_tv_weight_on_its_own_inputs(content_path, style_path):
    loss = StyleLoss(content_path, style_path, size=48, smoothness=0.2, **FAST)
    rough = total_variation(loss.content_image)
    assert loss.tv_weight == pytest.approx(0.2 * loss.beta * loss.far_terms[1] / rough, rel=1e-5)
    assert loss.smoothness == 0.2
    # with the weights given there is no strength to measure the style term for: it is measured all the same
    given = StyleLoss(content_path, style_path, size=48, alpha=1e-3, beta=2.0, smoothness=0.2, **FAST)
    assert given.tv_weight == pytest.approx(0.2 * 2.0 * loss.far_terms[1] / rough, rel=1e-5)
    assert StyleLoss(content_path, style_path, size=48, tv_weight=0.75, **FAST).tv_weight == 0.75
    off = StyleLoss(content_path, style_path, size=48, smoothness=0.0, **FAST)
    assert off.tv_weight == 0.0 and off.smoothness is None
    assert StyleLoss(content_path, style_path, size=48, **FAST).smoothness == DEFAULT_SMOOTHNESS


def test_a_smoother_run_paints_a_smoother_picture(content_path, style_path):
    def tv_of(level: float) -> float:
        outcome = run(Job.of(content_path, style_path, size=48, iterations=15, smoothness=level, **FAST))
        return total_variation(outcome.image)

    rough, smooth = tv_of(0.0), tv_of(1.0)
    assert smooth < 0.8 * rough


class Notices(Listener):
    def __init__(self):
        self.lines: list[str] = []

    def notice(self, message: str) -> None:
        self.lines.append(message)


def test_only_the_finest_scale_is_smoothed_and_a_given_weight_applies_at_every_scale(content_path, style_path):
    said = Notices()
    run(Job.of(content_path, style_path, size=96, scales=2, iterations=4, **FAST), said)
    assert [line.split(" at ")[-1] for line in said.lines] == ["48x32", "96x64"]
    assert "smoothness" not in said.lines[0] and f"smoothness {DEFAULT_SMOOTHNESS:g}: tv weight" in said.lines[1]
    said = Notices()
    outcome = run(Job.of(content_path, style_path, size=96, scales=2, iterations=4, tv_weight=0.5, **FAST), said)
    assert not any("smoothness" in line for line in said.lines) and outcome.loss_object.tv_weight == 0.5


def test_a_smoothness_and_a_tv_weight_cannot_both_be_given(capsys, monkeypatch, tmp_path, content_path, style_path):
    with pytest.raises(OptionError) as info:
        TransferOptions(smoothness=0.1, tv_weight=1.0)
    assert info.value.option == "smoothness"
    assert TransferOptions(tv_weight=1.0).smoothing() is None and TransferOptions().smoothing() == DEFAULT_SMOOTHNESS
    assert TransferOptions().replace(preset="seed").smoothing() == 0.0  # the original project had no TV term
    assert TransferOptions().replace(preset="seed", tv_weight=2.0).tv_weight == 2.0  # given wins over the preset
    out = tmp_path / "out.png"
    code, err = run_cli(capsys, monkeypatch, "transfer", str(content_path), str(style_path), "-o", str(out),
                        "--size", "48", *SHALLOW_FLAGS, "--device", "cpu", "--smoothness", "0.1", "--tv-weight", "1")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--smoothness cannot be combined with --tv-weight" in err and not out.exists()


def test_a_clips_later_frames_keep_the_first_frames_tv_weight(content_path, style_path):
    outcome = run(Job.of(content_path, style_path, size=48, iterations=2, **FAST))
    later = same_weights(TransferOptions(**FAST), outcome)
    assert later.tv_weight == outcome.loss_object.tv_weight > 0 and later.smoothness is None
    assert later.alpha == outcome.loss_object.alpha


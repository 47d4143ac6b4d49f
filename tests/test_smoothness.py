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


def test_roughness_is_the_paintings_tv_per_pixel_at_the_outputs_size():
    stripes = np.zeros((4, 6, 3), np.float32)
    stripes[:, 1::2] = 255.0  # every horizontal neighbour differs by 255 in 3 channels, no vertical one
    per_pixel = 4 * 5 * 3 * 255.0 ** 2 / 24
    assert smoothness.roughness([stripes], [1.0], 100) == pytest.approx(100 * per_pixel)
    flat = np.full((8, 8, 3), 9.0, np.float32)
    # a blend counts each painting by its weight; a weight of 0 is not even looked at
    assert smoothness.roughness([stripes, flat], [0.25, 0.75], 100) == pytest.approx(25 * per_pixel)
    assert smoothness.roughness([stripes, None], [1.0, 0.0], 100) == pytest.approx(100 * per_pixel)


def test_the_weight_is_smoothness_times_the_style_scale_over_the_roughness():
    assert smoothness.tv_weight(0.5, 2.0, 300.0, 60.0) == pytest.approx(5.0)
    for bad in ((0.0, 1.0, 1.0, 1.0), (0.5, 1.0, 0.0, 1.0), (0.5, 1.0, 1.0, 0.0), (0.5, 1.0, np.nan, 1.0),
                (0.5, 1.0, 1.0, np.inf)):
        assert smoothness.tv_weight(*bad) == 0.0  # off, or nothing to compare with: no TV term


def test_the_loss_measures_its_tv_weight_on_its_own_inputs(content_path, style_path):
    loss = StyleLoss(content_path, style_path, size=48, smoothness=0.2, **FAST)
    h, w, _ = loss.shape
    rough = sum(total_variation(s) for s in loss.style_images) / (h * w) * (h * w)
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


def test_guided_regions_count_each_painting_by_the_area_its_mask_covers(content_path, style_path, shipwreck):
    plain = StyleLoss(content_path, style_path, size=48, **FAST)
    h, w, _ = plain.shape
    left = np.zeros((h, w), np.float32)
    left[:, : w // 4] = 1.0  # a quarter of the picture for the painting, the rest for the shipwreck
    masks = dict(content_masks=[left, 1 - left], size=48, **FAST)
    guided = StyleLoss(content_path, [style_path, shipwreck], alpha=1e-3, **masks)
    unit = StyleLoss(content_path, [style_path, shipwreck], alpha=1.0, beta=1.0, smoothness=0.0, **masks)
    unit.loss_and_grad(unit.content_image)
    far = unit.last_terms[1]  # the style term of the photo, under the same guidance
    rough = 0.25 * total_variation(guided.style_images[0]) + 0.75 * total_variation(guided.style_images[1])
    assert guided.tv_weight == pytest.approx(DEFAULT_SMOOTHNESS * guided.beta * far / rough, rel=1e-4)

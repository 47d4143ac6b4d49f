"""The default coarse-to-fine schedule: its scales and iterations, the painting's size at each scale,
the seed preset's single scale, the ETA's count of it, and an exact resume across scales."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import stylerun
from stylerun.engine import run as engine
from stylerun.engine.estimate import STAGE_SETUP_EVALUATIONS, seconds_left
from stylerun.engine.loss import StyleLoss, fit_style
from stylerun.engine.run import plan_of
from stylerun.engine.schedule import COARSEST, auto_scales, scale_plan, split_iterations
from stylerun.errors import InputError
from stylerun.images.codec import decode
from stylerun.options import TransferOptions
from stylerun.video.run import finest_only

SMALL = {"size": 96, "content_layers": "relu2_2", "style_layers": "relu1_1,relu2_1", "device": "cpu", "threads": 1}


def test_the_defaults_are_a_coarse_to_fine_schedule_and_the_seed_keeps_one_scale():
    options = TransferOptions()
    assert (options.scales, options.scale_ratio, options.scale_split, options.iterations) == (0, 2.0, 0.25, 150)
    seed = TransferOptions().replace(preset="seed")
    assert seed.scales == 1 and seed.iterations == 1000
    assert TransferOptions().replace(preset="seed", scales=3).scales == 3  # given explicitly, it wins


@pytest.mark.parametrize(("size", "sides"), [
    (96, [96]),  # small: one scale
    (256, [128, 256]),
    (512, [128, 256, 512]),
    (1024, [128, 256, 512, 1024]),
    (2048, [128, 256, 512, 1024, 2048]),
])
def test_auto_scales_start_near_the_coarsest_side(size, sides):
    assert [side for side, _ in scale_plan(size, 0, 150, ratio=2.0, split=0.25)] == sides


def test_auto_scales_follow_the_ratio_and_never_go_under_the_minimum_side():
    sides = [side for side, _ in scale_plan(512, 0, 150, ratio=1.414, split=0.25)]
    assert len(sides) == 5 and abs(sides[0] - COARSEST) < 10 and sides[-1] == 512
    assert auto_scales(512, 2.0, (48, 512, 3)) == 1  # a 512x48 strip: 12 px short side at 128
    assert auto_scales(512, 2.0, (100, 512, 3)) == 2  # 128x25 would be too thin; 256x50 is not
    with pytest.raises(InputError, match="scales"):
        scale_plan(512, 3, 150, (48, 512, 3), ratio=2.0, split=0.25)  # asked for, it is refused rather than changed


def test_iterations_go_a_quarter_to_the_finest_scale_and_the_count_runs_on():
    assert split_iterations(150, 3, 0.5) == [37, 37, 76]
    assert split_iterations(150, 3, 0.25) == [56, 56, 38]
    assert split_iterations(100, 4, 0.25) == [25, 25, 25, 25]
    assert plan_of(TransferOptions(), 512) == [(128, 56), (256, 112), (512, 150)]  # the defaults
    assert scale_plan(512, 3, 10, ratio=2.0, split=1.0) == [(512, 10)]  # coarse scales with no iterations are dropped
    assert scale_plan(512, 1, 150, ratio=2.0, split=0.25) == [(512, 150)]


def test_the_painting_is_sized_at_every_scale_by_the_photos_rule(monkeypatch, content_path, style_path):
    made = []

    class Recording(StyleLoss):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append((self.shape[:2], [s.shape[:2] for s in self.style_images]))

    monkeypatch.setattr(engine, "StyleLoss", Recording)
    stylerun.transfer(content_path, style_path, iterations=4, scales=2, style_scale=1.5, **SMALL)
    assert made == [((32, 48), [(45, 72)]), ((64, 96), [(90, 144)])]  # 1.5 x the stage's side, its own aspect
    made.clear()
    stylerun.transfer(content_path, style_path, iterations=4, scales=2, **SMALL)
    assert made == [((32, 48), [(32, 48)]), ((64, 96), [(64, 96)])]  # stretched to each stage
    painting = decode(style_path)
    assert fit_style(painting, (32, 48, 3), TransferOptions(style_scale=2.0)).shape[:2] == (60, 96)


def test_the_eta_counts_every_scale_still_to_come_with_its_setup():
    # 1 s an iteration at 48 px; the 96 px stage costs four times as much an evaluation
    left = seconds_left(1.0, 1, [4, 8], 0, [1.0, 4.0])
    assert left == pytest.approx(3 + 4 * (4 + STAGE_SETUP_EVALUATIONS))
    assert seconds_left(2.0, 6, [4, 8], 1, [1.0, 4.0]) == pytest.approx(4.0)


@pytest.mark.parametrize("stop_at", [3, 4, 6])  # inside the coarse scale, at its last iteration, in the fine one
def test_an_interrupted_run_resumed_across_scales_paints_the_same_pixels(tmp_path, content_path, style_path,
                                                                          stop_at):
    full = stylerun.transfer(content_path, style_path, tmp_path / "full.png", iterations=8, scales=2, **SMALL)
    stop, seen = threading.Event(), []

    def callback(p):
        seen.append(p.image.shape[:2])
        assert p.iterations == 8  # progress counts toward the whole run, not the scale's last iteration
        if p.iteration == stop_at:
            stop.set()

    out = tmp_path / "run.png"
    stylerun.transfer(content_path, style_path, out, iterations=8, scales=2, checkpoint_every=100, stop=stop,
                      callback=callback, **SMALL)
    assert len(seen) == stop_at and seen[0] == (32, 48)
    resumed = stylerun.transfer(resume=tmp_path / "run.ckpt.npz", output=tmp_path / "resumed.png")
    assert np.array_equal(np.asarray(resumed), np.asarray(full))


def test_video_frames_after_the_first_run_the_finest_scale_with_its_iterations():
    options = TransferOptions(size=512, iterations=150)
    later = finest_only(options, (384, 512, 3))
    assert (later.scales, later.iterations) == (1, 38)
    assert finest_only(TransferOptions(scales=1), (384, 512, 3)).iterations == 150



def test_the_outcome_counts_the_evaluations_of_every_scale(content_path, style_path):
    """L-BFGS-B evaluates at least once per iteration, so a run's count is at least its iterations
    (the last scale's alone is about half of them)."""
    outcome = engine.run(engine.Job.of(content_path, style_path, iterations=8, scales=2, **SMALL))
    assert outcome.iterations == 8 and outcome.evaluations >= 8, outcome.evaluations

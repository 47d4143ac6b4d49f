"""Issue #6, "artistic controls": several styles, style scale, colour preservation, total
variation, optimizer options and multi-scale, each checked numerically, through the API,
the CLI and checkpoints.

A shallow layer set at 48-64 px keeps every run to a second or two.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import pytest
from helpers import SHALLOW, SHALLOW_FLAGS, run_cli, total_variation
from PIL import Image

from stylerun import transfer
from stylerun.engine import run as engine
from stylerun.engine.checkpoint import load_checkpoint, parse_settings
from stylerun.engine.loss import StyleLoss, initial_image, resize_to
from stylerun.engine.optimizers import optimize
from stylerun.engine.run import scale_plan
from stylerun.errors import InputError
from stylerun.images import color
from stylerun.network.loss_graph import content_target_name, style_target_name
from stylerun.options import ADAM_LEARNING_RATE, TransferOptions
from stylerun.vgg import spatial_size

LAYERS = SHALLOW
CLI_LAYERS = SHALLOW_FLAGS


# --- 1. several styles --------------------------------------------------------------------------


def test_blend_one_zero_is_the_single_style_exactly(content_path, style_path, shipwreck):
    single = StyleLoss(content_path, style_path, size=64, **LAYERS)
    blended = StyleLoss(content_path, [style_path, shipwreck], size=64, style_blend="1,0", **LAYERS)
    assert blended.style_blend == [1.0, 0.0]
    for name, target in single.targets.items():
        np.testing.assert_array_equal(blended.targets[name], target)
    x = single.content_image
    assert blended.loss_and_grad(x)[0] == single.loss_and_grad(x)[0]


def test_blend_is_the_weighted_sum_of_grams(content_path, style_path, shipwreck):
    a = StyleLoss(content_path, style_path, size=48, **LAYERS)
    b = StyleLoss(content_path, shipwreck, size=48, **LAYERS)
    mix = StyleLoss(content_path, [style_path, shipwreck], size=48, style_blend=[3, 1], **LAYERS)  # -> 0.75, 0.25
    assert mix.style_blend == [0.75, 0.25]
    equal = StyleLoss(content_path, [style_path, shipwreck], size=48, **LAYERS)
    assert equal.style_blend == [0.5, 0.5]
    for layer in ("relu1_1", "relu2_1"):
        name = style_target_name(layer)
        np.testing.assert_allclose(mix.targets[name], 0.75 * a.targets[name] + 0.25 * b.targets[name], rtol=1e-5)
    np.testing.assert_array_equal(mix.targets[content_target_name("relu2_2")],
                                  a.targets[content_target_name("relu2_2")])


@pytest.mark.parametrize("blend,needle", [("1", "1 weight for 2"), ("0,0", "not all 0"), ("a,b", "numbers"),
                                          ("1,-1", ">= 0")])
def test_bad_blends_are_refused(content_path, style_path, shipwreck, blend, needle):
    with pytest.raises(InputError, match=needle):
        StyleLoss(content_path, [style_path, shipwreck], size=48, style_blend=blend, **LAYERS)


# --- 2. style scale -----------------------------------------------------------------------------


def test_spatial_size_matches_the_network(content_path, style_path):
    loss = StyleLoss(np.full((53, 39, 3), 128, np.float32), np.full((53, 39, 3), 128, np.float32),
                     content_layers="pool2", style_layers="relu1_1")
    assert loss.targets[content_target_name("pool2")].shape[2:] == spatial_size("pool2", 53, 39) == (13, 9)
    assert spatial_size("relu1_1", 53, 39) == (53, 39) and spatial_size("relu5_1", 64, 48) == (4, 3)


def test_style_scale_one_is_the_default_for_a_same_shaped_style(content_path, style_path):
    default = StyleLoss(content_path, style_path, size=64, **LAYERS)
    same_shape = default.style_image  # already the content's size: both ways leave it as it is
    plain = StyleLoss(content_path, same_shape, size=64, **LAYERS)
    scaled = StyleLoss(content_path, same_shape, size=64, style_scale=1.0, **LAYERS)
    assert scaled.style_image.shape == default.shape
    for name in default.targets:
        np.testing.assert_array_equal(scaled.targets[name], plain.targets[name])


def test_style_scale_sets_the_style_size_and_keeps_its_aspect(content_path, style_path):
    loss = StyleLoss(content_path, style_path, size=64, style_scale=1.5, **LAYERS)
    sw, sh = Image.open(style_path).size
    h, w, _ = loss.style_image.shape
    assert max(h, w) == 96 and abs(w / h - sw / sh) < 0.03
    with pytest.raises(InputError, match="style_scale"):
        StyleLoss(content_path, style_path, size=64, style_scale=0.2, **LAYERS)


def test_normalized_grams_of_a_tiled_texture_do_not_depend_on_the_style_size(rng):
    """A periodic texture at 128 px (style-scale 2) and at 64 px (scale 1) has the same statistics;
    the M_l rescaling makes their targets agree (without it they would differ 4x)."""
    tile = rng.uniform(0, 255, (16, 16, 3)).astype(np.float32)
    big = np.tile(tile, (8, 8, 1))  # 128 x 128
    content = np.full((64, 64, 3), 120, np.float32)
    small_style = StyleLoss(content, big[:64, :64], style_scale=1.0, **LAYERS)
    big_style = StyleLoss(content, big, style_scale=2.0, **LAYERS)
    assert big_style.style_image.shape == (128, 128, 3)  # used as it is, not resized
    for layer in ("relu1_1", "relu2_1"):
        name = style_target_name(layer)
        small, large = small_style.targets[name], big_style.targets[name]
        error = np.linalg.norm(large - small) / np.linalg.norm(small)
        assert error < 0.05, (layer, error)


# --- 3. colour preservation ---------------------------------------------------------------------


def test_luminance_keeps_the_contents_chroma(content_path, style_path):
    loss = StyleLoss(content_path, style_path, size=64, preserve_color="luminance", **LAYERS)
    start = loss.to_variable(initial_image("content", loss))
    assert start.shape == loss.shape[:2] + (1,) and loss.objective.shape == start.shape
    result = optimize(loss.objective, start, 6)
    assert result.image.shape == start.shape and result.loss < loss.objective.loss_and_grad(start)[0]
    rgb = loss.to_rgb(result.image)
    assert np.abs(color.luminance(rgb) - color.luminance(loss.content_image)).mean() > 3  # it did stylize
    inside = ((rgb > 0.5) & (rgb < 254.5)).all(axis=2)  # not clipped
    assert inside.mean() > 0.5
    chroma = np.abs(color.rgb_to_yiq(rgb)[..., 1:] - color.rgb_to_yiq(loss.content_image)[..., 1:])[inside]
    assert chroma.max() < 1e-3
    # the network saw luminance only: the targets are those of the grey images
    gray = {**loss.model.targets(color.gray(loss.style_image)), **{
        k: v for k, v in loss.model.targets(color.gray(loss.content_image)).items() if k.startswith("content")}}
    for name in loss.targets:
        np.testing.assert_allclose(loss.targets[name], gray[name], rtol=1e-5)


def test_histogram_matching_gives_the_style_the_contents_colour_statistics(content_path, style_path):
    loss = StyleLoss(content_path, style_path, size=64, preserve_color="histogram", **LAYERS)
    matched = loss.style_for_targets(loss.style_image).reshape(-1, 3).astype(np.float64)
    content = loss.content_image.reshape(-1, 3).astype(np.float64)
    assert np.abs(matched.mean(0) - content.mean(0)).max() < 2.0
    cov_m, cov_c = np.cov(matched, rowvar=False), np.cov(content, rowvar=False)
    assert np.linalg.norm(cov_m - cov_c) / np.linalg.norm(cov_c) < 0.05
    original = loss.style_image.reshape(-1, 3)
    assert np.abs(original.mean(0) - content.mean(0)).max() > 10  # it did move
    plain = StyleLoss(content_path, style_path, size=64, **LAYERS)
    name = style_target_name("relu1_1")
    assert not np.allclose(plain.targets[name], loss.targets[name])
    with pytest.raises(InputError, match="preserve_color"):
        StyleLoss(content_path, style_path, size=64, preserve_color="chroma", **LAYERS)


# --- 4. total variation -------------------------------------------------------------------------


def test_tv_weight_smooths_the_result(content_path, style_path):
    runs = {}
    for tv in (0.0, 1.0):
        loss = StyleLoss(content_path, style_path, size=64, tv_weight=tv, **LAYERS)
        runs[tv] = optimize(loss, initial_image("random", loss, seed=1), 10).image
    assert total_variation(runs[1.0]) < 0.7 * total_variation(runs[0.0])


# --- 5. optimizer options -----------------------------------------------------------------------


def test_adam_lowers_the_loss_and_stays_in_range(content_path, style_path):
    loss = StyleLoss(content_path, style_path, size=48, **LAYERS)
    start = initial_image("content", loss)
    seen = []
    result = optimize(loss, start, 12, seen.append, optimizer="adam")
    assert ADAM_LEARNING_RATE == 10.0 and [p.iteration for p in seen] == list(range(1, 13))
    assert result.evaluations == 12 and result.loss < 0.5 * loss.loss_and_grad(start)[0]
    assert 0 <= result.image.min() and result.image.max() <= 255
    with pytest.raises(InputError, match="optimizer"):
        optimize(loss, start, 1, optimizer="sgd")
    with pytest.raises(InputError, match="learning_rate"):
        optimize(loss, start, 1, optimizer="adam", learning_rate=0)


def test_lbfgs_memory_reaches_scipy(content_path, style_path):
    loss = StyleLoss(content_path, style_path, size=48, **LAYERS)
    iterations = []
    result = optimize(loss, initial_image("content", loss), 10, iterations.append, 3,
                      stop=lambda: len(iterations) >= 2)
    assert result.interrupted and result.lbfgs is not None and result.lbfgs.m == 3
    n = result.image.size
    assert result.lbfgs.wa.size == 2 * 3 * n + 5 * n + 11 * 9 + 8 * 3  # SciPy's workspace for m = 3


# --- 6. multi-scale -----------------------------------------------------------------------------


def test_scale_plan_splits_sizes_and_iterations():
    assert scale_plan(256, 1, 100, ratio=2.0, split=0.5) == [(256, 100)]
    assert scale_plan(256, 3, 100, ratio=2.0, split=1 / 3) == [(64, 33), (128, 66), (256, 100)]
    with pytest.raises(InputError, match="scales"):
        scale_plan(64, 2, 10, (42, 64, 3), ratio=2.0, split=0.5)  # 21 px short side at the coarse scale
    with pytest.raises(InputError, match="scales"):
        scale_plan(64, 9, 10, ratio=2.0, split=0.5)


def test_resize_image_keeps_values_and_shape():
    image = np.random.default_rng(0).uniform(0, 255, (20, 30, 1)).astype(np.float32)
    up = resize_to(image, (40, 60, 3))
    assert up.shape == (40, 60, 1) and up.dtype == np.float32 and 0 <= up.min() and up.max() <= 255
    assert abs(up.mean() - image.mean()) < 2


def test_multiscale_transfer(content_path, style_path):
    seen = []
    out = transfer(content_path, style_path, size=96, iterations=6, scales=2, scale_split=0.5, callback=seen.append,
                   device="cpu", **LAYERS)
    assert out.size == (96, 64)
    assert [p.iteration for p in seen] == list(range(1, 7))
    assert [p.image.shape[:2] for p in seen][::3] == [(32, 48), (64, 96)]  # 3 iterations at each scale


# --- API and CLI mirror each other; checkpoints -------------------------------------------------


def test_transfer_keywords(content_path, style_path, shipwreck, tmp_path):
    """Each of the six controls, given to `transfer` by keyword, does what docs/controls.md says, measured on
    the picture it returns (3 iterations at 48 px, starting from the content photo)."""
    def run(styles=style_path, **options) -> np.ndarray:
        out = transfer(content_path, styles, size=48, iterations=3, device="cpu", threads=1, **LAYERS, **options)
        assert out.size == (48, 32)
        return np.asarray(out, np.float64)

    content = np.asarray(Image.open(content_path).convert("RGB").resize((48, 32), Image.Resampling.LANCZOS),
                         np.float64)
    plain = run()
    # style_blend: 1,0 is the first style alone, exactly; 0.7,0.3 brings in the second
    assert np.array_equal(run([style_path, shipwreck], style_blend=[1, 0]), plain)
    assert np.abs(run([style_path, shipwreck], style_blend=[0.7, 0.3]) - plain).mean() > 1
    # style_scale: the style is resized to 1.2 x the output's longest side, keeping its aspect (not stretched)
    run(style_scale=1.2, output=tmp_path / "scaled.png", checkpoint_every=3)
    scaled = load_checkpoint(tmp_path / "scaled.ckpt.npz").style[0]
    assert max(scaled.shape[:2]) == round(1.2 * 48) and scaled.shape[:2] != (32, 48)
    # preserve_color="luminance": the content's colours (YIQ chroma) stay, only the luminance is styled
    kept = run(preserve_color="luminance")
    inside = ((kept > 0.5) & (kept < 254.5)).all(axis=2)

    def chroma(x):
        return color.rgb_to_yiq(x)[..., 1:][inside]

    assert np.abs(chroma(kept) - chroma(content)).max() < 1 < np.abs(chroma(plain) - chroma(content)).max()
    # tv_weight: a smoother picture
    assert total_variation(run(tv_weight=1.0)) < 0.9 * total_variation(plain)
    # optimizer="adam" with learning_rate: each of the 3 steps moves a pixel by at most about the rate (and
    # rounding), where L-BFGS-B's line search moves pixels by far more
    slow, fast = run(optimizer="adam", learning_rate=1), run(optimizer="adam", learning_rate=5)
    assert np.abs(slow - content).max() <= 3 * 1 + 1 < np.abs(fast - content).max() <= 3 * 5 + 1
    assert np.abs(plain - content).max() > 3 * 5 + 1


def test_settings_round_trip_and_old_checkpoints_get_defaults():
    settings = TransferOptions(style_blend=[0.7, 0.3], style_scale=2.0, preserve_color="luminance", tv_weight=0.5,
                               optimizer="adam", learning_rate=3.0, lbfgs_memory=7, scales=2)
    assert TransferOptions.from_dict(json.loads(settings.to_json())) == settings
    old, inputs = parse_settings('{"content": "c.jpg", "style": "s.jpg", "output": "o.png"}')
    assert inputs == {"content": "c.jpg", "style": "s.jpg", "output": "o.png"}
    assert (old.style_blend, old.style_scale, old.preserve_color, old.smoothing(), old.optimizer, old.scales,
            old.lbfgs_memory) == (None, None, "none", 0.0, "lbfgs", 1, 10)  # no smoothing before smoothness


def test_cli_controls_checkpoint_and_resume_exactly(capsys, monkeypatch, tmp_path, content_path, style_path,
                                                    shipwreck):
    args = ["transfer", str(content_path), str(style_path), str(shipwreck), "--style-blend", "0.7,0.3",
            "--style-scale", "1.5", "--preserve-color", "luminance", "--tv-weight", "0.01", "--lbfgs-memory", "5",
            "--size", "48", *CLI_LAYERS, "-n", "6", "--checkpoint-every", "3", "-q"]
    full_out = tmp_path / "full.png"
    code, err = run_cli(capsys, monkeypatch, *args, "-o", str(full_out))
    assert code == 0, err
    full = load_checkpoint(tmp_path / "full.ckpt.npz")
    assert full.image.shape == (32, 48, 1) and len(full.style) == 2
    assert [max(s.shape[:2]) for s in full.style] == [72, 72]  # 1.5 x 48, each keeping its aspect
    assert full.options.style_blend == (0.7, 0.3) and full.options.lbfgs_memory == 5
    assert full.lbfgs is not None and full.lbfgs.m == 5

    real_save = engine.save_checkpoint

    def save_then_interrupt(path, checkpoint):
        real_save(path, checkpoint)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(engine, "save_checkpoint", save_then_interrupt)
    code, err = run_cli(capsys, monkeypatch, *args, "-o", str(tmp_path / "run.png"))
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    assert code == 130, err
    resumed_out = tmp_path / "resumed.png"
    code, err = run_cli(capsys, monkeypatch, "transfer", "--resume", str(tmp_path / "run.ckpt.npz"),
                        "-o", str(resumed_out))
    assert code == 0 and "where it stopped" in err, err
    done = load_checkpoint(tmp_path / "run.ckpt.npz")
    assert done.loss == full.loss and done.history.tolist() == full.history.tolist()
    assert np.array_equal(np.asarray(Image.open(resumed_out)), np.asarray(Image.open(full_out)))


def test_cli_multiscale_and_adam(capsys, monkeypatch, tmp_path, content_path, style_path):
    out = tmp_path / "ms.png"
    code, err = run_cli(capsys, monkeypatch, "transfer", str(content_path), str(style_path), "--size", "96",
                        *CLI_LAYERS, "-n", "4", "--scales", "2", "--optimizer", "adam", "--save-every", "1",
                        "-q", "-o", str(out))
    assert code == 0, err
    assert Image.open(out).size == (96, 64)
    assert Image.open(tmp_path / "ms_0002.png").size == (48, 32)  # saved at the coarse scale


def test_region_masks_guide_each_style_to_its_region(content_path, style_path, shipwreck):
    """--content-mask: a style whose region is the whole image acts exactly like that style alone
    (the other region is empty and adds only a constant); masks of the wrong count are refused."""
    other = shipwreck
    # no smoothing: the empty region's constant is part of the style term a smoothness measures its weight from
    kw = dict(size=48, alpha=1e-3, style_layers="relu1_1,relu2_1", smoothness=0.0)
    plain = StyleLoss(content_path, style_path, **kw)
    h, w, _ = plain.shape
    ones, zeros = np.ones((h, w), np.float32), np.zeros((h, w), np.float32)
    guided = StyleLoss(content_path, [style_path, other], content_masks=[ones, zeros], **kw)
    assert guided.targets["style_target.relu1_1"].shape == (2, 64, 64)
    x = plain.content_image * 0.7 + 20
    _, g_plain = plain.loss_and_grad(x)
    _, g_guided = guided.loss_and_grad(x)
    np.testing.assert_allclose(g_guided, g_plain, rtol=1e-4, atol=1e-4 * np.abs(g_plain).max())

    left = np.zeros((h, w), np.float32)
    left[:, : w // 2] = 1
    split = StyleLoss(content_path, [style_path, other], content_masks=[left, 1 - left], **kw)
    _, g_split = split.loss_and_grad(x)
    # each half is driven by its own style only: another second style changes the gradient in the right
    # half and nowhere in the left, but for the few columns relu2_1 sees across the boundary
    third = content_path.parent / "astronaut.jpg"
    _, g_third = StyleLoss(content_path, [style_path, third], content_masks=[left, 1 - left], **kw).loss_and_grad(x)
    change = np.abs(g_third - g_split).max(axis=(0, 2)) / np.abs(g_split).max()
    assert (change[: w // 2 - 6] == 0).all() and (change[w // 2 + 2:] > 1e-2).all(), change
    with pytest.raises(InputError, match="one per style"):
        StyleLoss(content_path, [style_path, other], content_masks=[left], **kw)
    with pytest.raises(InputError, match="style_blend"):
        StyleLoss(content_path, [style_path, other], content_masks=[left, 1 - left], style_blend=[1, 1], **kw)


def test_cli_region_masks(content_path, style_path, shipwreck, tmp_path):
    import subprocess

    left = np.zeros((40, 60), np.uint8)
    left[:, :30] = 255
    Image.fromarray(left).save(tmp_path / "left.png")
    Image.fromarray(255 - left).save(tmp_path / "right.png")
    out = tmp_path / "masked.png"
    base = [sys.executable, "-m", "stylerun", "transfer", str(content_path), str(style_path), str(shipwreck),
            "-o", str(out), "--size", "48", "-n", "2", "-q", "--content-mask", str(tmp_path / "left.png")]
    ok = subprocess.run(base + ["--content-mask", str(tmp_path / "right.png")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert out.is_file()
    bad = subprocess.run(base, capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "one per style" in bad.stderr.strip().splitlines()[-1]

"""Tiled evaluation (`tile_size`) equals the whole image's loss and gradient, and its option errors."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
from helpers import SHALLOW, SHALLOW_FLAGS, run_cli, shallow_layers

from stylerun.engine.loss import StyleLoss
from stylerun.errors import OptionError
from stylerun.network.tiling import halo, tiles
from stylerun.options import TransferOptions

# default-like layers; the deepest (conv5_1) needs the largest halo
LAYERS = {"content_layers": "conv4_2", "style_layers": "conv1_1,conv2_1,conv3_1,conv4_1,conv5_1", "threads": 1}


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def compare(content_path, style_path, tile_sizes, x_seed=0, layers=LAYERS, **options):
    whole = StyleLoss(content_path, style_path, alpha=1.0, beta=1e3, **layers, **options)
    x = np.random.default_rng(x_seed).uniform(0, 255, whole.shape).astype(np.float32)
    x = 0.5 * x + 0.5 * whole.content_image  # a realistic, non-trivial point
    loss, grad = whole.loss_and_grad(x)
    for tile in tile_sizes:
        tiled = StyleLoss(content_path, style_path, alpha=1.0, beta=1e3, tile_size=tile, **layers, **options)
        t_loss, t_grad = tiled.loss_and_grad(x)
        assert abs(t_loss - loss) / abs(loss) < 1e-4, (tile, t_loss, loss)
        assert relative(t_grad, grad) < 1e-4, (tile, relative(t_grad, grad))
        assert relative(tiled.last_terms, whole.last_terms) < 1e-4
        assert relative(tiled.model.terms(x), whole.model.terms(x)) < 1e-4  # pass 1 alone (style strength)


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_tiled_equals_whole(content_path, style_path, pooling):
    compare(content_path, style_path, [16, 40], size=72, pooling=pooling)


# relu3_1 is the deepest: a 16 px halo, so at 96-100 px a 32 px tile's window starts inside the image
TO_RELU3 = {"content_layers": "relu3_1", "style_layers": "relu1_1,relu2_1,relu3_1", "threads": 1}


def windows_inside(h: int, w: int, tile: int, layers: dict) -> bool:
    """Whether some tile's halo'd window starts inside the image on both axes (so its offsets matter)."""
    from stylerun.network.loss_graph import LayerSet

    pad = halo(LayerSet.of(layers["content_layers"].split(","), layers["style_layers"].split(",")))
    return any(oy0 > 0 and ox0 > 0 and oy1 - oy0 < h and ox1 - ox0 < w
               for _, (oy0, oy1, ox0, ox1) in tiles(h, w, tile, pad))


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_tiled_equals_whole_when_windows_are_smaller_than_the_image(content_path, style_path, pooling):
    """Nine tiles of 32 px (and fifteen of 20) at 96 x 64, each window a part of the image: a tile placed
    at the wrong offset in its window, or a window cut at the wrong place, shows in the loss and gradient."""
    assert windows_inside(64, 96, 32, TO_RELU3) and windows_inside(64, 96, 20, TO_RELU3)
    compare(content_path, style_path, [32, 20], size=96, pooling=pooling, layers=TO_RELU3)


def test_tiled_equals_whole_at_odd_borders_with_windows_inside(content_path, style_path):
    """101 x 67: neither side on the pooling grid, so the last tiles end in a part of a grid step."""
    from stylerun.images.codec import load_image

    odd = load_image(content_path, 120)[5:72, 7:108]
    assert odd.shape[:2] == (67, 101) and windows_inside(67, 101, 32, TO_RELU3)
    compare(odd, style_path, [32], layers=TO_RELU3, tv_weight=1e-2)


def test_tiled_guided_equals_whole_when_windows_are_smaller_than_the_image(content_path, style_path):
    """Region masks cut to each window: a mask taken from the wrong place weights the wrong pixels."""
    h, w = 64, 96
    ramp = np.clip(np.linspace(-0.5, 1.5, w, dtype=np.float32), 0, 1)[None].repeat(h, 0)
    blob = np.zeros((h, w), np.float32)
    blob[20:50, 30:80] = 1.0  # a block off the tile grid, so masks differ between neighbouring windows
    shipwreck = content_path.parent / "shipwreck.jpg"
    assert windows_inside(h, w, 32, TO_RELU3)
    compare(content_path, [style_path, shipwreck], [32], size=96, layers=TO_RELU3,
            content_masks=[blob * ramp, 1 - blob * ramp], style_masks=[1 - ramp, ramp], tv_weight=1e-3)


def test_tiled_with_tv_and_odd_size(content_path, style_path):
    from stylerun.images.codec import load_image

    odd = load_image(content_path, 80)[3:73, 5:50]  # 70 x 45: neither side on the pooling grid
    compare(odd, style_path, [32], tv_weight=1e-2)


def test_tiled_luminance(content_path, style_path):
    whole = StyleLoss(content_path, style_path, alpha=1.0, beta=1e3, preserve_color="luminance", size=48, **LAYERS)
    tiled = StyleLoss(content_path, style_path, alpha=1.0, beta=1e3, preserve_color="luminance", size=48,
                      tile_size=16, **LAYERS)
    y = whole.to_variable(whole.content_image) * 0.9 + 10
    a, ga = whole.objective.loss_and_grad(y)
    b, gb = tiled.objective.loss_and_grad(y)
    assert abs(a - b) / abs(a) < 1e-4 and relative(gb, ga) < 1e-4


def test_tiles_cover_the_image_once():
    hits = np.zeros((70, 45), int)
    for (y0, y1, x0, x1), (oy0, oy1, ox0, ox1) in tiles(70, 45, 32, 96):
        hits[y0:y1, x0:x1] += 1
        assert oy0 <= y0 and oy1 >= y1 and ox0 <= x0 and ox1 >= x1 and oy0 % 16 == 0 and ox0 % 16 == 0
    assert (hits == 1).all()


def test_halo_covers_receptive_field():
    from stylerun.network.loss_graph import LayerSet

    assert halo(LayerSet.of(["conv5_1"], [])) >= 85  # 2+1+4+2+16+4+32+8+16 px to conv5_1
    assert halo(LayerSet.of(["conv1_1"], [])) == 1


@pytest.mark.parametrize("value", [0, 8, -1, 2.5, "big"])
def test_tile_size_errors(value):
    with pytest.raises(OptionError):
        TransferOptions(tile_size=value)


def test_tiled_guided_equals_whole(content_path, style_path):
    """Two styles under soft region masks on both sides (a ramp, so the masks are not 0/1), with TV."""
    h, w = 54, 72
    ramp = np.clip(np.linspace(-0.5, 1.5, w, dtype=np.float32), 0, 1)[None].repeat(h, 0)
    shipwreck = content_path.parent / "shipwreck.jpg"
    compare(content_path, [style_path, shipwreck], [16, 40], size=72, content_masks=[ramp, 1 - ramp],
            style_masks=[1 - ramp, ramp],
            tv_weight=1e-3)


@pytest.mark.parametrize("text, count", [("2G", 2 << 30), ("1500M", 1500 << 20), ("2.5GiB", int(2.5 * (1 << 30))),
                                         (1 << 30, 1 << 30)])
def test_max_memory_sizes(text, count):
    assert TransferOptions(max_memory=text).max_memory == count


@pytest.mark.parametrize("text", ["4X", "", "1K", True, -5, "inf", "nanG", "9" * 400 + "G"])
def test_max_memory_errors(text):
    with pytest.raises(OptionError, match="max_memory"):
        TransferOptions(max_memory=text)


def test_budget_choice():
    from stylerun.engine.memory import choose, estimate_bytes
    from stylerun.network.loss_graph import LayerSet

    layers = LayerSet.of(["conv4_2"], ["conv1_1", "conv5_1"])
    assert choose(24 << 30, 400, 300, layers)[:2] == (None, 10)  # small: whole image, full history
    tile, m, need = choose(2 << 30, 1536, 2048, layers)
    assert tile is not None and need <= 2 << 30 and need == estimate_bytes(1536, 2048, tile, m, layers)
    assert choose(100 << 20, 1536, 2048, layers) is None


def test_the_memory_planner_counts_the_optimizer_state_it_will_hold():
    """The planner's L-BFGS-B bytes are those of the state the optimizer allocates (one definition, `LbfgsState`)."""
    from stylerun.engine.memory import lbfgs_bytes
    from stylerun.engine.optimizers import LbfgsState

    for (h, w), m in (((24, 32), 10), ((7, 5), 3)):
        state = LbfgsState.fresh(np.zeros((h, w, 3), np.float32), m)
        held = sum(a.nbytes for name, a in state.arrays().items() if name != "m")
        assert lbfgs_bytes(h * w, m) == held


def test_the_memory_planner_says_what_it_chose_and_refuses_too_little():
    from stylerun.engine.memory import fit
    from stylerun.network.loss_graph import LayerSet

    layers = LayerSet.of(["conv4_2"], ["conv1_1", "conv5_1"])
    roomy = fit(TransferOptions(max_memory="24G"), 400, 300, layers)
    assert roomy.options.lbfgs_memory == 10 and roomy.options.optimizer == "lbfgs"
    assert roomy.notice.startswith("max memory 24.00 GiB at 400x300: the whole image at once, L-BFGS-B history 10, ")
    tight = fit(TransferOptions(max_memory="2G"), 2048, 1536, layers)
    assert tight.options.tile_size < 2048 and f"tiles of {tight.options.tile_size} px" in tight.notice
    with pytest.raises(OptionError, match=r"max_memory 0.10 GiB is too small for 2048x1536: it needs about 2.35 GiB"):
        fit(TransferOptions(max_memory="100M"), 2048, 1536, layers)


def test_cli_max_memory_notice_and_errors(tmp_path, content_path, style_path):
    from typer.testing import CliRunner

    from stylerun.cli.app import app

    out = tmp_path / "out.png"
    common = [str(content_path), str(style_path), "-o", str(out), "--size", "48", "-n", "1", "--threads", "1"]
    run = CliRunner().invoke(app, ["transfer", *common, "--max-memory", "700M", "--alpha", "1", "--beta", "1000"])
    assert run.exit_code == 0, run.output
    assert "max memory" in run.output and out.is_file()
    for flag, value, said in (("--max-memory", "64M", "too small"), ("--tile-size", "4", "--tile-size")):
        bad = subprocess.run([sys.executable, "-m", "stylerun", "transfer", *common, flag, value],
                             capture_output=True, text=True)
        assert bad.returncode == 2 and said in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def test_max_memory_checkpoint_keeps_what_it_chose(tmp_path, content_path, style_path):
    """A run under `max_memory` checkpoints the tiles and history it chose, not the budget, and
    resumes to exactly the uninterrupted run's picture."""
    import stylerun
    from stylerun.engine.checkpoint import load_checkpoint
    from stylerun.engine.memory import choose, estimate_bytes
    from stylerun.images.codec import load_image

    h, w, _ = load_image(content_path, 160).shape
    budget = estimate_bytes(h, w, 128, 10, shallow_layers())  # too small for whole
    tile, m, _ = choose(budget, h, w, shallow_layers())
    small = dict(size=160, alpha=1.0, beta=1e3, threads=1, max_memory=budget, **SHALLOW)
    full = stylerun.transfer(content_path, style_path, iterations=4, **small)
    stop = threading.Event()
    stylerun.transfer(content_path, style_path, tmp_path / "run.png", iterations=4, checkpoint_every=2, stop=stop,
                      callback=lambda p: p.iteration == 2 and stop.set(), **small)
    state = load_checkpoint(tmp_path / "run.ckpt.npz")
    assert tile == 128 and state.iteration == 2
    assert (state.options.max_memory, state.options.tile_size, state.options.lbfgs_memory) == (None, tile, m)
    resumed = stylerun.transfer(resume=tmp_path / "run.ckpt.npz", output=tmp_path / "resumed.png")
    assert np.array_equal(np.asarray(resumed), np.asarray(full))


def test_max_memory_falls_back_to_adam_when_no_history_fits(tmp_path, capsys, monkeypatch, content_path, style_path):
    """docs/print-sizes.md: `--max-memory` falls back to Adam when no L-BFGS-B history fits, and says so;
    the run then takes Adam steps (each moves a pixel by at most about the learning rate) and its
    checkpoint says Adam."""

    import stylerun
    from stylerun.engine.checkpoint import load_checkpoint
    from stylerun.engine.memory import MEMORY_CHOICES, choose, estimate_bytes
    from stylerun.images.codec import load_image

    layers = shallow_layers()
    content = load_image(content_path, 160)
    h, w, _ = content.shape
    budget = estimate_bytes(h, w, 128, 0, layers)  # Adam in 128 px tiles, and nothing more
    assert budget < estimate_bytes(h, w, 128, MEMORY_CHOICES[-1], layers)
    assert choose(budget, h, w, layers) == (128, 0, budget)
    small = dict(size=160, **SHALLOW, threads=1, alpha=1.0, beta=1e3, max_memory=budget)
    out = tmp_path / "run.png"
    image = stylerun.transfer(content_path, style_path, out, iterations=3, learning_rate=1, checkpoint_every=3,
                              **small)
    state = load_checkpoint(tmp_path / "run.ckpt.npz")
    assert (state.options.optimizer, state.options.tile_size, state.options.max_memory) == ("adam", 128, None)
    assert state.lbfgs is None
    assert np.abs(np.asarray(image, np.float64) - content).max() <= 3 * 1 + 1  # three steps of 1, and rounding
    code, err = run_cli(capsys, monkeypatch, "transfer", str(content_path), str(style_path), "-o",
                        str(tmp_path / "cli.png"), "--size", "160", *SHALLOW_FLAGS, "--threads", "1", "-n", "1",
                        "--max-memory", str(budget))
    assert code == 0, err
    assert "tiles of 128 px" in err and "Adam (L-BFGS-B's history does not fit)" in err


def test_a_stop_ends_a_tiled_evaluation_between_tiles(content_path, style_path):
    """At print sizes one evaluation takes minutes: a stop asked mid-evaluation ends the run at the
    next tile, with the best image so far, instead of after the evaluation."""
    import stylerun

    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 40  # once per evaluation and once per tile: 1 + 15 + 15 for the first

    image = stylerun.transfer(content_path, style_path, size=72, iterations=5, tile_size=16, alpha=1.0, beta=1e3,
                              threads=1, stop=stop, **{k: v for k, v in LAYERS.items() if k != "threads"})
    assert image.size == (72, 48) and len(asked) == 41  # inside the second evaluation, at the first "yes"


def test_the_eta_counts_a_tiled_evaluation_as_its_halos_and_two_passes():
    from stylerun.network.loss_graph import LayerSet
    from stylerun.network.tiling import TILE_TIME_FACTOR, evaluation_cost

    layers = LayerSet.of(["conv4_2"], ["conv1_1", "conv5_1"])
    assert evaluation_cost(300, 400, None, layers) == 300 * 400
    pad = halo(layers)
    shown = sum((y1 - y0) * (x1 - x0) for _, (y0, y1, x0, x1) in tiles(1536, 2048, 512, pad))
    assert evaluation_cost(1536, 2048, 512, layers) == pytest.approx(TILE_TIME_FACTOR * shown)
    assert 1.5 < evaluation_cost(1536, 2048, 512, layers) / (1536 * 2048) < 2.5  # the halos' and passes' cost
    assert evaluation_cost(64, 64, 512, layers) == pytest.approx(TILE_TIME_FACTOR * 64 * 64)  # one tile, two passes


def test_a_stop_cuts_a_whole_image_evaluation_inside_onnxruntime(content_path, style_path):
    """A whole-image evaluation is one onnxruntime call (over a minute at 4 MP on a CPU): a stop asked
    during it sets the run's terminate flag, and the next evaluation runs in full again. Only a run that
    onnxruntime ended early raises `EvaluationStopped`: no clock is needed to tell a cut from a full one."""
    from stylerun.errors import EvaluationStopped

    loss = StyleLoss(content_path, [style_path], TransferOptions(size=384, alpha=1.0, beta=1e3, threads=1))
    image = loss.content_image.copy()
    value, _ = loss.loss_and_grad(image)
    asked = []

    def stop() -> bool:  # no at the first question, yes at the second: asked again while onnxruntime computes
        asked.append(len(asked) >= 1)
        return asked[-1]

    loss.stop_with(stop)
    with pytest.raises(EvaluationStopped):
        loss.loss_and_grad(image)
    assert asked == [False, True], asked
    loss.stop_with(None)
    again, _ = loss.loss_and_grad(image)
    assert again == pytest.approx(value, rel=1e-6)

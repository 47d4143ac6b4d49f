"""Tiled evaluation (`tile_size`) equals the whole image's loss and gradient, and its option errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from stylerun.errors import OptionError
from stylerun.loss import StyleLoss
from stylerun.options import TransferOptions
from stylerun.tiling import halo, tiles

# default-like layers; the deepest (conv5_1) needs the largest halo
LAYERS = {"content_layers": "conv4_2", "style_layers": "conv1_1,conv2_1,conv3_1,conv4_1,conv5_1", "threads": 1}


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def compare(content_path, style_path, tile_sizes, x_seed=0, **options):
    whole = StyleLoss(content_path, style_path, alpha=1.0, beta=1e3, **LAYERS, **options)
    x = np.random.default_rng(x_seed).uniform(0, 255, whole.shape).astype(np.float32)
    x = 0.5 * x + 0.5 * whole.content_image  # a realistic, non-trivial point
    loss, grad = whole.loss_and_grad(x)
    for tile in tile_sizes:
        tiled = StyleLoss(content_path, style_path, alpha=1.0, beta=1e3, tile_size=tile, **LAYERS, **options)
        t_loss, t_grad = tiled.loss_and_grad(x)
        assert abs(t_loss - loss) / abs(loss) < 1e-4, (tile, t_loss, loss)
        assert relative(t_grad, grad) < 1e-4, (tile, relative(t_grad, grad))
        assert relative(tiled.last_terms, whole.last_terms) < 1e-4


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_tiled_equals_whole(content_path, style_path, pooling):
    compare(content_path, style_path, [16, 40], size=72, pooling=pooling)


def test_tiled_with_tv_and_odd_size(content_path, style_path):
    from stylerun.images import load_image

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
    from stylerun.forward import LayerSet

    assert halo(LayerSet.of(["conv5_1"], [])) >= 85  # 2+1+4+2+16+4+32+8+16 px to conv5_1
    assert halo(LayerSet.of(["conv1_1"], [])) == 1


@pytest.mark.parametrize("value", [0, 8, -1, 2.5, "big"])
def test_tile_size_errors(value):
    with pytest.raises(OptionError):
        TransferOptions(tile_size=value)


def test_guided_tiling_refused(content_path, style_path):
    with pytest.raises(OptionError, match="tile_size"):
        StyleLoss(content_path, style_path, size=48, tile_size=16, content_masks=[content_path],
                  style_masks=[style_path], **LAYERS)


@pytest.mark.parametrize("text, count", [("2G", 2 << 30), ("1500M", 1500 << 20), ("2.5GiB", int(2.5 * (1 << 30))),
                                         (1 << 30, 1 << 30)])
def test_max_memory_sizes(text, count):
    assert TransferOptions(max_memory=text).max_memory == count


@pytest.mark.parametrize("text", ["4X", "", "1K", True, -5, "inf", "nanG"])
def test_max_memory_errors(text):
    with pytest.raises(OptionError, match="max_memory"):
        TransferOptions(max_memory=text)


def test_budget_choice():
    from stylerun.forward import LayerSet
    from stylerun.tiling import choose, estimate_bytes

    layers = LayerSet.of(["conv4_2"], ["conv1_1", "conv5_1"])
    assert choose(24 << 30, 400, 300, layers)[:2] == (None, 10)  # small: whole image, full history
    tile, m, need = choose(2 << 30, 1536, 2048, layers)
    assert tile is not None and need <= 2 << 30 and need == estimate_bytes(1536, 2048, tile, m, layers)
    assert choose(100 << 20, 1536, 2048, layers) is None


def test_cli_max_memory_notice_and_errors(tmp_path, content_path, style_path):
    from typer.testing import CliRunner

    from stylerun.cli import app

    out = tmp_path / "out.png"
    common = [str(content_path), str(style_path), "-o", str(out), "--size", "48", "-n", "1", "--threads", "1"]
    run = CliRunner().invoke(app, ["transfer", *common, "--max-memory", "460M", "--alpha", "1", "--beta", "1000"])
    assert run.exit_code == 0, run.output
    assert "max memory" in run.output and out.is_file()
    for flag, value, said in (("--max-memory", "64M", "too small"), ("--tile-size", "4", "--tile-size")):
        bad = subprocess.run([sys.executable, "-m", "stylerun", "transfer", *common, flag, value],
                             capture_output=True, text=True)
        assert bad.returncode == 2 and said in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def test_max_memory_is_not_checkpointed_yet():
    from stylerun.errors import OptionError
    from stylerun.options import TransferOptions

    with pytest.raises(OptionError) as info:
        TransferOptions(max_memory="2G", checkpoint_every=5)
    assert info.value.option == "max_memory"

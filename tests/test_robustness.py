"""Issue #7, "never lose a run, never crash on an image": bad options, bad images, signals,
checkpoints and resume, numeric faults and devices, through the API and the real CLI.

Runs use a shallow layer set at 48 px so each takes a second or two on a small CPU.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers import SHALLOW_FLAGS, Quadratic, one_line_error, png_claiming, run_cli, spawn, wait_for
from PIL import Image

from stylerun import transfer
from stylerun.engine import checkpoint as ckpt_mod
from stylerun.engine import loss, optimizers
from stylerun.engine import run as engine
from stylerun.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from stylerun.engine.loss import StyleLoss, initial_image
from stylerun.engine.optimizers import LbfgsState, optimize
from stylerun.errors import InputError, NumericError
from stylerun.options import TransferOptions
from stylerun.signals import StopSignals

ROOT = Path(__file__).resolve().parent.parent
LAYERS = SHALLOW_FLAGS
SMALL = ["--size", "48", *LAYERS]
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.fixture
def no_work(monkeypatch):
    """Any decoding, export or session creation fails the test: the error must come first."""

    def work(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    for name in ("load_image", "decode", "cached_export", "LossModel"):
        monkeypatch.setattr(loss, name, work)


# --- 2. options are refused before any work ---------------------------------------------------


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--size", "0"], "--size must be a positive number of pixels"),
        (["--size", "-5"], "--size must be a positive number of pixels"),
        (["--size", "100000"], "over the 64,000,000 pixel limit"),
        (["--alpha", "nan"], "--alpha must be a finite number >= 0, got nan"),
        (["--beta", "-1"], "--beta must be a finite number >= 0, got -1.0"),
        (["--beta", "inf"], "--beta must be a finite number >= 0, got inf"),
        (["--style-layers", "relu1_1:nan"], "weight of layer 'relu1_1' must be a finite number >= 0"),
        (["--content-layers", "relu9_9"], "unknown layer 'relu9_9'; VGG19 layers are conv1_1..conv5_4"),
        (["--init", "noise"], "unknown --init 'noise'; use one of: content, style, white, random"),
        (["--pooling", "median"], "unknown --pooling 'median'; use one of: max, avg"),
        (["-n", "-1"], "--iterations must be a whole number >= 0, got -1"),
        (["--save-every", "0"], "--save-every must be a positive number of iterations, or -1 for never"),
        (["--checkpoint-every", "-2"], "--checkpoint-every must be a positive number of iterations"),
        (["--seed", "-1"], "--seed must be a whole number >= 0"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--device", "tpu"], "unknown --device 'tpu'; use one of: auto, cpu, cuda"),
        (["--background", "blurple"], "unknown colour 'blurple'; use a name"),
        (["--max-pixels", "0"], "--max-pixels must be a positive number of pixels"),
        (["--weights", "/no/such/vgg.pth"], "weights file /no/such/vgg.pth not found"),
        (["--model", "/no/such/model.onnx"], "model file /no/such/model.onnx not found"),
        (["-o", "{tmp}/missing/out.png"], "does not exist; create it first"),
        (["-o", "{tmp}/out.xyz"], "cannot write images with extension '.xyz'; use .png"),
        (["-o", "{tmp}"], "is a folder; give a file name"),
        (["-o", "{content}"], "is the content image; choose another -o, or add --force"),
        (["-o", "{style}"], "is the style image; choose another -o, or add --force"),
        (["--checkpoint-every", "5", "--checkpoint", "{tmp}/nowhere/c.npz"], "checkpoint folder"),
    ],
)
def test_bad_options_are_refused_before_any_work(capsys, monkeypatch, no_work, tmp_path, args, needle):
    content, style = tmp_path / "content.jpg", tmp_path / "style.jpg"
    content.write_bytes(b"not decoded")
    style.write_bytes(b"not decoded")
    args = [a.format(tmp=tmp_path, content=content, style=style) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out.png")]
    code, err = run_cli(capsys, monkeypatch, "transfer", str(content), str(style), *args)
    assert code == 2
    one_line_error(code, err, needle)
    assert not (tmp_path / "out.png").exists()
    assert content.read_bytes() == b"not decoded"


def test_output_over_an_input_by_another_name_is_refused(capsys, monkeypatch, no_work, tmp_path):
    content = tmp_path / "photo.png"
    content.write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(content)
    for out in (tmp_path / "sub" / ".." / "photo.png", tmp_path / "link.png"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        code, err = run_cli(capsys, monkeypatch, "transfer", str(content), str(content), "-o", str(out))
        one_line_error(code, err, "is the content image")


def test_bad_pixel_limit_in_the_environment(capsys, monkeypatch, no_work, tmp_path):
    monkeypatch.setenv("STYLERUN_MAX_PIXELS", "lots")
    code, err = run_cli(capsys, monkeypatch, "transfer", "a.jpg", "b.jpg", "-o", str(tmp_path / "o.png"))
    one_line_error(code, err, "STYLERUN_MAX_PIXELS must be a whole number of pixels")


def test_missing_arguments(capsys, monkeypatch, no_work, tmp_path):
    code, err = run_cli(capsys, monkeypatch, "transfer", "a.jpg", "-o", str(tmp_path / "o.png"))
    one_line_error(code, err, "give a CONTENT and a STYLE image (or --resume CHECKPOINT)")
    code, err = run_cli(capsys, monkeypatch, "transfer", "a.jpg", "b.jpg")
    one_line_error(code, err, "give an output image with -o OUTPUT")


@pytest.mark.parametrize(
    "args,needle",
    [
        ([], "has no content layer relu4_2 (it was exported for relu2_2); export one for these layers"),
        ([*LAYERS, "--pooling", "avg"], "was exported with max pooling, but avg was asked"),
        (["--content-layers", "relu2_2", "--style-layers", "relu3_1"], "has no style layer relu3_1"),
    ],
)
def test_model_for_other_layers_or_pooling_is_refused(capsys, monkeypatch, no_work, tmp_path, shallow_model,
                                                      args, needle):
    code, err = run_cli(capsys, monkeypatch, "transfer", "a.jpg", "b.jpg", "-o", str(tmp_path / "o.png"),
                        "--model", str(shallow_model), *args)
    one_line_error(code, err, needle)


@pytest.fixture
def providers(monkeypatch):
    """Pretend this onnxruntime lists `available` providers and that CUDA does (or does not) start: the same
    test on the CPU build and on onnxruntime-gpu, with or without a GPU. A session asked for CUDA that
    cannot start runs on the CPU, as onnxruntime-gpu does without its libraries."""
    import functools

    from stylerun.network import sessions

    real = ort.InferenceSession

    def pretend(available: list[str], starts: bool) -> None:
        def session(model, options=None, providers=None, **kwargs):
            asked = [p for p in providers or [CPU] if starts or p != CUDA]
            return real(model, options, providers=[p for p in asked if p in real_available], **kwargs)

        monkeypatch.setattr(ort, "get_available_providers", lambda: list(available))
        monkeypatch.setattr(ort, "InferenceSession", session)
        monkeypatch.setattr(sessions, "cuda_starts", functools.cache(sessions.cuda_starts.__wrapped__))

    real_available = ort.get_available_providers()
    return pretend


def test_cuda_without_cuda_names_the_fix(capsys, monkeypatch, no_work, tmp_path, shallow_model, providers):
    from stylerun.network.sessions import create_session

    providers([CPU], starts=False)  # the CPU build of onnxruntime
    code, err = run_cli(capsys, monkeypatch, "transfer", "a.jpg", "b.jpg", "-o", str(tmp_path / "o.png"),
                        "--device", "cuda")
    one_line_error(code, err, "--device cuda: this onnxruntime has no CUDA provider",
                   "pip install 'stylerun[cuda]'", "--device cpu")
    with pytest.raises(InputError, match=r"no CUDA provider .*pip install 'stylerun\[cuda\]'"):
        create_session(shallow_model, device="cuda")


def test_a_cuda_provider_that_cannot_start_stops_before_any_work(capsys, monkeypatch, no_work, tmp_path,
                                                                  shallow_model, providers):
    """onnxruntime-gpu without a GPU or its libraries lists CUDA but cannot start it: `--device cuda` says
    so before any image is read (docs/when-things-go-wrong.md, Devices), even when the image is bad too."""
    from stylerun.network import sessions

    providers([CUDA, CPU], starts=False)
    (tmp_path / "bad.jpg").write_text("not an image")
    code, err = run_cli(capsys, monkeypatch, "transfer", str(tmp_path / "bad.jpg"), "b.jpg", "-o",
                        str(tmp_path / "o.png"), "--device", "cuda")
    assert code == 2
    one_line_error(code, err, "--device cuda: the CUDA provider could not start", "pip install 'stylerun[cuda]'",
                   "--device cpu")
    # and a session that ends up on the CPU all the same (the probe said yes) is refused, not used quietly
    monkeypatch.setattr(sessions, "cuda_starts", lambda: True)
    with pytest.raises(InputError, match="the CUDA provider could not start"):
        sessions.create_session(shallow_model, device="cuda")
    assert sessions.create_session(shallow_model, device="auto").get_providers()[0] == CPU


@pytest.mark.parametrize("available", [[CPU], [CUDA, CPU]], ids=["cpu-build", "gpu-build-without-gpu"])
def test_auto_device_falls_back_to_cpu_and_says_so(capsys, monkeypatch, tmp_path, content_path, style_path,
                                                   providers, available):
    providers(available, starts=False)
    out = tmp_path / "out.png"
    code, err = run_cli(capsys, monkeypatch, "transfer", str(content_path), str(style_path), "-o", str(out),
                        *SMALL, "-n", "1", "--device", "auto")
    assert code == 0, err
    assert "48x32, 1 iteration\n" in err and " on CPU (" in err  # the device is named in the estimate
    assert out.is_file()


def test_force_allows_overwriting_the_content(capsys, monkeypatch, tmp_path, content_path, style_path):
    photo = tmp_path / "photo.png"
    Image.open(content_path).convert("RGB").resize((72, 48)).save(photo)
    before = photo.read_bytes()
    code, err = run_cli(capsys, monkeypatch, "transfer", str(photo), str(style_path), "-o", str(photo), *SMALL,
                        "-n", "2", "--force", "-q")
    assert code == 0, err
    assert photo.read_bytes() != before and Image.open(photo).size == (48, 32)


# --- 1. bad images through the CLI: one line, before the model is exported -------------------


def bad_images(tmp_path: Path, content_path: Path) -> dict[str, tuple[Path, str]]:
    data = content_path.read_bytes()
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "text.jpg").write_text("hello\n")
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "bomb.png").write_bytes(png_claiming(80_000, 80_000))
    Image.new("RGB", (900, 20)).save(tmp_path / "thin.png")
    return {
        "missing": (tmp_path / "none.jpg", "none.jpg: no such file"),
        "folder": (tmp_path / "folder.png", "folder.png: is a folder, not an image"),
        "text": (tmp_path / "text.jpg", "text.jpg: not an image file"),
        "truncated": (tmp_path / "cut.jpg", "cut.jpg: cannot read image (image file is truncated"),
        "bomb": (tmp_path / "bomb.png", "80000x80000 = 6,400,000,000 pixels, over the 64,000,000 pixel limit"),
        "thin": (tmp_path / "thin.png", "is 900x20, which is 48x1 at --size 48; the network needs at least 32"),
    }


@pytest.mark.parametrize("kind, role", [(kind, role) for kind in ["missing", "folder", "text", "truncated", "bomb",
                                                                   "thin"]
                                        for role in ["content", "style"] if (kind, role) != ("thin", "style")])
def test_bad_images_are_one_line_errors(capsys, monkeypatch, tmp_path, content_path, style_path, kind, role):
    def no_export(*args, **kwargs):
        raise AssertionError("the model was exported before the images were read")

    monkeypatch.setattr(loss, "cached_export", no_export)
    monkeypatch.setattr(loss, "LossModel", no_export)
    path, needle = bad_images(tmp_path, content_path)[kind]
    pair = (path, style_path) if role == "content" else (content_path, path)
    out = tmp_path / "out.png"
    code, err = run_cli(capsys, monkeypatch, "transfer", str(pair[0]), str(pair[1]), "-o", str(out), *SMALL)
    one_line_error(code, err, needle)
    assert code == 2 and not out.exists()


def test_a_thin_style_image_is_fine(capsys, monkeypatch, tmp_path, content_path):
    """docs/options.md, --size: the style image is resized to the content's size, so a 900x20 painting,
    too thin for the network as a content image, paints a whole picture."""
    thin = tmp_path / "thin.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 900, 3), dtype=np.uint8)).save(thin)
    out = tmp_path / "out.png"
    code, err = run_cli(capsys, monkeypatch, "transfer", str(content_path), str(thin), "-o", str(out), *SMALL,
                        "-n", "1", "-q")
    assert code == 0, err
    assert Image.open(out).size == (48, 32) and "error" not in err


# --- 4. numeric faults -------------------------------------------------------------------------


@pytest.mark.parametrize("bad,needle", [("loss", "the loss became nan at evaluation 7"),
                                        ("grad", "the gradient became non-finite at evaluation 7")])
def test_non_finite_loss_stops_with_the_best_finite_image(bad, needle):
    loss = Quadratic(nan_at=7, bad=bad)
    seen = []
    result = optimize(loss, np.full(loss.shape, 128, np.float32), 50, seen.append)
    assert result.error and needle in result.error and "`alpha`/`beta`" in result.error
    assert f"(iteration {result.iterations + 1})" in result.error  # the iteration it happened in
    assert not result.interrupted and result.iterations == len(seen) < 50
    assert np.isfinite(result.image).all() and math.isfinite(result.loss)
    assert result.loss == min(p.loss for p in seen)  # the best image seen, not the last one tried
    assert loss.calls == 7


def test_non_finite_at_the_start_keeps_the_start():
    loss = Quadratic(nan_at=1)
    start = np.full(loss.shape, 3, np.float32)
    result = optimize(loss, start, 10)
    assert result.error and math.isnan(result.loss) and result.iterations == 0
    assert np.array_equal(result.image, start)


def test_huge_weights_give_a_numeric_error_not_a_nan_image(content_path, style_path):
    loss = StyleLoss(content_path, style_path, size=48, alpha=1e38, content_layers="relu2_2",
                     style_layers="relu1_1,relu2_1")
    result = optimize(loss, initial_image("white", loss), 5)
    assert result.error and "the loss became inf at evaluation 1" in result.error
    with pytest.raises(NumericError):
        transfer(content_path, style_path, size=48, alpha=1e38, init="white", iterations=3,
                         content_layers="relu2_2", style_layers="relu1_1,relu2_1")


def test_cli_numeric_fault_keeps_the_best_finite_image(capsys, monkeypatch, tmp_path, content_path, style_path):
    real = StyleLoss.loss_and_grad
    calls = {"n": 0}
    best = {"loss": math.inf, "x": None}

    def flaky(self, x):
        calls["n"] += 1
        value, grad = real(self, x)
        if calls["n"] >= 6:
            return math.nan, grad
        if value < best["loss"]:
            best.update(loss=value, x=np.asarray(x, np.float32).copy())
        return value, grad

    monkeypatch.setattr(StyleLoss, "loss_and_grad", flaky)
    out = tmp_path / "out.png"
    code, err = run_cli(capsys, monkeypatch, "transfer", str(content_path), str(style_path), "-o", str(out),
                        *SMALL, "-n", "20", "-q")
    assert code == 3
    line = one_line_error(code, err, "the loss became nan at evaluation 6", "the best finite image (iteration")
    assert str(out) in line
    written = np.asarray(Image.open(out), dtype=np.float32)
    assert np.array_equal(written, np.clip(np.rint(best["x"]), 0, 255))


def test_cli_numeric_fault_at_the_start_writes_nothing(capsys, monkeypatch, tmp_path, content_path, style_path):
    out = tmp_path / "out.png"
    code, err = run_cli(capsys, monkeypatch, "transfer", str(content_path), str(style_path), "-o", str(out),
                        *SMALL, "-n", "5", "--alpha", "1e38", "--init", "white", "-q")
    assert code == 3
    one_line_error(code, err, "the loss became inf at evaluation 1", "nothing written")
    assert not out.exists()


# --- 3. resume: exact, through files, and the fallback ----------------------------------------


def stop_after_evaluations(n: int):
    count = {"n": 0}

    def stop():  # polled before each evaluation (and after each iteration)
        count["n"] += 1
        return count["n"] > n

    return stop


@pytest.mark.parametrize("evaluations", [1, 9, 14])
def test_resume_continues_exactly(evaluations):
    loss = Quadratic(shape=(16, 16, 3))
    start = np.full(loss.shape, 128, np.float32)
    full = optimize(loss, start, 30, lbfgs_memory=5)
    assert full.iterations == 30
    first = optimize(loss, start, 30, lbfgs_memory=5, stop=stop_after_evaluations(evaluations))
    assert first.interrupted and first.lbfgs is not None and first.iterations < 30
    second = optimize(loss, first.image, 30, lbfgs_memory=5, first_iteration=first.iterations,
                      resume=first.lbfgs, init_loss=first.loss)
    assert second.iterations == 30 and not second.interrupted
    assert first.history + second.history == full.history  # the very same steps
    assert second.loss == full.loss and np.array_equal(second.image, full.image)


def test_driver_takes_the_same_steps_as_minimize(monkeypatch):
    loss = Quadratic(shape=(12, 12, 3), seed=3)
    start = np.zeros(loss.shape, np.float32)
    driven = optimize(loss, start, 15, lbfgs_memory=3)
    monkeypatch.setattr(optimizers, "lbfgsb_driver", lambda: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SciPy warns of an option it does not know, and would ignore it
        fallback = optimize(loss, start, 15, lbfgs_memory=3)
    assert fallback.history == driven.history and fallback.iterations == 15


def test_without_the_driver_a_resume_restarts_the_history(monkeypatch):
    monkeypatch.setattr(optimizers, "lbfgsb_driver", lambda: None)
    loss = Quadratic(shape=(16, 16, 3))
    start = np.full(loss.shape, 128, np.float32)
    first = optimize(loss, start, 30, stop=stop_after_evaluations(9))
    assert first.interrupted and first.lbfgs is None
    second = optimize(loss, first.image, 30, first_iteration=first.iterations, init_loss=first.loss)
    assert second.iterations == 30 and second.loss < first.loss


def test_real_loss_resumes_within_two_percent_through_a_checkpoint_file(tmp_path, content_path, style_path):
    loss = StyleLoss(content_path, style_path, size=48, alpha=1e-3, content_layers="relu2_2",
                     style_layers="relu1_1,relu2_1")
    start = initial_image("content", loss)
    full = optimize(loss, start, 24)
    half = optimize(loss, start, 24, stop=stop_after_evaluations(13))
    assert half.interrupted and 0 < half.iterations < 24
    settings = TransferOptions(size=48, iterations=24)
    path = save_checkpoint(tmp_path / "run.ckpt.npz", Checkpoint(settings, half.iterations, half.image,
                           loss.content_image, [loss.style_image], half.loss, np.array(half.history), half.lbfgs))
    back = load_checkpoint(path)
    assert back.lbfgs is not None and back.lbfgs_dropped is None
    resumed = optimize(loss, back.image, 24, first_iteration=back.iteration, resume=back.lbfgs,
                       init_loss=back.loss)
    assert abs(resumed.loss - full.loss) <= 0.02 * full.loss
    assert resumed.loss == full.loss  # in fact exactly: the state is complete


# --- 3. checkpoint files ------------------------------------------------------------------------


def test_checkpoint_file_is_plain_arrays_and_json(tmp_path):
    settings = TransferOptions(alpha=0.5, init="random", lbfgs_memory=3)
    state = LbfgsState.fresh(np.zeros(12), 3)
    state.task[0] = LbfgsState.NEW_X
    image = np.full((2, 2, 3), 7.25, np.float32)
    path = save_checkpoint(tmp_path / "c.npz", Checkpoint(settings, 4, image, image, [image], 1.5, np.ones(4), state))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]  # no temporary file left
    with np.load(path, allow_pickle=False) as data:
        import json

        assert str(data["format"]) == "stylerun-checkpoint/1"
        assert json.loads(str(data["settings"]))["alpha"] == 0.5
        assert int(data["iteration"]) == 4 and data["image"].dtype == np.float32
    back = load_checkpoint(path)
    assert back.options == settings and back.iteration == 4 and np.array_equal(back.image, image)
    assert back.loss == 1.5 and back.lbfgs is not None and np.array_equal(back.lbfgs.wa, state.wa)


def test_checkpoint_from_another_scipy_restarts_the_history(tmp_path, monkeypatch):
    settings = TransferOptions()
    state = LbfgsState.fresh(np.zeros(12), 10)
    state.task[0] = LbfgsState.FG
    image = np.zeros((2, 2, 3), np.float32)
    monkeypatch.setattr(ckpt_mod.scipy, "__version__", "0.1")
    path = save_checkpoint(tmp_path / "c.npz", Checkpoint(settings, 4, image, image, [image], 1.0, np.ones(4), state))
    monkeypatch.undo()
    back = load_checkpoint(path)
    assert back.lbfgs is None and "written by SciPy 0.1" in back.lbfgs_dropped


def test_bad_checkpoints_are_refused(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"PK not really")
    Image.new("RGB", (40, 40)).save(tmp_path / "image.png")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    for name, needle in [("nothing.npz", "not found"), ("junk.npz", "not a usable stylerun checkpoint"),
                         ("image.png", "not a usable stylerun checkpoint"), ("other.npz", "missing format")]:
        with pytest.raises(InputError, match=needle):
            load_checkpoint(tmp_path / name)


def test_resume_refuses_other_options(capsys, monkeypatch, tmp_path):
    code, err = run_cli(capsys, monkeypatch, "transfer", "--resume", str(tmp_path / "c.npz"), "--size", "64",
                        "--alpha", "1")
    one_line_error(code, err, "leave out --size, --alpha")
    code, err = run_cli(capsys, monkeypatch, "transfer", "a.jpg", "b.jpg", "--resume", str(tmp_path / "c.npz"))
    one_line_error(code, err, "leave out CONTENT/STYLE")
    code, err = run_cli(capsys, monkeypatch, "transfer", "--resume", str(tmp_path / "c.npz"))
    one_line_error(code, err, "checkpoint", "not found")


def test_cli_interrupt_checkpoint_and_resume_match_the_uninterrupted_run(capsys, monkeypatch, tmp_path,
                                                                        content_path, style_path):
    args = ["transfer", str(content_path), str(style_path), *SMALL, "-n", "16", "--checkpoint-every", "4", "-q"]
    full_out = tmp_path / "full.png"
    code, err = run_cli(capsys, monkeypatch, *args, "-o", str(full_out))
    assert code == 0, err
    full = load_checkpoint(tmp_path / "full.ckpt.npz")
    assert full.iteration == 16 and len(full.history) == 16

    # the same run, sent SIGINT (in this process) right after its first checkpoint
    real_save = engine.save_checkpoint
    sent = []

    def save_then_interrupt(path, checkpoint):
        real_save(path, checkpoint)
        if not sent:
            sent.append(checkpoint.iteration)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(engine, "save_checkpoint", save_then_interrupt)
    out = tmp_path / "run.png"
    code, err = run_cli(capsys, monkeypatch, *args, "-o", str(out))
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    assert code == 130 and sent == [4], err
    assert "stylerun: SIGINT at iteration 4 of 16" in err and f"--resume {tmp_path / 'run.ckpt.npz'}" in err
    stopped = load_checkpoint(tmp_path / "run.ckpt.npz")
    assert stopped.iteration == 4 and stopped.lbfgs is not None
    assert Image.open(out).size == (48, 32)

    resumed_out = tmp_path / "resumed.png"
    code, err = run_cli(capsys, monkeypatch, "transfer", "--resume", str(tmp_path / "run.ckpt.npz"),
                        "-o", str(resumed_out))
    assert code == 0, err
    assert "resuming" in err and "at iteration 4 of 16, where it stopped" in err
    done = load_checkpoint(tmp_path / "run.ckpt.npz")
    assert done.iteration == 16 and len(done.history) == 16
    assert abs(done.loss - full.loss) <= 0.02 * full.loss
    assert done.loss == full.loss and done.history.tolist() == full.history.tolist()
    assert np.array_equal(np.asarray(Image.open(resumed_out)), np.asarray(Image.open(full_out)))


# --- 3. signals, with a real process -----------------------------------------------------------


def start_cli(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "stderr.txt"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "w") as f:
        # a shell's background job starts with SIGINT ignored; the test wants the interactive case
        proc = spawn([sys.executable, "-m", "stylerun", *args], stdout=subprocess.DEVNULL, stderr=f,
                     env=env, cwd=tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return proc, log


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_the_best_image_and_a_checkpoint(tmp_path, content_path, style_path, sig, code):
    out = tmp_path / "out.png"
    ckpt = tmp_path / "out.ckpt.npz"
    proc, log = start_cli(tmp_path, "transfer", str(content_path), str(style_path), "-o", str(out), *SMALL,
                          "-n", "100000", "--checkpoint-every", "3")
    wait_for(lambda: "~" in log.read_text(), 90, alive=proc)  # the estimate: it finished an iteration
    wait_for(ckpt.exists, 90, alive=proc)  # and got through a few iterations
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
    err = log.read_text()
    assert "Traceback" not in err
    name = signal.Signals(sig).name
    line = [x for x in err.splitlines() if x.startswith(f"stylerun: {name} at iteration")]
    assert len(line) == 1 and str(out) in line[0] and "--resume" in line[0], err
    iteration = int(line[0].split("at iteration ")[1].split()[0])
    assert iteration >= 3
    with Image.open(out) as img:
        assert img.size == (48, 32)
    state = load_checkpoint(ckpt)
    assert state.iteration == iteration and state.lbfgs is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ckpt.npz", "out.png", "stderr.txt"]


def test_sigint_without_checkpoints_real_process(tmp_path, content_path, style_path):
    out = tmp_path / "out.png"
    proc, log = start_cli(tmp_path, "transfer", str(content_path), str(style_path), "-o", str(out), *SMALL,
                          "-n", "100000")
    wait_for(lambda: "~" in log.read_text(), 90, alive=proc)  # the estimate: it finished an iteration
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    err = log.read_text()
    assert "Traceback" not in err and "stylerun: SIGINT at iteration" in err and "--resume" not in err
    with Image.open(out) as img:
        assert img.size == (48, 32) and np.isfinite(np.asarray(img, dtype=np.float32)).all()


def test_stop_signals_second_signal_hurries():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopSignals() as stopper:
        assert not stopper.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopper.requested() and stopper.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        stopper.hurry = False
        os.kill(os.getpid(), signal.SIGINT)  # ignored while writing
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_signal_cuts_the_evaluation_it_arrives_in(content_path, style_path):
    """Python runs a signal handler only once the main thread is back from C code, and an evaluation
    is one onnxruntime call: the wakeup socket's thread sets the request at once, and the evaluation's
    watcher ends onnxruntime's run (a 1024x768 one stopped 0.09 s after the request, not 7.5 s).

    The signal is sent while onnxruntime computes (from the watcher's first question); only a run that
    onnxruntime ended early raises `EvaluationStopped`, so no clock is needed to tell a cut from a full one."""
    from stylerun.errors import EvaluationStopped

    loss = StyleLoss(content_path, [style_path], TransferOptions(size=384, alpha=1.0, beta=1e3, threads=1))
    image = loss.content_image.copy()
    with StopSignals() as stopper:
        asked = []

        def requested() -> bool:
            if not asked:
                os.kill(os.getpid(), signal.SIGTERM)  # the main thread is inside onnxruntime: no handler runs
            asked.append(stopper.requested())
            return asked[-1]

        loss.stop_with(requested)
        with pytest.raises(EvaluationStopped):
            loss.loss_and_grad(image)
        assert stopper.name == "SIGTERM" and asked[-1], asked


def test_a_stop_inside_the_first_evaluation_says_nothing_was_written(tmp_path, content_path, style_path):
    """Cut inside the first evaluation, a run has no loss: no picture and no checkpoint are written, and
    the message says so instead of pointing at files that are not there."""
    out = tmp_path / "out.png"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = spawn([sys.executable, "-m", "stylerun", "transfer", str(content_path), str(style_path),
                  "-o", str(out), "--size", "512", "--scales", "1", "-n", "5", "--alpha", "1e-3", "--threads", "1",
                  "--checkpoint-every", "1", "--device", "cpu"], stderr=subprocess.PIPE, text=True, env=env)
    lines = [proc.stderr.readline()]
    while lines[-1] and not lines[-1].endswith(", 5 iterations\n"):  # then the first evaluation starts
        lines.append(proc.stderr.readline())
    proc.send_signal(signal.SIGTERM)
    err = "".join(lines) + proc.stderr.read()
    assert proc.wait(timeout=120) == 143, err
    assert "SIGTERM at iteration 0 of 5; no evaluation had finished: nothing written" in err, err
    assert "--resume" not in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("*.ckpt.npz"))


def test_animated_input_warns_on_stderr(tmp_path, content_path, style_path):
    frames = [Image.open(content_path).convert("RGB").resize((72, 48)), Image.new("RGB", (72, 48), "red")]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "stylerun", "transfer", str(gif), str(style_path), "-o",
                             str(tmp_path / "o.png"), *SMALL, "-n", "1", "-q"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == f"stylerun: warning: {gif}: several frames; using the first"

"""The run engine through its front ends: the Python API stops, checkpoints and resumes
like the CLI; float and 16-bit inputs keep their precision; 16-bit outputs; models that
onnxruntime refuses end in one line."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from helpers import SHALLOW, SHALLOW_FLAGS, assert_replaced_not_written_through, one_line_error, run_cli
from PIL import Image

import stylerun
from stylerun.engine.loss import StyleLoss
from stylerun.engine.run import Job, Listener, resume_job, run
from stylerun.errors import ModelError, OptionError
from stylerun.images import deep as deep_images
from stylerun.images.codec import decode, save_image
from stylerun.network.export import read_layers, targets_path
from stylerun.options import TransferOptions

SMALL = {"size": 48, **SHALLOW, "device": "cpu", "threads": 1}
CLI_SMALL = ["--size", "48", *SHALLOW_FLAGS, "--device", "cpu", "--threads", "1"]


def test_api_stops_on_an_event_checkpoints_and_resumes_exactly(tmp_path, content_path, style_path):
    full = stylerun.transfer(content_path, style_path, tmp_path / "full.png", iterations=10, **SMALL)
    stop = threading.Event()
    seen = []

    def callback(p):
        seen.append((p.iteration, p.eta_s, p.rgb().shape))
        if p.iteration == 4:
            stop.set()

    out = tmp_path / "run.png"
    stopped = stylerun.transfer(content_path, style_path, out, iterations=10, checkpoint_every=2, stop=stop,
                                callback=callback, **SMALL)
    assert [s[0] for s in seen] == [1, 2, 3, 4] and all(s[2] == (32, 48, 3) for s in seen)
    assert all(s[1] > 0 for s in seen[1:])  # an ETA once an iteration has been timed
    assert stopped.size == (48, 32) and out.is_file() and (tmp_path / "run.ckpt.npz").is_file()
    resumed = stylerun.transfer(resume=tmp_path / "run.ckpt.npz", output=tmp_path / "resumed.png")
    assert np.array_equal(np.asarray(resumed), np.asarray(full))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "resumed.png")), np.asarray(full))


def test_resume_writes_beside_the_checkpoint_and_never_over_a_file(tmp_path, content_path, style_path):
    ckpt = tmp_path / "a.ckpt.npz"
    stylerun.transfer(content_path, style_path, tmp_path / "elsewhere.png", iterations=2, checkpoint_every=1,
                      checkpoint=str(ckpt), **SMALL)
    job, state = resume_job(ckpt)
    assert job.output == tmp_path / "a.png" and state.iteration == 2
    (tmp_path / "a.png").write_bytes(b"precious")
    with pytest.raises(stylerun.InputError, match="exists"):
        resume_job(ckpt)
    with pytest.raises(OptionError, match="alpha cannot change when resuming"):
        resume_job(ckpt, tmp_path / "b.png", alpha=1.0)


def test_resume_does_not_trust_the_checkpoints_paths(tmp_path, content_path, style_path):
    mask = tmp_path / "mask.png"
    Image.new("L", (48, 32), 255).save(mask)
    ckpt = tmp_path / "m.ckpt.npz"
    stylerun.transfer(content_path, style_path, tmp_path / "m.png", iterations=2, checkpoint_every=1,
                      content_masks=[str(mask)], **SMALL)
    with pytest.raises(OptionError, match="content_masks is a path stored in checkpoint"):
        resume_job(ckpt, tmp_path / "r.png")
    job, _ = resume_job(ckpt, tmp_path / "r.png", trust_paths=True)
    assert job.options.content_masks == (str(mask),)
    job, _ = resume_job(ckpt, tmp_path / "r.png", content_masks=[str(mask)])
    assert job.options.content_masks == (str(mask),)


def test_engine_reports_to_a_listener_and_writes_numbered_images(tmp_path, content_path, style_path):
    events = []

    class Record(Listener):
        def loading(self):
            events.append("loading")

        def started(self, message):
            events.append(message)

        def estimate(self, estimate):
            events.append(estimate)

        def finishing(self):
            events.append("finishing")

    job = Job.of(content_path, style_path, tmp_path / "o.png", iterations=4, save_every=2, **SMALL)
    outcome = run(job, Record())
    assert events[:2] == ["loading", "48x32, 4 iterations"] and events[3] == "finishing"
    estimate = events[2]  # after the first iteration: the whole run's time, and where it runs
    assert estimate.device.startswith("CPU (") and 0 < estimate.seconds < np.inf and estimate.side == 48
    assert outcome.output == tmp_path / "o.png" and outcome.iterations == 4 and not outcome.interrupted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png", "o_0002.png", "o_0004.png"]


def test_float_arrays_are_used_at_full_precision(rng):
    """No rounding to 8 bits: the targets and the loss are those of the float arrays themselves."""
    content = rng.uniform(0, 255, (40, 36, 3)).astype(np.float32)
    style = rng.uniform(0, 255, (40, 36, 3)).astype(np.float32)
    layers = {"content_layers": "relu2_1", "style_layers": "relu1_1,relu2_1", "device": "cpu"}
    exact = StyleLoss(content, style, **layers)
    rounded = StyleLoss(np.rint(content), np.rint(style), **layers)
    assert np.array_equal(exact.content_image, content) and np.array_equal(exact.style_image, style)
    x = rng.uniform(0, 255, content.shape).astype(np.float32)
    assert exact.loss_and_grad(x)[0] != rounded.loss_and_grad(x)[0]


def test_16_bit_png_and_tiff_round_trip_at_full_precision(tmp_path, rng):
    image = rng.uniform(0, 255, (33, 41, 3)).astype(np.float32)
    for name in ("d.png", "d.tif"):
        save_image(image, tmp_path / name, bit_depth=16)
        back = decode(tmp_path / name)
        assert isinstance(back, np.ndarray) and back.shape == image.shape
        assert np.abs(back - image).max() <= 255 / 65535  # 8-bit would be off by up to 0.5
    with Image.open(tmp_path / "d.png") as im:  # a valid PNG for other readers too
        assert im.size == (41, 33)
    with pytest.raises(OptionError, match="bit_depth 16 needs a .png or .tif output"):
        save_image(image, tmp_path / "d.jpg", bit_depth=16)


def test_16_bit_grey_png_with_every_filter_decodes_exactly(tmp_path, rng):
    """Pillow writes 16-bit grey PNGs with adaptive filters (Sub, Up, Paeth...): every one is undone."""
    grey = rng.integers(0, 65536, (30, 40)).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "g.png")
    data = (tmp_path / "g.png").read_bytes()
    values = deep_images.read_png16(data, 10**6)
    assert np.array_equal(np.rint(values[..., 0] * (65535 / 255)).astype(np.uint16), grey)
    with pytest.raises(ValueError, match="pixel limit"):
        deep_images.read_png16(data, 100)


def test_cli_writes_16_bit_output(capsys, monkeypatch, tmp_path, content_path, style_path):
    out = tmp_path / "o.png"
    code, err = run_cli(capsys, monkeypatch, "transfer", str(content_path), str(style_path), "-o", str(out),
                        *CLI_SMALL, "-n", "2", "--bit-depth", "16", "-q")
    assert code == 0, err
    assert out.read_bytes()[24] == 16  # IHDR bit depth
    code, err = run_cli(capsys, monkeypatch, "transfer", str(content_path), str(style_path), "-o",
                        str(tmp_path / "o.jpg"), *CLI_SMALL, "-n", "2", "--bit-depth", "16", "-q")
    assert code == 2 and "--bit-depth 16 needs a .png or .tif output" in err


def _broken_copy(model_path, directory, name, breaks) -> str:
    model = onnx.load(str(model_path))
    breaks(model)
    path = directory / name
    path.write_bytes(model.SerializeToString())
    targets_path(path).write_bytes(targets_path(model_path).read_bytes())
    return str(path)


def _unknown_op(model: onnx.ModelProto) -> None:
    model.graph.node.append(onnx.helper.make_node("NoSuchOp", ["image"], ["bogus"]))
    model.graph.output.append(onnx.helper.make_tensor_value_info("bogus", onnx.TensorProto.FLOAT, None))


def _external_data_outside(model: onnx.ModelProto) -> None:
    weight = next(i for i in model.graph.initializer if len(i.dims) == 4)
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    del weight.external_data[:]
    weight.external_data.add(key="location", value="../../../../etc/passwd")


@pytest.mark.parametrize("breaks", [_unknown_op, _external_data_outside], ids=["unknown-op", "external-data"])
def test_models_onnxruntime_refuses_are_one_line_errors(capsys, monkeypatch, tmp_path, shallow_model,
                                                        content_path, style_path, breaks):
    bad = _broken_copy(shallow_model, tmp_path, "bad.onnx", breaks)
    code, err = run_cli(capsys, monkeypatch, "transfer", str(content_path), str(style_path), "-o",
                        str(tmp_path / "o.png"), *CLI_SMALL, "-n", "1", "--model", bad, "-q")
    assert code == 2
    one_line_error(code, err, "stylerun: error: onnxruntime cannot load model", "bad.onnx")
    with pytest.raises(ModelError, match="bad.onnx"):
        StyleLoss(content_path, style_path, model=bad, **SMALL)


def test_exported_models_record_the_weights_file_name_not_its_path(shallow_model):
    meta = {p.key: p.value for p in onnx.load(str(shallow_model), load_external_data=False).metadata_props}
    assert meta["stylerun.weights"] == "vgg19_caffe_q8.npz" and len(meta["stylerun.weights_sha256"]) == 64
    assert read_layers(shallow_model).style == ("relu1_1", "relu2_1")


def test_library_errors_use_api_names_and_the_cli_maps_them(capsys, monkeypatch, tmp_path, content_path,
                                                            style_path):
    with pytest.raises(OptionError, match="^lbfgs_memory must be at most 100, got 20000$"):
        TransferOptions(lbfgs_memory=20000)
    code, err = run_cli(capsys, monkeypatch, "transfer", str(content_path), str(style_path), "-o",
                        str(tmp_path / "o.png"), "--lbfgs-memory", "20000")
    assert code == 2 and err.strip() == "stylerun: error: --lbfgs-memory must be at most 100, got 20000"
    with pytest.raises(stylerun.InputError, match="unknown option 'iteratons' \\(did you mean iterations\\?\\)"):
        TransferOptions().replace(iteratons=5)


def test_option_typos_are_one_line_with_a_suggestion(capsys, monkeypatch, tmp_path):
    code, err = run_cli(capsys, monkeypatch, "transfer", "a.jpg", "b.jpg", "-o", str(tmp_path / "o.png"), "--sise", "5")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("stylerun: error: No such option: --sise") and "--size" in err and "--help" in err


def test_jpeg_output_is_high_quality_4_4_4_and_quality_is_checked(tmp_path, rng):
    from PIL import JpegImagePlugin

    image = rng.uniform(0, 255, (64, 64, 3)).astype(np.float32)
    save_image(image, tmp_path / "a.jpg")
    save_image(image, tmp_path / "b.jpg", quality=40)
    with Image.open(tmp_path / "a.jpg") as a:
        assert JpegImagePlugin.get_sampling(a) == 0  # 4:4:4
        error_a = np.abs(np.asarray(a, np.float32) - image).mean()
    with Image.open(tmp_path / "b.jpg") as b:
        error_b = np.abs(np.asarray(b, np.float32) - image).mean()
    assert error_a < error_b
    with pytest.raises(OptionError, match="quality must be at most 100"):
        TransferOptions(quality=101)


def test_an_enlarged_photo_is_announced(tmp_path, style_path):
    import subprocess
    import sys

    small = tmp_path / "small.png"
    Image.new("RGB", (40, 34), "gray").save(small)
    done = subprocess.run([sys.executable, "-m", "stylerun", "transfer", str(small), str(style_path), "-o",
                           str(tmp_path / "o.png"), *CLI_SMALL, "--size", "64", "-n", "1", "-q"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "stylerun: warning: the content image is 40x34; enlarging it to 64x54 (a smaller --size" in done.stderr


def test_atomic_writes_do_not_follow_a_planted_link(tmp_path, rng):
    """The temporary's name is random and created exclusively: a link under the old guessable name is ignored."""
    import os

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / f".o.{os.getpid()}.tmp.png").symlink_to(victim)
    # and a link at the output's own name: a rename replaces it, a plain write would go through it
    assert_replaced_not_written_through(tmp_path / "o.png", lambda: save_image(rng.uniform(0, 255, (8, 8, 3)),
                                                                                tmp_path / "o.png"))
    assert victim.read_text() == "precious" and Image.open(tmp_path / "o.png").size == (8, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".o.{os.getpid()}.tmp.png", "o.png", "o.png.victim",
                                                          "victim.txt"]


def test_a_checkpoint_is_written_atomically(tmp_path):
    """A checkpoint replaces the last one in one rename: a link at its name is replaced, and a write that fails
    half-way (disk full, a kill) leaves the previous checkpoint whole and no temporary behind."""
    from stylerun.engine import checkpoint as ckpt

    image = np.full((4, 4, 3), 7.25, np.float32)

    def state(iteration: int) -> ckpt.Checkpoint:
        return ckpt.Checkpoint(TransferOptions(), iteration, image, image, [image], 1.5, np.ones(iteration))

    path = tmp_path / "run.ckpt.npz"
    assert_replaced_not_written_through(path, lambda: ckpt.save_checkpoint(path, state(2)))

    def half_then_fail(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ckpt.np, "savez", half_then_fail)
        with pytest.raises(OSError):
            ckpt.save_checkpoint(path, state(3))
    assert ckpt.load_checkpoint(path).iteration == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt.npz", "run.ckpt.npz.victim"]


def test_models_with_bad_metadata_are_one_line(shallow_model, tmp_path, content_path, style_path):
    def bad_regions(model):
        for prop in model.metadata_props:
            if prop.key == "stylerun.regions":
                prop.value = "many"

    bad = _broken_copy(shallow_model, tmp_path, "meta.onnx", bad_regions)
    with pytest.raises(stylerun.InputError, match="meta.onnx has unusable stylerun metadata"):
        read_layers(bad)

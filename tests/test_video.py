"""`stylerun video`: the temporal term, flow warping and consistency, end to end runs, resume, bad inputs."""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image

pytest.importorskip("av")
pytest.importorskip("cv2")

import av  # noqa: E402

from stylerun import StyleLoss, stylize_video  # noqa: E402
from stylerun.engine.loss import WithExtra  # noqa: E402
from stylerun.engine.run import Job, run  # noqa: E402
from stylerun.options import TransferOptions  # noqa: E402
from stylerun.video.flow import consistency, optical_flow, warp  # noqa: E402
from stylerun.video.run import TemporalTerm, VideoListener, VideoSettings, long_term_weights, run_video  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = {"content_layers": "relu1_1", "style_layers": "relu1_1,relu2_1", "iterations": 2, "threads": 1}
TINY_FLAGS = ["--content-layers", "relu1_1", "--style-layers", "relu1_1,relu2_1", "-n", "2", "--threads", "1", "-q"]


def pan(frames: int, width: int = 40, height: int = 32, step: int = 2) -> list[np.ndarray]:
    """A window sliding `step` px right per frame over chelsea.jpg (scaled down): known motion."""
    photo = Image.open(EXAMPLES / "chelsea.jpg").convert("RGB").resize((96, 64), Image.BICUBIC)
    return [np.asarray(photo.crop((8 + k * step, 16, 8 + k * step + width, 16 + height)), np.float32)
            for k in range(frames)]


@pytest.fixture
def frames_dir(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for k, frame in enumerate(pan(3)):
        Image.fromarray(frame.astype(np.uint8)).save(folder / f"f{k:02d}.png")
    return folder


def write_clip(path: Path, frames: list[np.ndarray], audio: bool = True) -> None:
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=Fraction(12))
        video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        sound = out.add_stream("aac", rate=16000) if audio else None
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame.astype(np.uint8), format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            t = np.arange(16000 // 4) / 16000
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in [*sound.encode(frame), *sound.encode()]:
                out.mux(packet)


# --- the temporal term -----------------------------------------------------------------------------


def test_temporal_term_matches_finite_differences(rng):
    shape = (6, 5, 3)
    pairs = [(rng.uniform(0, 255, shape), (rng.uniform(size=shape[:2]) > 0.3).astype(np.float32)) for _ in range(2)]
    term = TemporalTerm(pairs, gamma=7.0)
    x = rng.uniform(0, 255, shape)
    value, grad = term.value_and_grad(x)
    expected = 7.0 / x.size * sum(np.sum(c[..., None] * (x - t) ** 2) for t, c in pairs)
    assert value == pytest.approx(expected, rel=1e-12)
    h = 1e-3
    for index in [(0, 0, 0), (3, 2, 1), (5, 4, 2), (2, 3, 0)]:
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        numeric = (term.value_and_grad(up)[0] - term.value_and_grad(down)[0]) / (2 * h)
        assert grad[index] == pytest.approx(numeric, rel=1e-4, abs=1e-6)


def test_extra_term_adds_to_the_loss_and_its_gradient(content_path, style_path, rng):
    loss = StyleLoss(content_path, style_path, size=48, **TINY)
    target = rng.uniform(0, 255, loss.shape).astype(np.float32)
    term = TemporalTerm([(target, np.ones(loss.shape[:2]))], gamma=1e3)
    x = rng.uniform(0, 255, loss.shape).astype(np.float32)
    value, grad = WithExtra(loss.objective, term).loss_and_grad(x)
    base, base_grad = loss.loss_and_grad(x)
    extra, extra_grad = term.value_and_grad(x)
    assert value == pytest.approx(base + extra, rel=1e-6)
    np.testing.assert_allclose(grad, base_grad + extra_grad, rtol=1e-5, atol=1e-3)


def test_engine_starts_from_job_start_and_minimizes_the_extra_term(content_path, style_path):
    options = TransferOptions(size=48, **TINY)
    plain = run(Job(content_path, (style_path,), options))
    target = np.full(plain.image.shape, 128.0, np.float32)

    def pull(loss):
        return TemporalTerm([(target, np.ones(loss.shape[:2]))], gamma=1e12)

    pulled = run(Job(content_path, (style_path,), options, start=target + 1, extra=pull))
    assert np.abs(pulled.image - 128).mean() < 2 < np.abs(plain.image - 128).mean()


# --- flow, warp, consistency -----------------------------------------------------------------------


def test_warp_and_consistency_on_known_motion():
    photo = Image.open(EXAMPLES / "chelsea.jpg").convert("RGB").resize((192, 128), Image.BICUBIC)
    step = 3
    prev = np.asarray(photo.crop((20, 20, 84, 68)), np.float32)
    cur = np.asarray(photo.crop((20 + step, 20, 84 + step, 68)), np.float32)  # the camera moved right
    back, fwd = optical_flow(cur, prev), optical_flow(prev, cur)
    inner = (slice(8, -8), slice(8, -8 - step))
    assert np.median(back[inner][..., 0]) == pytest.approx(step, abs=0.3)
    assert np.median(np.abs(back[inner][..., 1])) < 0.3
    weights = consistency(fwd, back)
    assert weights[:, -1].sum() == 0  # the last column was never seen: disoccluded
    assert weights[inner].mean() > 0.8
    warped = warp(prev, back)
    seen = weights > 0
    assert np.abs(warped - cur)[seen].mean() < 6  # the previous frame, moved onto this one
    exact = np.zeros_like(back)
    exact[..., 0] = step
    np.testing.assert_allclose(warp(prev, exact)[:, : -step], cur[:, : -step], atol=1e-3)


def test_long_term_weights_tie_each_pixel_to_the_nearest_frame_that_saw_it():
    near, far = np.array([[1.0, 0.0, 0.0]]), np.array([[1.0, 1.0, 0.0]])
    first, second = long_term_weights([near, far])
    np.testing.assert_array_equal(first, [[1, 0, 0]])
    np.testing.assert_array_equal(second, [[0, 1, 0]])


# --- end to end ------------------------------------------------------------------------------------


def test_folder_to_folder(capsys, monkeypatch, frames_dir, style_path, tmp_path):
    out = tmp_path / "out"
    code, err = run_cli(capsys, monkeypatch, "video", str(frames_dir), str(style_path), "-o", str(out),
                        "--size", "40", *TINY_FLAGS, "--temporal-frames", "1,2")
    assert code == 0, err
    written = sorted(out.glob("frame_*.png"))
    assert [p.name for p in written] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    assert Image.open(written[0]).size == (40, 32)


def test_video_to_video_copies_the_audio(capsys, monkeypatch, style_path, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, pan(4, 48, 32))
    out = tmp_path / "styled.mp4"
    code, err = run_cli(capsys, monkeypatch, "video", str(clip), str(style_path), "-o", str(out),
                        "--size", "48", "--frames", "1:4", "--flow", "farneback", *TINY_FLAGS)
    assert code == 0, err
    with av.open(str(out)) as result:
        frames = list(result.decode(video=0))
        assert len(frames) == 3 and (frames[0].width, frames[0].height) == (48, 32)
        assert len(result.streams.audio) == 1
    assert len(list((tmp_path / "styled.mp4.frames").glob("frame_*.png"))) == 3


class StopAfterFirst(VideoListener):
    def __init__(self, stop: threading.Event):
        self.stop = stop

    def frame_done(self, record, eta_s):
        self.stop.set()


def test_interrupted_run_keeps_finished_frames_and_resumes(frames_dir, style_path, tmp_path):
    out = tmp_path / "out"
    options = TransferOptions(size=40, **TINY)
    stop = threading.Event()
    first = run_video(frames_dir, (style_path,), out, options, VideoSettings(), StopAfterFirst(stop), stop)
    assert first.interrupted and len(first.frames) == 1
    assert [p.name for p in sorted(out.glob("frame_*.png"))] == ["frame_00000.png"]
    kept = (out / "frame_00000.png").stat().st_mtime_ns
    with pytest.raises(Exception, match="earlier run"):
        run_video(frames_dir, (style_path,), out, options)
    done = stylize_video(frames_dir, style_path, out, resume=True, size=40, **TINY)
    assert done.skipped == 1 and [r.index for r in done.frames] == [1, 2]
    assert (out / "frame_00000.png").stat().st_mtime_ns == kept


def warping_errors(out: Path, step: int) -> list[float]:
    """Mean squared difference between each styled frame and the one before it moved by the clip's known
    `step` (the window slides right, so frame k at x is frame k-1 at x + step), over the pixels both saw."""
    styled = [np.asarray(Image.open(p), np.float64) for p in sorted(out.glob("frame_*.png"))]
    pairs = zip(styled[:-1], styled[1:], strict=True)
    return [float(np.mean((cur[:, :-step] - prev[:, step:]) ** 2)) for prev, cur in pairs]


def test_the_temporal_term_lowers_the_warping_error(tmp_path, style_path):
    """The point of the term (Ruder et al.): on a pan with a known shift, the styled frames follow the motion
    far more closely with it than the same run without it (temporal weight 0), which flickers."""
    step = 2
    folder = tmp_path / "in"
    folder.mkdir()
    for k, frame in enumerate(pan(4, step=step)):
        Image.fromarray(frame.astype(np.uint8)).save(folder / f"f{k:02d}.png")
    options = TransferOptions(size=40, **{**TINY, "iterations": 10})
    errors = {}
    for name, weight in (("with", VideoSettings().temporal_weight), ("without", 0.0)):
        run_video(folder, (style_path,), tmp_path / name, options, VideoSettings(temporal_weight=weight))
        errors[name] = warping_errors(tmp_path / name, step)
    assert len(errors["with"]) == 3
    assert all(a < 0.5 * b for a, b in zip(errors["with"], errors["without"], strict=True)), errors


# --- bad input -------------------------------------------------------------------------------------


def audio_only(path: Path) -> None:
    with av.open(str(path), "w") as out:
        sound = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*sound.encode(frame), *sound.encode()]:
            out.mux(packet)


@pytest.mark.parametrize("case, message", [
    ("not_video", "is not a video"),
    ("audio_only", "has no video stream"),
    ("missing", "not found"),
    ("pixels", "pixel limit"),
    ("range", "--frames must be A:B"),
    ("checkpoint", "No such option: --checkpoint-every"),
    ("suffix", "give a folder for PNG frames"),
    ("flow", "--flow must be one of"),
])
def test_bad_input_is_one_line(capsys, monkeypatch, style_path, tmp_path, case, message):
    clip = tmp_path / "clip.mp4"
    extra: list[str] = []
    out = tmp_path / "out"
    if case == "not_video":
        clip.write_text("just text, not a video")
    elif case == "audio_only":
        clip = tmp_path / "sound.wav"
        audio_only(clip)
    elif case != "missing":
        write_clip(clip, pan(2, 48, 32), audio=False)
    extra = {"pixels": ["--max-pixels", "1000"], "range": ["--frames", "3:1"], "checkpoint":
             ["--checkpoint-every", "5"], "flow": ["--flow", "lucas"]}.get(case, [])
    if case == "suffix":
        out = tmp_path / "out.avi"
    code, err = run_cli(capsys, monkeypatch, "video", str(clip), str(style_path), "-o", str(out), *TINY_FLAGS,
                        *extra)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


def test_api_refuses_checkpoint_options(frames_dir, style_path, tmp_path):
    with pytest.raises(Exception, match="checkpoint_every is not for video"):
        stylize_video(frames_dir, style_path, tmp_path / "out", checkpoint_every=5, **TINY)

"""Video with temporal consistency (Ruder, Dosovitskiy & Brox, 2016) over the run engine.

Each frame is one engine run (`engine.run`) on that frame as the content, with two
changes the engine takes through `Job`: it starts from the previous stylized frame warped
along the optical flow (`Job.start`; the first frame starts as `init` says), and its loss
has the temporal term (`Job.extra`)

    gamma / D * sum_j sum_p c_j(p) * (x(p) - warp_j(x_{i-j})(p))^2,   D = H * W * 3

over the earlier frames j of `temporal_frames` (1: the previous one), where c_j is the
forward-backward consistency of the flow between frame i and i-j (0 at disocclusions and
motion boundaries). With several j (long-term consistency), a pixel is tied only to the
nearest earlier frame where it was visible: c_j = max(0, c_j - sum of the nearer c's).

The term is a mean over the H*W*3 values (gamma / D * sum, D = H*W*3, as in the paper),
not a sum: stylerun's style term, which dominates its loss, does not grow with the frame's
pixels, so neither may the temporal term, or one gamma would mean different things at 128
and at 512 px. The default gamma: Ruder et al.'s code (built on neural-style) weighs the
style term 1e2 and the temporal term 1e3, and its style term per layer is
sum (G - A)^2 / (N^4 M^2), a mean over Grams normalized by N*M. stylerun's per layer is
w_l * sum (G - A)^2 / (4 N^2 M^2) = w_l * N^2/4 times that, so at the default layers
(relu1_1..relu5_1, N = 64..512, w_l = 0.2) and beta = 1 stylerun's style term is
sum_l 0.2 N_l^2/4 / (1e2 * 5) = 61 times the paper's for the same images. Keeping the
paper's temporal-to-style ratio gives gamma = 1e3 * 61 = 6.1e4 (`TEMPORAL_WEIGHT`); with
another beta or other layers, scale it alike.

Finished frames are PNG files in a folder (the output folder itself, or ``OUTPUT.frames``
beside a video output), written atomically when a frame is done, so an interrupted run
keeps them and ``resume`` goes on from the next frame.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stylerun.engine.loss import StyleLoss
from stylerun.engine.run import Job, Listener, Outcome, as_stop, plan_of, run
from stylerun.errors import InputError, OptionError, mention
from stylerun.images.codec import load_image, save_image
from stylerun.network.sessions import ModelCache
from stylerun.options import TransferOptions
from stylerun.video.flow import FLOWS, consistency, optical_flow, warp
from stylerun.video.frames import Source, check_video_output, encode, frame_name, parse_range

#: The paper's 1e3 times stylerun's style scale at the default layers (the module docstring derives it).
TEMPORAL_WEIGHT = 1e3 * sum(0.2 * n * n / 4 for n in (64, 128, 256, 512, 512)) / (1e2 * 5)
#: Options a video run cannot take: each frame's own files replace them.
NOT_FOR_VIDEO = ("save_every", "checkpoint_every", "checkpoint")


@dataclass(frozen=True)
class VideoSettings:
    """What `stylerun video` adds to the transfer options."""

    temporal_weight: float = TEMPORAL_WEIGHT
    flow: str = "dis"
    frames: str | None = None
    fps: float | None = None
    temporal_frames: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        if not (self.temporal_weight >= 0 and math.isfinite(self.temporal_weight)):
            raise OptionError("temporal_weight", f"must be a number >= 0 (0 turns the term off); got "
                                                 f"{self.temporal_weight}")
        if self.flow not in FLOWS:
            raise OptionError("flow", f"must be one of: {', '.join(FLOWS)}; got {self.flow!r}")
        if self.fps is not None and not (0 < self.fps <= 1000):
            raise OptionError("fps", f"must be between 0 and 1000; got {self.fps}")
        if not self.temporal_frames or any(j < 1 or j > 64 for j in self.temporal_frames):
            raise OptionError("temporal_frames", f"must be frame distances from 1 to 64, e.g. 1,2,4; got "
                                                 f"{self.temporal_frames}")
        parse_range(self.frames)


def parse_temporal_frames(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise OptionError("temporal_frames", f"must be a list like 1,2,4; got {text!r}") from None
    return values


class TemporalTerm:
    """gamma / D * sum c * (x - target)^2 over (target, c) pairs, on the optimizer's variable (D values);
    c is (H, W)."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], gamma: float):
        self.pairs = [(np.asarray(t, np.float64), np.asarray(c, np.float64)[..., None]) for t, c in pairs]
        self.gamma = gamma

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        x = np.asarray(x, np.float64)
        value, grad = 0.0, np.zeros_like(x)
        for target, c in self.pairs:
            diff = x - target
            value += float(np.sum(c * diff * diff))
            grad += 2.0 * c * diff
        scale = self.gamma / x.size
        return scale * value, (scale * grad).astype(np.float32)


def long_term_weights(weights: list[np.ndarray]) -> list[np.ndarray]:
    """Each pixel tied to the nearest earlier frame where it is visible (weights ordered nearest first)."""
    out, covered = [], np.zeros_like(weights[0])
    for c in weights:
        out.append(np.maximum(c - covered, 0.0))
        covered = covered + c
    return out


@dataclass
class FrameRecord:
    """One finished frame: where it went, its loss terms and how long it took."""

    index: int
    path: Path
    content_loss: float
    style_loss: float
    temporal_loss: float
    seconds: float
    iterations: int


class VideoListener(Listener):
    """Hooks of a video run: the engine's per-iteration events, plus frame events."""

    def frame_start(self, index: int, number: int, total: int | None) -> None:
        """Frame `index` starts; it is the `number`-th (from 1) of `total` to stylize (None: unknown)."""

    def frame_done(self, record: FrameRecord, eta_s: float) -> None:
        """A frame is written; `eta_s`: the seconds the remaining frames should take (nan: unknown)."""


@dataclass
class VideoResult:
    frames: list[FrameRecord] = field(default_factory=list)
    output: Path | None = None
    interrupted: bool = False
    error: str | None = None
    skipped: int = 0


@dataclass
class _History:
    """The earlier frames the temporal term and the start need: content and stylized, by index."""

    content: dict[int, np.ndarray] = field(default_factory=dict)
    styled: dict[int, np.ndarray] = field(default_factory=dict)

    def keep(self, index: int, content: np.ndarray, styled: np.ndarray, depth: int) -> None:
        self.content[index], self.styled[index] = content, styled
        for old in [k for k in self.content if k <= index - depth]:
            del self.content[old], self.styled[old]


def frames_folder(output: Path) -> Path:
    """Where the PNG frames go: the output itself when it is a folder (no suffix), else OUTPUT.frames."""
    return output if output.suffix == "" or output.is_dir() else output.with_name(output.name + ".frames")


def check_video(output: Path, options: TransferOptions, resume: bool) -> Path:
    """Checks before any work; returns the frames folder."""
    for name in NOT_FOR_VIDEO:
        default = getattr(TransferOptions(), name)
        if getattr(options, name) != default:
            raise OptionError(name, "is not for video: every finished frame is kept, and `resume` goes on from "
                                    "the next one")
    folder = frames_folder(output)
    if folder != output:
        check_video_output(output)
    done = sorted(folder.glob("frame_*.png")) if folder.is_dir() else []
    if done and not resume:
        raise InputError(f"{folder} holds frames of an earlier run; go on with {mention('resume')}, or remove them")
    return folder


def _content(index: int, frame: np.ndarray, folder: Path) -> np.ndarray | None:
    """A frame already written by an earlier run, or None."""
    path = folder / frame_name(index)
    if not path.is_file():
        return None
    done = load_image(path)
    return done if done.shape == frame.shape else None


def _guide(index: int, frame: np.ndarray, history: _History, settings: VideoSettings
           ) -> tuple[np.ndarray | None, list[tuple[np.ndarray, np.ndarray]]]:
    """The start (previous stylized frame warped here) and the (warped earlier frame, weight) pairs."""
    pairs, weights, start = [], [], None
    for j in settings.temporal_frames:
        if index - j not in history.content:
            continue
        back = optical_flow(frame, history.content[index - j], settings.flow)
        fwd = optical_flow(history.content[index - j], frame, settings.flow)
        warped = warp(history.styled[index - j], back)
        if start is None:
            start = warped
        pairs.append(warped)
        weights.append(consistency(fwd, back))
    if not pairs:
        return start, []
    return start, list(zip(pairs, long_term_weights(weights), strict=True))


def _extra(pairs: list[tuple[np.ndarray, np.ndarray]], gamma: float) -> Callable[[StyleLoss], TemporalTerm | None]:
    def build(loss: StyleLoss) -> TemporalTerm | None:
        if gamma == 0 or not pairs or loss.shape[:2] != pairs[0][0].shape[:2]:
            return None  # no term, or a coarser scale of a multi-scale run
        return TemporalTerm([(loss.to_variable(w), c) for w, c in pairs], gamma)
    return build


def run_video(source: str | Path, style: Any, output: str | Path, options: TransferOptions,
                  settings: VideoSettings = VideoSettings(), listener: VideoListener | None = None,
                  stop: Callable[[], bool] | Any = None, resume: bool = False) -> VideoResult:
    """Stylize every frame of `source` (a video file or a folder of frames) into `output` (a
    folder of PNG frames, or a video file); see the module docstring."""
    listener = listener or VideoListener()
    stop = as_stop(stop)
    output = Path(output)
    styles = tuple(style) if isinstance(style, (list, tuple)) else (style,)
    folder = check_video(output, options, resume)
    clip = Source.open(source, options.max_pixels)
    folder.mkdir(exist_ok=True)  # only once the input is known to be readable
    first, end = parse_range(settings.frames)
    total = (min(end or len(clip.files), len(clip.files)) - first) if clip.folder else \
        (end - first if end is not None else None)
    result, history, models = VideoResult(), _History(), ModelCache(1)
    depth = max(settings.temporal_frames)
    listener.loading()
    for number, (index, frame) in enumerate(clip.frames(options.size, options.max_pixels, first, end,
                                                        options.background), start=1):
        done = _content(index, frame, folder) if resume else None
        if done is not None:
            history.keep(index, frame, done, depth)
            result.skipped += 1
            continue
        listener.frame_start(index, number, total)
        record, outcome = _one_frame(index, frame, styles, options, settings, history, folder, listener, stop,
                                     models)
        if outcome.interrupted or outcome.error:
            result.interrupted, result.error = outcome.interrupted, outcome.error
            return result
        history.keep(index, frame, outcome.image, depth)
        options = finest_only(same_weights(options, outcome), frame.shape)
        result.frames.append(record)
        listener.frame_done(record, _eta(result, total, number))
    if not result.frames and not result.skipped:
        raise InputError(f"{source} has no frames in {mention('frames')} {settings.frames or ':'}")
    if folder != output:
        fps = settings.fps or clip.fps
        span = (first / clip.fps, None if end is None else end / clip.fps)
        result.output = encode(sorted(folder.glob("frame_*.png")), output, fps,
                               None if clip.folder else clip.path, span)
    else:
        result.output = folder
    return result


def same_weights(options: TransferOptions, outcome: Outcome) -> TransferOptions:
    """Options for the frames after the first: the α/β its style strength chose and the TV weight its
    smoothness chose, so that the whole clip has one balance (re-measured per frame, it would drift
    with the picture)."""
    loss = outcome.loss_object
    if loss is None:
        return options
    if options.tv_weight is None:
        options = options.replace(smoothness=None, tv_weight=loss.tv_weight)
    if not isinstance(options.weighting(), float):
        return options
    return options.replace(style_strength=None, alpha=loss.alpha, beta=loss.beta)


def finest_only(options: TransferOptions, shape: tuple[int, ...]) -> TransferOptions:
    """Options for the frames after the first: only the finest scale, with the iterations the first frame
    ran there. Each starts from the previous frame's picture warped along the flow, strokes already laid
    out at the painting's size, and coarse scales would repaint them differently frame by frame."""
    if options.scales == 1:
        return options
    plan = plan_of(options, max(shape[:2]), shape)
    last = plan[-1][1] - (plan[-2][1] if len(plan) > 1 else 0)
    return options.replace(scales=1, iterations=last)


def _eta(result: VideoResult, total: int | None, number: int) -> float:
    if total is None:
        return math.nan
    per = sum(r.seconds for r in result.frames) / len(result.frames)
    return per * max(0, total - number)


def _one_frame(index: int, frame: np.ndarray, styles: tuple, options: TransferOptions, settings: VideoSettings,
               history: _History, folder: Path, listener: VideoListener, stop, models: ModelCache
               ) -> tuple[FrameRecord, Outcome]:
    begin = time.perf_counter()
    start, pairs = _guide(index, frame, history, settings)
    job = Job(frame, styles, options.replace(size=max(frame.shape[:2])), None, start=start,
              extra=_extra(pairs, settings.temporal_weight))
    outcome = run(job, listener, stop, models=models)
    path = folder / frame_name(index)
    if not (outcome.interrupted or outcome.error):
        save_image(outcome.image, path, options.bit_depth)
    content, style, temporal = frame_terms(outcome, pairs, settings.temporal_weight)
    record = FrameRecord(index, path, content, style, temporal, time.perf_counter() - begin, outcome.iterations)
    return record, outcome


def frame_terms(outcome: Outcome, pairs: list[tuple[np.ndarray, np.ndarray]], gamma: float
                ) -> tuple[float, float, float]:
    """The content, style and temporal terms of a finished frame's image."""
    loss = outcome.loss_object
    if loss is None or not math.isfinite(outcome.loss):
        return math.nan, math.nan, math.nan
    loss.loss_and_grad(outcome.image)
    content, style = loss.last_terms
    temporal = TemporalTerm(pairs, gamma).value_and_grad(outcome.image)[0] if pairs and gamma else 0.0
    return content, style, temporal

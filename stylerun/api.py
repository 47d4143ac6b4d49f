"""The Python API: `transfer`, the twin of `stylerun transfer`, over the same run engine.

Its keywords are the transfer options (`TransferOptions`) by their API names, with the
same defaults as the CLI's flags; `callback`, `stop` and `resume` take the place of the
progress bar, Ctrl-C and ``--resume``.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from stylerun.engine.optimizers import Progress
from stylerun.engine.run import CallbackListener, Job, resume_job, run
from stylerun.errors import NumericError
from stylerun.lines import Plain, RunLines, VideoLines, outcome_text
from stylerun.options import TransferOptions
from stylerun.video.run import VideoResult, VideoSettings, parse_temporal_frames, run_video


def transfer(
    content: Any = None,
    style: Any = None,
    output: str | Path | None = None,
    *,
    callback: Callable[[Progress], None] | None = None,
    stop: Callable[[], bool] | threading.Event | None = None,
    resume: str | Path | None = None,
    trust_checkpoint_paths: bool = False,
    progress: bool = False,
    **options: Any,
) -> Image.Image:
    """Paint `content` in the style of `style` and return the result as an 8-bit RGB image.

    `content` and `style` are paths, PIL images or (H, W, 3) arrays in 0..255 (float
    arrays are used at full precision); `style` may be a list, blended by `style_blend`.
    Every other keyword is a transfer option, as `stylerun transfer --help` lists them
    (``--lbfgs-memory`` is ``lbfgs_memory``). With `output` the result is also written
    there (atomically, `bit_depth` 8 or 16), and `save_every` / `checkpoint_every` write
    numbered images and checkpoints beside it.

    `callback` gets a `Progress` after every iteration (``p.rgb()`` is the current
    image); `stop` (a callable or a `threading.Event`) ends the run at the next
    evaluation, as Ctrl-C does, and the best image so far is returned. `resume` goes on
    from a checkpoint exactly where it stopped (`content` and `style` then come from it).
    A non-finite loss raises `NumericError`.

    `progress=True` prints what the command line prints, as plain lines on stderr: the
    size, the estimated time after the first iteration, the loss and ETA every tenth of
    the run (or 30 s), warnings, and where the result went.
    """
    if resume is not None:
        job, state = resume_job(resume, output, trust_paths=trust_checkpoint_paths, **options)
    else:
        job, state = Job.of(content, style, output, **options), None
    if not progress:
        outcome = run(job, CallbackListener(callback), stop, resume=state)
    else:
        lines = Plain()
        listener = RunLines(lines, job.options.iterations, state.iteration if state else 0, callback=callback)
        try:
            outcome = run(job, listener, stop, resume=state)
        finally:
            listener.close()
        lines.say(outcome_text(outcome))
    if outcome.error:
        raise NumericError(outcome.error)
    picture = Image.fromarray(np.clip(np.rint(outcome.image), 0, 255).astype(np.uint8))
    picture.info.update(outcome.record)  # the weights chosen and the options, as the file has them
    return picture


def _signature() -> inspect.Signature:
    """`transfer`'s signature with every option spelled out, so help() and editors show them."""
    base = inspect.signature(transfer)
    params = [p for p in base.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    defaults = TransferOptions()
    for f in fields(TransferOptions):
        default = getattr(defaults, f.name) if f.default is MISSING else f.default
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=f.type))
    return base.replace(parameters=params)


transfer.__signature__ = _signature()


def stylize_video(
    source: str | Path,
    style: Any,
    output: str | Path,
    *,
    temporal_weight: float = VideoSettings.temporal_weight,
    flow: str = VideoSettings.flow,
    frames: str | None = None,
    fps: float | None = None,
    temporal_frames: str | tuple[int, ...] = VideoSettings.temporal_frames,
    resume: bool = False,
    stop: Callable[[], bool] | threading.Event | None = None,
    progress: bool = False,
    **options: Any,
) -> VideoResult:
    """The twin of `stylerun video`: stylize `source` (a video file or a folder of frames) into
    `output` (a folder of PNG frames or a video file) with temporal consistency.

    Every other keyword is a transfer option, as for `transfer`. `stop` ends the run within a
    moment (mid-evaluation); finished frames are kept and `resume=True` goes on from the next one.
    Returns the frames' records (terms, seconds) and where the result went; a non-finite loss
    raises `NumericError`.
    """
    if isinstance(temporal_frames, str):
        temporal_frames = parse_temporal_frames(temporal_frames)
    settings = VideoSettings(temporal_weight, flow, frames, fps, tuple(temporal_frames))
    opts = TransferOptions().replace(**options)
    listener = None
    if progress:
        listener = VideoLines(Plain(), opts.iterations)
    try:
        result = run_video(source, style, output, opts, settings, listener, stop, resume)
    finally:
        if listener is not None:
            listener.close()
    if result.error:
        raise NumericError(result.error)
    return result

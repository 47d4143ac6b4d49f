"""The run engine: one function from a job (inputs + options) to a finished image.

`run` does everything a transfer needs around the optimizer: the coarse-to-fine scales,
resuming from a checkpoint, checkpoints and intermediate images every N iterations, stop
requests, NaN handling, progress events with an ETA, and writing the result atomically.
Under `max_memory`, each scale's tile size and L-BFGS-B history come from the memory
planner (`engine.memory`). Every front end (the CLI, `stylerun.transfer`, figures, batch
jobs in `jobs/`, the HTTP service in `serve/`, video in `video/`) is a thin layer over it:
it builds a `Job`, passes a `Listener` and a stop flag, and maps the `Outcome` to an exit
status or a response.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from stylerun.engine import memory
from stylerun.engine.checkpoint import Checkpoint, default_checkpoint_path, load_checkpoint, save_checkpoint
from stylerun.engine.estimate import Estimate, device_name, estimate, iteration_seconds, seconds_left
from stylerun.engine.loss import (
    ExtraTerm,
    StyleLoss,
    WithExtra,
    check_setup,
    check_weights_file,
    fit_style,
    initial_image,
    layer_set,
    resize_to,
)
from stylerun.engine.optimizers import Progress, Result, optimize
from stylerun.engine.schedule import scale_plan
from stylerun.errors import InputError, OptionError, StylerunError, mention
from stylerun.files.locks import output_lock
from stylerun.images.codec import (
    check_deep_output,
    check_output_path,
    check_requested_size,
    decode,
    fit_longest_side,
    load_image,
    max_pixels,
    picture_size,
    same_file,
    save_image,
)
from stylerun.network import tiling
from stylerun.network.sessions import default_threads, release_free_memory
from stylerun.options import RESUMABLE, TransferOptions
from stylerun.records import json_value
from stylerun.version import __version__
from stylerun.weights.formats import detect_format

#: Options naming files a checkpoint may carry; used on resume only when given again or trusted.
PATH_OPTIONS = ("weights", "model", "content_masks", "style_masks")


@dataclass(frozen=True)
class Job:
    """One transfer: the inputs, the options, and where the result goes (None: not written).

    `content` and each of `style` are paths, PIL images or (H, W, 3) arrays in 0..255.
    """

    content: Any
    style: tuple[Any, ...]
    options: TransferOptions = field(default_factory=TransferOptions)
    output: Path | None = None
    #: The starting image, (H, W, 3) RGB in 0..255, in place of what `init` names (video: the
    #: previous stylized frame warped to this one); resized to each scale.
    start: np.ndarray | None = field(default=None, repr=False, compare=False)
    #: A term added to the loss: called with each stage's `StyleLoss`, it returns an `ExtraTerm`
    #: (``value_and_grad(x)`` on the optimizer's variable) or None for no term at that stage.
    extra: Callable[[StyleLoss], ExtraTerm | None] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, content: Any, style: Any, output: str | Path | None = None, **options: Any) -> Job:
        styles = tuple(style) if isinstance(style, (list, tuple)) else (style,)
        return cls(content, styles, TransferOptions().replace(**options), None if output is None else Path(output))


@dataclass
class Outcome(Result):
    """How a run ended: the optimizer's `Result`, with `image` as RGB (H, W, 3) float32 in
    0..255, and what the run wrote."""

    output: Path | None = None
    checkpoint: Path | None = None
    provider: str = ""
    #: The loss object of the last stage, to evaluate other images against the same targets.
    loss_object: StyleLoss | None = field(default=None, repr=False)
    #: What made the picture (`describe`), as written into the output file's metadata.
    record: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def written(self) -> bool:
        return self.output is not None


class Listener:
    """Hooks a front end gives `run`; every method is optional (no-op here)."""

    def loading(self) -> None:
        """Images are being decoded and the model prepared (the first run of a layer set exports VGG19)."""

    def started(self, message: str) -> None:
        """The optimization starts; `message` says what runs where."""

    def notice(self, message: str) -> None:
        """Something worth one line: the weights file detected."""

    def estimate(self, estimate: Estimate) -> None:
        """After the first iteration: how long the whole optimization should take."""

    def warning(self, message: str) -> None:
        """Something went wrong but the run goes on: an intermediate write failed, an optimizer state was dropped."""

    def progress(self, progress: Progress) -> None:
        """After every iteration."""

    def finishing(self) -> None:
        """The result is about to be written: a stop must not cut this short."""


class CallbackListener(Listener):
    """A plain progress callback as a listener (the Python API's `callback=`)."""

    def __init__(self, callback: Callable[[Progress], None] | None):
        self.callback = callback

    def progress(self, progress: Progress) -> None:
        if self.callback is not None:
            self.callback(progress)


def as_stop(stop: Callable[[], bool] | threading.Event | None) -> Callable[[], bool] | None:
    """A stop flag: a callable returning True, or a `threading.Event` that is set."""
    return stop.is_set if isinstance(stop, threading.Event) else stop


def intermediate_path(output: Path, iteration: int) -> Path:
    return output.with_name(f"{output.stem}_{iteration:04d}{output.suffix}")


# --- checks before any work ------------------------------------------------------------------------


def check_job(job: Job) -> int:
    """Every check that needs no decoding and no model; returns the guided regions (0: unguided)."""
    options = job.options
    if not job.style:
        raise InputError("give at least one style image")
    regions = options.check_for(len(job.style))
    max_pixels(options.max_pixels)  # a malformed STYLERUN_MAX_PIXELS is an error now, not after the export
    if options.size is not None:
        check_requested_size(options.size, limit=options.max_pixels)
    if options.scales != 1 and options.size is not None:
        plan_of(options, options.size)
    _check_output(job)
    return regions


def _check_output(job: Job) -> None:
    options = job.options
    if job.output is None:
        for name in ("save_every", "checkpoint_every"):
            if getattr(options, name) > 0 and not (name == "checkpoint_every" and options.checkpoint):
                raise OptionError(name, "needs an output file to name what it writes")
        return
    output = check_output_path(job.output)
    if options.bit_depth == 16:
        check_deep_output(output)
    inputs = [("content", job.content), *(("style", s) for s in job.style)]
    if not options.force:
        for what, source in inputs:
            if isinstance(source, (str, os.PathLike)) and same_file(output, source):
                raise InputError(f"output {output} is the {what} image; choose another {mention('output')}, or add "
                                 f"{mention('force')}")
    ckpt = checkpoint_path(job)
    if ckpt is not None:
        if not ckpt.parent.is_dir():
            raise OptionError("checkpoint", f"folder {ckpt.parent} does not exist; create it first")
        if same_file(ckpt, output) or any(isinstance(s, (str, os.PathLike)) and same_file(ckpt, s) for _, s in inputs):
            raise OptionError("checkpoint", f"{ckpt} would overwrite an input or the output; choose another one")


def checkpoint_path(job: Job) -> Path | None:
    """Where checkpoints go, or None when none are written."""
    if job.options.checkpoint_every <= 0:
        return None
    if job.options.checkpoint:
        return Path(job.options.checkpoint)
    return default_checkpoint_path(job.output) if job.output is not None else None


def plan_of(options: TransferOptions, size: int, shape: tuple[int, ...] | None = None) -> list[tuple[int, int]]:
    """The run's stages, (longest side, last iteration) each, for a finest image of longest side `size`
    and `shape` (see `schedule.scale_plan`)."""
    return scale_plan(size, options.scales, options.iterations, shape, ratio=options.scale_ratio,
                      split=options.scale_split)


# --- resume ----------------------------------------------------------------------------------------


def resume_job(path: str | Path, output: str | Path | None = None, *, trust_paths: bool = False,
               **overrides: Any) -> tuple[Job, Checkpoint]:
    """The job a checkpoint describes, to pass to `run(job, resume=checkpoint)`.

    A checkpoint comes from outside: only the options in `RESUMABLE` and the file options
    in `PATH_OPTIONS` may be given again (the rest decide the picture and come from the
    file). Without `output` the result goes next to the checkpoint (``NAME.ckpt.npz`` ->
    ``NAME.png``), never to the output path stored inside it. Files the checkpoint names
    (weights, model, masks) are used only when given again or when `trust_paths` is set.
    """
    path = Path(path)
    allowed = set(RESUMABLE) | set(PATH_OPTIONS)
    refused = [name for name in overrides if name not in allowed]
    if refused:
        raise OptionError(refused[0], "cannot change when resuming: the checkpoint's settings decide the picture "
                                      f"(only {', '.join(mention(n) for n in sorted(allowed))} and the output "
                                      "may be given)")
    state = load_checkpoint(path, overrides.get("max_pixels"))
    untrusted = [n for n in PATH_OPTIONS if getattr(state.options, n) is not None and n not in overrides]
    if untrusted and not trust_paths:
        names = ", ".join(mention(n) for n in untrusted)
        raise OptionError(untrusted[0], f"is a path stored in checkpoint {path}; a checkpoint is not trusted to "
                                        f"choose files: give {names} again, or confirm the stored paths with "
                                        f"{mention('trust_checkpoint_paths')}")
    # where checkpoints go and the pixel limit are the user's: a crafted file could name any path or limit
    checkpoint = overrides.pop("checkpoint", None) or str(path)
    options = state.options.replace(checkpoint=str(checkpoint), max_pixels=None, **overrides)
    target = Path(output) if output is not None else _beside(path)
    if output is None and target.exists() and not options.force:
        raise InputError(f"{target} exists (a resumed run without {mention('output')} writes beside its "
                         f"checkpoint); give {mention('output')}, or add {mention('force')} to overwrite it")
    # the inputs are kept at the finest scale: the resumed run takes every scale from them, as the first one did
    job = Job(state.content, tuple(state.style), options, target)
    return job, state


def _beside(checkpoint: Path) -> Path:
    name = checkpoint.name.removesuffix(".npz").removesuffix(".ckpt")
    return checkpoint.with_name(f"{name}.png")


# --- the run ---------------------------------------------------------------------------------------


class _Run:
    """One call of `run`: the stages, the progress bookkeeping and the files written."""

    def __init__(self, job: Job, listener: Listener, stop: Callable[[], bool] | None, resume: Checkpoint | None,
                 models: Callable[..., Any] | None = None):
        self.job, self.options, self.listener, self.stop, self.resume = job, job.options, listener, stop, resume
        self.models = models
        self.history: list[float] = list(resume.history) if resume is not None else []
        self.ckpt = checkpoint_path(job)
        self.begin = time.perf_counter()
        self.plan: list[tuple[int | None, int]] = []
        self.stage_index, self.stage_first = 0, 0
        self.first_done = 0.0  # when this stage's first iteration ended
        self.costs: dict[int | None, float] = {}  # `stage_cost` by size
        self.loss: StyleLoss | None = None
        #: The content and styles at the finest scale, every scale's loss made from them (None: one scale).
        self.finest: tuple[np.ndarray, list[np.ndarray]] | None = None
        #: The content as the losses take it: the job's, or the picture `content_size` decoded from it.
        self.content: Any = job.content

    def build(self, size: int | None, resumed: bool) -> StyleLoss:
        """A stage's loss; the resumed stage keeps the weights its checkpoint recorded, the others measure theirs."""
        balance = self.resume.balance if resumed else None
        options = self.within_budget(self.options.replace(size=size))
        if size != self.plan[-1][0] and options.tv_weight is None:
            options = options.replace(smoothness=0.0)  # the finest scale's alone (see `smoothness`)
        content, style = self.finest or (self.content, list(self.job.style))
        return StyleLoss(content, style, options, models=self.models, balance=balance)

    def prepare(self) -> None:
        """The plan; with several scales, the inputs resized once to the finest, where every scale takes
        them from (a checkpoint keeps them, so a resumed run makes the very same coarser ones)."""
        self.plan = self.stages()
        if len(self.plan) == 1:
            return
        options = self.options
        load = {"background": options.background, "limit": options.max_pixels}
        if self.resume is not None:
            content = np.asarray(self.resume.content, np.float32)
            self.finest = content, [np.asarray(s, np.float32) for s in self.resume.style]
            return
        content = load_image(self.content, self.plan[-1][0], what="the content image", **load)
        self.finest = content, [fit_style(decode(s, **load), content.shape, options) for s in self.job.style]

    @cached_property
    def content_size(self) -> tuple[int, int]:
        """(width, height) of the content as given, decoded once for the scale plan and the memory budget;
        the run then takes that picture, so a file is read (and warned about) once."""
        options = self.options
        self.content = decode(self.job.content, background=options.background, limit=options.max_pixels)
        return picture_size(self.content)

    def stage_size(self, size: int | None) -> tuple[int, int]:
        """(width, height) of the stage whose longest side is `size` (None: the content's own)."""
        return self.content_size if size is None else fit_longest_side(self.content_size, size)

    def stage_cost(self, size: int | None) -> float:
        """A stage's evaluation time in whole-image pixels (`tiling.evaluation_cost`): its tiles as
        `within_budget` will choose them, so that the ETA of a run whose last scale is tiled is not
        that of an untiled one (docs/performance.md)."""
        if size not in self.costs:
            (w, h), tile = self.stage_size(size), self.options.tile_size
            chosen = self.budget_choice(size) if self.options.max_memory is not None else None
            if chosen is not None and chosen[0] is not None:
                tile = chosen[0]
            self.costs[size] = tiling.evaluation_cost(h, w, tile, layer_set(self.options))
        return self.costs[size]

    def budget_choice(self, size: int | None) -> tuple[int | None, int, int] | None:
        """`memory.choose` under `max_memory` at the stage of longest side `size`: (tile or None for
        the whole image, L-BFGS-B history or 0 for Adam, estimated bytes), or None if nothing fits."""
        options, (w, h) = self.options, self.stage_size(size)
        return memory.choose(options.max_memory, h, w, layer_set(options), options.lbfgs_memory)

    def within_budget(self, options: TransferOptions) -> TransferOptions:
        """With `max_memory`: the tile size and L-BFGS-B history that fit it at this stage's size, said aloud."""
        if options.max_memory is None:
            return options
        (w, h) = self.stage_size(options.size)
        chosen = memory.fit(options, w, h, layer_set(options))
        self.listener.notice(chosen.notice)
        return chosen.options

    def tell_balance(self, loss: StyleLoss) -> None:
        """Say which α/β a style strength chose and which TV weight a smoothness chose (each scale measures its own)."""
        said = []
        if loss.style_strength is not None:
            said.append(f"style strength {loss.style_strength:g}: alpha/beta {loss.alpha / loss.beta:.3g}")
        if loss.smoothness is not None:
            said.append(f"smoothness {loss.smoothness:g}: tv weight {loss.tv_weight:.3g}")
        if said:
            h, w, _ = loss.shape
            self.listener.notice(f"{'; '.join(said)} at {w}x{h}")

    def stages(self) -> list[tuple[int | None, int]]:
        options = self.options
        if options.scales == 1:
            return [(options.size, options.iterations)]
        size = options.size or max(self.content_size)
        width, height = fit_longest_side(self.content_size, size)
        plan = plan_of(options, size, (height, width))  # the real aspect
        return plan if len(plan) > 1 else [(options.size, options.iterations)]

    def eta(self, p: Progress) -> float:
        """Seconds left: this stage's time per iteration, scaled by pixels for the finer stages still to come.

        The first iteration (about three evaluations) gives the time per evaluation, the
        later ones their own time per iteration (see `estimate`).
        """
        done = p.iteration - self.stage_first
        if done <= 0:
            return math.nan
        if done == 1:
            self.first_done = time.perf_counter()
            per = iteration_seconds(p, self.options.optimizer)
        else:
            per = (time.perf_counter() - self.first_done) / (done - 1)
        costs = [self.stage_cost(size) if k >= self.stage_index else 0.0 for k, (size, _) in enumerate(self.plan)]
        return seconds_left(per, p.iteration, [end for _, end in self.plan], self.stage_index, costs)

    def on_step(self, p: Progress) -> None:
        loss = self.loss
        p = replace(p, eta_s=self.eta(p), stage=self.stage_index + 1, stages=len(self.plan), to_rgb=loss.to_rgb,
                    iterations=self.plan[-1][1])  # the whole run's, not this scale's
        self.history.append(p.loss)
        if self.stage_index == 0 and p.iteration == self.stage_first + 1:
            self.listener.estimate(self.estimate(p))
        self.listener.progress(p)
        output, options = self.job.output, self.options
        if options.save_every > 0 and output is not None and p.iteration % options.save_every == 0:
            _keep_going(self.listener, save_image, p.rgb(), intermediate_path(output, p.iteration),
                        options.bit_depth, options.quality)
        if self.ckpt is not None and p.iteration % options.checkpoint_every == 0:
            _keep_going(self.listener, self.write_checkpoint, p.image, p.iteration, p.loss, p.lbfgs_state())

    def estimate(self, p: Progress) -> Estimate:
        """The whole optimization's time, as the ETA sees it after the first iteration, on the finest scale."""
        h, w, _ = self.loss.shape
        first, last = self.plan[0][0], self.plan[-1][0]
        grow = last / first if first and last else 1.0
        device = device_name(self.loss.provider, self.options.threads or default_threads())
        return estimate(p.elapsed + p.eta_s, device, (round(h * grow), round(w * grow)))

    def write_checkpoint(self, image: np.ndarray, iteration: int, value: float, lbfgs) -> None:
        loss = self.loss
        inputs = {"content": _name(self.job.content), "style": [_name(s) for s in self.job.style],
                  "output": _name(self.job.output)}
        # what `max_memory` chose is kept, not the budget: the resumed run goes on with the same tiles and history
        chosen = loss.options
        settled = self.options.replace(max_memory=None, tile_size=chosen.tile_size, optimizer=chosen.optimizer,
                                       lbfgs_memory=chosen.lbfgs_memory)
        content, styles = self.finest or (loss.content_image, loss.style_images)
        save_checkpoint(self.ckpt, Checkpoint(settled, iteration, image, content, styles,
                                              value, np.asarray(self.history, dtype=np.float64), lbfgs, inputs,
                                              (loss.alpha, loss.beta, loss.tv_weight)))


def _name(source: Any) -> str | None:
    return str(source) if isinstance(source, (str, os.PathLike)) else None


def _keep_going(listener: Listener, write: Callable[..., Any], *args: Any) -> None:
    """An intermediate write that fails (disk full) must not end the run: say so and go on."""
    try:
        write(*args)
    except OSError as exc:
        listener.warning(f"could not write an intermediate file ({exc}); going on")


def run(job: Job, listener: Listener | None = None, stop: Callable[[], bool] | threading.Event | None = None,
        resume: Checkpoint | None = None, *, models: Callable[..., Any] | None = None) -> Outcome:
    """Run `job` to the end, or until `stop` says so, Ctrl-C, or a non-finite loss.

    In every case the best image so far is returned (and written, when the job has an
    output); a stopped run with checkpoints enabled also writes a checkpoint to go on
    from. With `resume` (see `resume_job`) the run goes on exactly where that one stood.
    `models` makes the loss sessions (``LossModel``'s arguments); a worker that runs many
    jobs passes a cache so jobs with the same layers reuse one session.
    Bad options or inputs raise `StylerunError` before any optimization.
    """
    listener = listener or Listener()
    regions = check_job(job)
    if job.options.weights is not None:
        check_weights_file(job.options)  # a missing or unsupported file is refused here, before any work
        listener.notice(f"weights: {job.options.weights} ({detect_format(job.options.weights)})")
    check_setup(job.options, regions)  # the device and a given model, before any image is decoded
    state = _Run(job, listener, as_stop(stop), resume, models)
    with output_lock(job.output):  # a second run writing the same output is refused here
        listener.loading()
        state.prepare()
        result = _optimize_stages(state)
        return _finish(state, result)


def _optimize_stages(state: _Run) -> Result:
    resume = state.resume
    previous: np.ndarray | None = None
    first = resume.iteration if resume is not None else 0
    # a resumed run goes on in the stage its checkpoint was written in (at a stage's last iteration it ends
    # that stage at once, without an evaluation, and the next starts from its image as it would have)
    begin = next((k for k, (_, end) in enumerate(state.plan) if end >= first), len(state.plan) - 1)
    result: Result | None = None
    evaluations = 0
    for index, (size, end) in enumerate(state.plan[begin:], start=begin):
        state.loss = None  # the last scale's sessions and arrays go before the next scale's are made
        release_free_memory()
        result = _stage(state, index, size, end, previous, first, resumed=resume is not None and index == begin)
        previous, first = state.loss.to_rgb(result.image), result.iterations
        evaluations += result.evaluations
        if result.interrupted or result.error:
            break
    return replace(result, evaluations=evaluations)  # the run's, every scale's together


def _stage(state: _Run, index: int, size: int | None, end: int, previous: np.ndarray | None, first: int,
           resumed: bool) -> Result:
    """One scale: its loss, its starting point (the last scale's result, the init, or the checkpoint) and the run."""
    options, resume = state.options, state.resume
    loss = state.build(size, resumed)
    loss.stop_with(state.stop)
    state.loss, state.stage_index = loss, index
    if resumed and resume.image.shape[:2] != loss.shape[:2]:
        h, w = resume.image.shape[:2]
        raise InputError(f"the checkpoint's image is {w}x{h}; its run's scale at iteration {first} is "
                         f"{loss.shape[1]}x{loss.shape[0]}")
    if resumed:
        start, lbfgs, init_loss = resume.image, resume.lbfgs, resume.loss
        if resume.lbfgs_dropped:
            state.listener.warning(f"{resume.lbfgs_dropped}; L-BFGS-B restarts its history")
    else:
        if previous is None:
            previous = state.job.start if state.job.start is not None else initial_image(options.init, loss,
                                                                                           options.seed)
        rgb = resize_to(previous, loss.shape) if previous.shape != loss.shape else previous
        start, lbfgs, init_loss = loss.to_variable(rgb), None, math.inf
    if index == 0:
        h, w, _ = loss.shape
        n = options.iterations
        state.listener.started(f"{w}x{h}, {n} iteration{'s' if n != 1 else ''}")  # the device: in the estimate
    state.tell_balance(loss)
    state.stage_first = first
    return optimize(objective_of(loss, state.job), start, end, state.on_step, loss.options.lbfgs_memory,
                    first_iteration=first, stop=state.stop, resume=lbfgs, init_loss=init_loss,
                    optimizer=loss.options.optimizer, learning_rate=options.learning_rate)


def objective_of(loss: StyleLoss, job: Job):
    """What the optimizer minimizes at one stage: the loss's objective, plus the job's extra term if any."""
    term = job.extra(loss) if job.extra is not None else None
    return loss.objective if term is None else WithExtra(loss.objective, term)


def _finish(state: _Run, result: Result) -> Outcome:
    loss, job = state.loss, state.job
    state.listener.finishing()
    image = loss.to_rgb(result.image)
    written, record = None, describe(state.options, loss)
    if job.output is not None and math.isfinite(result.loss):  # not finite only when no evaluation was
        written = _save_result(image, job.output, state.options, record)
    if state.ckpt is not None and result.interrupted and math.isfinite(result.loss):
        state.write_checkpoint(result.image, result.iterations, result.loss, result.lbfgs)
    return Outcome(image, result.loss, result.iterations, result.evaluations, time.perf_counter() - state.begin,
                   result.interrupted, result.error, state.history, output=written, checkpoint=state.ckpt,
                   provider=loss.provider, loss_object=loss, record=record)


def describe(options: TransferOptions, loss: StyleLoss) -> dict[str, str]:
    """What made a picture, for its file's metadata: the weights in use and the options (file names only)."""
    try:
        settings = options.to_dict()
    except InputError:  # masks given as arrays
        settings = {}
    for name in PATH_OPTIONS:
        settings[name] = _names(settings.get(name))
    content_far, style_far = loss.far_terms  # NaN where not measured (weights given, or kept from a checkpoint)
    record = {"version": __version__, "alpha": loss.alpha, "beta": loss.beta,
              "style_strength": loss.style_strength, "tv_weight": loss.tv_weight, "smoothness": loss.smoothness,
              "far_terms": {"content": json_value(content_far), "style": json_value(style_far)}, "options": settings}
    return {"Software": f"stylerun {__version__}", "stylerun": json.dumps(record, sort_keys=True)}


def _names(value: Any) -> Any:
    if isinstance(value, list):
        return [_names(v) for v in value]
    return Path(value).name if isinstance(value, str) else value


def _save_result(image: np.ndarray, output: Path, options: TransferOptions, text: dict[str, str]) -> Path:
    """Write the result; if that fails (disk full, folder removed), rescue it into the temp folder."""
    try:
        return save_image(image, output, options.bit_depth, options.quality, text)
    except OSError as exc:
        rescue = Path(tempfile.gettempdir()) / f"stylerun-rescued-{os.getpid()}.png"
        save_image(image, rescue, options.bit_depth)
        raise StylerunError(f"cannot write {output} ({exc}); the result was saved to {rescue} instead") from None

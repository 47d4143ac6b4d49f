"""The algorithm: a loss over images (`StyleLoss`) and the L-BFGS-B loop that minimizes it.

The pixels themselves are the variables, boxed to 0..255. The exported model gives loss
and gradient in one call, so SciPy gets ``jac=True``; everything between SciPy and the
session is a reshape and a dtype cast.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import Bounds, minimize

from . import color
from .errors import InputError, StylerunError
from .export import ModelFiles, cached_export, read_layers, targets_path
from .forward import STYLE_GUIDE, LayerSet, content_target_name, style_target_name
from .images import (
    MIN_SIDE,
    WHITE,
    as_image,
    check_requested_size,
    fit_longest_side,
    load_image,
    max_pixels,
    parse_color,
    resize,
    to_array,
)
from .optimizers import LbfgsState, adam, drive_lbfgsb, lbfgsb_driver, start_state
from .runtime import LossModel, check_device
from .vgg import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, parse_layer_weights, spatial_size

INITS = ("content", "style", "white", "random")
OPTIMIZERS = ("lbfgs", "adam")
#: Adam's step in 0..255 pixel units. Measured at 96 px, default layers, 100 iterations from the
#: content: final loss 1.18e9 (lr 2), 6.7e8 (5), 4.1e8 (10), 3.9e8 (20); L-BFGS-B 2.7e8.
ADAM_LEARNING_RATE = 10.0


class NumericError(StylerunError):
    """The loss or gradient stopped being finite."""


class _Stopped(Exception):
    """Raised inside the SciPy loop when a stop was requested (signal, caller)."""


def _layer_weights(spec, default: dict[str, float], what: str) -> dict[str, float]:
    if spec is None:
        return dict(default)
    if isinstance(spec, str):
        return parse_layer_weights(spec, what)
    weights = {}
    for name, w in dict(spec).items():
        weights.update(parse_layer_weights(f"{name}:{w}", what))
    return weights


def _check_weight(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise InputError(f"--{name} must be a finite number >= 0, got {value}")
    return value


def style_list(style) -> list:
    """One style source, or a list/tuple of them, as a non-empty list."""
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    if not styles:
        raise InputError("give at least one STYLE image")
    return styles


def check_style_blend(blend, count: int) -> list[float]:
    """Blend weights ("0.7,0.3" or a sequence) for `count` styles, normalized to sum 1; None: equal."""
    if blend is None or (isinstance(blend, str) and not blend.strip()):
        return [1.0 / count] * count
    if isinstance(blend, str):
        try:
            values = [float(v) for v in blend.split(",")]
        except ValueError:
            raise InputError(f"--style-blend must be numbers separated by commas, got '{blend}'") from None
    else:
        values = [float(v) for v in blend]
    if len(values) != count:
        raise InputError(f"--style-blend has {len(values)} weights for {count} style image(s)")
    if not all(math.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0:
        raise InputError(f"--style-blend weights must be finite, >= 0 and not all 0, got {values}")
    total = sum(values)
    return [v / total for v in values]


def check_style_scale(scale: float | None) -> float | None:
    if scale is None:
        return None
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise InputError(f"--style-scale must be a finite number > 0, got {scale}")
    return scale


def check_optimizer(optimizer: str = "lbfgs", learning_rate: float = ADAM_LEARNING_RATE,
                    lbfgs_memory: int = 10) -> None:
    if optimizer not in OPTIMIZERS:
        raise InputError(f"unknown --optimizer '{optimizer}'; use one of: {', '.join(OPTIMIZERS)}")
    if not math.isfinite(float(learning_rate)) or learning_rate <= 0:
        raise InputError(f"--learning-rate must be a finite number > 0, got {learning_rate}")
    if isinstance(lbfgs_memory, bool) or not isinstance(lbfgs_memory, (int, np.integer)) or lbfgs_memory < 1:
        raise InputError(f"--lbfgs-memory must be a whole number >= 1, got {lbfgs_memory}")


def check_masks(content_masks, style_masks, n_styles: int, style_blend) -> int:
    """Guided regions asked for: one per style when any masks are given, else 0."""
    if content_masks is None and style_masks is None:
        return 0
    for flag, masks in (("--content-mask", content_masks), ("--style-mask", style_masks)):
        if masks is not None and len(masks) != n_styles:
            raise InputError(f"{flag} given {len(masks)} times for {n_styles} style image(s); give one per style, "
                             "in the order of the styles")
    if style_blend is not None:
        raise InputError("--style-blend does not apply with masks: each style paints its own --content-mask region")
    return n_styles


def load_mask(source, size: tuple[int, int], **load) -> np.ndarray:
    """A mask image as (h, w) float32 in 0..1 (its luminance), resized to `size` = (w, h)."""
    img = as_image(source, **load) if not isinstance(source, np.ndarray) or source.ndim == 3 else \
        Image.fromarray(np.clip(np.rint(source * 255.0), 0, 255).astype(np.uint8)).convert("RGB")
    return np.asarray(resize(img, size).convert("L"), dtype=np.float32) / 255.0


def check_model(model: str | Path, layers: LayerSet) -> LayerSet:
    """The layer set of an exported model, refused unless it has every layer and the pooling asked for."""
    exported = read_layers(model)
    if exported.regions != layers.regions:
        raise InputError(f"model {model} was exported for {exported.regions} guided regions, but {layers.regions} "
                         "were asked (one per style when masks are given); leave out --model")
    if exported.pooling != layers.pooling:
        raise InputError(f"model {model} was exported with {exported.pooling} pooling, but {layers.pooling} was asked")
    for kind, asked, has in (("content", layers.content, exported.content), ("style", layers.style, exported.style)):
        extra = [n for n in asked if n not in has]
        if extra:
            raise InputError(
                f"model {model} has no {kind} layer {', '.join(extra)} (it was exported for {', '.join(has) or 'none'}"
                "); export one for these layers with `stylerun export-vgg`, or leave out --model"
            )
    return exported


def _given_model(layers: LayerSet, model: str | Path | None, weights: str | Path | None) -> ModelFiles | None:
    """The files of --model, checked against the layers asked for; None when the cache is to be used."""
    if model is not None:
        return ModelFiles(Path(model), targets_path(Path(model)), check_model(model, layers))
    if weights is not None and not Path(weights).is_file():
        raise InputError(f"weights file {weights} not found")
    return None


class StyleLoss:
    """The Gatys loss of an image against one content and one or more style images.

    `content` and `style` are paths, PIL images or (H, W, 3) arrays in 0..255; `style`
    may be a list of them, whose Gram matrices are blended with weights `style_blend`
    (normalized to sum 1; equal by default). With `size`, the content is scaled so its
    longest side is `size`. Without `style_scale` each style is resized to the content's
    height and width (not at all when they already match); with it, each style keeps its
    aspect and its longest side becomes ``style_scale`` times the content's, and its Gram
    matrices are rescaled by M_l(content) / M_l(style) so that they compare with the
    image's whatever the two sizes.

    `preserve_color`: ``"histogram"`` maps each style's colours onto the content's mean
    and covariance first; ``"luminance"`` shows the network only luminance, and the
    variable to optimize (`objective`, `to_variable`, `to_rgb`) is one luminance channel.
    `tv_weight` adds the total-variation smoothness term.
    """

    def __init__(
        self,
        content,
        style,
        *,
        size: int | None = None,
        alpha: float = 1e-6,
        beta: float = 1.0,
        content_layers: str | dict[str, float] | None = None,
        style_layers: str | dict[str, float] | None = None,
        pooling: str = "max",
        weights: str | Path | None = None,
        device: str = "auto",
        model: str | Path | None = None,
        threads: int | None = None,
        background: tuple[int, int, int] | str = WHITE,
        max_pixels: int | None = None,
        style_blend=None,
        style_scale: float | None = None,
        preserve_color: str = "none",
        tv_weight: float = 0.0,
        content_masks=None,
        style_masks=None,
    ):
        # every option is checked before an image is decoded or a model exported
        self.alpha = _check_weight(alpha, "alpha")
        self.beta = _check_weight(beta, "beta")
        self.tv_weight = _check_weight(tv_weight, "tv-weight")
        self.preserve_color = color.check_mode(preserve_color)
        styles = style_list(style)
        self.regions = check_masks(content_masks, style_masks, len(styles), style_blend)
        self.style_blend = check_style_blend(style_blend, len(styles))
        self.style_scale = check_style_scale(style_scale)
        self.content_layers = _layer_weights(content_layers, DEFAULT_CONTENT_LAYERS, "content layers")
        self.style_layers = _layer_weights(style_layers, DEFAULT_STYLE_LAYERS, "style layers")
        if size is not None:
            check_requested_size(size, limit=max_pixels)
        if threads is not None and threads < 1:
            raise InputError(f"--threads must be >= 1, got {threads}")
        check_device(device)
        background = parse_color(background)
        asked = LayerSet.of(self.content_layers, self.style_layers, pooling, self.regions)
        files = _given_model(asked, model, weights)

        self.content_image = load_image(content, size, background=background, limit=max_pixels,
                                        what="the content image")
        h, w, _ = self.content_image.shape
        #: The styles as resized (before any colour matching): what a checkpoint keeps.
        self.style_images = [self._fit_style(as_image(s, background=background, limit=max_pixels), max_pixels)
                             for s in styles]
        self.style_image = self.style_images[0]

        self.model = LossModel(files or cached_export(asked, weights), device, threads)
        layers = self.model.layers
        content_targets = self.model.targets(self.seen(self.content_image), self._guide(None, None, h, w))
        targets = {content_target_name(n): content_targets[content_target_name(n)] for n in layers.content}
        if self.regions:
            targets.update(self._guided_targets(content_masks, style_masks, background, max_pixels))
        for weight, image in zip(self.style_blend, self.style_images, strict=True):
            if self.regions:
                break  # each style paints its own region: no blend
            if not layers.style or weight == 0:
                continue
            sh, sw, _ = image.shape
            grams = self.model.targets(self.seen(self.style_for_targets(image)))
            for n in layers.style:
                # the loss divides by the image's M_l: a Gram over M_l(style) positions is rescaled to it
                mh, mw = spatial_size(n, h, w)
                sm_h, sm_w = spatial_size(n, sh, sw)
                gram = grams[style_target_name(n)] * (weight * (mh * mw) / max(sm_h * sm_w, 1))
                name = style_target_name(n)
                targets[name] = targets[name] + gram if name in targets else gram
        self.model.bind(
            targets,
            [self.content_layers.get(n, 0.0) for n in layers.content],
            [self.style_layers.get(n, 0.0) for n in layers.style],
            self.alpha,
            self.beta,
            self.tv_weight,
        )
        self.targets = targets
        self.shape = self.content_image.shape
        self.last_terms = (math.nan, math.nan)

    def _guide(self, index: int | None, masks, h: int, w: int, **load) -> np.ndarray | None:
        """The (R, h, w) style_guide input: mask `index` of `masks` in every row, or each mask in its
        own row (index None); a missing list means the whole image. None when unguided."""
        if not self.regions:
            return None

        def one(i: int) -> np.ndarray:
            if masks is None:
                return np.ones((h, w), np.float32)
            return load_mask(masks[i], (w, h), **load)

        rows = [one(index)] * self.regions if index is not None else [one(i) for i in range(self.regions)]
        return np.stack(rows).astype(np.float32)

    def _guided_targets(self, content_masks, style_masks, background, limit) -> dict[str, np.ndarray]:
        """Style i's guided Grams, taken under its --style-mask, become region i's target;
        the content masks say where in the output each region lies."""
        h, w, _ = self.content_image.shape
        load = {"background": background, "limit": limit}
        per_style = []
        for i, image in enumerate(self.style_images):
            sh, sw, _ = image.shape
            guide = self._guide(i, style_masks, sh, sw, **load)
            per_style.append(self.model.targets(self.seen(self.style_for_targets(image)), guide))
        targets = {STYLE_GUIDE: self._guide(None, content_masks, h, w, **load)}
        for n in self.model.layers.style:
            name = style_target_name(n)
            targets[name] = np.stack([grams[name][i] for i, grams in enumerate(per_style)])
        return targets

    def _fit_style(self, img: Image.Image, limit: int | None) -> np.ndarray:
        h, w, _ = self.content_image.shape
        if self.style_scale is None:
            return to_array(resize(img, (w, h)))
        target = fit_longest_side(img.size, max(1, round(self.style_scale * max(h, w))))
        if min(target) < MIN_SIDE:
            raise InputError(f"--style-scale {self.style_scale:g} makes the style {target[0]}x{target[1]}; the network "
                             f"needs at least {MIN_SIDE} pixels on each side; use a larger --style-scale or --size")
        cap = max_pixels(limit)
        if target[0] * target[1] > cap:
            raise InputError(f"--style-scale {self.style_scale:g} makes the style {target[0]}x{target[1]}, over the "
                             f"{cap:,} pixel limit; use a smaller --style-scale or raise --max-pixels")
        return to_array(resize(img, target))

    def style_for_targets(self, style_image: np.ndarray) -> np.ndarray:
        """A resized style as its Gram targets are taken: colour-matched to the content in histogram mode."""
        if self.preserve_color == "histogram":
            return color.match_color(style_image, self.content_image)
        return style_image

    def seen(self, rgb: np.ndarray) -> np.ndarray:
        """What the network is shown of an RGB image: itself, or its luminance in luminance mode."""
        return color.gray(rgb) if self.preserve_color == "luminance" else rgb

    @property
    def objective(self):
        """What the optimizer minimizes: this loss, or in luminance mode its luminance-channel twin."""
        return color.LuminanceObjective(self) if self.preserve_color == "luminance" else self

    def to_variable(self, rgb: np.ndarray) -> np.ndarray:
        """An (H, W, 3) RGB image as the optimizer's variable ((H, W, 1) luminance in luminance mode)."""
        rgb = np.asarray(rgb, dtype=np.float32)
        if self.preserve_color == "luminance":
            return np.clip(color.luminance(rgb), 0, 255)[..., None].astype(np.float32)
        return rgb

    def to_rgb(self, variable: np.ndarray) -> np.ndarray:
        """The optimizer's variable as an RGB image: in luminance mode, with the content's chroma (I, Q)."""
        variable = np.asarray(variable, dtype=np.float32)
        if self.preserve_color == "luminance" and variable.shape[-1] == 1:
            return color.recombine(variable[..., 0], self.content_image)
        return variable

    @property
    def provider(self) -> str:
        return self.model.provider

    def loss_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Loss and its gradient at an (H, W, 3) RGB image in 0..255."""
        x = np.asarray(x, dtype=np.float32)
        if x.shape != self.shape:
            raise InputError(f"image has shape {x.shape}, this loss was built for {self.shape}")
        loss, content, style, grad = self.model.loss_and_grad(x)
        self.last_terms = (content, style)
        return loss, grad


@dataclass
class Progress:
    """What the callback sees after each L-BFGS-B iteration."""

    iteration: int
    iterations: int
    loss: float
    content_loss: float
    style_loss: float
    evaluations: int
    elapsed: float
    image: np.ndarray = field(repr=False)
    #: A copy of the optimizer's state now (None where SciPy's routine cannot be driven): for checkpoints.
    lbfgs_state: Callable[[], LbfgsState | None] = field(default=lambda: None, repr=False)


@dataclass
class Result:
    image: np.ndarray  # the best image seen, (H, W, 3) float32
    loss: float
    iterations: int
    evaluations: int
    elapsed: float
    interrupted: bool = False
    error: str | None = None
    history: list[float] = field(default_factory=list)
    #: Where the optimizer stood when it stopped (when interrupted), to go on exactly from there.
    lbfgs: LbfgsState | None = field(default=None, repr=False)


def check_run_options(*, init: str = "content", iterations: int = 0, seed: int | None = 0) -> None:
    """Refuse an unknown init, a negative iteration count or an unusable seed."""
    if init not in INITS:
        raise InputError(f"unknown --init '{init}'; use one of: {', '.join(INITS)}")
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise InputError(f"--iterations must be a whole number >= 0, got {iterations}")
    if seed is not None and (not isinstance(seed, (int, np.integer)) or seed < 0):
        raise InputError(f"--seed must be a whole number >= 0, got {seed}")


def initial_image(init: str, loss: StyleLoss, seed: int | None = 0) -> np.ndarray:
    if init == "content":
        return loss.content_image.copy()
    if init == "style":
        return resize_image(loss.style_image, loss.shape)
    if init == "white":
        return np.full(loss.shape, 255.0, dtype=np.float32)
    if init == "random":
        return np.random.default_rng(seed).uniform(0, 255, loss.shape).astype(np.float32)
    raise InputError(f"unknown --init '{init}'; use one of: {', '.join(INITS)}")


def resize_image(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An (h, w, c) float image resized (bicubic, per channel, no rounding) to `shape`'s height and width."""
    image = np.asarray(image, dtype=np.float32)
    h, w = shape[:2]
    if image.shape[:2] == (h, w):
        return image.copy()
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]), mode="F")
                           .resize((w, h), Image.Resampling.BICUBIC)) for c in range(image.shape[2])]
    return np.clip(np.stack(channels, axis=2), 0, 255).astype(np.float32)


def scale_plan(size: int, scales: int, iterations: int, shape: tuple[int, ...] | None = None
               ) -> list[tuple[int, int]]:
    """Coarse to fine: (longest side, last iteration) of each of `scales` stages.

    Sizes are ``size / 2^(scales-1), ..., size / 2, size``; the iterations are split
    evenly, the finest stage taking the remainder. Stage k runs iterations
    ``previous last + 1 .. its last``, so the count runs on across stages. With `shape`
    (the finest image's), a coarsest image under the network's minimum side is refused.
    """
    if isinstance(scales, bool) or not isinstance(scales, (int, np.integer)) or scales < 1:
        raise InputError(f"--scales must be a whole number >= 1, got {scales}")
    sizes = [max(1, round(size / 2 ** (scales - 1 - k))) for k in range(scales)]
    short = sizes[0] if shape is None else round(min(shape[:2]) * sizes[0] / max(shape[:2]))
    if scales > 1 and short < MIN_SIDE:
        raise InputError(f"--scales {scales} makes the coarsest image {short} px on its short side; the network "
                         f"needs at least {MIN_SIDE}: use fewer --scales or a larger --size")
    per = iterations // scales
    ends = [per * (k + 1) for k in range(scales - 1)] + [iterations]
    return list(zip(sizes, ends, strict=True))


def optimize(
    loss: StyleLoss,
    init: np.ndarray,
    iterations: int,
    callback: Callable[[Progress], None] | None = None,
    lbfgs_memory: int = 10,
    *,
    first_iteration: int = 0,
    stop: Callable[[], bool] | None = None,
    resume: LbfgsState | None = None,
    init_loss: float = math.inf,
    optimizer: str = "lbfgs",
    learning_rate: float = ADAM_LEARNING_RATE,
) -> Result:
    """Minimize `loss` from `init` with L-BFGS-B (or Adam) until iteration `iterations`.

    `loss` is anything with ``shape``, ``loss_and_grad`` and ``last_terms``: a
    `StyleLoss`, or its `StyleLoss.objective`. With ``optimizer="adam"`` each iteration
    is one evaluation and one Adam step of `learning_rate` (0..255 pixel units), clipped
    to 0..255; Adam's moments are not kept in `Result` (a resumed run restarts them).

    `first_iteration` is where a resumed run starts counting (iterations
    ``first_iteration + 1 .. iterations`` are run). With `resume`, the optimizer state of
    an earlier `Result.lbfgs` or `Progress.lbfgs_state()`, the run goes on exactly where
    that one stood; `init` is then that run's best image and `init_loss` its loss. Without
    it (or where SciPy's routine cannot be driven) the curvature history starts afresh.

    `stop` is polled before every evaluation and after every iteration; when it returns
    True the run ends as if interrupted. Ctrl-C (KeyboardInterrupt), `stop` and a
    non-finite loss or gradient end the run early; in every case the best image seen so
    far is returned, never a NaN one (`Result.interrupted` or `Result.error` says why it
    ended). When not a single evaluation was finite, `Result.loss` is NaN and
    `Result.image` is `init`.
    """
    if iterations < 0:
        raise InputError(f"iterations must be >= 0, got {iterations}")
    check_optimizer(optimizer, learning_rate, lbfgs_memory)
    if not 0 <= first_iteration <= iterations:
        raise InputError(f"first iteration {first_iteration} is outside 0..{iterations}")
    shape = loss.shape
    x0 = np.asarray(init, dtype=np.float32)
    if x0.shape != shape or not np.isfinite(x0).all():
        raise InputError(f"the starting image must be a finite array of shape {shape}")
    best = {"loss": init_loss if math.isfinite(init_loss) else math.inf, "x": x0.copy()}
    state = {"evals": 0, "iteration": first_iteration, "loss": math.nan}
    history: list[float] = []
    start = time.perf_counter()

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        if stop is not None and stop():
            raise _Stopped
        image = x.reshape(shape).astype(np.float32)
        if not np.isfinite(image).all():
            raise NumericError(f"the image became non-finite at evaluation {state['evals'] + 1}")
        value, grad = loss.loss_and_grad(image)
        state["evals"] += 1
        if not math.isfinite(value):
            raise NumericError(
                f"the loss became {value} at evaluation {state['evals']} (iteration {state['iteration'] + 1}); "
                "try smaller --alpha/--beta or layer weights, or check the model file"
            )
        if not np.isfinite(grad).all():
            raise NumericError(
                f"the gradient became non-finite at evaluation {state['evals']} (iteration {state['iteration'] + 1})"
                " while the loss was finite; try smaller --alpha/--beta or layer weights, or check the model file"
            )
        if value < best["loss"]:
            best["loss"], best["x"] = value, image
        state["loss"] = value
        return value, grad.ravel().astype(np.float64)

    def on_iteration(lbfgs_state: Callable[[], LbfgsState | None] = lambda: None) -> None:
        state["iteration"] += 1
        history.append(state["loss"])
        if callback is not None:
            content, style = loss.last_terms
            callback(Progress(state["iteration"], iterations, state["loss"], content, style,
                              state["evals"], time.perf_counter() - start, best["x"], lbfgs_state))
        if stop is not None and stop():
            raise _Stopped

    interrupted, error, lbfgs = False, None, None
    remaining = iterations - first_iteration
    maxfun = remaining * 20 + 20
    setulb = lbfgsb_driver()
    if remaining > 0 and optimizer == "adam":
        try:
            adam(fun, on_iteration, x0, remaining, float(learning_rate))
        except (KeyboardInterrupt, _Stopped):
            interrupted = True
        except NumericError as exc:
            error = str(exc)
    elif remaining > 0 and setulb is not None:
        lbfgs = start_state(resume, x0, lbfgs_memory)
        try:
            drive_lbfgsb(setulb, lbfgs, fun, on_iteration, lambda: state["iteration"] >= iterations
                   or state["evals"] > maxfun)
        except (KeyboardInterrupt, _Stopped):
            interrupted = True
        except NumericError as exc:
            error = str(exc)
    elif remaining > 0:
        try:
            minimize(
                fun,
                x0.astype(np.float64).ravel(),
                jac=True,
                method="L-BFGS-B",
                bounds=Bounds(0.0, 255.0),
                callback=lambda intermediate_result=None: on_iteration(),
                options={"maxiter": remaining, "maxfun": maxfun, "maxcor": lbfgs_memory, "ftol": 0.0, "gtol": 0.0},
            )
        except (KeyboardInterrupt, _Stopped):
            interrupted = True
        except NumericError as exc:
            error = str(exc)
    if not math.isfinite(best["loss"]) and error is None:
        value, _ = loss.loss_and_grad(best["x"])  # no evaluation finished: the loss of the start
        best["loss"] = value if math.isfinite(value) else math.nan
    elif not math.isfinite(best["loss"]):
        best["loss"] = math.nan
    return Result(best["x"], best["loss"], state["iteration"], state["evals"], time.perf_counter() - start,
                  interrupted, error, history, lbfgs if interrupted else None)


class StopSignals:
    """SIGINT and SIGTERM as a polite request to stop, for the length of a `with` block.

    The first signal sets `signum` (so ``optimize(..., stop=signals.requested)`` ends at
    the next evaluation and returns the best image); a second one while `hurry` is True
    raises KeyboardInterrupt at once. Set `hurry` False around work that must not be cut
    short, such as writing the result. Outside the main thread this does nothing, and a
    signal this process was started ignoring (SIGINT in a shell's background job) stays
    ignored.
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.signum: int | None = None
        self.hurry = True
        self._previous: dict[int, object] = {}

    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        elif self.hurry:
            raise KeyboardInterrupt

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:  # ignored stays ignored
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def intermediate_path(output: Path, iteration: int) -> Path:
    return output.with_name(f"{output.stem}_{iteration:04d}{output.suffix}")


def transfer(
    content,
    style,
    *,
    size: int | None = 512,
    alpha: float = 1e-6,
    beta: float = 1.0,
    content_layers: str | dict[str, float] | None = None,
    style_layers: str | dict[str, float] | None = None,
    pooling: str = "max",
    init: str = "content",
    iterations: int = 500,
    seed: int | None = 0,
    weights: str | Path | None = None,
    model: str | Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    callback: Callable[[Progress], None] | None = None,
    background: tuple[int, int, int] | str = WHITE,
    max_pixels: int | None = None,
    style_blend=None,
    style_scale: float | None = None,
    preserve_color: str = "none",
    tv_weight: float = 0.0,
    optimizer: str = "lbfgs",
    learning_rate: float = ADAM_LEARNING_RATE,
    lbfgs_memory: int = 10,
    scales: int = 1,
    content_masks=None,
    style_masks=None,
) -> Image.Image:
    """Paint `content` in the style of `style`; the Python twin of `stylerun transfer`.

    `style` may be a list of style images (blended by `style_blend`). With ``scales=N``
    the image is optimized coarse to fine at ``size / 2^(N-1), ..., size`` (needs a
    `size`), each stage starting from the previous result upsampled, with the iterations
    split evenly (`scale_plan`); `callback` then sees the variable of the current stage.

    Ctrl-C ends the run early and returns the best image so far; a non-finite loss
    raises `NumericError`.
    """
    check_run_options(init=init, iterations=iterations, seed=seed)
    check_optimizer(optimizer, learning_rate, lbfgs_memory)
    if scales != 1 and size is None:
        raise InputError("--scales needs a --size")
    plan = scale_plan(size, scales, iterations) if size is not None else [(None, iterations)]
    if scales > 1:  # the coarsest image is checked against the real aspect before any work
        shape = load_image(content, size, background=background, limit=max_pixels).shape
        plan = scale_plan(size, scales, iterations, shape)
    previous, result, loss, begin = None, None, None, 0
    for stage_size, end in plan:
        loss = StyleLoss(content, style, size=stage_size, alpha=alpha, beta=beta, content_layers=content_layers,
                         style_layers=style_layers, pooling=pooling, weights=weights, device=device, model=model,
                         threads=threads, background=background, max_pixels=max_pixels, style_blend=style_blend,
                         style_scale=style_scale, preserve_color=preserve_color, tv_weight=tv_weight,
                         content_masks=content_masks, style_masks=style_masks)
        start = initial_image(init, loss, seed) if previous is None else resize_image(previous, loss.shape)
        result = optimize(loss.objective, loss.to_variable(start), end, callback, lbfgs_memory,
                          first_iteration=begin, optimizer=optimizer, learning_rate=learning_rate)
        if result.error:
            raise NumericError(result.error)
        previous, begin = loss.to_rgb(result.image), end
        if result.interrupted:
            break
    return Image.fromarray(np.clip(np.rint(loss.to_rgb(result.image)), 0, 255).astype(np.uint8))

"""The algorithm: a loss over images (`StyleLoss`) and the L-BFGS-B loop that minimizes it.

The pixels themselves are the variables, boxed to 0..255. The exported model gives loss
and gradient in one call, so SciPy gets ``jac=True``; everything between SciPy and the
session is a reshape and a dtype cast.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy.optimize import Bounds, minimize

from .errors import InputError, StylerunError
from .export import ModelFiles, cached_export, read_layers, targets_path
from .forward import LayerSet, content_target_name, style_target_name
from .images import as_image, check_size, fit_longest_side, resize, to_array
from .runtime import LossModel
from .vgg import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, parse_layer_weights

INITS = ("content", "style", "white", "random")


class NumericError(StylerunError):
    """The loss or gradient stopped being finite."""


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


def _model_files(layers: LayerSet, model: str | Path | None, weights: str | Path | None) -> ModelFiles:
    if model is None:
        return cached_export(layers, weights)
    exported = read_layers(model)
    if exported.pooling != layers.pooling:
        raise InputError(f"model {model} was exported with {exported.pooling} pooling, but {layers.pooling} was asked")
    for kind, asked, has in (("content", layers.content, exported.content), ("style", layers.style, exported.style)):
        extra = [n for n in asked if n not in has]
        if extra:
            raise InputError(
                f"model {model} has no {kind} layer {', '.join(extra)} (it was exported for {', '.join(has) or 'none'})"
            )
    return ModelFiles(Path(model), targets_path(Path(model)), exported)


class StyleLoss:
    """The Gatys loss of an image against one content and one style image.

    `content` and `style` are paths, PIL images or (H, W, 3) arrays in 0..255. With
    `size`, the content is scaled so its longest side is `size`; the style is always
    resized to the content's height and width (not at all when they already match).
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
    ):
        self.alpha = _check_weight(alpha, "alpha")
        self.beta = _check_weight(beta, "beta")
        self.content_layers = _layer_weights(content_layers, DEFAULT_CONTENT_LAYERS, "content layers")
        self.style_layers = _layer_weights(style_layers, DEFAULT_STYLE_LAYERS, "style layers")
        if size is not None and size < 1:
            raise InputError(f"size must be a positive number of pixels, got {size}")
        if threads is not None and threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}")

        content_img = as_image(content)
        if size is not None:
            content_img = resize(content_img, fit_longest_side(content_img.size, size))
        check_size(*content_img.size, "the content image")
        style_img = resize(as_image(style), content_img.size)
        self.content_image = to_array(content_img)
        self.style_image = to_array(style_img)

        asked = LayerSet.of(self.content_layers, self.style_layers, pooling)
        self.model = LossModel(_model_files(asked, model, weights), device, threads)
        layers = self.model.layers
        content_targets = self.model.targets(self.content_image)
        style_targets = self.model.targets(self.style_image) if layers.style else {}
        targets = {content_target_name(n): content_targets[content_target_name(n)] for n in layers.content}
        targets.update({style_target_name(n): style_targets[style_target_name(n)] for n in layers.style})
        self.model.bind(
            targets,
            [self.content_layers.get(n, 0.0) for n in layers.content],
            [self.style_layers.get(n, 0.0) for n in layers.style],
            self.alpha,
            self.beta,
        )
        self.shape = self.content_image.shape
        self.last_terms = (math.nan, math.nan)

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


def initial_image(init: str, loss: StyleLoss, seed: int | None = 0) -> np.ndarray:
    if init == "content":
        return loss.content_image.copy()
    if init == "style":
        return loss.style_image.copy()
    if init == "white":
        return np.full(loss.shape, 255.0, dtype=np.float32)
    if init == "random":
        return np.random.default_rng(seed).uniform(0, 255, loss.shape).astype(np.float32)
    raise InputError(f"unknown init '{init}'; use one of: {', '.join(INITS)}")


def optimize(
    loss: StyleLoss,
    init: np.ndarray,
    iterations: int,
    callback: Callable[[Progress], None] | None = None,
    lbfgs_memory: int = 10,
) -> Result:
    """Minimize `loss` from `init` with L-BFGS-B for `iterations` iterations.

    Ctrl-C (KeyboardInterrupt) and a non-finite loss end the run early; either way the
    best image seen so far is returned, never a NaN one.
    """
    if iterations < 0:
        raise InputError(f"iterations must be >= 0, got {iterations}")
    shape = loss.shape
    best = {"loss": math.inf, "x": np.asarray(init, dtype=np.float32).copy()}
    state = {"evals": 0, "iteration": 0, "loss": math.nan}
    history: list[float] = []
    start = time.perf_counter()

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        image = x.reshape(shape).astype(np.float32)
        value, grad = loss.loss_and_grad(image)
        state["evals"] += 1
        if not (math.isfinite(value) and np.isfinite(grad).all()):
            raise NumericError(
                f"the loss became {'non-finite' if not math.isfinite(value) else 'finite but its gradient did not'}"
                f" at evaluation {state['evals']}; try smaller --alpha/--beta or check the model file"
            )
        if value < best["loss"]:
            best["loss"], best["x"] = value, image
        state["loss"] = value
        return value, grad.ravel().astype(np.float64)

    def on_iteration(intermediate_result=None) -> None:
        state["iteration"] += 1
        history.append(state["loss"])
        if callback is not None:
            content, style = loss.last_terms
            callback(Progress(state["iteration"], iterations, state["loss"], content, style,
                              state["evals"], time.perf_counter() - start, best["x"]))

    interrupted, error = False, None
    if iterations > 0:
        try:
            minimize(
                fun,
                np.asarray(init, dtype=np.float64).ravel(),
                jac=True,
                method="L-BFGS-B",
                bounds=Bounds(0.0, 255.0),
                callback=on_iteration,
                options={"maxiter": iterations, "maxfun": iterations * 20 + 20, "maxcor": lbfgs_memory,
                         "ftol": 0.0, "gtol": 0.0},
            )
        except KeyboardInterrupt:
            interrupted = True
        except NumericError as exc:
            error = str(exc)
    if not math.isfinite(best["loss"]):
        value, _ = loss.loss_and_grad(best["x"])
        best["loss"] = value
    return Result(best["x"], best["loss"], state["iteration"], state["evals"], time.perf_counter() - start,
                  interrupted, error, history)


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
) -> Image.Image:
    """Paint `content` in the style of `style`; the Python twin of `stylerun transfer`."""
    if init not in INITS:
        raise InputError(f"unknown init '{init}'; use one of: {', '.join(INITS)}")
    loss = StyleLoss(content, style, size=size, alpha=alpha, beta=beta, content_layers=content_layers,
                     style_layers=style_layers, pooling=pooling, weights=weights, device=device, model=model,
                     threads=threads)
    result = optimize(loss, initial_image(init, loss, seed), iterations, callback)
    if result.error:
        raise NumericError(result.error)
    return Image.fromarray(np.clip(np.rint(result.image), 0, 255).astype(np.uint8))

"""The loss object: the Gatys loss of an image against a content photo and style paintings.

`StyleLoss` turns images and options into a bound `LossModel`: it decodes and resizes the
inputs, takes the content features and (blended, rescaled or guided) style Gram targets
once, and then answers ``loss_and_grad(x)`` for the optimizer. Everything between the
optimizer and the session is a reshape and a dtype cast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from stylerun.engine import smoothness, strength
from stylerun.errors import InputError, ModelError, OptionError, mention
from stylerun.images import color
from stylerun.images.codec import (
    MIN_SIDE,
    Picture,
    decode,
    fit,
    fit_longest_side,
    load_image,
    max_pixels,
    picture_size,
    resize_array,
)
from stylerun.network.autodiff import FASTEST, Flavours
from stylerun.network.export import ModelFiles, cached_export, read_layers, targets_path
from stylerun.network.loss_graph import STYLE_GUIDE, LayerSet, content_target_name, style_target_name
from stylerun.network.sessions import MEASURED, LossModel, SessionSettings, check_device
from stylerun.network.tiling import TiledLoss
from stylerun.options import TransferOptions
from stylerun.vgg import spatial_size


def check_model(model: str | Path, layers: LayerSet) -> LayerSet:
    """The layer set of an exported model, refused unless it has every layer and the pooling asked for."""
    exported = read_layers(model)
    if exported.regions != layers.regions:
        raise ModelError(f"model {model} was exported for {exported.regions} guided regions, but {layers.regions} "
                         f"were asked (one per style when masks are given); leave out {mention('model')}")
    if exported.pooling != layers.pooling:
        raise ModelError(f"model {model} was exported with {exported.pooling} pooling, but {layers.pooling} was asked")
    if exported.swap_red_blue != layers.swap_red_blue:
        how = "with" if exported.swap_red_blue else "without"
        raise ModelError(f"model {model} was exported {how} red and blue swapped, but {mention('swap_red_blue')} is "
                         f"{'on' if layers.swap_red_blue else 'off'}; leave out {mention('model')}")
    for kind, asked, has in (("content", layers.content, exported.content), ("style", layers.style, exported.style)):
        extra = [n for n in asked if n not in has]
        if extra:
            raise ModelError(
                f"model {model} has no {kind} layer {', '.join(extra)} (it was exported for {', '.join(has) or 'none'}"
                f"); export one for these layers with `stylerun export-vgg`, or leave out {mention('model')}"
            )
    return exported


def layer_set(options: TransferOptions, regions: int = 0) -> LayerSet:
    return LayerSet.of(options.content_layers, options.style_layers, options.pooling, regions, options.swap_red_blue)


def check_weights_file(options: TransferOptions) -> None:
    """Refuse a `weights` option that names no file, before any work."""
    if options.weights is not None and not Path(options.weights).is_file():
        raise OptionError("weights", f"file {options.weights} not found")


def check_setup(options: TransferOptions, regions: int) -> ModelFiles | None:
    """The device and a given model (or weights file) checked before any image is decoded, so a run with
    a wrong one stops before any work; the model's files, or None to use the cache."""
    check_device(options.device)
    return given_model(options, layer_set(options, regions))


def given_model(options: TransferOptions, layers: LayerSet) -> ModelFiles | None:
    """The files of the `model` option, checked against the layers asked for; None: use the cache."""
    if options.model is not None:
        model = Path(options.model)
        return ModelFiles(model, targets_path(model), check_model(model, layers))
    check_weights_file(options)
    return None


def load_mask(source: Any, size: tuple[int, int], **load: Any) -> np.ndarray:
    """A mask image as (h, w) float32 in 0..1 (its luminance), resized to `size` = (w, h).

    A 2-D array is taken as the mask itself, in 0..1.
    """
    if isinstance(source, np.ndarray) and source.ndim == 2:
        source = np.repeat(np.clip(np.asarray(source, np.float32), 0, 1)[..., None] * 255.0, 3, axis=2)
    rgb = fit(decode(source, **load), size)
    return (color.luminance(rgb) / 255.0).astype(np.float32)


def fit_style(picture: Picture, shape: tuple[int, ...], options: TransferOptions) -> np.ndarray:
    """A painting sized for an output of `shape` (H, W, ...): stretched to it, or with `style_scale`
    its longest side that many times the output's, keeping its aspect. Every scale of a
    coarse-to-fine run sizes it by this one rule, so its strokes keep their size relative to
    the picture."""
    h, w = shape[:2]
    scale = options.style_scale
    if scale is None:
        return fit(picture, (w, h))
    target = fit_longest_side(picture_size(picture), max(1, round(scale * max(h, w))))
    if min(target) < MIN_SIDE:
        raise OptionError("style_scale", f"{scale:g} makes the style {target[0]}x{target[1]}; the network needs "
                                         f"at least {MIN_SIDE} pixels on each side; use a larger "
                                         f"{mention('style_scale')} or {mention('size')}")
    cap = max_pixels(options.max_pixels)
    if target[0] * target[1] > cap:
        raise OptionError("style_scale", f"{scale:g} makes the style {target[0]}x{target[1]}, over the {cap:,} "
                                         f"pixel limit; use a smaller {mention('style_scale')} or raise "
                                         f"{mention('max_pixels')}")
    return fit(picture, target)


class StyleLoss:
    """The Gatys loss of an image against one content and one or more style images.

    `content` and `style` are paths, PIL images or (H, W, 3) arrays in 0..255 (float
    arrays are used at full precision); `style` may be a list of them. The rest are
    transfer options by their API names (`TransferOptions`), or an `options` value. Unlike
    `transfer`, the loss object takes its images as they are unless `size` is given.

    Without `style_scale` each style is resized to the content's height and width; with
    it, each style keeps its aspect and its longest side becomes ``style_scale`` times the
    content's, and its Gram matrices are rescaled by M_l(content) / M_l(style) so that
    they compare with the image's whatever the two sizes. In luminance mode the variable
    to optimize (`objective`, `to_variable`, `to_rgb`) is one luminance channel.
    """

    def __init__(self, content: Any, style: Any, options: TransferOptions | None = None, *,
                 flavours: Flavours = FASTEST, session: SessionSettings = MEASURED,
                 models: Callable[..., LossModel] | None = None, balance: tuple[float, ...] | None = None,
                 **values: Any):
        if options is None and "size" not in values:
            values["size"] = None
        opts = (options or TransferOptions()).replace(**values)
        styles = list(style) if isinstance(style, (list, tuple)) else [style]
        if not styles:
            raise InputError("give at least one style image")
        self.options = opts
        self.regions = opts.check_for(len(styles))
        self.style_blend = list(opts.blend_weights(len(styles)))
        self.preserve_color = opts.preserve_color
        self.content_layers, self.style_layers = opts.content_layers, opts.style_layers
        files = check_setup(opts, self.regions)
        asked = layer_set(opts, self.regions)
        load = {"background": opts.background, "limit": opts.max_pixels}

        self.content_image = load_image(content, opts.size, what="the content image", **load)
        self.shape = self.content_image.shape
        #: The styles as resized (before any colour matching): what a checkpoint keeps.
        self.style_images = [fit_style(decode(s, **load), self.shape, opts) for s in styles]
        self.style_image = self.style_images[0]
        # `models` (files, device, threads, settings) -> LossModel: a cache lets a worker reuse its sessions
        if opts.tile_size:
            models = self._tiled_models(opts, flavours)
            files = files or ModelFiles(Path("(tiled)"), Path("(tiled)"), asked)
        self.model = (models or LossModel)(files or cached_export(asked, opts.weights, flavours), opts.device,
                                           opts.threads, session)
        self.targets = self._targets(load)
        self.far_terms = (math.nan, math.nan)
        #: The style strength that chose α/β here (None: the weights were given, or kept from a checkpoint).
        self.style_strength: float | None = None
        #: The smoothness that chose the TV weight here (None: the weight was given, kept, or is 0).
        self.smoothness: float | None = None
        self.alpha, self.beta = balance[:2] if balance else self._weights(opts)
        #: The total-variation weight: given, kept from a checkpoint, or from `smoothness` (see that module).
        self.tv_weight = balance[2] if balance and len(balance) > 2 else self._tv_weight(opts)
        self._bind(self.alpha, self.beta, self.tv_weight)
        self.last_terms = (math.nan, math.nan)

    @staticmethod
    def _tiled_models(opts: TransferOptions, flavours: Flavours):
        """files, device, threads, settings -> `TiledLoss` in place of the whole-image `LossModel` (see `tiling`)."""
        def make(files: ModelFiles, device: str, threads: int | None, settings: SessionSettings) -> TiledLoss:
            return TiledLoss(cached_export(files.layers, opts.weights, flavours, tiled=True), device, threads,
                             settings, opts.tile_size)
        return make

    def _bind(self, alpha: float, beta: float, tv_weight: float) -> None:
        self.model.bind(self.targets, [self.content_layers.get(n, 0.0) for n in self.model.layers.content],
                        [self.style_layers.get(n, 0.0) for n in self.model.layers.style], alpha, beta, tv_weight)

    def _style_far(self) -> float:
        """The style term of the photo itself, with unit weights bound: the scale the style term lives on."""
        self._bind(1.0, 1.0, 0.0)
        return self.model.terms(self.seen(self.content_image))[1]

    def _weights(self, opts: TransferOptions) -> tuple[float, float]:
        """α and β: as given, or from the style strength and the far-end terms measured here (see `strength`)."""
        weighting = opts.weighting()
        if isinstance(weighting, tuple):
            return weighting
        style_far = self._style_far()  # leaves the unit weights bound for the content end below
        blend = self.style_blend if not self.regions else [1.0 / self.regions] * self.regions
        content_far = sum(weight * self.model.terms(self.seen(resize_to(image, self.shape)))[0]
                          for weight, image in zip(blend, self.style_images, strict=True) if weight > 0)
        self.far_terms, self.style_strength = (content_far, style_far), weighting
        return strength.weights(weighting, content_far, style_far, opts.init, self.shape[0] * self.shape[1])

    def _tv_weight(self, opts: TransferOptions) -> float:
        """`tv_weight` as given, or the one `smoothness` asks for here, from the style term's far end (measured
        for the strength, or now) and the photo's roughness at this size."""
        level = opts.smoothing()
        if level is None or level == 0:
            return opts.tv_weight or 0.0
        style_far = self.far_terms[1] if math.isfinite(self.far_terms[1]) else self._style_far()
        weight = smoothness.tv_weight(level, self.beta, style_far, smoothness.roughness(self.seen(self.content_image)))
        self.smoothness = level if weight > 0 else None
        return weight

    def _targets(self, load: dict[str, Any]) -> dict[str, np.ndarray]:
        """Content features, then the style targets: blended Grams, or one guided Gram per region."""
        h, w, _ = self.shape
        layers = self.model.layers
        content = self.model.targets(self.seen(self.content_image), self._guide(None, None, h, w))
        targets = {content_target_name(n): content[content_target_name(n)] for n in layers.content}
        if self.regions:
            targets.update(self._guided_targets(load))
            return targets
        for weight, image in zip(self.style_blend, self.style_images, strict=True):
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
        return targets

    def _guide(self, index: int | None, masks, h: int, w: int, **load: Any) -> np.ndarray | None:
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

    def _guided_targets(self, load: dict[str, Any]) -> dict[str, np.ndarray]:
        """Style i's guided Grams, taken under its style mask, become region i's target;
        the content masks say where in the output each region lies."""
        h, w, _ = self.shape
        per_style = []
        for i, image in enumerate(self.style_images):
            sh, sw, _ = image.shape
            guide = self._guide(i, self.options.style_masks, sh, sw, **load)
            per_style.append(self.model.targets(self.seen(self.style_for_targets(image)), guide))
        targets = {STYLE_GUIDE: self._guide(None, self.options.content_masks, h, w, **load)}
        for n in self.model.layers.style:
            name = style_target_name(n)
            targets[name] = np.stack([grams[name][i] for i, grams in enumerate(per_style)])
        return targets

    def style_for_targets(self, style_image: np.ndarray) -> np.ndarray:
        """A resized style as its Gram targets are taken: colour-matched to the content in histogram mode."""
        if self.preserve_color == "histogram":
            return color.match_color(style_image, self.content_image)
        return style_image

    def stop_with(self, stop: Callable[[], bool] | None) -> None:
        """Let `stop` end an evaluation in the middle (`EvaluationStopped`): between tiles of a tiled
        one, within onnxruntime's run of a whole-image one. At print sizes one evaluation takes
        minutes, too long to wait for after Ctrl-C, a cancel or a server's SIGTERM."""
        self.model.stop = stop

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
        """Loss and its gradient at `x`, an (H, W, 3) RGB image in 0..255 of this loss's `shape`."""
        x = np.asarray(x, dtype=np.float32)
        if x.shape != self.shape:
            raise InputError(f"image has shape {x.shape}, this loss was built for {self.shape}")
        loss, content, style, grad = self.model.loss_and_grad(x)
        self.last_terms = (content, style)
        return loss, grad


class ExtraTerm(Protocol):
    """A term added to the loss by the caller (video's temporal consistency), on the optimizer's variable."""

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]: ...


class WithExtra:
    """An objective plus an `ExtraTerm`: what the optimizer sees is their sum and the sum of gradients.

    `last_terms` stays the objective's (content, style), so progress shows the Gatys terms
    while the loss includes the extra one.
    """

    def __init__(self, objective: Any, term: ExtraTerm):
        self.objective, self.term = objective, term
        self.shape = objective.shape

    @property
    def last_terms(self) -> tuple[float, float]:
        return self.objective.last_terms

    def loss_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = self.objective.loss_and_grad(x)
        extra, extra_grad = self.term.value_and_grad(np.asarray(x, dtype=np.float32))
        return value + extra, grad + extra_grad.reshape(grad.shape).astype(grad.dtype, copy=False)


def initial_image(init: str, loss: StyleLoss, seed: int | None = 0) -> np.ndarray:
    """The starting image `init` names, at the loss's shape, as RGB float32."""
    if init == "content":
        return loss.content_image.copy()
    if init == "style":
        return resize_to(loss.style_image, loss.shape)
    if init == "white":
        return np.full(loss.shape, 255.0, dtype=np.float32)
    if init == "random":
        return np.random.default_rng(seed).uniform(0, 255, loss.shape).astype(np.float32)
    raise OptionError("init", f"must be one of: content, style, white, random; got {init!r}")


def resize_to(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An (h, w, c) float image resized (bicubic, per channel, no rounding) to `shape`'s height and width."""
    return resize_array(image, (shape[1], shape[0]))

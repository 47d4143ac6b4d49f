"""Every transfer option, defined once: type, default, help, allowed values and check.

`TransferOptions` is the single definition. Each field carries an `Option` (its help
text, help panel, metavar and check) in its metadata; the Python API's keywords, the
CLI's flags, the settings a checkpoint keeps and a JSON job description are all derived
from these fields, so adding an option is one field here plus the code that uses it.

Constructing a `TransferOptions` checks and normalizes every value (``"relu1_1,relu2_1"``
becomes ``{"relu1_1": 0.5, "relu2_1": 0.5}``, ``"white"`` becomes ``(255, 255, 255)``),
raising `OptionError` naming the option. Checks that need the job (how many styles) are
in `check_for`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from stylerun.errors import InputError, OptionError, mention
from stylerun.images.codec import WHITE, parse_color
from stylerun.presets import PRESETS, resolve
from stylerun.units import parse_bytes
from stylerun.vgg import (
    DEFAULT_CONTENT_LAYERS,
    DEFAULT_STYLE_LAYERS,
    POOLINGS,
    format_layer_weights,
    parse_layer_weights,
)

INITS = ("content", "style", "white", "random")
OPTIMIZERS = ("lbfgs", "adam")
DEVICES = ("auto", "cpu", "cuda")
PRESERVE_COLOR = ("none", "luminance", "histogram")
BIT_DEPTHS = (8, 16)
#: α and β when only the other one is given: the original project's values.
ALPHA, BETA = 1e-6, 1.0
ALPHA_TEXT = f"{ALPHA:g}".replace("e-0", "e-")
#: The style strength when neither it nor α/β is given: the visual balance (see `strength`).
DEFAULT_STRENGTH = 0.5
#: The smoothness when neither it nor a TV weight is given: chosen by measurement (docs/quality.md).
DEFAULT_SMOOTHNESS = 0.003
#: Adam's step in 0..255 pixel units, chosen by a sweep of steps (docs/performance.md).
ADAM_LEARNING_RATE = 10.0

# Help panels, in the order `--help` shows them.
IO, LOSS, ARTISTIC, OPTIMIZER, RUN, DEVICE = (
    "Input and output", "Loss", "Artistic controls", "Optimizer", "Run control", "Device")
GROUPS = (IO, LOSS, ARTISTIC, OPTIMIZER, RUN, DEVICE)


@dataclass(frozen=True)
class Option:
    """How one field of `TransferOptions` is checked and shown.

    `check` takes a raw value (from Python, a CLI string, JSON) and returns the normalized
    one, or raises ValueError with a message that completes "<option> ...". `cli` is the
    type a command line parses the value as (``list`` for a repeatable path option).
    `resumable` options may differ when a run goes on from a checkpoint (they decide where
    and how it runs, not what it paints).
    """

    help: str
    group: str
    check: Callable[[Any], Any]
    cli: type = str
    metavar: str | None = None
    short: str | None = None
    resumable: bool = False
    cli_default: Any = None
    #: The flag, where it is not the name with dashes (a repeatable option is named in the singular).
    flag: str | None = None
    #: How help shows the default, where the value itself is too long to read at 80 columns.
    shown_default: str | None = None


def option(default: Any, help: str, group: str, check: Callable[[Any], Any], *, cli: type = str,
           metavar: str | None = None, short: str | None = None, resumable: bool = False,
           cli_default: Any = None, flag: str | None = None, shown_default: str | None = None) -> Any:
    """A `TransferOptions` field with its `Option`; `default` may be a zero-argument factory."""
    spec = Option(help, group, check, cli, metavar, short, resumable, cli_default, flag, shown_default)
    if callable(default):
        return field(default_factory=default, metadata={"option": spec})
    return field(default=default, metadata={"option": spec})


# --- checks: each returns the normalized value or raises ValueError ------------------------------


def whole(low: int, high: int, *, never: int | None = None, below: str | None = None) -> Callable[[Any], int]:
    """A whole number in low..high; `never`, when given, is also accepted (e.g. -1 for "never").

    `below` is the message for a value under `low` (it says what the number means).
    """
    def check(value: Any) -> int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"must be a whole number, got {value!r}")
        value = int(value)
        if value == never:
            return value
        if value < low:
            raise ValueError(f"{below or f'must be a whole number >= {low}'}, got {value}")
        if value > high:
            raise ValueError(f"must be at most {high:,}, got {value}")
        return value
    check.bounds = (low, high)  # for a form built from the option model (`bounds_of`)
    return check


def number(low: float = 0.0, high: float = math.inf, *, above: bool = False) -> Callable[[Any], float]:
    """A finite number >= low (> low with `above`) and <= high."""
    def check(value: Any) -> float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value) or value < low or (above and value == low) or value > high:
            bound = f"> {low:g}" if above else f">= {low:g}"
            bound += f" and <= {high:g}" if math.isfinite(high) else ""
            raise ValueError(f"must be a finite number {bound}, got {value}")
        return value
    check.bounds = (low, high)
    return check


def choice(*values: Any) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        for allowed in values:
            if value == allowed and type(value) is not bool:
                return allowed
        raise ValueError(f"unknown {{option}} {value!r}; use one of: {', '.join(map(str, values))}")
    check.choices = values  # for a form built from the option model (`choices_of`)
    return check


def memory_size(value: Any) -> int:
    """A byte count: a whole number, or ``"4G"``, ``"1500M"``, ``"2.5GiB"`` (binary units)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        count = int(value)
    elif isinstance(value, str):
        count = parse_bytes(value)
    else:
        raise ValueError(f"must be a size such as 4G, 1500M or a byte count, got {value!r}")
    if not 64 << 20 <= count <= 1 << 50:
        raise ValueError(f"must be between 64M and 1024T, got {value!r}")
    return count


def optional(inner: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        return None if value is None else inner(value)
    check.choices, check.bounds = getattr(inner, "choices", None), getattr(inner, "bounds", None)
    return check


def choices_of(name: str) -> tuple[Any, ...] | None:
    """The values an option allows, when it is a choice (a web form shows a select for it)."""
    return getattr(spec(name).check, "choices", None)


def bounds_of(name: str) -> tuple[float, float] | None:
    """(low, high) of a numeric option (a web form sets min and max from it; high may be infinite)."""
    return getattr(spec(name).check, "bounds", None)


def layers(value: Any) -> dict[str, float]:
    """``"relu1_1:0.2,relu2_1"`` or a mapping of layer to weight."""
    if isinstance(value, str):
        return _layers_of(lambda: parse_layer_weights(value))
    if isinstance(value, Mapping):
        spec = ",".join(f"{name}:{weight}" for name, weight in value.items())
        return _layers_of(lambda: parse_layer_weights(spec)) if spec else {}
    raise ValueError(f"must be 'NAME[:WEIGHT],...' or a mapping of layer to weight, got {value!r}")


def _layers_of(parse: Callable[[], dict[str, float]]) -> dict[str, float]:
    try:
        return parse()
    except InputError as exc:
        raise ValueError(f"is not a usable layer list: {str(exc).removeprefix('layers: ')}") from None


def blend(value: Any) -> tuple[float, ...] | None:
    """Weights of several styles, ``"0.7,0.3"`` or a sequence; normalized to sum 1."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        values = [float(v) for v in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        raise ValueError(f"must be numbers separated by commas, got {value!r}") from None
    if not values or not all(math.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {values}")
    total = sum(values)
    return tuple(v / total for v in values)


def colour(value: Any) -> tuple[int, int, int]:
    try:
        return parse_color(tuple(value) if isinstance(value, (list, tuple)) else value)
    except (InputError, TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def boolean(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"must be true or false, got {value!r}")


def path(value: Any) -> str:
    if not isinstance(value, (str, Path)) or not str(value):
        raise ValueError(f"must be a file path, got {value!r}")
    return str(value)


def sources(value: Any) -> tuple[Any, ...]:
    """Mask images, one per style: paths, or (API) arrays or PIL images."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    return tuple(str(v) if isinstance(v, Path) else v for v in items)


# --- the options ---------------------------------------------------------------------------------

EVERY = "must be a positive number of iterations, or -1 for never;"
LAYER_SYNTAX = "NAME[:WEIGHT],... of conv1_1..conv5_4, relu1_1..relu5_4, pool1..pool5; a bare NAME gets 1/N"


@dataclass(frozen=True)
class TransferOptions:
    """Everything that decides a transfer besides its input images and output file."""

    preset: str | None = option(
        None, f"Start from a preset's settings ({', '.join(PRESETS)}: the original project's); options given "
        "explicitly override them.", IO, optional(choice(*PRESETS)), metavar="|".join(PRESETS))
    # Input and output
    size: int | None = option(
        512, "Longest side of the output in pixels; the photo is scaled to it (with --preset seed, or None from "
        "Python: its own size).", IO,
        optional(whole(1, 1 << 20, below="must be a positive number of pixels (the output's longest side)")),
        cli=int, metavar="PIXELS", cli_default=512)
    background: tuple[int, int, int] = option(
        WHITE, "Colour transparent pixels are composited on: a name, #rrggbb or rgb(r,g,b).", IO, colour,
        metavar="COLOUR", cli_default="white")
    max_pixels: int | None = option(
        None, "Refuse images with more pixels than this (default 64,000,000, or $STYLERUN_MAX_PIXELS).", IO,
        optional(whole(1, 1 << 40, below="must be a positive number of pixels")), cli=int, metavar="N",
        resumable=True)
    bit_depth: int = option(
        8, "Bits per channel of the output file: 8, or 16 (PNG and TIFF only).", IO, choice(*BIT_DEPTHS),
        cli=int, metavar="8|16", cli_default=8)
    quality: int = option(
        95, "JPEG/WebP quality, 1-100 (JPEG is written with full-resolution colour, 4:4:4).", IO,
        whole(1, 100), cli=int, metavar="Q", cli_default=95)
    # Loss
    content_layers: dict[str, float] = option(
        lambda: dict(DEFAULT_CONTENT_LAYERS), f"Content layers and weights: {LAYER_SYNTAX}.", LOSS, layers,
        metavar="LAYERS", cli_default=format_layer_weights(DEFAULT_CONTENT_LAYERS))
    style_layers: dict[str, float] = option(
        lambda: dict(DEFAULT_STYLE_LAYERS), f"Style layers and weights: {LAYER_SYNTAX}.", LOSS, layers,
        metavar="LAYERS", cli_default=format_layer_weights(DEFAULT_STYLE_LAYERS),
        shown_default="relu1_1,...,relu5_1 at 0.2")
    style_strength: float | None = option(
        None, "How much of the painting: 0 the photo, 0.5 the balance, 1 the painting. alpha/beta is set from the "
        "two terms measured on the inputs, so S means the same at every size and pooling. Not with --alpha/--beta.",
        LOSS, optional(number(0.0, 1.0)), cli=float, metavar="S", shown_default=str(DEFAULT_STRENGTH))
    alpha: float | None = option(
        None, f"Content weight, used as given instead of --style-strength ({ALPHA_TEXT} when only --beta is given: "
        "the original project's).", LOSS, optional(number()), cli=float, metavar="X")
    beta: float | None = option(
        None, f"Style weight, used as given instead of --style-strength ({BETA:g} when only --alpha is given).",
        LOSS, optional(number()), cli=float, metavar="X")
    smoothness: float | None = option(
        None, "Smooths away pixel noise: total variation weighed against the style term and the photo's own detail, "
        "so S means the same at every size and pair (at the finest scale only). 0: off. Not with --tv-weight.", LOSS,
        optional(number(0.0, 10.0)), cli=float, metavar="S",
        shown_default=str(DEFAULT_SMOOTHNESS))
    tv_weight: float | None = option(
        None, "Total-variation weight, used as given at every scale instead of --smoothness.", LOSS,
        optional(number()), cli=float, metavar="X")
    pooling: str = option(
        "max", f"Pooling in VGG19: {' or '.join(POOLINGS)}.", LOSS, choice(*POOLINGS), metavar="|".join(POOLINGS),
        cli_default="max")
    swap_red_blue: bool = option(
        False, "Feed the network red and blue swapped (the original project's input; see --preset seed).", LOSS,
        boolean, cli=bool, cli_default=False)
    weights: str | None = option(
        None, "VGG19 weight file to use instead of the bundled Caffe weights (any supported format).", LOSS,
        optional(path), cli=Path, metavar="FILE")
    model: str | None = option(
        None, "Model from export-vgg; default: export once into the cache.", LOSS, optional(path), cli=Path,
        metavar="FILE")
    # Artistic controls
    style_blend: tuple[float, ...] | None = option(
        None, "Weights of several STYLE images, e.g. 0.7,0.3 (normalized to sum 1; default equal).", ARTISTIC,
        blend, metavar="W,W,...")
    style_scale: float | None = option(
        None, "Style size relative to the output: its longest side becomes S x the output's, keeping its aspect "
        "(default: stretched to the output's size). Larger S, larger brush strokes.", ARTISTIC,
        optional(number(0.0, 64.0, above=True)), cli=float, metavar="S")
    preserve_color: str = option(
        "none", "Keep the photo's colours: none, luminance (style only the luminance) or histogram (recolour the "
        "style to the photo's palette first).", ARTISTIC, choice(*PRESERVE_COLOR), metavar="MODE",
        cli_default="none")
    content_masks: tuple[Any, ...] | None = option(
        None, "Region guidance: a mask image (white = in) per STYLE, in order, saying where in the output that "
        "style goes.", ARTISTIC, optional(sources), cli=list, metavar="FILE", flag="--content-mask")
    style_masks: tuple[Any, ...] | None = option(
        None, "Region guidance: a mask per STYLE saying which part of that style image to take the style from.",
        ARTISTIC, optional(sources), cli=list, metavar="FILE", flag="--style-mask")
    # Optimizer
    init: str = option(
        "content", f"Starting image: {', '.join(INITS[:-1])} or {INITS[-1]} (uniform noise, see seed).", OPTIMIZER,
        choice(*INITS), metavar="START", cli_default="content")  # the choices, joined, would squeeze the help
    seed: int = option(0, "Seed of the random init.", OPTIMIZER, whole(0, 2**63 - 1), cli=int, metavar="N",
                       cli_default=0)
    iterations: int = option(
        150, "Iterations (L-BFGS-B iterations, or Adam steps), over all scales together.", OPTIMIZER,
        whole(0, 1_000_000), cli=int, metavar="N", short="-n", cli_default=150)
    optimizer: str = option(
        "lbfgs", f"Optimizer: {' or '.join(OPTIMIZERS)}.", OPTIMIZER, choice(*OPTIMIZERS),
        metavar="|".join(OPTIMIZERS), cli_default="lbfgs")
    learning_rate: float = option(
        ADAM_LEARNING_RATE, "Adam's step, in 0..255 pixel units.", OPTIMIZER, number(0.0, 1e4, above=True),
        cli=float, metavar="LR", cli_default=ADAM_LEARNING_RATE)
    lbfgs_memory: int = option(
        10, "L-BFGS-B's history length (curvature pairs; each costs two float64 copies of the image).", OPTIMIZER,
        whole(1, 100), cli=int, metavar="M", cli_default=10)
    scales: int = option(
        0, "Optimize coarse to fine at N sizes, SIZE/RATIO^(N-1) ... SIZE; 0: as many as start near 128 px (1 "
        "for a small picture).", OPTIMIZER, whole(0, 8), cli=int, metavar="N", cli_default=0)
    scale_ratio: float = option(
        2.0, "Ratio between the sizes of successive scales (e.g. 2 or 1.414).", OPTIMIZER, number(1.1, 4.0),
        cli=float, metavar="R", cli_default=2.0)
    scale_split: float = option(
        0.25, "Share of the iterations run at the finest scale; the coarser scales share the rest equally.",
        OPTIMIZER, number(0.0, 1.0, above=True), cli=float, metavar="F", cli_default=0.25)
    # Run control
    save_every: int = option(
        -1, "Also save OUTPUT_NNNN.ext every N iterations; -1 for never.", RUN,
        whole(1, 1_000_000, never=-1, below=EVERY), cli=int, metavar="N", cli_default=-1)
    checkpoint_every: int = option(
        -1, "Write a checkpoint every N iterations (and when stopped) to go on with resume; -1 for never.", RUN,
        whole(1, 1_000_000, never=-1, below=EVERY), cli=int, metavar="N", cli_default=-1)
    checkpoint: str | None = option(
        None, "Checkpoint file (default: OUTPUT.ckpt.npz).", RUN, optional(path), cli=Path, metavar="FILE",
        resumable=True)
    force: bool = option(False, "Allow the output to overwrite the content or style image.", RUN, boolean,
                         cli=bool, resumable=True, cli_default=False)
    # Device
    device: str = option(
        "auto", "auto (CUDA when it works, else CPU), cpu or cuda.", DEVICE, choice(*DEVICES),
        metavar="|".join(DEVICES), resumable=True, cli_default="auto")
    threads: int | None = option(
        None, "CPU threads for onnxruntime (default: all cores).", DEVICE,
        optional(whole(1, 4096, below="must be >= 1")), cli=int, metavar="N", resumable=True)
    tile_size: int | None = option(
        None, "Evaluate the loss in tiles of N pixels (rounded down to the pooling grid): the same loss and "
        "gradient in the memory of one tile (default: the whole image at once).", DEVICE,
        optional(whole(16, 1 << 20, below="must be >= 16")), cli=int, metavar="N", resumable=True)
    max_memory: int | None = option(
        None, "Memory budget for the whole process (e.g. 4G): chooses the tile size and the L-BFGS-B history "
        "that fit, and says what it chose.", DEVICE, optional(memory_size), cli=str, metavar="SIZE",
        resumable=True)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            try:
                normalized = f.metadata["option"].check(value)
            except ValueError as exc:
                raise OptionError(f.name, str(exc)) from None
            object.__setattr__(self, f.name, normalized)
        if self.style_strength is not None and (self.alpha is not None or self.beta is not None):
            raise OptionError("style_strength", f"cannot be combined with {mention('alpha')}/{mention('beta')}: give "
                                                "either a strength, or the two weights")
        if self.smoothness is not None and self.tv_weight is not None:
            raise OptionError("smoothness", f"cannot be combined with {mention('tv_weight')}: give either a "
                                            "smoothness, or the weight")

    # --- derived views ---------------------------------------------------------------------

    def replace(self, **changes: Any) -> TransferOptions:
        """A copy with `changes`, checked like any other; unknown names are refused.

        With a `preset` among the changes, its values are applied beneath the other changes.
        """
        check_names(changes)
        return dataclasses.replace(self, **resolve(changes))

    def weighting(self) -> float | tuple[float, float]:
        """The style strength to calibrate α/β from, or (α, β) when either weight was given."""
        if self.alpha is None and self.beta is None:
            return DEFAULT_STRENGTH if self.style_strength is None else self.style_strength
        return (ALPHA if self.alpha is None else self.alpha, BETA if self.beta is None else self.beta)

    def smoothing(self) -> float | None:
        """The smoothness to weigh total variation from, or None when a TV weight was given."""
        if self.tv_weight is not None:
            return None
        return DEFAULT_SMOOTHNESS if self.smoothness is None else self.smoothness

    def check_for(self, n_styles: int) -> int:
        """Checks that need the number of style images; returns the guided regions (0: unguided)."""
        if self.style_blend is not None and len(self.style_blend) != n_styles:
            raise OptionError("style_blend", f"has {count(len(self.style_blend), 'weight')} for "
                                             f"{count(n_styles, 'style image')}")
        if self.content_masks is None and self.style_masks is None:
            return 0
        for name in ("content_masks", "style_masks"):
            masks = getattr(self, name)
            if masks is not None and len(masks) != n_styles:
                raise OptionError(name, f"has {count(len(masks), 'mask')} for {count(n_styles, 'style image')}; "
                                        "give one per style, in the order of the styles")
        if self.style_blend is not None:
            raise OptionError("style_blend", "does not apply with masks: each style paints its own content mask "
                                             "region")
        return n_styles

    def blend_weights(self, n_styles: int) -> tuple[float, ...]:
        return self.style_blend if self.style_blend is not None else (1.0 / n_styles,) * n_styles

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values by API name (what checkpoints and job files hold)."""
        data = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [v if isinstance(v, (str, int, float)) else _unserializable(f.name) for v in value]
            data[f.name] = dict(value) if isinstance(value, dict) else value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransferOptions:
        """Options from a JSON object (a job, a checkpoint); every value checked, unknown names refused."""
        if not isinstance(data, Mapping):
            raise InputError(f"options must be a JSON object, got {type(data).__name__}")
        check_names(data)
        return cls(**resolve(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def count(n: int, noun: str) -> str:
    """``1 mask``, ``2 masks``: a number with its noun, in the singular where it is one."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _unserializable(name: str) -> Any:
    raise InputError(f"{name} given as arrays or images cannot be saved in a checkpoint or job; give file paths")


def option_fields() -> tuple[dataclasses.Field, ...]:
    return fields(TransferOptions)


def spec(name: str) -> Option:
    return next(f.metadata["option"] for f in fields(TransferOptions) if f.name == name)


NAMES: tuple[str, ...] = tuple(f.name for f in fields(TransferOptions))
RESUMABLE: tuple[str, ...] = tuple(f.name for f in fields(TransferOptions) if f.metadata["option"].resumable)


def check_names(names: Sequence[str] | Mapping[str, Any]) -> None:
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        close = difflib.get_close_matches(unknown[0], NAMES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise InputError(f"unknown option '{unknown[0]}'{hint}")


def defaults() -> dict[str, Any]:
    """Every option's default by API name (as `TransferOptions()` normalizes it)."""
    return TransferOptions().to_dict()

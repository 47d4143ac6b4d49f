"""Checkpoints: a run's image, how far it got, and every setting needed to go on.

A checkpoint is one ``.npz`` file, readable with ``numpy.load(path, allow_pickle=False)``:

=============  ==========================================================================
``format``     the string ``stylerun-checkpoint/1``
``settings``   a JSON string: input paths, output, size, weights, layers, init, seed, ...
``iteration``  the last completed L-BFGS-B iteration (int64 scalar)
``image``      the best image so far, (H, W, 3) float32 in 0..255, exactly as optimized
               ((H, W, 1), the luminance, with ``preserve_color`` "luminance")
``content``    the content image after resizing, (H, W, 3) uint8
``style``      the (first) style image after resizing, (h, w, 3) uint8, before any colour
               matching; ``style.1``, ``style.2``, ... the further styles of a blend
``loss``       the loss of ``image`` (float64 scalar)
``history``    the loss after every completed iteration (float64)
``lbfgs.*``    optional: L-BFGS-B's whole state (point, gradient, curvature pairs, line
               search counters) and ``lbfgs.scipy``, the SciPy version that wrote it
=============  ==========================================================================

The resized inputs travel inside the checkpoint, so a resumed run optimizes the very
same loss even when the original files have moved or changed. Writing is atomic (a
temporary file in the same folder, flushed, then renamed), so a crash while writing
leaves the previous checkpoint intact.

`scipy.optimize.minimize` cannot be handed L-BFGS-B's curvature history back, so
`stylize.optimize` drives SciPy's own reverse-communication routine and keeps its state:
with ``lbfgs.*`` present (and the same SciPy), a resumed run takes exactly the steps the
uninterrupted run would have taken. Without it (another SciPy, or one whose routine
cannot be driven) the run goes on from ``image`` with a fresh history, which costs a
few iterations' worth of progress. The state is about 25 float64 numbers per pixel
channel (about 100 MB at 512x341), which is what makes checkpoints large.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import scipy

from .atomic import atomic_write
from .color import check_mode
from .errors import InputError
from .forward import LayerSet
from .images import check_output_path, check_requested_size, max_pixels, parse_color, same_file, to_uint8
from .optimizers import LbfgsState
from .runtime import check_device
from .stylize import (
    ADAM_LEARNING_RATE,
    _check_weight,
    _given_model,
    _layer_weights,
    check_masks,
    check_optimizer,
    check_run_options,
    check_style_blend,
    check_style_scale,
    scale_plan,
)
from .vgg import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS

FORMAT = "stylerun-checkpoint/1"
SUFFIX = ".ckpt.npz"
_ARRAYS = ("format", "settings", "iteration", "image", "content", "style", "loss", "history")


@dataclass
class RunSettings:
    """Everything `stylerun transfer` needs to run (or go on running) a transfer."""

    content: str
    style: str
    output: str
    size: int | None = 512
    alpha: float = 1e-6
    beta: float = 1.0
    content_layers: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CONTENT_LAYERS))
    style_layers: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_STYLE_LAYERS))
    pooling: str = "max"
    init: str = "content"
    iterations: int = 500
    seed: int = 0
    weights: str | None = None
    model: str | None = None
    device: str = "auto"
    threads: int | None = None
    background: tuple[int, int, int] = (255, 255, 255)
    max_pixels: int | None = None
    save_every: int = -1
    checkpoint_every: int = -1
    checkpoint: str | None = None
    lbfgs_memory: int = 10
    style_blend: list[float] | None = None
    style_scale: float | None = None
    preserve_color: str = "none"
    tv_weight: float = 0.0
    optimizer: str = "lbfgs"
    learning_rate: float = ADAM_LEARNING_RATE
    scales: int = 1
    content_masks: list[str] | None = None
    style_masks: list[str] | None = None

    def style_paths(self) -> list[str]:
        return list(self.style) if isinstance(self.style, (list, tuple)) else [self.style]

    def validate(self, *, force: bool = False) -> LayerSet:
        """Every check that needs no decoding and no model: run before any work starts.

        Returns the layer set asked for. Refuses an output that would overwrite the
        content or style file (or the checkpoint) unless `force`.
        """
        _check_weight(self.alpha, "alpha")
        _check_weight(self.beta, "beta")
        self.content_layers = _layer_weights(self.content_layers, DEFAULT_CONTENT_LAYERS, "--content-layers")
        self.style_layers = _layer_weights(self.style_layers, DEFAULT_STYLE_LAYERS, "--style-layers")
        regions = check_masks(self.content_masks, self.style_masks, len(self.style_paths()), self.style_blend)
        layers = LayerSet.of(self.content_layers, self.style_layers, self.pooling, regions)
        check_run_options(init=self.init, iterations=self.iterations, seed=self.seed)
        if self.max_pixels is not None:
            max_pixels(self.max_pixels)
        else:
            max_pixels()  # a malformed STYLERUN_MAX_PIXELS is an error now, not after the export
        if self.size is not None:
            check_requested_size(self.size, limit=self.max_pixels)
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be >= 1, got {self.threads}")
        self.background = parse_color(tuple(self.background) if not isinstance(self.background, str)
                                      else self.background)
        for name in ("save_every", "checkpoint_every"):
            value = getattr(self, name)
            if value == 0 or value < -1:
                flag = "--" + name.replace("_", "-")
                raise InputError(f"{flag} must be a positive number of iterations, or -1 for never; got {value}")
        check_optimizer(self.optimizer, self.learning_rate, self.lbfgs_memory)
        _check_weight(self.tv_weight, "tv-weight")
        check_mode(self.preserve_color)
        check_style_scale(self.style_scale)
        check_style_blend(self.style_blend, len(self.style_paths()))
        if self.scales != 1:
            if self.size is None:
                raise InputError("--scales needs a --size")
            scale_plan(self.size, self.scales, self.iterations)
            if self.checkpoint_every > 0:
                raise InputError("--scales above 1 cannot be checkpointed (the image changes size between scales); "
                                 "leave out --checkpoint-every, or use --scales 1")
        check_device(self.device)
        output = check_output_path(self.output)
        if not force:
            for what, path in (("content", self.content), *(("style", s) for s in self.style_paths())):
                if path and same_file(output, path):
                    raise InputError(f"output {output} is the {what} image; choose another -o, or add --force")
        if self.checkpoint_every > 0:
            ckpt = self.checkpoint_path()
            if not ckpt.parent.is_dir():
                raise InputError(f"checkpoint folder {ckpt.parent} does not exist; create it first")
            if same_file(ckpt, output) or any(p and same_file(ckpt, p) for p in (self.content, *self.style_paths())):
                raise InputError(
                    f"checkpoint {ckpt} would overwrite an input or the output; choose another --checkpoint"
                )
        _given_model(layers, self.model, self.weights)  # a --model for other layers or pooling is refused here
        return layers

    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint) if self.checkpoint else default_checkpoint_path(self.output)

    def to_json(self) -> str:
        data = asdict(self)
        data["background"] = list(self.background)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunSettings:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("settings are not a JSON object")
        known = {f.name for f in fields(cls)}
        missing = {"content", "style", "output"} - set(data)
        if missing:
            raise ValueError(f"settings lack {', '.join(sorted(missing))}")
        settings = cls(**{k: v for k, v in data.items() if k in known})
        settings.background = tuple(settings.background)
        return settings


def default_checkpoint_path(output: str | Path) -> Path:
    """``out.png`` -> ``out.ckpt.npz``, beside the output."""
    output = Path(output)
    return output.with_name(output.stem + SUFFIX)


@dataclass
class Checkpoint:
    settings: RunSettings
    iteration: int
    image: np.ndarray  # (H, W, 3) float32, or (H, W, 1) in luminance mode
    content: np.ndarray  # (H, W, 3) uint8
    style: np.ndarray | list[np.ndarray]  # (h, w, 3) uint8 each, as resized, before colour matching
    loss: float = math.nan
    history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lbfgs: LbfgsState | None = None
    #: Why `lbfgs` is None after loading though the file had a state (the resumed run restarts the history).
    lbfgs_dropped: str | None = None


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Write `checkpoint` to `path` atomically."""
    path = Path(path)
    image = np.asarray(checkpoint.image, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] not in (1, 3) or not np.isfinite(image).all():
        raise InputError(f"refusing to write checkpoint {path}: the image is not a finite (H, W, 3) array")
    styles = checkpoint.style if isinstance(checkpoint.style, (list, tuple)) else [checkpoint.style]
    arrays = {
        "format": np.array(FORMAT),
        "settings": np.array(checkpoint.settings.to_json()),
        "iteration": np.array(int(checkpoint.iteration), dtype=np.int64),
        "image": image,
        "content": to_uint8(checkpoint.content),
        "style": to_uint8(styles[0]),
        **{f"style.{i}": to_uint8(extra) for i, extra in enumerate(styles[1:], start=1)},
        "loss": np.array(float(checkpoint.loss), dtype=np.float64),
        "history": np.asarray(checkpoint.history, dtype=np.float64),
    }
    if checkpoint.lbfgs is not None:
        arrays["lbfgs.scipy"] = np.array(scipy.__version__)
        arrays.update({f"lbfgs.{k}": v for k, v in checkpoint.lbfgs.arrays().items()})
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`; anything else raises `InputError`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"checkpoint {path} not found")
    if path.is_dir():
        raise InputError(f"checkpoint {path} is a folder, not a file")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in _ARRAYS if k not in data.files]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            arrays = {k: data[k] for k in _ARRAYS}
            extra_styles = [data[f"style.{i}"] for i in range(1, 1 + sum(k.startswith("style.") for k in data.files))]
            lbfgs_arrays = {k[len("lbfgs."):]: data[k] for k in data.files if k.startswith("lbfgs.")}
        if str(arrays["format"]) != FORMAT:
            raise ValueError(f"format {str(arrays['format'])!r}, this stylerun reads {FORMAT!r}")
        settings = RunSettings.from_json(str(arrays["settings"]))
        iteration = int(arrays["iteration"])
        image = np.asarray(arrays["image"], dtype=np.float32)
        content, styles = arrays["content"], [arrays["style"], *extra_styles]
        channels = 1 if settings.preserve_color == "luminance" else 3
        if (image.ndim != 3 or image.shape[2] != channels or content.shape != image.shape[:2] + (3,)
                or any(s.ndim != 3 or s.shape[2] != 3 for s in styles)):
            raise ValueError("image, content and style shapes disagree")
        if len(styles) != len(settings.style_paths()):
            raise ValueError(f"{len(styles)} style images for {len(settings.style_paths())} style paths")
        if content.dtype != np.uint8 or any(s.dtype != np.uint8 for s in styles):
            raise ValueError("content and style must be uint8")
        style = styles if len(styles) > 1 else styles[0]
        if not np.isfinite(image).all():
            raise ValueError("the image has non-finite pixels")
        if not 0 <= iteration <= int(settings.iterations):
            raise ValueError(f"iteration {iteration} is outside 0..{settings.iterations}")
    except InputError:
        raise
    except (ValueError, TypeError, KeyError, OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not a usable stylerun checkpoint ({exc})") from None
    lbfgs, dropped = None, None
    if lbfgs_arrays:
        try:
            if str(lbfgs_arrays.get("scipy")) != scipy.__version__:
                raise ValueError(f"it was written by SciPy {lbfgs_arrays.get('scipy')}, this is {scipy.__version__}")
            lbfgs = LbfgsState.from_arrays(lbfgs_arrays, image.size, int(settings.lbfgs_memory))
        except (KeyError, ValueError, TypeError) as exc:
            dropped = f"the L-BFGS-B state in {path} cannot be used ({exc})"
    return Checkpoint(settings, iteration, image, content, style, float(arrays["loss"]),
                      np.asarray(arrays["history"], dtype=np.float64), lbfgs, dropped)

"""Checkpoints: a run's image, how far it got, and every setting needed to go on.

A checkpoint is one ``.npz`` file, readable with ``numpy.load(path, allow_pickle=False)``:

=============  ==========================================================================
``format``     the string ``stylerun-checkpoint/1``
``settings``   a JSON string: every transfer option by its API name (`TransferOptions`), and
               the names of the inputs and output it was started with (informational)
``iteration``  the last completed L-BFGS-B iteration (int64 scalar)
``image``      the best image so far, (H, W, 3) float32 in 0..255, exactly as optimized
               ((H, W, 1), the luminance, with ``preserve_color`` "luminance")
``content``    the content image after resizing, (H, W, 3) float32 (uint8 in older files)
``style``      the (first) style image after resizing, (h, w, 3), before any colour
               matching; ``style.1``, ``style.2``, ... the further styles of a blend
``loss``       the loss of ``image`` (float64 scalar)
``history``    the loss after every completed iteration (float64)
``lbfgs.*``    optional: L-BFGS-B's whole state (point, gradient, curvature pairs, line
               search counters) and ``lbfgs.scipy``, the SciPy version that wrote it
=============  ==========================================================================

The resized inputs travel inside the checkpoint, so a resumed run optimizes the very
same loss even when the original files have moved or changed. A checkpoint is a file from
outside like any other: its settings go through the option model's checks, and the paths
it names are never used to decide where anything is written (see `engine.resume_job`). Writing is atomic (a
temporary file in the same folder, flushed, then renamed), so a crash while writing
leaves the previous checkpoint intact.

`scipy.optimize.minimize` cannot be handed L-BFGS-B's curvature history back, so
`optimizers.optimize` drives SciPy's own reverse-communication routine and keeps its state:
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy

from .atomic import atomic_write
from .errors import InputError
from .limits import check_regular_file
from .optimizers import LbfgsState
from .options import TransferOptions

FORMAT = "stylerun-checkpoint/1"
SUFFIX = ".ckpt.npz"
_ARRAYS = ("format", "settings", "iteration", "image", "content", "style", "loss", "history")
#: Input names kept beside the options, for the user's information only.
INPUT_KEYS = ("content", "style", "output")
#: A checkpoint's JSON settings are a flat object of a few dozen short values.
MAX_SETTINGS_CHARS = 1 << 20


def default_checkpoint_path(output: str | Path) -> Path:
    """``out.png`` -> ``out.ckpt.npz``, beside the output."""
    output = Path(output)
    return output.with_name(output.stem + SUFFIX)


@dataclass
class Checkpoint:
    options: TransferOptions
    iteration: int
    image: np.ndarray  # (H, W, 3) float32, or (H, W, 1) in luminance mode
    content: np.ndarray  # (H, W, 3), as resized
    style: list[np.ndarray]  # (h, w, 3) each, as resized, before colour matching
    loss: float = math.nan
    history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lbfgs: LbfgsState | None = None
    #: Names of the inputs and output the run was started with (never used as paths).
    inputs: dict[str, Any] = field(default_factory=dict)
    #: Why `lbfgs` is None after loading though the file had a state (the resumed run restarts the history).
    lbfgs_dropped: str | None = None


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Write `checkpoint` to `path` atomically."""
    path = Path(path)
    image = np.asarray(checkpoint.image, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] not in (1, 3) or not np.isfinite(image).all():
        raise InputError(f"refusing to write checkpoint {path}: the image is not a finite (H, W, 3) array")
    styles = list(checkpoint.style)
    settings = {**{k: v for k, v in checkpoint.inputs.items() if k in INPUT_KEYS}, **checkpoint.options.to_dict()}
    arrays = {
        "format": np.array(FORMAT),
        "settings": np.array(json.dumps(settings, sort_keys=True)),
        "iteration": np.array(int(checkpoint.iteration), dtype=np.int64),
        "image": image,
        "content": np.asarray(checkpoint.content, dtype=np.float32),
        "style": np.asarray(styles[0], dtype=np.float32),
        **{f"style.{i}": np.asarray(extra, dtype=np.float32) for i, extra in enumerate(styles[1:], start=1)},
        "loss": np.array(float(checkpoint.loss), dtype=np.float64),
        "history": np.asarray(checkpoint.history, dtype=np.float64),
    }
    if checkpoint.lbfgs is not None:
        arrays["lbfgs.scipy"] = np.array(scipy.__version__)
        arrays.update({f"lbfgs.{k}": v for k, v in checkpoint.lbfgs.arrays().items()})
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return path


def parse_settings(text: str) -> tuple[TransferOptions, dict[str, Any]]:
    """(options, input names) from a checkpoint's settings JSON; every option checked with its type."""
    if len(text) > MAX_SETTINGS_CHARS:
        raise ValueError("settings are too long")
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("settings are not a JSON object")
    inputs = {k: data.pop(k) for k in INPUT_KEYS if k in data}
    return TransferOptions.from_dict(data), inputs


def _read(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in _ARRAYS if k not in data.files]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        arrays = {k: data[k] for k in _ARRAYS}
        arrays["styles"] = [arrays["style"]] + [
            data[f"style.{i}"] for i in range(1, 1 + sum(k.startswith("style.") for k in data.files))]
        arrays["lbfgs"] = {k[len("lbfgs."):]: data[k] for k in data.files if k.startswith("lbfgs.")}
    return arrays


def _check_arrays(arrays: dict[str, Any], options: TransferOptions, n_styles: int) -> None:
    image, content, styles = arrays["image"], arrays["content"], arrays["styles"]
    channels = 1 if options.preserve_color == "luminance" else 3
    if (image.ndim != 3 or image.shape[2] != channels or content.shape != image.shape[:2] + (3,)
            or any(s.ndim != 3 or s.shape[2] != 3 for s in styles)):
        raise ValueError("image, content and style shapes disagree")
    if n_styles and len(styles) != n_styles:
        raise ValueError(f"{len(styles)} style images for {n_styles} style names")
    for what, array in (("image", image), ("content", content), *(("style", s) for s in styles)):
        if array.dtype not in (np.uint8, np.float32) or not np.isfinite(array).all():
            raise ValueError(f"the {what} array is not finite uint8 or float32 pixels")
    if not 0 <= int(arrays["iteration"]) <= options.iterations:
        raise ValueError(f"iteration {int(arrays['iteration'])} is outside 0..{options.iterations}")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`; anything else raises `InputError`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"checkpoint {path} not found")
    if path.is_dir():
        raise InputError(f"checkpoint {path} is a folder, not a file")
    check_regular_file(path, InputError, "checkpoint file")  # a FIFO would block
    try:
        arrays = _read(path)
        if str(arrays["format"]) != FORMAT:
            raise ValueError(f"format {str(arrays['format'])!r}, this stylerun reads {FORMAT!r}")
        options, inputs = parse_settings(str(arrays["settings"]))
        style_names = inputs.get("style")
        _check_arrays(arrays, options, len(style_names) if isinstance(style_names, list) else 1)
    except InputError as exc:
        raise InputError(f"{path} is not a usable stylerun checkpoint ({exc})") from None
    except (ValueError, TypeError, KeyError, OSError, EOFError, zipfile.BadZipFile, RecursionError) as exc:
        raise InputError(f"{path} is not a usable stylerun checkpoint ({exc})") from None
    image = np.asarray(arrays["image"], dtype=np.float32)
    lbfgs, dropped = None, None
    if arrays["lbfgs"]:
        try:
            if str(arrays["lbfgs"].get("scipy")) != scipy.__version__:
                raise ValueError(f"it was written by SciPy {arrays['lbfgs'].get('scipy')}, this is {scipy.__version__}")
            lbfgs = LbfgsState.from_arrays(arrays["lbfgs"], image.size, options.lbfgs_memory)
        except (KeyError, ValueError, TypeError) as exc:
            dropped = f"the L-BFGS-B state in {path} cannot be used ({exc})"
    return Checkpoint(options, int(arrays["iteration"]), image, np.asarray(arrays["content"], np.float32),
                      [np.asarray(s, np.float32) for s in arrays["styles"]], float(arrays["loss"]),
                      np.asarray(arrays["history"], dtype=np.float64), lbfgs, inputs, dropped)

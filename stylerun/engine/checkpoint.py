"""Checkpoints: a run's image, how far it got, and every setting needed to go on.

A checkpoint is one ``.npz`` file, readable with ``numpy.load(path, allow_pickle=False)``:

=============  ==========================================================================
``format``     the string ``stylerun-checkpoint/1``
``settings``   a JSON string: every transfer option by its API name (`TransferOptions`), the
               names of the inputs and output it was started with (informational), and
               ``alpha_beta``, the weights the run used (chosen from ``style_strength``)
``iteration``  the last completed L-BFGS-B iteration (int64 scalar)
``image``      the best image so far, (H, W, 3) float32 in 0..255, exactly as optimized
               ((H, W, 1), the luminance, with ``preserve_color`` "luminance")
``content``    the content image after resizing to the finest scale, (H, W, 3) float32 (uint8
               in older files); ``image`` is at the size of the scale the run was at
``style``      the (first) style image after resizing to the finest scale, (h, w, 3), before any colour
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
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy

from stylerun.engine.optimizers import LbfgsState
from stylerun.errors import InputError, OptionError, StylerunError, mention
from stylerun.files.atomic import atomic_write
from stylerun.files.limits import check_regular_file, open_zip_member, read_exactly, read_npy_header
from stylerun.images.codec import max_pixels
from stylerun.options import TransferOptions

FORMAT = "stylerun-checkpoint/1"
SUFFIX = ".ckpt.npz"
#: Input names kept beside the options, for the user's information only.
INPUT_KEYS = ("content", "style", "output")
#: A checkpoint's JSON settings are a flat object of a few dozen short values.
MAX_SETTINGS_CHARS = 1 << 20
#: The key of the weights in use, [α, β], beside the options (a resumed run keeps them).
BALANCE_KEY = "alpha_beta"
#: The most style images a checkpoint may hold (a blend of more is not a real run).
MAX_STYLES = 64
#: Checkpoints of a job that sets none: about ten over its run.
CHECKPOINTS_PER_JOB = 10


def default_checkpoint_path(output: str | Path) -> Path:
    """``out.png`` -> ``out.ckpt.npz``, beside the output."""
    output = Path(output)
    return output.with_name(output.stem + SUFFIX)


def checkpoint_every(options: TransferOptions) -> int:
    """About `CHECKPOINTS_PER_JOB` checkpoints over a run; none where checkpoints cannot be made."""
    if options.iterations < 1:
        return -1
    return max(1, math.ceil(options.iterations / CHECKPOINTS_PER_JOB))


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
    #: (α, β, TV weight) the run used: a resumed run goes on with the very same weights, not re-measured ones
    #: (a checkpoint written before smoothness has (α, β), and its options no smoothness).
    balance: tuple[float, ...] | None = None
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
    if checkpoint.balance is not None:
        settings[BALANCE_KEY] = [float(v) for v in checkpoint.balance]
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
    """(options, input names) from a checkpoint's settings JSON; every option checked with its type.

    The weights in use, when recorded, come back checked under the input names' `BALANCE_KEY`.
    """
    if len(text) > MAX_SETTINGS_CHARS:
        raise ValueError("settings are too long")
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("settings are not a JSON object")
    inputs = {k: data.pop(k) for k in INPUT_KEYS if k in data}
    data.setdefault("scales", 1)  # written before scales could be checkpointed: a one-scale run
    if "smoothness" not in data and data.get("tv_weight") is None:
        data["smoothness"] = 0.0  # written before smoothness: none
    if BALANCE_KEY in data:
        inputs[BALANCE_KEY] = _balance(data.pop(BALANCE_KEY))
    return TransferOptions.from_dict(data), inputs


def _balance(value: Any) -> tuple[float, ...]:
    if (not isinstance(value, list) or len(value) not in (2, 3)
            or not all(type(v) in (int, float) and math.isfinite(v) and v >= 0 for v in value)):
        raise ValueError(f"{BALANCE_KEY} must be two or three finite numbers >= 0")
    return tuple(float(v) for v in value)


class _Members:
    """The arrays of a checkpoint's zip, each read only when asked for, its npy header checked first.

    `np.load` would inflate whatever a member claims; here each member's declared shape
    and dtype go through a check before a byte of its data is read, and reading stops at
    the size the header declares, so a crafted file costs at most what a real one would.
    """

    def __init__(self, zf: zipfile.ZipFile, label: str):
        self.zf, self.label, self.names = zf, label, set(zf.namelist())

    def has(self, key: str) -> bool:
        return f"{key}.npy" in self.names

    def read(self, key: str, check: Callable[[tuple[int, ...], np.dtype], None]) -> np.ndarray:
        if not self.has(key):
            raise ValueError(f"missing {key}")
        label = f"{self.label}: {key}"
        info = self.zf.getinfo(f"{key}.npy")
        with open_zip_member(self.zf, info, label, InputError, "stylerun checkpoint") as stream:
            shape, fortran, dtype = read_npy_header(stream, label)
            if dtype.hasobject:
                raise ValueError(f"{key} is an object array (a pickle)")
            check(shape, dtype)
            data = read_exactly(stream, math.prod(shape) * dtype.itemsize, label)
        return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


def _at_most(key: str, elements: int) -> Callable[[tuple[int, ...], np.dtype], None]:
    def check(shape: tuple[int, ...], dtype: np.dtype) -> None:
        widest = MAX_SETTINGS_CHARS * 4 if dtype.kind == "U" else 8  # text: the settings JSON at most
        if math.prod(shape) > elements or dtype.itemsize > widest:
            raise ValueError(f"{key} claims a {shape} {dtype} array, more than a checkpoint holds there")
    return check


def _picture(key: str, limit: int, channels: tuple[int, ...], shape_of: tuple[int, int] | None = None,
             within: bool = False):
    """A check for an (H, W, C) image member: within the pixel limit, of the channels (and size) expected;
    with `within`, at least that size (a coarse scale's image is smaller than the finest content)."""
    def check(shape: tuple[int, ...], dtype: np.dtype) -> None:
        if len(shape) != 3 or shape[2] not in channels or dtype.kind not in "uf" or dtype.itemsize > 4:
            raise ValueError(f"{key} is a {shape} {dtype} array, not an image")
        if shape[0] * shape[1] > limit:
            raise ValueError(f"{key} is {shape[1]}x{shape[0]}, over the {limit:,} pixel limit "
                             f"(raise it with {mention('max_pixels')} if you trust the file)")
        smaller = within and shape_of is not None and shape[0] >= shape_of[0] and shape[1] >= shape_of[1]
        if shape_of is not None and shape[:2] != shape_of and not smaller:
            raise ValueError(f"{key} is {shape[1]}x{shape[0]}, the image is {shape_of[1]}x{shape_of[0]}")
    return check


def _read(members: _Members, limit: int | None) -> tuple[TransferOptions, dict[str, Any], dict[str, Any]]:
    """(options, input names, arrays) of a checkpoint, every member bounded before it is read."""
    if str(members.read("format", _at_most("format", 1))) != FORMAT:
        raise ValueError(f"this stylerun reads {FORMAT!r} files")
    options, inputs = parse_settings(str(members.read("settings", _at_most("settings", 1))))
    pixels = max_pixels(limit)  # the user's limit, never the file's own
    image = members.read("image", _picture("image", pixels, (1, 3)))
    arrays = {"image": image, "iteration": members.read("iteration", _at_most("iteration", 1)),
              "loss": members.read("loss", _at_most("loss", 1)),
              "history": members.read("history", _at_most("history", options.iterations + 1)),
              "content": members.read("content", _picture("content", pixels, (3,), image.shape[:2],
                                                          within=options.scales != 1))}
    keys = ["style", *(f"style.{i}" for i in range(1, MAX_STYLES) if members.has(f"style.{i}"))]
    arrays["styles"] = [members.read(k, _picture(k, pixels, (3,))) for k in keys]
    arrays["lbfgs"] = {}
    if members.has("lbfgs.x"):
        sizes = {**LbfgsState.sizes(image.size, options.lbfgs_memory), "m": 1, "scipy": 1}
        arrays["lbfgs"] = {k: members.read(f"lbfgs.{k}", _at_most(k, sizes[k])) for k in sizes
                           if members.has(f"lbfgs.{k}")}
    return options, inputs, arrays


def _check_arrays(arrays: dict[str, Any], options: TransferOptions, n_styles: int) -> None:
    image = arrays["image"]
    channels = 1 if options.preserve_color == "luminance" else 3
    if image.shape[2] != channels:
        raise ValueError(f"the image has {image.shape[2]} channel(s), {options.preserve_color} mode needs {channels}")
    if n_styles and len(arrays["styles"]) != n_styles:
        raise ValueError(f"{len(arrays['styles'])} style images for {n_styles} style names")
    for what, array in (("image", image), ("content", arrays["content"]), *(("style", s) for s in arrays["styles"])):
        if array.dtype not in (np.uint8, np.float32) or not np.isfinite(array).all():
            raise ValueError(f"the {what} array is not finite uint8 or float32 pixels")
    if not 0 <= int(arrays["iteration"]) <= options.iterations:
        raise ValueError(f"iteration {int(arrays['iteration'])} is outside 0..{options.iterations}")


def load_checkpoint(path: str | Path, max_pixels: int | None = None) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`; anything else raises `InputError`.

    The file is untrusted: members are read only when expected and bounded first, images
    within `max_pixels` (the caller's limit, or the default; never the file's own), and
    its settings pass the option model's checks.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"checkpoint {path} not found")
    if path.is_dir():
        raise InputError(f"checkpoint {path} is a folder, not a file")
    check_regular_file(path, InputError, "checkpoint file")  # a FIFO would block
    try:
        with zipfile.ZipFile(path) as zf:
            options, inputs, arrays = _read(_Members(zf, str(path)), max_pixels)
        style_names = inputs.get("style")
        _check_arrays(arrays, options, len(style_names) if isinstance(style_names, list) else 1)
    except (StylerunError, ValueError, TypeError, KeyError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
            NotImplementedError, RecursionError, MemoryError) as exc:
        detail = exc.render(str) if isinstance(exc, OptionError) else " ".join(str(exc).split())
        raise InputError(f"{path} is not a usable stylerun checkpoint ({detail})") from None
    return _checkpoint(path, options, inputs, arrays)


def _checkpoint(path: Path, options: TransferOptions, inputs: dict[str, Any], arrays: dict[str, Any]) -> Checkpoint:
    image = np.asarray(arrays["image"], dtype=np.float32)
    lbfgs, dropped = None, None
    if arrays["lbfgs"]:
        try:
            written = str(arrays["lbfgs"].get("scipy"))
            if written != scipy.__version__:
                raise ValueError(f"it was written by SciPy {written}, this is {scipy.__version__}")
            lbfgs = LbfgsState.from_arrays(arrays["lbfgs"], image.size, options.lbfgs_memory)
        except (KeyError, ValueError, TypeError) as exc:
            dropped = f"the L-BFGS-B state in {path} cannot be used ({exc})"
    return Checkpoint(options, int(arrays["iteration"]), image, np.asarray(arrays["content"], np.float32),
                      [np.asarray(s, np.float32) for s in arrays["styles"]], float(arrays["loss"]),
                      np.asarray(arrays["history"], dtype=np.float64), lbfgs, inputs, inputs.pop(BALANCE_KEY, None),
                      dropped)

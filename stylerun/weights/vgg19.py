"""VGG19's weights as stylerun holds them: float32 OIHW kernels and biases, checked, and the
input convention the network was trained with.

Every reader (`bundled` for stylerun's own file, one module per other format) finds a
file's convolutions in its own way and hands them over through the helpers here, which
name the layer when a value is not a numeric array, put kernels in ONNX's layout, and
wrap the result as `VGG19Weights`, fingerprinted by the file's bytes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from stylerun.errors import WeightsError
from stylerun.files.hashing import file_sha256
from stylerun.vgg import CONV_NAMES, CONV_SHAPES


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


def dequantize(codes: np.ndarray, table: np.ndarray) -> np.ndarray:
    return table.astype(np.float32)[codes]


Convs = dict[str, tuple[np.ndarray, np.ndarray]]

#: A convolution's name as VGG19 files spell it (``conv3_4``).
CONV_NAME = re.compile(r"conv(\d)_(\d)")


def finish(path: Path, convs: Convs, convention: InputConvention, fmt: str) -> VGG19Weights:
    """Wrap, fingerprinted by the file's bytes; VGG19Weights validates (naming the bad layer)."""
    return VGG19Weights(convs, convention, source=str(path), format=fmt, fingerprint=file_sha256(path))


def numeric_array(value: Any, layer: str, what: str, source: str) -> np.ndarray:
    """A numeric numpy array, or a one-line error naming the layer."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
        kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise WeightsError(f"{source}: layer '{layer}' {what} is not a numeric array ({kind})")
    return value


def bias_vector(value: Any, layer: str, source: str) -> np.ndarray:
    """Biases come as (n,), (1, n), (n, 1) or Caffe's (1, 1, 1, n): all are one vector."""
    return np.ascontiguousarray(numeric_array(value, layer, "bias", source).reshape(-1), dtype=np.float32)


def oihw(value: Any, layer: str, source: str) -> np.ndarray:
    """A kernel already in ONNX's out x in x height x width layout (torch, Caffe)."""
    return np.ascontiguousarray(numeric_array(value, layer, "kernel", source), dtype=np.float32)


def hwio_to_oihw(value: Any, layer: str, source: str) -> np.ndarray:
    """TensorFlow, Keras and MatConvNet store height x width x in x out; ONNX wants OIHW.

    A kernel that is already channels-first (Keras' Theano-ordered files) is refused rather
    than transposed into nonsense: those files also flip kernels for Theano's convolution.
    """
    kernel = numeric_array(value, layer, "kernel", source)
    if kernel.ndim != 4:
        raise WeightsError(f"{source}: layer '{layer}' kernel has shape {kernel.shape}, expected 4 dimensions")
    if kernel.shape[:2] != (3, 3) and kernel.shape[2:] == (3, 3):
        raise WeightsError(
            f"{source}: layer '{layer}' kernel {kernel.shape} is channels-first (Theano ordering); "
            "use the tf_dim_ordering_tf_kernels file instead"
        )
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)

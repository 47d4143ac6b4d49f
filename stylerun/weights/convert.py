"""What every weights reader shares: the arrays it hands over, checked and in ONNX's layout.

Each format module finds a file's convolutions in its own way; these helpers turn what it
found into float32 OIHW kernels and bias vectors, naming the layer when a value is not a
numeric array, and wrap the result as `VGG19Weights` fingerprinted by the file's bytes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from stylerun.errors import WeightsError
from stylerun.files.hashing import file_sha256
from stylerun.weights.bundled import InputConvention, VGG19Weights

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

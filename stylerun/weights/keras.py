"""Keras' HDF5 VGG19 files (read with h5py, an optional dependency)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from stylerun.errors import WeightsError
from stylerun.weights.vgg19 import CAFFE, Convs, VGG19Weights, bias_vector, finish, hwio_to_oihw

_KERAS_LAYER = re.compile(r"block(\d)_conv(\d)")


def load_keras(path: Path) -> VGG19Weights:
    """Keras' vgg19_weights_tf_dim_ordering_tf_kernels[_notop].h5, and newer Keras saves.

    Layers are found by group name (``block3_conv4`` anywhere in the path) and each
    layer's datasets by rank (4: kernel, 1: bias), which covers the old ``_W_1:0`` names,
    ``kernel:0``/``bias:0``, Keras 3's ``vars/0``/``vars/1`` and full-model files.
    """
    source = str(path)
    try:
        import h5py
    except ImportError:
        raise WeightsError(f"{source}: a Keras HDF5 file; reading it needs h5py: pip install 'stylerun[h5]'") from None
    limit = path.stat().st_size
    found: dict[str, dict[str, Any]] = {}

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset) or name.startswith("optimizer_weights"):
            return
        layers = [m for part in name.split("/") if (m := _KERAS_LAYER.fullmatch(part))]
        if not layers or obj.ndim not in (1, 4):
            return
        layer = f"conv{layers[-1][1]}_{layers[-1][2]}"
        role = "kernel" if obj.ndim == 4 else "bias"
        if role in found.setdefault(layer, {}):
            raise WeightsError(f"{source}: layer '{layer}' has more than one {role} ({name})")
        if obj.dtype.kind != "f" or obj.size * obj.dtype.itemsize > limit:
            raise WeightsError(f"{source}: layer '{layer}' {role} {obj.shape} {obj.dtype} cannot be in this file")
        found[layer][role] = obj[()]

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except OSError as exc:
        raise WeightsError(f"{source}: cannot read HDF5 file ({' '.join(str(exc).split())})") from None
    convs: Convs = {}
    for layer, arrays in found.items():
        if set(arrays) != {"kernel", "bias"}:
            raise WeightsError(f"{source}: layer '{layer}' lacks its {({'kernel', 'bias'} - set(arrays)).pop()}")
        convs[layer] = (hwio_to_oihw(arrays["kernel"], layer, source), bias_vector(arrays["bias"], layer, source))
    if not convs:
        raise WeightsError(f"{source}: an HDF5 file without Keras VGG19 layers (block1_conv1 ...)")
    return finish(path, convs, CAFFE, "Keras HDF5")

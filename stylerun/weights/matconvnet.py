"""MatConvNet's imagenet-vgg-verydeep-19.mat: walked by hand before scipy may read it.

scipy's `loadmat` trusts the sizes a MAT file declares; `_scan_mat` walks the wanted
variables first, within `MAX_WHOLE_NET_BYTES`, so that `loadmat` then allocates no more
than the bytes walked.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from stylerun.errors import WeightsError
from stylerun.files.limits import Budget
from stylerun.weights import bounds
from stylerun.weights.bounds import MAX_WHOLE_NET_BYTES
from stylerun.weights.vgg19 import CONV_NAME, Convs, InputConvention, VGG19Weights, bias_vector, finish, hwio_to_oihw

#: The VGG training mean in RGB order, for a MatConvNet file that does not carry its own.
VGG_MEAN_RGB = (123.68, 116.779, 103.939)


class _Overflow(Exception):
    """A MAT element runs past the end of its variable, or has a type scipy must never see."""


def load_matconvnet(path: Path) -> VGG19Weights:
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
            if key.endswith("f") and CONV_NAME.fullmatch(key[:-1]):
                name = key[:-1]
                kernel, bias = params[key], params.get(f"{name}b")
                convs[name] = (hwio_to_oihw(kernel, name, source), bias_vector(bias, name, source))
    elif "layers" in data:
        flavour = "SimpleNN"
        for layer in _mat_elements(data["layers"]):
            name = _mat_str(getattr(layer, "name", "")) if hasattr(layer, "_fieldnames") else ""
            if not CONV_NAME.fullmatch(name):
                continue
            if hasattr(layer, "weights"):
                blobs = _mat_elements(layer.weights)
            else:  # MatConvNet before beta-8 kept two fields
                blobs = [getattr(layer, "filters", None), getattr(layer, "biases", None)]
            if len(blobs) != 2:
                raise WeightsError(f"{source}: layer '{name}' holds {len(blobs)} arrays, expected kernel and bias")
            convs[name] = (hwio_to_oihw(blobs[0], name, source), bias_vector(blobs[1], name, source))
    else:
        raise WeightsError(f"{source}: a MATLAB file without MatConvNet 'layers' or 'params'")
    mean = _matconvnet_mean(data)
    fmt = f"MatConvNet .mat ({flavour})"
    if mean is None:
        mean, fmt = VGG_MEAN_RGB, f"{fmt}, no averageImage in the file: the VGG mean is assumed"
    return finish(path, convs, InputConvention("matconvnet", "RGB", 1.0, mean), fmt)


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
    spent = bounds.budget(source, MAX_WHOLE_NET_BYTES)
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
            stream = _MatStream(f, nbytes + (8 if mdtype == _MI_MATRIX else 0), mdtype == _MI_COMPRESSED, spent)
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

"""tensorflow-vgg's vgg19.npy: a pickled dict of layers in an npy object array, unpickled safely.

The pickle goes through `unpickle.SafeUnpickler` with `numpy_globals` only: numpy's
array and dtype constructors are stood in for by pending objects whose state is checked,
and charged to the file's budget, before any array is allocated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stylerun.errors import WeightsError
from stylerun.files.limits import Budget, read_npy_header, rebuild
from stylerun.weights import bounds
from stylerun.weights.bounds import MAX_WHOLE_NET_BYTES
from stylerun.weights.unpickle import SafeUnpickler
from stylerun.weights.vgg19 import CAFFE, CONV_NAME, Convs, VGG19Weights, bias_vector, finish, hwio_to_oihw


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
    walked = bounds.walk(source)

    def leaf(value: Any, path: str, depth: int) -> Any:
        if isinstance(value, _PendingArray):
            if value.array is None:
                raise WeightsError("numpy array in pickle without data")
            if value.array.dtype.hasobject:
                out = np.empty(value.array.shape, dtype=object)
                for index, item in np.ndenumerate(value.array):
                    out[index] = rebuild(item, leaf, walked, f"{path}{list(index)}", depth + 1)
                return out
            return value.array
        if isinstance(value, _PendingDtype):
            return value.dtype
        return value

    return rebuild(obj, leaf, walked)


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
        shape, _fortran, dtype = read_npy_header(f, source, WeightsError)
        if not dtype.hasobject:
            raise WeightsError(f"{source}: a plain .npy array {shape} {dtype}, not tensorflow-vgg's dict of layers")
        allowed = numpy_globals(bounds.budget(source, MAX_WHOLE_NET_BYTES))
        obj = _resolve(SafeUnpickler(f, source, allowed=allowed, encoding="latin1").load(), source)
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.size == 1:
        obj = obj.reshape(-1)[0]
    return obj


def load_npy(path: Path) -> VGG19Weights:
    """tensorflow-vgg's vgg19.npy: ``{'conv1_1': [W (H, W, in, out), b], ...}`` (also caffe-tensorflow's
    ``{'conv1_1': {'weights': W, 'biases': b}}``)."""
    source = str(path)
    obj = load_npy_pickle(path)
    if not isinstance(obj, dict):
        raise WeightsError(f"{source}: .npy holds a {type(obj).__name__}, not tensorflow-vgg's dict of layers")
    convs: Convs = {}
    for key, value in obj.items():
        name = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        if not CONV_NAME.fullmatch(name):
            continue
        if isinstance(value, dict):
            value = [value.get("weights"), value.get("biases")]
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise WeightsError(f"{source}: layer '{name}' is not a [kernel, bias] pair")
        convs[name] = (hwio_to_oihw(value[0], name, source), bias_vector(value[1], name, source))
    return finish(path, convs, CAFFE, "tensorflow-vgg .npy")

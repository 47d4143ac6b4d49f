"""The one restricted unpickler for weights files, and the tensors it rebuilds without torch.

Unpickling a file from outside can run any code it names. `SafeUnpickler` admits only the
handful of globals needed to rebuild tensors and dicts of tensors (or, for tensorflow-vgg's
npy, the numpy globals its reader passes); anything else (`os.system`, `builtins.eval`,
...) is refused by name before it can be called, and every length the pickle declares is
checked against the bytes left before it is read (`check_lengths`). A tensor comes back as
a `LazyTensor` over a `StorageRef`: its layout is checked against its storage, and its
bytes are copied out, only when `LazyTensor.materialize` is asked for it.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import pickletools
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from stylerun.errors import WeightsError
from stylerun.files.limits import Budget

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "ByteStorage": np.uint8,
    "CharStorage": np.int8,
    "ShortStorage": np.int16,
    "IntStorage": np.int32,
    "LongStorage": np.int64,
    "BoolStorage": np.bool_,
}


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype

    def __setstate__(self, state: Any) -> None:
        # Without this, a pickle's BUILD opcode could rewrite the shared allow-listed
        # instance (its __dict__) and change the dtype of every later load in the process.
        raise WeightsError("refusing to load, the file tries to modify a torch storage type")


@dataclass
class StorageRef:
    """A storage named by a persistent id; its bytes are attached after unpickling."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class LazyTensor:
    storage: StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self, name: str = "tensor", budget: Budget | None = None) -> np.ndarray:
        """The tensor as a contiguous array, once its layout is known to stay inside its storage."""
        data = self.storage.data
        if data is None:
            raise WeightsError(f"storage {self.storage.key!r} (tensor '{name}') has no data in the file")
        count = self._check_layout(name, data.size)
        if count == 0:
            return np.zeros(self.size, dtype=data.dtype)
        if budget is not None:
            budget.spend(count * data.itemsize, f"tensor '{name}'")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(s * item for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)

    def _check_layout(self, name: str, numel: int) -> int:
        """The element count, after refusing a layout that leaves the storage or reads an element twice.

        Checked before anything is allocated: a stride of 0, or strides that overlap, would
        let a one-element storage be copied out as gigabytes (1 KB of file, 3.6 GB of memory).
        Sorted by stride, each dimension must step past everything the smaller ones reach,
        which is what makes every element of the tensor a different element of the storage.
        """
        label = f"tensor '{name}'"
        if any(s < 0 for s in self.size) or any(s < 0 for s in self.stride) or self.offset < 0:
            raise WeightsError(f"{label} has a negative size, stride or offset")
        if len(self.size) != len(self.stride):
            raise WeightsError(f"{label}: its size and stride disagree in rank")
        count = math.prod(self.size)
        if count == 0:
            return 0
        if count > numel:
            raise WeightsError(
                f"{label} has {count:,} elements but its storage {self.storage.key!r} holds {numel:,}; "
                "refusing to expand it"
            )
        reach = 0  # the largest offset the dimensions checked so far can add
        for n, s in sorted(((n, s) for n, s in zip(self.size, self.stride, strict=True) if n > 1), key=lambda d: d[1]):
            if s <= reach:
                raise WeightsError(
                    f"{label} has overlapping strides {self.stride} for size {self.size} "
                    "(elements repeated from its storage); refusing to expand it"
                )
            reach += (n - 1) * s
        if self.offset + reach >= numel:
            raise WeightsError(f"{label} reaches past the end of storage {self.storage.key!r}")
        return count


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, *rest):
    if not isinstance(storage, StorageRef):
        raise WeightsError("tensor rebuilt from something that is not a storage")
    return LazyTensor(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, hooks=None, *rest):
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(np.dtype(dt)) for name, dt in _STORAGE_DTYPES.items()},
}


_OPCODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
#: Length prefixes of counted arguments (bytes, strings, long ints), by pickletools' size code.
_LENGTH_PREFIX = {
    pickletools.TAKEN_FROM_ARGUMENT1: "<B",
    pickletools.TAKEN_FROM_ARGUMENT4: "<i",
    pickletools.TAKEN_FROM_ARGUMENT4U: "<I",
    pickletools.TAKEN_FROM_ARGUMENT8U: "<Q",
}


def check_lengths(f: BinaryIO, source: str) -> None:
    """Refuse a pickle whose bytes, strings or integers claim more bytes than the stream has left.

    CPython's C unpickler allocates such a buffer before reading into it (a few bytes of
    file can ask for exabytes, and on Python 3.11 the failed allocation also prints a stray
    "SystemError" line). The opcodes are walked, not run, their arguments skipped by seeking;
    the walk ends at STOP or at anything it does not know, which the unpickler then refuses.
    """
    start = f.tell()
    end = f.seek(0, io.SEEK_END)
    f.seek(start)
    try:
        while (op := _OPCODES.get(f.read(1))) is not None and op.name != "STOP":
            arg = op.arg
            if arg is None:
                continue
            if arg.n >= 0:
                f.seek(arg.n, io.SEEK_CUR)
            elif arg.n == pickletools.UP_TO_NEWLINE:
                for _ in range(2 if arg.name == "stringnl_noescape_pair" else 1):
                    f.readline(1 << 20)
            else:
                prefix = struct.Struct(_LENGTH_PREFIX[arg.n])
                raw = f.read(prefix.size)
                if len(raw) < prefix.size:
                    return
                (size,) = prefix.unpack(raw)
                if size < 0 or f.tell() + size > end:
                    raise WeightsError(f"{source}: the pickle claims {size:,} bytes where {end - f.tell():,} remain")
                f.seek(size, io.SEEK_CUR)
    finally:
        f.seek(start)


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only tensor-rebuild globals and refuses all others.

    `allowed` replaces the tensor allow-list for other pickle-based formats (numpy's
    object arrays, see `weight_formats`), so every pickle stylerun reads goes through
    this one class and one refusal message. `encoding` is for Python 2 pickles, whose
    byte strings must be decoded as latin-1 to survive.
    """

    def __init__(
        self,
        file: BinaryIO,
        source: str,
        storages: dict[str, StorageRef] | None = None,
        *,
        allowed: dict[tuple[str, str], Any] | None = None,
        encoding: str = "ASCII",
    ):
        super().__init__(file, encoding=encoding)
        self._file = file
        self._source = source
        self.storages = storages if storages is not None else {}
        self._allowed = _ALLOWED_GLOBALS if allowed is None else allowed

    def load(self) -> Any:
        """Unpickle, once `check_lengths` has found every counted argument within the stream."""
        check_lengths(self._file, self._source)
        return super().load()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise WeightsError(
                f"{self._source}: refusing to load, the file asks for the forbidden global "
                f"'{module}.{name}' (only tensor data is accepted)"
            ) from None

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise WeightsError(f"{self._source}: unsupported persistent id in pickle")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
        if len(pid) > 5 and pid[5] is not None:
            raise WeightsError(f"{self._source}: storage views are not supported")
        if not isinstance(storage_type, _StorageType):
            raise WeightsError(f"{self._source}: storage of an unknown type")
        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = StorageRef(key, storage_type.dtype, int(numel))
        return ref

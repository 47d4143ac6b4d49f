"""Read `torch.save` files without torch, and without trusting them.

A `torch.save` file is a pickle, and unpickling a file from outside can run any code it
names. `SafeUnpickler` admits only the handful of globals needed to rebuild tensors and
dicts of tensors; anything else (`os.system`, `builtins.eval`, ...) is refused by name
before it can be called. Both layouts torch has written are read:

* the zip layout (torch >= 1.6): ``archive/data.pkl`` plus one raw file per storage;
* the legacy layout: magic, protocol and system-info pickles, the object pickle, a pickle
  of storage keys, then each storage as an int64 element count and its raw bytes.

Every tensor comes back as a contiguous numpy array; offsets, sizes and strides are
checked against the storage they index, so a crafted file cannot read out of bounds.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import WeightsError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

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
class _StorageRef:
    """A storage named by a persistent id; its bytes are attached after unpickling."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _LazyTensor:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise WeightsError(f"storage {self.storage.key!r} has no data in the file")
        if any(s < 0 for s in self.size) or any(s < 0 for s in self.stride) or self.offset < 0:
            raise WeightsError("tensor with a negative size, stride or offset")
        if len(self.size) != len(self.stride):
            raise WeightsError("tensor whose size and stride disagree in rank")
        if 0 not in self.size:
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
            if last >= data.size:
                raise WeightsError(f"tensor reaches past the end of storage {self.storage.key!r}")
        else:
            return np.zeros(self.size, dtype=data.dtype)
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(s * item for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, *rest):
    if not isinstance(storage, _StorageRef):
        raise WeightsError("tensor rebuilt from something that is not a storage")
    return _LazyTensor(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, hooks=None, *rest):
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(np.dtype(dt)) for name, dt in _STORAGE_DTYPES.items()},
}


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
        storages: dict[str, _StorageRef] | None = None,
        *,
        allowed: dict[tuple[str, str], Any] | None = None,
        encoding: str = "ASCII",
    ):
        super().__init__(file, encoding=encoding)
        self._source = source
        self.storages = storages if storages is not None else {}
        self._allowed = _ALLOWED_GLOBALS if allowed is None else allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise WeightsError(
                f"{self._source}: refusing to load, the file asks for the forbidden global "
                f"'{module}.{name}' (only tensor data is accepted)"
            ) from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise WeightsError(f"{self._source}: unsupported persistent id in pickle")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
        if len(pid) > 5 and pid[5] is not None:
            raise WeightsError(f"{self._source}: storage views are not supported")
        if not isinstance(storage_type, _StorageType):
            raise WeightsError(f"{self._source}: storage of an unknown type")
        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = _StorageRef(key, storage_type.dtype, int(numel))
        return ref


def safe_unpickle(data: bytes, source: str = "pickle") -> Any:
    """Unpickle plain data (dicts, lists, numbers, strings, ndarray-free) safely."""
    return SafeUnpickler(io.BytesIO(data), source).load()


def _tensor_names(obj: Any, prefix: str = "") -> dict[str, str]:
    """storage key -> the first tensor name that uses it, so errors can name the layer."""
    names: dict[str, str] = {}
    if isinstance(obj, _LazyTensor):
        names[obj.storage.key] = prefix or "tensor"
    elif isinstance(obj, dict):
        for k, v in obj.items():
            for key, name in _tensor_names(v, f"{prefix}.{k}" if prefix else str(k)).items():
                names.setdefault(key, name)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            for key, name in _tensor_names(v, f"{prefix}[{i}]").items():
                names.setdefault(key, name)
    return names


def _storage_label(key: str, names: dict[str, str]) -> str:
    return f"storage {key!r} (tensor '{names[key]}')" if key in names else f"storage {key!r}"


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _load_zip(path: Path) -> Any:
    source = str(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise WeightsError(f"{source}: zip file without a single data.pkl; not a torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        unpickler = SafeUnpickler(io.BytesIO(zf.read(pkl[0])), source)
        obj = unpickler.load()
        names = _tensor_names(obj)
        for key, ref in unpickler.storages.items():
            member = f"{prefix}data/{key}"
            label = _storage_label(key, names)
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise WeightsError(f"{source}: {label} is missing from the archive") from None
            expected = ref.numel * np.dtype(ref.dtype).itemsize
            if info.file_size != expected:
                raise WeightsError(f"{source}: {label} holds {info.file_size} bytes, expected {expected}")
            ref.data = np.frombuffer(zf.read(member), dtype=np.dtype(ref.dtype).newbyteorder("<"))
    return _materialize(obj)


def _load_legacy(path: Path) -> Any:
    source = str(path)
    raw = path.read_bytes()
    f = io.BytesIO(raw)
    storages: dict[str, _StorageRef] = {}
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
    names = _tensor_names(obj)
    for key in keys:
        key = str(key)
        label = _storage_label(key, names)
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
    return _materialize(obj)


def load_torch_file(path: str | Path) -> Any:
    """Load a `torch.save` file as nested dicts of numpy arrays, refusing any code."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        try:
            return _load_zip(path)
        except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise WeightsError(f"{path}: corrupt torch.save archive ({exc})") from None
    return _load_legacy(path)

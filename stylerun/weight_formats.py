"""Weight files from other tools, detected by content and converted to `VGG19Weights`."""

from __future__ import annotations

import zipfile
from pathlib import Path

from .errors import WeightsError
from .weights import VGG19Weights, load_quantized_npz


def load_any(path: Path) -> VGG19Weights:
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if zipfile.is_zipfile(path) and path.read_bytes()[:2] == b"PK":
        with zipfile.ZipFile(path) as zf:
            if any(n.endswith(".codes.npy") for n in zf.namelist()):
                return load_quantized_npz(path)
    raise WeightsError(f"{path}: unrecognised weights format")

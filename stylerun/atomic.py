"""Atomic file writes: a temporary file in the target's folder, flushed to disk, then renamed.

Readers never see a half-written file, and a crash or Ctrl-C leaves the previous file
(or none) in place. Images, checkpoints and exported models all go through `atomic_write`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file; on normal exit it replaces `path` in one rename."""
    path = Path(path)
    # the temporary keeps the suffix, so format detection by name still works on it
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

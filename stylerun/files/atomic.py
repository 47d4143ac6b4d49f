"""Atomic file writes: a temporary file in the target's folder, flushed to disk, then renamed.

Readers never see a half-written file, and a crash or Ctrl-C leaves the previous file
(or none) in place. Images, checkpoints and exported models all go through `atomic_write`.
The temporary's name is random and it is created exclusively (``O_EXCL``, not through
a link), so a link planted in the output folder under a guessable name
cannot redirect the write.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file; on normal exit it replaces `path` in one rename."""
    path = Path(path)
    # the temporary keeps the suffix, so format detection by name still works on it
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(8)}.tmp{path.suffix}")
    # exclusive and not through a link; 0o666 less the umask, as a plain open() would give
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    """`data` into `path` through `atomic_write`: readers see the old file or the whole new one."""
    with atomic_write(path) as f:
        f.write(data)

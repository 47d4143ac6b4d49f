"""One writer per output: an exclusive lock on a file beside the output for the length of a run.

Two runs writing the same output would each overwrite the other's result (and checkpoints)
without a word. `output_lock` takes a non-blocking ``flock`` on ``.NAME.lock`` beside the
output, so the second run ends at once with an error naming the output. The lock file is
removed when the run ends; a crashed run's lock is released by the operating system, and
its leftover file is taken over by the next run. Where ``fcntl`` does not exist (Windows)
or the folder does not allow the lock file, the run goes on without a lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from stylerun.errors import InputError

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None


def lock_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding the lock on `path`, None if another process holds it.

    The file may be removed by its previous holder between our open and our lock; then the
    lock we got is on a file nobody else will see, so we open the new one and try again.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def output_lock(output: str | Path | None) -> Iterator[None]:
    """Hold the lock of `output` (None: nothing to lock); `InputError` if another run holds it."""
    if output is None or fcntl is None:
        yield
        return
    path = lock_path(output)
    try:
        fd = _try_lock(path)
    except OSError:  # a read-only folder, a file system without flock: the write itself will tell
        yield
        return
    if fd is None:
        raise InputError(f"another stylerun is writing {output} (it holds {path}); wait for it to finish, or choose "
                         "another output")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
